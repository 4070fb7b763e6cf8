"""LiteLLM's Generic Guardrail API, mapped onto the sidecar's guardrail rules.

A LiteLLM proxy configured with ``guardrail: generic_guardrail_api`` and ``api_base`` pointing
here POSTs ``{texts, images, tools, structured_messages, request_data, input_type,
litellm_call_id, litellm_trace_id, additional_provider_specific_params}`` to
``/beta/litellm_basic_guardrail_api``. ``input_type: request`` runs the input rules over the
texts, ``response`` the output rules. The answer is ``{"action": "NONE"}``,
``{"action": "BLOCKED", "blocked_reason": ...}`` (rule id and finding types only) or
``{"action": "GUARDRAIL_INTERVENED", "texts": [...]}`` with every text, rewritten ones included.

Rule conditions see: ``model`` (``request_data.model`` or the ``model`` extra param),
``provider`` = ``litellm``, ``path`` = this endpoint, ``request_type`` (the ``request_type``
extra param, default ``chat``), ``headers`` (of LiteLLM's call to us, so ``headers:`` in the
LiteLLM guardrail config can steer rules), ``params`` (the additional provider-specific params)
and ``messages`` (from ``structured_messages`` when LiteLLM sends them).

Per-request state (reversible redaction placeholders) is kept between the request and the
response call of the same ``litellm_call_id`` in a small in-memory LRU.
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
from guardrails.engine import GuardrailEngine, RuleEnv

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
_REQUEST_TYPES = frozenset({"chat", "completion", "messages", "embeddings", "responses"})
_INPUT_TYPES = {"request": Stage.INPUT, "response": Stage.OUTPUT}


class _BadRequest(ValueError):
    pass


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


class _Endpoint:
    def __init__(self, engine: GuardrailEngine, state_entries: int) -> None:
        self._engine = engine
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._state_entries = state_entries

    def _state(self, call_id: str | None, stage: Stage) -> dict[str, Any]:
        if call_id is None:
            return {}
        if stage is Stage.OUTPUT:
            return self._states.pop(call_id, None) or {}
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
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _BadRequest("'texts' must be a list of strings")
        if body.get("input_type") not in _INPUT_TYPES:
            raise _BadRequest("'input_type' must be 'request' or 'response'")
        _optional(body, "images", list, "a list")
        _optional(body, "tools", list, "a list")
        _optional(body, "structured_messages", list, "a list of messages")
        _optional(body, "request_data", dict, "an object")
        _optional(body, "additional_provider_specific_params", dict, "an object")
        _optional(body, "litellm_call_id", str, "a string")
        return body

    async def handle(self, request: Request) -> Response:
        try:
            body = self._parse(await request.body())
        except _BadRequest as exc:
            return _json({"error": {"message": str(exc), "type": "invalid_request"}}, 400)
        stage = _INPUT_TYPES[body["input_type"]]
        texts: list[str] = body["texts"]
        if not texts or not self._engine.has_rules(stage):
            return _json({"action": "NONE"})
        params: dict[str, Any] = body.get("additional_provider_specific_params") or {}
        request_data: dict[str, Any] = body.get("request_data") or {}
        request_type = params.get("request_type", "chat")
        if request_type not in _REQUEST_TYPES:
            request_type = "chat"
        model = request_data.get("model") or params.get("model") or ""
        headers = {k.lower(): v for k, v in request.headers.items()}
        messages = [
            {"role": str(m.get("role", "")), "content": _message_text(m.get("content"))}
            for m in body.get("structured_messages") or []
            if isinstance(m, Mapping)
        ]
        env = RuleEnv(
            model=str(model),
            provider="litellm",
            path=GUARDRAIL_PATH,
            request_type=request_type,
            headers=headers,
            params=params,
            messages=messages,
        )
        call_id = body.get("litellm_call_id")
        ctx = CheckContext(
            stage=stage,
            request_id=call_id or uuid.uuid4().hex,
            request_type=request_type,
            model=env.model or None,
            headers=headers,
            request_state=self._state(call_id, stage),
        )
        kind = PieceKind.MESSAGE if stage is Stage.INPUT else PieceKind.ANSWER
        pieces = [TextPiece(i, text, kind) for i, text in enumerate(texts)]
        result = await self._engine.run_stage(stage, pieces, env, ctx)
        if result.blocked is not None:
            return _json({"action": "BLOCKED", "blocked_reason": result.blocked.message})
        if result.rewritten:
            new_texts = [result.rewritten.get(i, text) for i, text in enumerate(texts)]
            return _json({"action": "GUARDRAIL_INTERVENED", "texts": new_texts})
        return _json({"action": "NONE"})


def litellm_guardrail_routes(engine: GuardrailEngine, *, state_entries: int = 1024) -> list[Route]:
    """Starlette routes serving LiteLLM's Generic Guardrail API on ``engine``'s rules."""
    endpoint = _Endpoint(engine, state_entries)
    return [Route(GUARDRAIL_PATH, endpoint.handle, methods=["POST"])]
