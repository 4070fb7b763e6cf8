"""Small helpers to speak the HTTP hook API in tests, the way a proxy would."""

from __future__ import annotations

from typing import Any

import httpx


def chat_body(question: str, model: str = "gpt-4o-mini", **params: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}], **params}


def openai_answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def anthropic_answer(text: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 2},
    }


def openai_stream(parts: list[str]) -> str:
    import json

    events = []
    for i, part in enumerate(parts):
        delta: dict[str, Any] = {"content": part}
        if i == 0:
            delta["role"] = "assistant"
        chunk = {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        events.append(f"data: {json.dumps(chunk)}\n\n")
    final = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    events.append(f"data: {json.dumps(final)}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events)


def anthropic_stream(parts: list[str]) -> str:
    import json

    def ev(name: str, payload: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(payload)}\n\n"

    out = [
        ev(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_s",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 5, "output_tokens": 1},
                },
            },
        ),
        ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for part in parts:
        out.append(
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": part},
                },
            )
        )
    out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(
        ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(parts)},
            },
        )
    )
    out.append(ev("message_stop", {"type": "message_stop"}))
    return "".join(out)


async def request_hook(
    client: httpx.AsyncClient,
    body: Any,
    *,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> httpx.Response:
    return await client.post(
        "/v1/hooks/request",
        json={"method": method, "path": path, "headers": headers or {}, "body": body},
    )


async def response_hook(
    client: httpx.AsyncClient,
    pending: dict[str, Any],
    body: Any,
    *,
    status: int = 200,
    content_type: str = "application/json",
) -> httpx.Response:
    """The response hook for ``pending``, the request hook's reply (its ``request_id`` and
    ``request_secret``)."""
    return await client.post(
        "/v1/hooks/response",
        json={
            "request_id": pending["request_id"],
            "request_secret": pending["request_secret"],
            "status": status,
            "headers": {"content-type": content_type},
            "body": body,
        },
    )


async def round_trip(
    client: httpx.AsyncClient,
    body: Any,
    answer: Any,
    *,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    status: int = 200,
    content_type: str = "application/json",
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Request hook, then (on continue) the response hook with ``answer``."""
    first = await request_hook(client, body, path=path, headers=headers)
    assert first.status_code == 200, first.text
    req = first.json()
    if req["action"] != "continue":
        return req, None
    second = await response_hook(client, req, answer, status=status, content_type=content_type)
    assert second.status_code == 200, second.text
    return req, second.json()
