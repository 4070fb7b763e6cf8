"""LiteLLM's Generic Guardrail API, mapped onto the sidecar's guardrail rules.

A LiteLLM proxy configured with ``guardrail: generic_guardrail_api`` and ``api_base`` pointing
here POSTs, per LLM call, once with ``input_type: request`` (the input rules run) and once with
``input_type: response`` (the output rules run) to ``/beta/litellm_basic_guardrail_api``. The
body (LiteLLM 1.108.7) carries ``texts``, ``tool_calls`` (assistant tool calls, kept apart from
``texts``), ``structured_messages``, ``model``, ``request_data`` (only the caller's key, user
and team ids), ``request_headers`` (the client's headers; values LiteLLM does not allow through
read ``[present]``), ``litellm_call_id`` (the same on both calls) and
``additional_provider_specific_params``. The answer is ``{"action": "NONE"}``,
``{"action": "BLOCKED", "blocked_reason": ...}`` (rule id and finding types only) or
``{"action": "GUARDRAIL_INTERVENED", "texts": [...]}`` with every text, rewritten ones included.

Rule conditions see: ``model`` (the body's ``model``, else ``request_data.model``, else the
``model`` extra param), ``provider`` = ``litellm``, ``path`` = this endpoint, ``request_type``
(the ``request_type`` extra param, default ``chat``), ``headers`` (the client's headers as
LiteLLM forwards them, overlaid by the ``headers:`` of LiteLLM's guardrail config; the
credential headers of LiteLLM's call are left out), ``params`` (the additional
provider-specific params) and ``messages`` (from ``structured_messages``).

Tool-call arguments are checked like message text. The protocol has no field to hand rewritten
tool calls back, so a redaction inside tool-call arguments blocks the call instead; a block is
always answered by LiteLLM with status 400 (the protocol carries no status).

Per-request state (reversible redaction placeholders) is kept from the request call for every
response call of the same ``litellm_call_id`` (a stream can bring several) in an in-memory LRU
bounded by count.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guardrails.base import CheckContext, PieceKind, Stage, TextPiece
from guardrails.engine import GuardrailEngine, Outcome, RuleEnv

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
_REQUEST_TYPES = frozenset({"chat", "completion", "messages", "embeddings", "responses"})
_INPUT_TYPES = {"request": Stage.INPUT, "response": Stage.OUTPUT}
#: LiteLLM sends the prompt twice (``texts`` and ``structured_messages``), so its payload for a
#: request of ``max_body_bytes`` is about twice that; the slack covers ids and client headers.
PAYLOAD_FACTOR = 2
PAYLOAD_SLACK = 64 * 1024
#: headers of LiteLLM's own call that say nothing about the client's request: the client's
#: values (from ``request_headers``) are kept for these; credentials never reach rules
_TRANSPORT_HEADERS = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "user-agent",
        "transfer-encoding",
        "authorization",
        "x-api-key",
    }
)


class _BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _json(payload: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _optional(body: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise _BadRequest(f"'{key}' must be {what}")
    return value


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts / Anthropic blocks
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _tool_arguments(tool_calls: list[Any]) -> list[str]:
    """The arguments string of each function tool call (OpenAI shape, as LiteLLM sends it)."""
    out: list[str] = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        arguments = function.get("arguments") if isinstance(function, Mapping) else None
        if isinstance(arguments, str):
            out.append(arguments)
        elif arguments is not None:  # some providers hand arguments over as an object
            out.append(orjson.dumps(arguments).decode())
    return out


def _rule_headers(request: Request, body: Mapping[str, Any]) -> dict[str, str]:
    client = body.get("request_headers") or {}
    headers = {str(k).lower(): str(v) for k, v in client.items()}
    # LiteLLM's guardrail `headers:` come from the operator's config and win over a client's.
    for name, value in request.headers.items():
        if name.lower() not in _TRANSPORT_HEADERS:
            headers[name.lower()] = value
    return headers


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or a 413 as soon as it passes ``limit`` bytes (nothing more is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadRequest(
            f"guardrail payload is {declared} bytes, over the limit of {limit} "
            f"({PAYLOAD_FACTOR} x server.max_body_bytes plus {PAYLOAD_SLACK} bytes)",
            413,
            "body_too_large",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BadRequest(
                f"guardrail payload is over the limit of {limit} bytes "
                f"({PAYLOAD_FACTOR} x server.max_body_bytes plus {PAYLOAD_SLACK} bytes)",
                413,
                "body_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


class _Endpoint:
    def __init__(self, engine: GuardrailEngine, state_entries: int, max_payload: int) -> None:
        self._engine = engine
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._state_entries = state_entries
        self._max_payload = max_payload

    def _state(self, call_id: str | None, stage: Stage) -> dict[str, Any]:
        if call_id is None:
            return {}
        if stage is Stage.OUTPUT:
            # Kept, not popped: a stream may bring several response calls for one call id
            # (LiteLLM's sampled scans); the LRU bound frees it.
            state = self._states.get(call_id)
            if state is None:
                return {}
            self._states.move_to_end(call_id)
            return state
        state = self._states.setdefault(call_id, {})
        self._states.move_to_end(call_id)
        while len(self._states) > self._state_entries:
            self._states.popitem(last=False)
        return state

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("body must be a JSON object")
        texts = body.get("texts")
        if texts is None:
            body["texts"] = texts = []  # LiteLLM may send only tool calls
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _BadRequest("'texts' must be a list of strings")
        if body.get("input_type") not in _INPUT_TYPES:
            raise _BadRequest("'input_type' must be 'request' or 'response'")
        _optional(body, "images", list, "a list")
        _optional(body, "tools", list, "a list")
        _optional(body, "tool_calls", list, "a list of tool calls")
        _optional(body, "structured_messages", list, "a list of messages")
        _optional(body, "request_data", dict, "an object")
        _optional(body, "request_headers", dict, "an object of header names to values")
        _optional(body, "additional_provider_specific_params", dict, "an object")
        _optional(body, "litellm_call_id", str, "a string")
        _optional(body, "model", str, "a string")
        return body

    def _env(self, request: Request, body: Mapping[str, Any]) -> RuleEnv:
        params: dict[str, Any] = body.get("additional_provider_specific_params") or {}
        request_data: dict[str, Any] = body.get("request_data") or {}
        request_type = params.get("request_type", "chat")
        if request_type not in _REQUEST_TYPES:
            request_type = "chat"
        model = body.get("model") or request_data.get("model") or params.get("model") or ""
        messages = [
            {"role": str(m.get("role", "")), "content": _message_text(m.get("content"))}
            for m in body.get("structured_messages") or []
            if isinstance(m, Mapping)
        ]
        return RuleEnv(
            model=str(model),
            provider="litellm",
            path=GUARDRAIL_PATH,
            request_type=request_type,
            headers=_rule_headers(request, body),
            params=params,
            messages=messages,
        )

    async def handle(self, request: Request) -> Response:
        try:
            body = self._parse(await _read_limited(request, self._max_payload))
        except _BadRequest as exc:
            error = {"message": str(exc), "type": exc.kind}
            return _json({"error": error}, exc.status)
        stage = _INPUT_TYPES[body["input_type"]]
        texts: list[str] = body["texts"]
        arguments = _tool_arguments(body.get("tool_calls") or [])
        if not (texts or arguments) or not self._engine.has_rules(stage):
            return _json({"action": "NONE"})
        env = self._env(request, body)
        call_id = body.get("litellm_call_id")
        ctx = CheckContext(
            stage=stage,
            request_id=call_id or uuid.uuid4().hex,
            request_type=env.request_type,
            model=env.model or None,
            headers=dict(env.headers),
            request_state=self._state(call_id, stage),
        )
        kind = PieceKind.MESSAGE if stage is Stage.INPUT else PieceKind.ANSWER
        pieces = [TextPiece(i, text, kind) for i, text in enumerate(texts)]
        pieces += [
            TextPiece(len(texts) + i, args, PieceKind.TOOL_ARGS, "assistant")
            for i, args in enumerate(arguments)
        ]
        result = await self._engine.run_stage(stage, pieces, env, ctx)
        if result.blocked is not None:
            return _json({"action": "BLOCKED", "blocked_reason": result.blocked.message})
        if result.redacted and any(i >= len(texts) for i in result.rewritten):
            changed = (Outcome.REDACTED, Outcome.REWRITTEN)
            rules = sorted({d.rule_id for d in result.decisions if d.outcome in changed})
            reason = (
                f"guardrail rule(s) {', '.join(rules) or 'unknown'} redacted tool-call "
                "arguments, which LiteLLM's Generic Guardrail API cannot rewrite: blocked"
            )
            return _json({"action": "BLOCKED", "blocked_reason": reason})
        rewritten = {i: t for i, t in result.rewritten.items() if i < len(texts)}
        if rewritten:
            new_texts = [rewritten.get(i, text) for i, text in enumerate(texts)]
            return _json({"action": "GUARDRAIL_INTERVENED", "texts": new_texts})
        return _json({"action": "NONE"})


def litellm_guardrail_routes(
    engine: GuardrailEngine, *, state_entries: int = 1024, max_body_bytes: int = 4 * 1024 * 1024
) -> list[Route]:
    """Starlette routes serving LiteLLM's Generic Guardrail API on ``engine``'s rules.

    A payload over ``PAYLOAD_FACTOR * max_body_bytes + PAYLOAD_SLACK`` bytes gets a 413 JSON
    error as soon as that many bytes arrived."""
    max_payload = PAYLOAD_FACTOR * max_body_bytes + PAYLOAD_SLACK
    endpoint = _Endpoint(engine, state_entries, max_payload)
    return [Route(GUARDRAIL_PATH, endpoint.handle, methods=["POST"])]
