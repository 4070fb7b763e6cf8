"""The adaptive cache's admin calls (docs/adaptive.md): ``POST /v1/cache/feedback`` and
``GET /v1/cache/stats``. Routed, authenticated and error-mapped by sidecar/transports/http.py."""

from __future__ import annotations

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from sidecar.context import HookError
from sidecar.metrics import partition_hash
from sidecar.services import Sidecar
from sidecar.transports.http_models import FeedbackEnvelope, validation_error


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_APPEND_NEWLINE)


_MAX_FEEDBACK_BYTES = 256 * 1024  # a question of 32,768 characters fits, 4 bytes each


async def _read_small(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_FEEDBACK_BYTES:
            raise HookError(413, "body_too_large", f"feedback is over {_MAX_FEEDBACK_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def cache_feedback(request: Request, sidecar: Sidecar) -> Response:
    """A served semantic hit reported wrong (or right): see docs/adaptive.md."""
    raw = await _read_small(request)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HookError(400, "malformed_json", f"feedback is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HookError(400, "bad_request", "feedback must be a JSON object")
    try:
        report = FeedbackEnvelope.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    by_request = report.request_id is not None
    if by_request == (report.entry_id is not None or report.question is not None):
        raise HookError(
            400,
            "bad_request",
            "give either 'request_id', or 'entry_id' and 'question' (not both)",
        )
    if not by_request and (report.entry_id is None or report.question is None):
        missing = "question" if report.question is None else "entry_id"
        raise HookError(400, "missing_field", f"missing field {missing!r}")
    cache = sidecar.cache
    if cache is None:
        raise HookError(409, "cache_disabled", "the cache is disabled")
    if cache.adaptive is None:
        raise HookError(
            409, "adaptive_off", "feedback needs cache.target_wrong_rate (docs/adaptive.md)"
        )
    if report.request_id is not None:
        ticket = await cache.adaptive.take_served(report.request_id)
        if ticket is None:
            raise HookError(
                404,
                "not_found",
                "no semantic hit served under this request_id (unknown, expired, "
                "already reported, or not a semantic hit)",
            )
    else:
        assert report.entry_id is not None and report.question is not None
        entry = await cache.exact.get(report.entry_id)
        if entry is None:
            raise HookError(404, "not_found", f"no cache entry {report.entry_id!r}")
        ticket = await cache.adaptive.ticket_for(entry, report.question)
    await cache.adaptive.report(ticket, report.correct)
    return JSONResponse(
        {
            "recorded": not report.correct,
            "partition_hash": partition_hash(ticket.partition),
            "entry_id": ticket.entry_id,
            "similarity": round(ticket.similarity, 6),
        }
    )


async def cache_stats(request: Request, sidecar: Sidecar) -> Response:
    adaptive = sidecar.cache.adaptive if sidecar.cache is not None else None
    partitions = await adaptive.stats() if adaptive is not None else {}
    return JSONResponse({"partitions": partitions})
