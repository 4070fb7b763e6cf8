"""The liveness probe on a port of its own, answered from a thread (``server.health_port``).

``GET /healthz`` on the hook port is answered by the event loop, behind every request queued
there: under an overload or a connection flood a probe can wait as long as they do. This
listener answers from its own thread, so its latency does not depend on the loop's queue. It
still reports the loop: the load governor's lag probe ticks every 10 ms on the loop, and when
it has not ticked for ``stall_s`` seconds the answer is 503 (a stuck loop is a dead sidecar).

Plain HTTP/1.1 on ``server.http_host``, no token: like ``/healthz`` on the hook port it is open
for probes and reveals nothing (``{"status": "ok"}`` or ``{"status": "stalled"}``). It reads at
most one request line and a few headers per connection, with a short timeout, and serves a
bounded number of connections at once; the rest are closed at once.

Written on the standard library's socket server rather than a web framework: it must run
outside the event loop and needs nothing but one fixed answer.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.services import Sidecar

log = logging.getLogger("sidecar")

#: connections served at once; a probe opens one at a time
MAX_CONNECTIONS = 16
#: a connection must send its request line and headers within this time
READ_TIMEOUT_S = 2.0
_MAX_HEADER_BYTES = 8192

_OK = b'{"status":"ok"}'
_STALLED = b'{"status":"stalled"}'


def _reply(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class _Handler(socketserver.BaseRequestHandler):
    server: _HealthServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(READ_TIMEOUT_S)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < _MAX_HEADER_BYTES:
                chunk = conn.recv(1024)
                if not chunk:
                    return
                data += chunk
        except OSError:  # timed out or reset: nothing to answer
            return
        line = data.split(b"\r\n", 1)[0].split(b" ")
        if len(line) < 2 or line[0] not in (b"GET", b"HEAD"):
            answer = _reply("405 Method Not Allowed", b'{"error":"GET /healthz only"}')
        elif line[1].split(b"?", 1)[0] != b"/healthz":
            answer = _reply("404 Not Found", b'{"error":"GET /healthz only"}')
        elif self.server.alive():
            answer = _reply("200 OK", _OK)
        else:
            answer = _reply("503 Service Unavailable", _STALLED)
        if line[0] == b"HEAD":
            answer = answer.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        try:
            conn.sendall(answer)
        except OSError:
            pass


class _HealthServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], alive: Callable[[], bool]) -> None:
        self.alive = alive
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: closed at once
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthListener:
    """``start`` binds and serves from a daemon thread; ``close`` stops it."""

    def __init__(self, host: str, port: int, last_tick: Callable[[], float], stall_s: float):
        self._last_tick = last_tick
        self.stall_s = stall_s
        self._server = _HealthServer((host, port), self._alive)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="sidecar-health",
            daemon=True,
        )

    def _alive(self) -> bool:
        return time.monotonic() - self._last_tick() < self.stall_s

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_health_listener(sidecar: Sidecar) -> HealthListener:
    """The ``server.health_port`` listener of ``sidecar serve``, serving (OSError: cannot bind)."""
    server = sidecar.config.server
    governor = sidecar.governor
    listener = HealthListener(
        server.http_host, server.health_port, lambda: governor.last_tick, server.health_stall_s
    )
    listener.start()
    log.info("liveness probe on http://%s:%d/healthz (own thread)", server.http_host, listener.port)
    return listener
