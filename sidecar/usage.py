"""The provider's own token count of an answer (its ``usage``), read when the answer is stored.

OpenAI Chat/Completions report ``usage.prompt_tokens`` / ``completion_tokens`` (streamed: in
the last chunk, when the caller asked for ``stream_options.include_usage``); the Responses API
``usage.input_tokens`` / ``output_tokens`` (streamed: in ``response.completed``). Anthropic
reports ``usage.input_tokens`` (plus prompt-cache reads and writes, counted as prompt tokens:
the provider bills them as input) and ``output_tokens``; streamed, the input side arrives in
``message_start`` and the running output count in ``message_delta``. An answer without usage
gives None: the sidecar never estimates tokens itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from sidecar.cache.model import Usage
from sidecar.formats import ApiFormat
from sidecar.sse import SseEvent


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _tokens(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    if "input_tokens" in usage or "output_tokens" in usage:
        prompt = (
            _int(usage.get("input_tokens"))
            + _int(usage.get("cache_creation_input_tokens"))
            + _int(usage.get("cache_read_input_tokens"))
        )
        return prompt, _int(usage.get("output_tokens"))
    return None


def _model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else ""


def usage_of(
    api: ApiFormat,
    body: bytes,
    streamed: bool,
    events: Sequence[SseEvent],
    request_model: str | None,
) -> Usage | None:
    """The answer's reported usage; its model is the answer's ``model`` field, else the
    request's."""
    model = ""
    prompt: int | None = None
    completion: int | None = None
    if not streamed:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        if isinstance(payload.get("response"), dict):  # a Responses API envelope
            payload = payload["response"]
        model = _model(payload)
        found = _tokens(payload.get("usage"))
        if found is not None:
            prompt, completion = found
    else:
        for event in events:
            data = event.json()
            if not isinstance(data, dict):
                continue
            if api is ApiFormat.ANTHROPIC:
                message = data.get("message")
                if data.get("type") == "message_start" and isinstance(message, dict):
                    model = model or _model(message)
                    found = _tokens(message.get("usage"))
                    if found is not None:
                        prompt = found[0]
                        completion = found[1] or completion
                elif data.get("type") == "message_delta":
                    usage = data.get("usage")
                    if isinstance(usage, dict) and "output_tokens" in usage:
                        completion = _int(usage.get("output_tokens"))  # a running total
                        both = _tokens(usage)
                        if "input_tokens" in usage and prompt is None and both is not None:
                            prompt = both[0]
                continue
            inner = data.get("response") if isinstance(data.get("response"), dict) else data
            assert isinstance(inner, dict)
            model = model or _model(inner)
            found = _tokens(inner.get("usage"))
            if found is not None:
                prompt, completion = found
    if prompt is None and completion is None:
        return None
    return Usage(model or request_model or "", prompt or 0, completion or 0)
