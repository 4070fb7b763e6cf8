"""A fake LLM provider on 127.0.0.1: OpenAI Chat Completions and Anthropic Messages (plain and
streamed), plus OpenAI-style embeddings. Used by ``sidecar demo`` and by the end-to-end tests.

Answers are deterministic apart from a per-call serial number, so a caller can tell a fresh
answer ("answer 3 to: ...") from a replayed one. Streams are written as HTTP/1.1 chunks cut
at odd byte offsets, so SSE events straddle chunk boundaries the way real providers' do.
Every call is counted and its raw body recorded.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

#: after ``hold_embeddings()``, embeddings whose input contains this marker wait for
#: ``release_embeddings()`` (a slow embedding provider, for timeout tests)
HOLD_MARKER = "[hold-embedding]"
EMBEDDING_DIMENSION = 64
# Bytes per HTTP chunk of a streamed answer: small and odd, so frames are split mid-event.
_STREAM_CUT = 29
_HOLD_LIMIT_S = 30.0


@dataclass(frozen=True, slots=True)
class ScriptedAnswer:
    """The next chat answer, instead of the echo: its text, and tool calls (OpenAI shape,
    plain answers only)."""

    text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and "text" in p
                )
    return ""


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


def _sse(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_events(answer_id: str, model: str, text: str) -> Iterator[bytes]:
    base = {"id": answer_id, "object": "chat.completion.chunk", "created": 1, "model": model}
    yield _sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    )
    for word in _words(text):
        yield _sse(
            {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        )
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield b"data: [DONE]\n\n"


def anthropic_events(answer_id: str, model: str, text: str) -> Iterator[bytes]:
    usage = {"input_tokens": 5, "output_tokens": 0}
    message: dict[str, Any] = {
        "id": answer_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    yield _sse({"type": "message_start", "message": message}, "message_start")
    yield _sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    for word in _words(text):
        yield _sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word},
            },
            "content_block_delta",
        )
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    yield _sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(_words(text))},
        },
        "message_delta",
    )
    yield _sse({"type": "message_stop"}, "message_stop")


def fake_embedding(text: str) -> list[float]:
    """A deterministic unit-free vector (the sidecar normalises rows itself)."""
    digest = hashlib.sha256(text.encode()).digest() * 2
    return [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSION]]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a proxy opens many connections at once; the default is 5

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing a kept-alive connection (the OpenAI SDK does at [DONE]) is normal.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLLMUpstream:
    """Start with ``start()``; ``url`` is the base (``http://127.0.0.1:<port>``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, chunk_pause: float = 0.001) -> None:
        self._host = host
        self._chunk_pause = chunk_pause
        self._port = port
        self._lock = threading.Condition()
        self._serial = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._gate = 0  # LLM calls wait until this many were in flight at once (0: no wait)
        self.calls: list[UpstreamCall] = []
        self.counts: Counter[str] = Counter()
        self._embeddings_released = threading.Event()
        self._embeddings_released.set()  # no holding until hold_embeddings()
        self.held_embeddings = 0  # embedding calls that stalled on HOLD_MARKER
        self._scripted: deque[ScriptedAnswer] = deque()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeLLMUpstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: with Nagle's algorithm on, the body
            # waits for the peer's delayed ACK (~40 ms per answer through Envoy).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                upstream._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                upstream._send_json(self, 200, {"status": "ok"})

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._httpd = _QuietServer((self._host, self._port), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._embeddings_released.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def hold_embeddings(self) -> None:
        """From now on, embeddings of inputs with HOLD_MARKER wait for release_embeddings()."""
        self._embeddings_released.clear()

    def release_embeddings(self) -> None:
        self._embeddings_released.set()

    def hold_until_in_flight(self, count: int) -> None:
        """Make LLM calls wait until ``count`` of them are in flight together (a proof of
        concurrency that needs no timing); ``count=0`` turns the gate off."""
        with self._lock:
            self._gate = count
            if count:
                self.max_in_flight = self.in_flight  # measure from now on
            self._lock.notify_all()

    def answer_next(
        self, text: str | None = None, tool_calls: list[dict[str, Any]] | None = None
    ) -> None:
        """The next chat completion answers ``text`` (and ``tool_calls``) instead of the echo."""
        with self._lock:
            self._scripted.append(ScriptedAnswer(text, tool_calls))

    def count(self, suffix: str = "") -> int:
        """Calls whose path ends with ``suffix`` (all LLM calls when empty)."""
        with self._lock:
            return sum(n for p, n in self.counts.items() if p.endswith(suffix))

    def calls_to(self, suffix: str) -> list[UpstreamCall]:
        with self._lock:
            return [c for c in self.calls if c.path.endswith(suffix)]

    # ------------------------------------------------------------------ handling
    def _next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = handler.path.split("?", 1)[0]
        call = UpstreamCall(path, {k.lower(): v for k, v in handler.headers.items()}, raw)
        if not path.endswith(("/chat/completions", "/messages", "/embeddings")):
            self._send_json(handler, 404, {"error": {"message": f"no route {path}"}})
            return
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            self._send_json(handler, 400, {"error": {"message": "body is not JSON"}})
            return
        try:
            if path.endswith("/embeddings"):
                self._embeddings(handler, body)
                return
            self._enter(call)
            try:
                if path.endswith("/chat/completions"):
                    self._chat(handler, body)
                else:
                    self._messages(handler, body)
            finally:
                with self._lock:
                    self.in_flight -= 1
        except ConnectionError:
            pass  # the proxy gave up on this request (timeout tests)

    def _enter(self, call: UpstreamCall) -> None:
        with self._lock:
            self.calls.append(call)
            self.counts[call.path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._lock.notify_all()
            if self._gate:
                self._lock.wait_for(lambda: self.max_in_flight >= self._gate, _HOLD_LIMIT_S)

    def _chat(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        serial = self._next_serial()
        model = str(body.get("model") or "gpt-fake")
        with self._lock:
            scripted = self._scripted.popleft() if self._scripted else ScriptedAnswer()
        text = scripted.text
        if text is None and scripted.tool_calls is None:
            text = f"answer {serial} to: {_last_user_text(body.get('messages'))}"
        answer_id = f"chatcmpl-{serial}"
        if body.get("stream"):
            self._send_stream(handler, openai_events(answer_id, model, text or ""))
            return
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if scripted.tool_calls is not None:
            message["tool_calls"] = scripted.tool_calls
        self._send_json(
            handler,
            200,
            {
                "id": answer_id,
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if scripted.tool_calls else "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            },
        )

    def _messages(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        serial = self._next_serial()
        model = str(body.get("model") or "claude-fake")
        text = f"answer {serial} to: {_last_user_text(body.get('messages'))}"
        answer_id = f"msg_{serial}"
        if body.get("stream"):
            self._send_stream(handler, anthropic_events(answer_id, model, text))
            return
        self._send_json(
            handler,
            200,
            {
                "id": answer_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 5},
            },
        )

    def _embeddings(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if any(HOLD_MARKER in str(t) for t in texts):
            with self._lock:
                self.held_embeddings += 1
            self._embeddings_released.wait(_HOLD_LIMIT_S)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(str(t))}
            for i, t in enumerate(texts)
        ]
        self._send_json(handler, 200, {"object": "list", "data": data, "model": "fake-embed"})

    @staticmethod
    def _send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        raw = orjson.dumps(payload)
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def _send_stream(self, handler: BaseHTTPRequestHandler, events: Iterator[bytes]) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        data = b"".join(events)
        for start in range(0, len(data), _STREAM_CUT):
            piece = data[start : start + _STREAM_CUT]
            handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            handler.wfile.flush()
            # Token pacing, as a real provider has: lets the proxy forward chunks one by one.
            time.sleep(self._chunk_pause)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
