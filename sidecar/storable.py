"""Is an answer complete, successful and of the request's own format? Only then is it stored.

A provider (or a proxy in front of it) can answer 200 with things that must never be replayed:
an OpenAI ``{"error": ...}`` body, an Anthropic ``"type": "error"``, a truncated answer
(``finish_reason: length``, ``stop_reason: max_tokens``), a filtered one (``content_filter``),
an HTML error page, ``{}``, ``null`` or ``""``, or a stream that stopped before its finish
reason. ``answer_refusal`` finds these; the pipeline counts the refusal's ``code`` in
``sidecar_cache_store_skips_total`` and reports its ``reason`` (a fixed phrase, never text
from the answer) as the response's ``cache.not_stored``.

Which finish reasons may be stored is ``cache.storable_finish_reasons``. Embeddings carry no
finish reason: a list of vectors is their complete answer.

Written here rather than validated with the providers' SDK models: those accept partial and
unknown shapes on purpose (forward compatibility), which is the opposite of what the cache needs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from sidecar.formats import ApiFormat, RequestType
from sidecar.sse import SseEvent, is_terminal


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str  # a metric label
    reason: str  # a fixed phrase for the response's cache info and the trace


NOT_JSON = Refusal("not_json", "answer is not JSON")
NOT_OBJECT = Refusal("not_an_answer", "answer is not a JSON object")
PROVIDER_ERROR = Refusal("provider_error", "answer is a provider error")
WRONG_FORMAT = Refusal("wrong_format", "answer is not in the request's API format")
NO_FINISH = Refusal("incomplete", "answer has no finish reason")
FINISH_NOT_STORABLE = Refusal(
    "finish_reason", "finish reason is not in cache.storable_finish_reasons"
)
STREAM_NOT_JSON = Refusal("stream_not_json", "stream carried an event that is not JSON")
STREAM_NO_FINISH = Refusal("incomplete", "stream ended without a finish reason")


def _is_list_of_dicts(value: Any, non_empty: bool = True) -> TypeGuard[list[dict[str, Any]]]:
    return (
        isinstance(value, list)
        and (bool(value) or not non_empty)
        and all(isinstance(v, dict) for v in value)
    )


def _finish(reasons: Iterable[Any], storable: Collection[str]) -> Refusal | None:
    seen = list(reasons)
    if not seen or any(r is None for r in seen):
        return NO_FINISH
    if any(not isinstance(r, str) or r not in storable for r in seen):
        return FINISH_NOT_STORABLE
    return None


def _openai_choice_ok(kind: RequestType, choice: dict[str, Any]) -> bool:
    if kind is RequestType.COMPLETION:
        return isinstance(choice.get("text"), str)
    message = choice.get("message")
    if not isinstance(message, dict):
        return False
    content, calls = message.get("content"), message.get("tool_calls")
    if calls is not None and not _is_list_of_dicts(calls):
        return False
    # content null is an answer when it called a tool or (structured outputs) refused
    has_other = (
        bool(calls)
        or isinstance(message.get("function_call"), dict)
        or isinstance(message.get("refusal"), str)
    )
    return isinstance(content, str) or (content is None and has_other)


def _json_refusal(
    api: ApiFormat, kind: RequestType, answer: Any, storable: Collection[str]
) -> Refusal | None:
    if not isinstance(answer, dict):
        return NOT_OBJECT
    if api is ApiFormat.ANTHROPIC:
        if answer.get("type") == "error" or "error" in answer:
            return PROVIDER_ERROR
        content = answer.get("content")
        if answer.get("type", "message") != "message" or not _is_list_of_dicts(content):
            return WRONG_FORMAT
        if not all(isinstance(block.get("type"), str) for block in content):
            return WRONG_FORMAT
        return _finish([answer.get("stop_reason")], storable)
    if "error" in answer:
        return PROVIDER_ERROR
    if kind is RequestType.EMBEDDINGS:
        data = answer.get("data")
        if not _is_list_of_dicts(data) or not all(
            isinstance(d.get("embedding"), list | str) for d in data
        ):
            return WRONG_FORMAT
        return None
    choices = answer.get("choices")
    if not _is_list_of_dicts(choices) or not all(_openai_choice_ok(kind, c) for c in choices):
        return WRONG_FORMAT
    return _finish((c.get("finish_reason") for c in choices), storable)


def _chunk_choice_ok(kind: RequestType, choice: dict[str, Any]) -> bool:
    if kind is RequestType.COMPLETION:
        return isinstance(choice.get("text"), str)
    return isinstance(choice.get("delta"), dict)


def _stream_refusal(
    api: ApiFormat, kind: RequestType, events: Iterable[SseEvent], storable: Collection[str]
) -> Refusal | None:
    finishes: list[Any] = []
    for event in events:
        if is_terminal(api, event) and api is ApiFormat.OPENAI:
            continue  # "[DONE]" is not JSON
        payload = event.json()
        if not isinstance(payload, dict):
            return STREAM_NOT_JSON
        if api is ApiFormat.ANTHROPIC:
            delta = payload.get("delta")
            if "delta" in payload and not isinstance(delta, dict):
                return WRONG_FORMAT
            if payload.get("type") == "message_delta" and isinstance(delta, dict):
                if delta.get("stop_reason") is not None:
                    finishes.append(delta.get("stop_reason"))
            continue
        choices = payload.get("choices")
        if choices is None:
            continue  # e.g. a usage-only chunk
        if not _is_list_of_dicts(choices, non_empty=False) or not all(
            _chunk_choice_ok(kind, c) for c in choices
        ):
            return WRONG_FORMAT
        finishes.extend(c["finish_reason"] for c in choices if c.get("finish_reason") is not None)
    if not finishes:
        return STREAM_NO_FINISH
    return _finish(finishes, storable)


def answer_refusal(
    api: ApiFormat,
    kind: RequestType,
    body: bytes,
    streamed: bool,
    storable: Collection[str],
    events: Iterable[SseEvent] = (),
) -> Refusal | None:
    """None when the answer may be stored; else why not. Never raises on any input.

    For a stream, ``events`` are its parsed events (the caller has already checked that it
    ended with its terminal event and carried no error event)."""
    if streamed:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return STREAM_NOT_JSON
        return _stream_refusal(api, kind, events, storable)
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return NOT_JSON
    return _json_refusal(api, kind, answer, storable)
