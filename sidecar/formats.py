"""The LLM API shapes the sidecar understands: OpenAI Chat/Completions/Embeddings and
Anthropic Messages.

Parsing turns a request body into what the rest of the pipeline works on: the request type,
the conversation (as role/text messages), the parameters that can change the answer, and the
text pieces guardrails scan, each with the location it came from so a rewrite can be written
back. Nothing here decides anything.
"""

from __future__ import annotations

import copy
import enum
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from guardrails.base import PieceKind, TextPiece


class RequestType(enum.StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    MESSAGES = "messages"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"


class ApiFormat(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


# Matched on the path's suffix so gateway prefixes (/openai/v1/..., /api/v1/...) work.
_ROUTES: tuple[tuple[str, RequestType], ...] = (
    ("/chat/completions", RequestType.CHAT),
    ("/completions", RequestType.COMPLETION),
    ("/messages", RequestType.MESSAGES),
    ("/embeddings", RequestType.EMBEDDINGS),
    ("/responses", RequestType.RESPONSES),
)

# Body fields that carry the conversation; every other field is a parameter.
_CONTENT_FIELDS = {
    RequestType.CHAT: ("messages",),
    RequestType.COMPLETION: ("prompt",),
    RequestType.MESSAGES: ("messages", "system"),
    RequestType.EMBEDDINGS: ("input",),
    RequestType.RESPONSES: ("input", "instructions"),
}


# Pieces of the conversation itself (the rest are request fields a rule's ``scan`` opts into).
_CONVERSATION_KINDS = frozenset(
    {PieceKind.MESSAGE, PieceKind.TOOL_ARGS, PieceKind.TOOL_RESULT, PieceKind.ANSWER}
)


class BadRequest(ValueError):
    """The request cannot be understood. The message names the problem; the hook answers 400."""


def request_type_for(path: str) -> RequestType | None:
    path = path.split("?", 1)[0].rstrip("/")
    for suffix, kind in _ROUTES:
        if path.endswith(suffix):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    text: str  # the message's text (text parts joined with newlines); "" when it has none


@dataclass(slots=True)
class PieceSlot:
    """Where a text piece lives in the body: a path of keys and indices."""

    path: tuple[str | int, ...]


@dataclass(slots=True)
class ParsedRequest:
    request_type: RequestType
    api: ApiFormat
    path: str
    body: dict[str, Any]
    model: str | None
    provider: str
    stream: bool
    messages: list[Message]
    params: dict[str, Any]
    # The conversation in canonical form (what the exact key hashes), one item per message.
    canonical: list[Any] = field(default_factory=list)
    pieces: list[TextPiece] = field(default_factory=list)
    slots: list[PieceSlot] = field(default_factory=list)

    @property
    def text_length(self) -> int:
        return sum(len(p.text) for p in self.pieces if p.kind in _CONVERSATION_KINDS)


def normalise_text(text: str) -> str:
    """Unicode NFC and outer whitespace only.

    Case and inner whitespace are kept on purpose: "US" and "us", or two differently indented
    code snippets, can need different answers, and the exact layer must never merge them.
    """
    return unicodedata.normalize("NFC", text).strip()


def _canonical_content(content: Any) -> Any:
    if isinstance(content, str):
        return normalise_text(content)
    if isinstance(content, list):
        parts = [
            {**p, "text": normalise_text(p["text"])}
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
        # A single text part means the same as a plain string.
        if len(parts) == 1 and isinstance(parts[0], dict) and set(parts[0]) <= {"type", "text"}:
            if parts[0].get("type") == "text":
                return parts[0].get("text", "")
        return parts
    return content


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            p["text"]
            for p in content
            if isinstance(p, dict)
            and p.get("type") in ("text", "input_text")
            and isinstance(p.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


class _PieceCollector:
    def __init__(self) -> None:
        self.pieces: list[TextPiece] = []
        self.slots: list[PieceSlot] = []

    def add(
        self, text: Any, path: tuple[str | int, ...], kind: PieceKind, role: str | None
    ) -> None:
        if isinstance(text, str) and text:
            self.pieces.append(TextPiece(len(self.pieces), text, kind, role))
            self.slots.append(PieceSlot(path))

    def content(
        self,
        content: Any,
        path: tuple[str | int, ...],
        role: str | None,
        kind: PieceKind = PieceKind.MESSAGE,
    ) -> None:
        if isinstance(content, str):
            self.add(content, path, kind, role)
        elif isinstance(content, list):
            for i, part in enumerate(content):
                if not isinstance(part, dict):
                    continue
                ptype = part.get("type")
                if ptype in ("text", "input_text"):
                    self.add(part.get("text"), (*path, i, "text"), kind, role)
                elif ptype == "tool_result":
                    self.content(
                        part.get("content"), (*path, i, "content"), role, PieceKind.TOOL_RESULT
                    )


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequest(message)


def _parse_chat(
    body: dict[str, Any], collector: _PieceCollector
) -> tuple[list[Message], list[Any]]:
    raw = body.get("messages")
    _require(isinstance(raw, list) and len(raw) > 0, "'messages' must be a non-empty list")
    assert isinstance(raw, list)
    messages: list[Message] = []
    canonical: list[Any] = []
    for i, m in enumerate(raw):
        _require(isinstance(m, dict), f"messages[{i}] must be an object")
        role = m.get("role")
        _require(isinstance(role, str), f"messages[{i}].role must be a string")
        content = m.get("content")
        _require(
            content is None or isinstance(content, str | list),
            f"messages[{i}].content must be a string, a list of parts or null",
        )
        kind = PieceKind.TOOL_RESULT if role == "tool" else PieceKind.MESSAGE
        collector.content(content, ("messages", i, "content"), role, kind)
        for j, call in enumerate(m.get("tool_calls") or []):
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                collector.add(
                    call["function"].get("arguments"),
                    ("messages", i, "tool_calls", j, "function", "arguments"),
                    PieceKind.TOOL_ARGS,
                    role,
                )
        messages.append(Message(role, _content_text(content)))
        canonical.append({**m, "content": _canonical_content(content)})
    return messages, canonical


def _parse_anthropic(
    body: dict[str, Any], collector: _PieceCollector
) -> tuple[list[Message], list[Any]]:
    messages: list[Message] = []
    canonical: list[Any] = []
    system = body.get("system")
    if system is not None:
        _require(isinstance(system, str | list), "'system' must be a string or a list of blocks")
        collector.content(system, ("system",), "system")
        messages.append(Message("system", _content_text(system)))
        canonical.append({"role": "system", "content": _canonical_content(system)})
    raw = body.get("messages")
    _require(isinstance(raw, list) and len(raw) > 0, "'messages' must be a non-empty list")
    assert isinstance(raw, list)
    for i, m in enumerate(raw):
        _require(isinstance(m, dict), f"messages[{i}] must be an object")
        role = m.get("role")
        _require(role in ("user", "assistant"), f"messages[{i}].role must be user or assistant")
        content = m.get("content")
        _require(
            isinstance(content, str | list),
            f"messages[{i}].content must be a string or a list of blocks",
        )
        collector.content(content, ("messages", i, "content"), role)
        messages.append(Message(str(role), _content_text(content)))
        canonical.append({**m, "content": _canonical_content(content)})
    return messages, canonical


_MAX_FIELD_DEPTH = 16  # nesting walked in metadata and tool schemas (deeper text is not scanned)


def _strings(
    value: Any, path: tuple[str | int, ...], only_key: str | None = None, depth: int = 0
) -> Iterator[tuple[str, tuple[str | int, ...]]]:
    """String leaves of a JSON value with their paths; with ``only_key``, only strings held
    under that key (a tool's ``description``s, at any depth of its schema)."""
    if depth > _MAX_FIELD_DEPTH:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                if only_key is None or key == only_key:
                    yield item, (*path, key)
            else:
                yield from _strings(item, (*path, key), only_key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                if only_key is None:
                    yield item, (*path, i)
            else:
                yield from _strings(item, (*path, i), only_key, depth + 1)


def _request_fields(body: dict[str, Any], api: ApiFormat, collector: _PieceCollector) -> None:
    """Pieces outside the conversation. Rules see them only when their ``scan`` names them."""
    metadata = body.get("metadata")
    for text, path in _strings(metadata, ("metadata",)):
        is_user = api is ApiFormat.ANTHROPIC and path == ("metadata", "user_id")
        collector.add(text, path, PieceKind.USER if is_user else PieceKind.METADATA, None)
    collector.add(body.get("user"), ("user",), PieceKind.USER, None)
    for name in ("tools", "functions"):
        for text, path in _strings(body.get(name), (name,), only_key="description"):
            collector.add(text, path, PieceKind.TOOL_DESCRIPTION, None)


def parse_request(path: str, body: Any, headers: Mapping[str, str]) -> ParsedRequest | None:
    """Parse a request body. None when the path is not an LLM API the sidecar knows."""
    kind = request_type_for(path)
    if kind is None:
        return None
    _require(isinstance(body, dict), "the request body must be a JSON object")
    assert isinstance(body, dict)
    api = ApiFormat.ANTHROPIC if kind is RequestType.MESSAGES else ApiFormat.OPENAI
    model = body.get("model")
    _require(model is None or isinstance(model, str), "'model' must be a string")
    stream = body.get("stream", False)
    _require(isinstance(stream, bool), "'stream' must be a boolean")
    collector = _PieceCollector()
    messages: list[Message] = []
    canonical: list[Any] = []
    if kind is RequestType.CHAT:
        messages, canonical = _parse_chat(body, collector)
    elif kind is RequestType.MESSAGES:
        messages, canonical = _parse_anthropic(body, collector)
    elif kind is RequestType.COMPLETION:
        prompt = body.get("prompt")
        _require(isinstance(prompt, str | list), "'prompt' must be a string or a list")
        assert isinstance(prompt, str | list)
        if isinstance(prompt, str):
            collector.add(prompt, ("prompt",), PieceKind.MESSAGE, "user")
            messages = [Message("user", prompt)]
        else:
            for i, p in enumerate(prompt):
                collector.add(p, ("prompt", i), PieceKind.MESSAGE, "user")
            messages = [Message("user", p) for p in prompt if isinstance(p, str)]
        canonical = [_canonical_content(prompt) if isinstance(prompt, str) else prompt]
    elif kind is RequestType.EMBEDDINGS:
        inp = body.get("input")
        _require(isinstance(inp, str | list), "'input' must be a string or a list")
        assert isinstance(inp, str | list)
        if isinstance(inp, str):
            collector.add(inp, ("input",), PieceKind.MESSAGE, "user")
        else:
            for i, p in enumerate(inp):
                collector.add(p, ("input", i), PieceKind.MESSAGE, "user")
        canonical = [inp]  # embeddings are exact-only: byte-for-byte input
    else:  # responses: guardrails see its text; the cache passes it through
        inp = body.get("input")
        if isinstance(inp, str):
            collector.add(inp, ("input",), PieceKind.MESSAGE, "user")
            messages = [Message("user", inp)]
        collector.add(body.get("instructions"), ("instructions",), PieceKind.MESSAGE, "system")
    _request_fields(body, api, collector)
    content_fields = _CONTENT_FIELDS[kind]
    params = {k: v for k, v in body.items() if k not in content_fields and k != "model"}
    provider = headers.get("x-bf-provider") or _provider_of(model, api)
    return ParsedRequest(
        request_type=kind,
        api=api,
        path=path.split("?", 1)[0],
        body=body,
        model=model,
        provider=provider,
        stream=stream,
        messages=messages,
        params=params,
        canonical=canonical,
        pieces=collector.pieces,
        slots=collector.slots,
    )


def _provider_of(model: str | None, api: ApiFormat) -> str:
    # "openai/gpt-4o" style names (LiteLLM, Bifrost) carry their provider.
    if model and "/" in model:
        return model.split("/", 1)[0]
    return api.value


def rewrite_body(
    body: dict[str, Any], slots: Sequence[PieceSlot], new_texts: Mapping[int, str]
) -> dict[str, Any]:
    """A copy of ``body`` with the given pieces replaced."""
    out = copy.deepcopy(body)
    for index, text in new_texts.items():
        target: Any = out
        path = slots[index].path
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = text
    return out


# ---------------------------------------------------------------- answers


def as_list(value: Any) -> list[Any]:
    """``value`` when it is a list, else empty: answers come from outside and a field of the
    wrong type (``{"choices": 5}``) must read as absent, never raise."""
    return value if isinstance(value, list) else []


def answer_pieces(
    api: ApiFormat, kind: RequestType, answer: Any
) -> tuple[list[TextPiece], list[PieceSlot]]:
    """Text pieces of a non-streamed answer body (parsed JSON). Any JSON value is accepted;
    fields of the wrong type hold no pieces."""
    collector = _PieceCollector()
    if not isinstance(answer, dict):
        return [], []
    if api is ApiFormat.ANTHROPIC:
        for i, block in enumerate(as_list(answer.get("content"))):
            if isinstance(block, dict) and block.get("type") == "text":
                collector.add(
                    block.get("text"), ("content", i, "text"), PieceKind.ANSWER, "assistant"
                )
    else:
        for i, choice in enumerate(as_list(answer.get("choices"))):
            if not isinstance(choice, dict):
                continue
            if kind is RequestType.COMPLETION:
                collector.add(
                    choice.get("text"), ("choices", i, "text"), PieceKind.ANSWER, "assistant"
                )
                continue
            msg = choice.get("message")
            if isinstance(msg, dict):
                collector.add(
                    msg.get("content"),
                    ("choices", i, "message", "content"),
                    PieceKind.ANSWER,
                    "assistant",
                )
                for j, call in enumerate(as_list(msg.get("tool_calls"))):
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        collector.add(
                            call["function"].get("arguments"),
                            ("choices", i, "message", "tool_calls", j, "function", "arguments"),
                            PieceKind.TOOL_ARGS,
                            "assistant",
                        )
    return collector.pieces, collector.slots


def error_body(api: ApiFormat, status: int, message: str, code: str) -> bytes:
    """An error in the client's API format, so its SDK raises a normal API error."""
    if api is ApiFormat.ANTHROPIC:
        etype = "permission_error" if status == 403 else "invalid_request_error"
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})
    return orjson.dumps(
        {"error": {"message": message, "type": "guardrail_error", "param": None, "code": code}}
    )


def sse_error_event(api: ApiFormat, message: str, code: str) -> bytes:
    """A terminal error event for a stream that must end early."""
    if api is ApiFormat.ANTHROPIC:
        payload = orjson.dumps(
            {"type": "error", "error": {"type": "permission_error", "message": message}}
        )
        return b"event: error\ndata: " + payload + b"\n\n"
    payload = orjson.dumps(
        {"error": {"message": message, "type": "guardrail_error", "param": None, "code": code}}
    )
    return b"data: " + payload + b"\n\n"
