"""Connection limits for the HTTP listeners that uvicorn does not offer itself.

uvicorn has a keep-alive timeout (``timeout_keep_alive``, armed after a response) and
``limit_concurrency`` (which answers 503 yet keeps every connection open), but no deadline
for a client to send its request headers: a connection that sends nothing, or a header byte
every few seconds, stays open forever, and enough of them exhaust file handles. This
subclass of uvicorn's httptools protocol adds:

- a header deadline: from the connection's opening (and again from the first byte of each
  next request on a keep-alive connection) until the headers are complete; past it the
  server answers 408 and closes the connection;
- a connection cap per listener: a connection beyond ``max_connections`` is closed at once,
  before anything is read, so slow clients cannot take every file handle.

It hooks only uvicorn's protocol callbacks (``connection_made``, ``on_message_begin``,
``on_headers_complete``, ``connection_lost``), the same ones uvicorn's keep-alive timer uses.
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
    max_connections: int = 1024

    #: when the current request's headers started (None: not reading headers)
    _headers_since: float | None = None
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
        self._watch = self.loop.call_later(self.header_timeout, self._check_headers)

    # One watch timer per connection instead of a timer per request: arming and cancelling a
    # timer on every request cost more CPU than the rest of this class (uvloop allocates a
    # libuv handle per timer); a timestamp per request is nearly free.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._headers_since = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def _check_headers(self) -> None:
        self._watch = None
        if self.transport.is_closing():
            return
        since = self._headers_since
        wait = self.header_timeout
        if since is not None:
            waited = self.loop.time() - since
            if waited >= self.header_timeout:
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()
                return
            wait = self.header_timeout - waited
        self._watch = self.loop.call_later(wait, self._check_headers)


def guarded_protocol(header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
