"""Connection limits for the HTTP listeners that uvicorn does not offer itself.

uvicorn has a keep-alive timeout (``timeout_keep_alive``, armed after a response) and
``limit_concurrency`` (which answers 503 yet keeps every connection open), but no deadline
for a client to send its request headers: a connection that sends nothing, or a header byte
every few seconds, stays open forever, and enough of them exhaust file handles. This
subclass of uvicorn's httptools protocol adds:

- a header deadline: from the connection's first byte slot (and again when a keep-alive
  connection starts its next request) until the headers are complete; past it the server
  answers 408 and closes the connection;
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

    _header_timer: asyncio.TimerHandle | None = None

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
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def guarded_protocol(header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
