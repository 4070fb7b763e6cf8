"""What flows through the pipeline (``sidecar.pipeline``) and what its adapters hand it: the
request as a transport received it, the per-request context, the outcomes the transports
translate back, the cache headers, and the two small interfaces the pipeline calls
(guardrails, observers). Kept apart from the pipeline's logic so each stays one thing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from guardrails.base import Stage, TextPiece
from sidecar.cache.keys import CachePlan
from sidecar.cache.layer import CacheStatus, Lookup
from sidecar.formats import ParsedRequest
from sidecar.stages import StageLog
from sidecar.streaming import TextGuard

STATUS_HEADER = "x-bf-cache-status"
SIMILARITY_HEADER = "x-bf-cache-similarity"
ENTRY_HEADER = "x-bf-cache-entry-id"
#: on every answer served or passed: the id to report a wrong hit with (POST /v1/cache/feedback)
REQUEST_ID_HEADER = "x-bf-cache-request-id"


def header_safe_id(request_id: str) -> str | None:
    """The request id when it can travel as a header value (visible ASCII, at most 256
    characters); a proxy-chosen id that cannot is only in the JSON replies."""
    # [\x21-\x7e]{1,256} without a regular expression (once per request): printable ASCII
    # is \x20-\x7e, so the space is the one character to rule out besides
    if 0 < len(request_id) <= 256 and request_id.isascii() and request_id.isprintable():
        return None if " " in request_id else request_id
    return None


def new_request_id() -> str:
    """An unguessable id (128 random bits, 22 URL-safe characters) for a request whose proxy
    sent none: knowing one request's id tells nothing about another's."""
    return secrets.token_urlsafe(16)


class HookError(Exception):
    """Bad input from the proxy. ``status`` is the HTTP status the hook answers with."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


@dataclass(slots=True)
class HookRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased by the transport
    body: Any  # parsed JSON (HTTP hook) or raw bytes (ext_proc)
    request_id: str | None = None
    #: time.monotonic() when the transport received the request (None: now)
    received_at: float | None = None


@dataclass(slots=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class CacheInfo:
    status: CacheStatus
    reason: str = ""
    hit_type: str | None = None
    similarity: float | None = None
    entry_id: str | None = None
    not_stored: str | None = None  # after the answer: why it was not stored (a fixed phrase)
    request_id: str | None = None

    def headers(self) -> dict[str, str]:
        out = {STATUS_HEADER: self.status.value}
        if self.request_id is not None:
            out[REQUEST_ID_HEADER] = self.request_id
        if self.similarity is not None and self.status in (
            CacheStatus.HIT_EXACT,
            CacheStatus.HIT_SEMANTIC,
        ):
            out[SIMILARITY_HEADER] = f"{self.similarity:.4f}"
        if self.entry_id is not None:
            out[ENTRY_HEADER] = self.entry_id
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value, "reason": self.reason}
        if self.hit_type is not None:
            out["hit_type"] = self.hit_type
        if self.similarity is not None:
            out["similarity"] = round(self.similarity, 6)
        if self.entry_id is not None:
            out["entry_id"] = self.entry_id
        if self.not_stored is not None:
            out["not_stored"] = self.not_stored
        return out


@dataclass(slots=True)
class StageVerdict:
    """What the guardrails decided for one stage, in the pipeline's terms."""

    blocked: bool = False
    status: int = 403
    message: str = ""
    code: str = ""
    rewritten: dict[int, str] = field(default_factory=dict)
    redacted: bool = False  # some text was redacted (not merely restored)
    flagged: bool = False  # some check found something (even if the rule only detected it)


class Guardrails(Protocol):
    """The pipeline's view of the rule engine (adapted in ``sidecar.guard``)."""

    def active(self, stage: Stage, ctx: RequestContext) -> bool: ...

    async def check(
        self, stage: Stage, pieces: Sequence[TextPiece], ctx: RequestContext
    ) -> StageVerdict: ...

    def stream_guards(self, ctx: RequestContext) -> Callable[[str], TextGuard] | None: ...


@dataclass(slots=True)
class RequestContext:
    request_id: str
    transport: str
    method: str
    path: str
    headers: dict[str, str]
    parsed: ParsedRequest | None = None
    plan: CachePlan | None = None
    lookup: Lookup | None = None
    cache: CacheInfo = field(default_factory=lambda: CacheInfo(CacheStatus.BYPASS))
    blocked: bool = False
    input_redacted: bool = False
    trace: list[str] = field(default_factory=list)
    # Per-request state for checks (reversible PII vault). Never logged or cached; sealed with
    # AES-GCM when it waits in Redis for the response hook (sidecar/pending_redis.py).
    guard_state: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    answer_received: float | None = None  # time.monotonic() when the answer reached us
    # Stage timings and rules fired; only when an observer (access log, traces) reads them.
    stages: StageLog | None = None
    # The sidecar's own time in the request hook (what it added before the answer or the
    # upstream call), and the rules that did something: (rule id, outcome). Kept for the
    # dashboard's recent decisions, which need no stage timings.
    hook_seconds: float = 0.0
    fired: list[tuple[str, str]] | None = None

    def note(self, message: str) -> None:
        self.trace.append(message)


@dataclass(slots=True)
class RequestOutcome:
    action: str  # "continue" | "respond"
    cache: CacheInfo
    body: dict[str, Any] | None = None  # rewritten request body, when it changed
    response: HttpAnswer | None = None
    #: False when the pipeline has nothing to do with the answer (not stored, no output
    #: rules): a transport may let it pass without handing it back (ext_proc ends its stream)
    answer_needed: bool = True


@dataclass(slots=True)
class ResponseOutcome:
    action: str  # "continue" | "respond"
    headers: dict[str, str]  # to add to the answer
    body: bytes | None = None  # rewritten answer, when it changed
    response: HttpAnswer | None = None
    stored_entry_id: str | None = None


class RequestObserver(Protocol):
    """Sees each request once it is over (its answer served from cache, blocked, or its
    upstream answer handled): the access log, the trace exporter, the dashboard's recent
    decisions. ``needs_stages``: the observer reads ``ctx.stages`` (per-stage timings), so
    the pipeline records them for every request while it is installed."""

    needs_stages: bool

    def finish(self, ctx: RequestContext) -> None: ...

    def close(self) -> None: ...
