"""A fast fake LLM provider for the proxy benchmark, run as its own process.

Run: ``python -m benchmarks.fast_upstream PORT [DELAY_MS]``. Answers ``POST
.../chat/completions`` (after DELAY_MS, default 0) with an OpenAI chat completion naming a
serial number and the last user message, and ``GET`` with ``{"status": "ok"}``. HTTP/1.1
keep-alive on asyncio protocols; each answer is one write with ``TCP_NODELAY`` (a header
write and a body write with Nagle's algorithm on cost ~40 ms per request through a proxy,
which would swamp everything measured).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from itertools import count
from typing import Any

import orjson

_serial = count(1)


def _answer(body: bytes) -> bytes:
    try:
        request: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return _http(400, b'{"error":{"message":"body is not JSON"}}')
    messages = request.get("messages") if isinstance(request, dict) else None
    question = ""
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        question = content if isinstance(content, str) else ""
    serial = next(_serial)
    payload = {
        "id": f"chatcmpl-{serial}",
        "object": "chat.completion",
        "created": 1,
        "model": request.get("model", "gpt-fake") if isinstance(request, dict) else "gpt-fake",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": f"answer {serial} to: {question[:200]}",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }
    return _http(200, orjson.dumps(payload))


def _http(status: int, body: bytes) -> bytes:
    reason = b"OK" if status == 200 else b"Bad Request"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        status,
        reason,
        len(body),
    )
    return head + body


class _Connection(asyncio.Protocol):
    #: how long each answer waits before it is written (a slow provider, for the fault suite)
    delay_s = 0.0

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            assert self._transport is not None
            if head.startswith(b"POST"):
                answer = self.answer_post(body)
                if self.delay_s > 0:
                    loop = asyncio.get_running_loop()
                    loop.call_later(self.delay_s, self._write, answer)
                else:
                    self._transport.write(answer)
            else:
                self._transport.write(_http(200, b'{"status":"ok"}'))

    def answer_post(self, body: bytes) -> bytes:
        """The whole HTTP answer to a POST with this body (a subclass answers otherwise)."""
        return _answer(body)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> int:
    if len(sys.argv) > 2:
        _Connection.delay_s = int(sys.argv[2]) / 1000
    asyncio.run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
