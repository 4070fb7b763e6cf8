"""The HTTP API's typed envelopes: request models the hooks validate against (strict: no
coercion of ``"200"`` to 200), reply models for the OpenAPI document, and the translation of a
validation error into the one-line 400 message that names the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from sidecar.pipeline import HookError


class _Envelope(BaseModel):
    # Unknown keys are ignored (a proxy may send more than we read); types are not coerced.
    model_config = ConfigDict(strict=True, extra="ignore")


class RequestHookEnvelope(_Envelope):
    """``POST /v1/hooks/request``: the client's request as the proxy received it."""

    method: str = Field(description="HTTP method of the client's request")
    path: str = Field(description="path of the client's request, e.g. /v1/chat/completions")
    request_id: str | None = Field(
        None,
        min_length=1,
        pattern=r"\S",
        description="the proxy's id for the request; generated when absent",
    )
    headers: dict[str, str] | None = Field(
        None, description="request headers (x-bf-cache-* steer the cache)"
    )
    body: Any = Field(None, description="the request's JSON body; required for POST")


def _integral(value: Any) -> Any:
    """JSON has one number type: 200.0 is the integer 200 (JSON Schema agrees)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ResponseHookEnvelope(_Envelope):
    """``POST /v1/hooks/response``: the provider's answer to a request the hook saw."""

    request_id: str = Field(description="the request_id the request hook returned")
    request_secret: str = Field(
        description="the request_secret the request hook returned with that id"
    )
    status: Annotated[int, BeforeValidator(_integral)] = Field(
        ge=100, le=599, description="the provider's HTTP status"
    )
    headers: dict[str, str] | None = Field(None, description="the provider's response headers")
    body: Any = Field(
        description="the JSON answer, or the whole text of a streamed (SSE) answer as a string"
    )


class CacheInfoModel(BaseModel):
    status: Literal["hit-exact", "hit-semantic", "miss", "bypass"]
    reason: str
    hit_type: str | None = None
    similarity: float | None = None
    entry_id: str | None = None
    not_stored: str | None = Field(None, description="why the answer was not stored")


class AnswerModel(BaseModel):
    status: int
    headers: dict[str, str]
    body: Any = Field(description="a JSON value for JSON answers, else text")


class RequestHookReply(BaseModel):
    request_id: str
    request_secret: str | None = Field(
        None, description="send it back with the response hook (present on continue)"
    )
    action: Literal["continue", "respond"]
    cache: CacheInfoModel
    body: Any = Field(None, description="the rewritten request body, when guardrails changed it")
    response: AnswerModel | None = Field(None, description="the answer, when action is respond")


class ResponseHookReply(BaseModel):
    request_id: str
    action: Literal["continue", "respond"]
    headers: dict[str, str]
    cache: CacheInfoModel
    stored_entry_id: str | None = None
    body: Any = Field(None, description="the rewritten answer, when guardrails changed it")
    response: AnswerModel | None = Field(None, description="a replacement answer (a block)")


class ErrorDetail(BaseModel):
    kind: str
    message: str


class ErrorReply(BaseModel):
    error: ErrorDetail


class HealthReply(BaseModel):
    status: Literal["ok"]


class ReadinessReply(BaseModel):
    model_config = ConfigDict(extra="allow")
    ready: bool


class EntryDeleted(BaseModel):
    deleted: str


class PartitionDeleted(BaseModel):
    partition: str
    deleted: int


class FeedbackEnvelope(BaseModel):
    """``POST /v1/cache/feedback``: a served semantic hit was wrong (or right). Give the
    ``request_id`` the answer carried (header ``x-bf-cache-request-id``), or the ``entry_id``
    (header ``x-bf-cache-entry-id``) and the question it was wrong for."""

    model_config = ConfigDict(strict=True, extra="forbid")
    request_id: str | None = Field(None, min_length=1, max_length=256)
    entry_id: str | None = Field(None, min_length=1, max_length=256)
    question: str | None = Field(None, min_length=1, max_length=65536)
    correct: bool


class FeedbackReply(BaseModel):
    recorded: bool
    partition_hash: str
    entry_id: str
    similarity: float


class PartitionStats(BaseModel):
    model_config = ConfigDict(extra="allow")
    partition_hash: str
    lookups: int
    exact_hits: int
    semantic_hits: int
    explored: int
    observed_wrong: int
    estimated_wrong_rate: float | None
    wrong_rate_upper_bound: float | None
    learned_threshold: float | None


class StatsReply(BaseModel):
    partitions: dict[str, PartitionStats]


_WHAT = {
    "method": "a string",
    "path": "a string",
    "request_id": "a string",
    "status": "an integer HTTP status",
    "headers": "an object of header names to string values",
    "entry_id": "a non-empty string",
    "question": "a non-empty string",
    "correct": "true or false",
}


def validation_error(exc: ValidationError) -> HookError:
    """The first problem of a failed envelope as a 400 naming the field."""
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    if not loc:
        return HookError(400, "bad_request", "hook payload must be a JSON object")
    name = str(loc[0])
    if error["type"] == "extra_forbidden":
        return HookError(400, "unknown_field", f"unknown field {name!r}")
    if error["type"] == "missing":
        return HookError(400, "missing_field", f"missing field {name!r}")
    if name == "headers" and len(loc) > 1:
        return HookError(400, "wrong_type", f"header {str(loc[1])!r} must have a string value")
    if name == "request_id" and error["type"] in ("string_too_short", "string_pattern_mismatch"):
        return HookError(400, "wrong_type", "field 'request_id' must not be empty")
    if name == "status" and error["type"] in ("greater_than_equal", "less_than_equal"):
        return HookError(
            400, "wrong_type", f"field 'status' must be 100..599, got {error['input']}"
        )
    return HookError(400, "wrong_type", f"field {name!r} must be {_WHAT.get(name, 'valid')}")
