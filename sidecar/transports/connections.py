"""Connection limits for the HTTP listeners that uvicorn does not offer itself.

uvicorn has a keep-alive timeout (``timeout_keep_alive``, armed after a response) and
``limit_concurrency`` (which answers 503 yet keeps every connection open), but no deadline
for a client to send its request headers: a connection that sends nothing, or a header byte
every few seconds, stays open forever, and enough of them exhaust file handles. This
subclass of uvicorn's httptools protocol adds:

- a header deadline: from the connection's opening (and again from the first byte of each
  next request on a keep-alive connection) until the headers are complete; past it the
  server answers 408 and closes the connection;
- a body deadline: a request body that stops arriving for ``body_timeout`` closes the
  connection (the handler sees the client disconnect);
- a connection cap per listener: a connection beyond ``max_connections`` is closed at once,
  before anything is read, so slow clients cannot take every file handle.

It hooks only uvicorn's protocol callbacks (``connection_made``, ``on_message_begin``,
``on_headers_complete``, ``on_body``, ``on_message_complete``, ``connection_lost``).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("sidecar.http")

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nrequest headers not sent in time\n"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    #: set on the subclass ``guarded_protocol`` builds
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1024

    #: when the current request's headers started (None: not reading headers)
    _headers_since: float | None = None
    #: when the current request's body last made progress (None: not reading a body)
    _body_since: float | None = None
    _watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning(
                "HTTP connection limit (server.max_connections = %d) reached: closing a new "
                "connection",
                self.max_connections,
            )
            transport.abort()
            return
        self._headers_since = self.loop.time()
        self._watch = self.loop.call_later(self.header_timeout, self._check_deadlines)

    # One watch timer per connection, re-armed when it fires, rather than a timer armed and
    # cancelled on every request: a request then costs a timestamp or two, not a timer
    # allocation (uvloop creates a libuv handle per timer).
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._headers_since = None
        self._body_since = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_since = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_since = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def _check_deadlines(self) -> None:
        self._watch = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        wait = min(self.header_timeout, self.body_timeout)
        if self._headers_since is not None:
            left = self.header_timeout - (now - self._headers_since)
            if left <= 0:
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()
                return
            wait = min(wait, left)
        if self._body_since is not None:
            left = self.body_timeout - (now - self._body_since)
            if left <= 0:
                # The handler waiting for the body sees a disconnect; no answer can be sent
                # in the middle of a request the client is still supposed to be sending.
                self.transport.close()
                return
            wait = min(wait, left)
        self._watch = self.loop.call_later(wait, self._check_deadlines)


def guarded_protocol(
    header_timeout: float, body_timeout: float, max_connections: int
) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
        },
    )
