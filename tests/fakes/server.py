"""A scriptable JSON-over-HTTP server on 127.0.0.1 for the wire-protocol fakes.

Subclasses implement :meth:`FakeJsonServer.respond`. Tests can queue replies (``script``) that
are served before the subclass's own logic: throttling, 5xx, or a *held* reply that waits until
the test calls :meth:`release_held` (a slow service, for timeout and concurrency tests).
"""

from __future__ import annotations

import collections
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # wait for release_held() before answering
    hold: bool = False
    # after a held reply is released, answer with this instead (None: the normal logic)
    then: Reply | None = None


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    raw_body: bytes

    def json(self) -> Any:
        return json.loads(self.raw_body or b"null")


class FakeJsonServer:
    #: how long a held reply waits at most, so a forgotten release cannot hang a test run
    HOLD_LIMIT_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._script: collections.deque[Reply] = collections.deque()
        self._released = threading.Event()
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeJsonServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return  # keep test output clean

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        port = self._httpd.server_address[1]
        return f"http://127.0.0.1:{port}"

    # ----------------------------------------------------------------- scripting

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def release_held(self) -> None:
        self._released.set()

    def wait_in_flight(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` requests are being handled at once."""
        with self._lock:
            return self._lock.wait_for(lambda: self.in_flight >= count, timeout=timeout)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # ----------------------------------------------------------------- handling

    def respond(self, request: Recorded) -> Reply:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        request = Recorded(
            method=handler.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            raw_body=raw,
        )
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._lock.notify_all()
            scripted = self._script.popleft() if self._script else None
        try:
            reply = scripted
            if reply is not None and reply.hold:
                self._released.wait(self.HOLD_LIMIT_S)
                reply = reply.then
            if reply is None:
                reply = self.respond(request)
            self._send(handler, reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test): nothing to answer
        finally:
            with self._lock:
                self.in_flight -= 1
                self._lock.notify_all()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)
