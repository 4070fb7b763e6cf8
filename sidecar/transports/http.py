"""The HTTP hook: ``POST /v1/hooks/request`` and ``/v1/hooks/response``, plus admin routes.

This module only translates JSON envelopes to pipeline calls and back; all decisions are the
pipeline's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sidecar.auth import load_tokens
from sidecar.cache.stores.base import StoreUnavailable
from sidecar.pipeline import HookError, HookRequest, HttpAnswer
from sidecar.services import Sidecar
from sidecar.transports.http_auth import BearerAuth

log = logging.getLogger("sidecar.http")

TRANSPORT = "http"
# Room for the envelope around a body of max_body_bytes (headers, path, JSON quoting).
_ENVELOPE_SLACK = 64 * 1024


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status)


async def _read_envelope(request: Request, sidecar: Sidecar) -> dict[str, Any]:
    limit = sidecar.config.server.max_body_bytes + _ENVELOPE_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HookError(
            413,
            "body_too_large",
            f"hook payload is {declared} bytes, over the limit of {limit} "
            "(server.max_body_bytes plus envelope)",
        )
    # Read chunk by chunk and stop at the limit: a chunked upload (no content-length) must not
    # be buffered whole before it is refused.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HookError(
                413,
                "body_too_large",
                f"hook payload is over the limit of {limit} bytes "
                "(server.max_body_bytes plus envelope); reading stopped there",
            )
        chunks.append(chunk)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HookError(400, "malformed_json", f"hook payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HookError(400, "bad_request", "hook payload must be a JSON object")
    return data


def _field(
    data: dict[str, Any],
    name: str,
    types: type | tuple[type, ...],
    what: str,
    required: bool = True,
) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise HookError(400, "missing_field", f"missing field {name!r}")
        return None
    value = data[name]
    if (
        not isinstance(value, types)
        or isinstance(value, bool)
        and bool not in (types if isinstance(types, tuple) else (types,))
    ):
        raise HookError(400, "wrong_type", f"field {name!r} must be {what}")
    return value


def _headers(data: dict[str, Any]) -> dict[str, str]:
    raw = (
        _field(data, "headers", dict, "an object of header names to string values", required=False)
        or {}
    )
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise HookError(400, "wrong_type", f"header {name!r} must have a string value")
        out[name.lower()] = value
    return out


def _answer_json(answer: HttpAnswer) -> dict[str, Any]:
    body: Any
    ctype = answer.headers.get("content-type", "")
    if "json" in ctype:
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            body = answer.body.decode("utf-8", "replace")
    else:
        body = answer.body.decode("utf-8", "replace")
    return {"status": answer.status, "headers": answer.headers, "body": body}


#: Exceptions the core raises and the HTTP answer each one gets: (status, error kind, message
#: prefix). The one place that maps errors to statuses; ``HookError`` carries its own status.
ERROR_ANSWERS: dict[type[Exception], tuple[int, str, str]] = {
    StoreUnavailable: (503, "backend_unavailable", "cache backend unavailable: "),
}


def error_answer(exc: Exception) -> tuple[int, str, str] | None:
    """(status, kind, message) for an error the hook answers with, None for a bug."""
    if isinstance(exc, HookError):
        return exc.status, exc.kind, exc.message
    for cls in type(exc).__mro__:
        if cls in ERROR_ANSWERS:
            status, kind, prefix = ERROR_ANSWERS[cls]
            return status, kind, f"{prefix}{exc}"
    return None


def _guarded(
    handler: Callable[[Request, Sidecar], Awaitable[Response]], sidecar: Sidecar
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if not sidecar.ready or sidecar.pipeline is None:
            return _error(503, "not_ready", "the sidecar is starting or stopping")
        try:
            return await handler(request, sidecar)
        except Exception as exc:
            answer = error_answer(exc)
            if answer is None:
                raise
            status, kind, message = answer
            sidecar.metrics.hook_errors.labels(TRANSPORT, kind).inc()
            response = _error(status, kind, message)
            if status == 413:
                # The rest of the upload is unread: close instead of draining it.
                response.headers["connection"] = "close"
            return response

    return endpoint


async def request_hook(request: Request, sidecar: Sidecar) -> Response:
    data = await _read_envelope(request, sidecar)
    method = _field(data, "method", str, "a string")
    path = _field(data, "path", str, "a string")
    request_id = _field(data, "request_id", str, "a string", required=False)
    if request_id is not None and not request_id.strip():
        raise HookError(400, "wrong_type", "field 'request_id' must not be empty")
    headers = _headers(data)
    body = data.get("body")
    if method.upper() == "POST" and body is None:
        raise HookError(400, "missing_field", "missing field 'body'")
    hook = HookRequest(method=method, path=path, headers=headers, body=body, request_id=request_id)
    assert sidecar.pipeline is not None
    ctx, outcome = await sidecar.pipeline.on_request(hook, TRANSPORT)
    if outcome.action == "continue":
        sidecar.pending.put(ctx)
    reply: dict[str, Any] = {
        "request_id": ctx.request_id,
        "action": outcome.action,
        "cache": outcome.cache.to_json(),
    }
    if outcome.body is not None:
        reply["body"] = outcome.body
    if outcome.response is not None:
        reply["response"] = _answer_json(outcome.response)
    return JSONResponse(reply)


async def response_hook(request: Request, sidecar: Sidecar) -> Response:
    data = await _read_envelope(request, sidecar)
    request_id = _field(data, "request_id", str, "a string")
    status = _field(data, "status", int, "an integer HTTP status")
    if not 100 <= status <= 599:
        raise HookError(400, "wrong_type", f"field 'status' must be 100..599, got {status}")
    headers = _headers(data)
    if "body" not in data:
        raise HookError(400, "missing_field", "missing field 'body'")
    body = data["body"]
    raw = body.encode("utf-8") if isinstance(body, str) else orjson.dumps(body)
    ctx = sidecar.pending.pop(request_id)
    if ctx is None:
        raise HookError(
            404,
            "unknown_request_id",
            f"unknown or expired request_id {request_id!r}: call the request hook "
            "first (contexts are kept for server.pending_ttl)",
        )
    assert sidecar.pipeline is not None
    outcome = await sidecar.pipeline.on_response(ctx, status, headers, raw)
    reply: dict[str, Any] = {
        "request_id": request_id,
        "action": outcome.action,
        "headers": outcome.headers,
        "cache": ctx.cache.to_json(),
    }
    if outcome.stored_entry_id is not None:
        reply["stored_entry_id"] = outcome.stored_entry_id
    if outcome.body is not None:
        text = outcome.body.decode("utf-8")
        reply["body"] = text if isinstance(body, str) else orjson.loads(outcome.body)
    if outcome.response is not None:
        reply["response"] = _answer_json(outcome.response)
    return JSONResponse(reply)


async def delete_entry(request: Request, sidecar: Sidecar) -> Response:
    entry_id = request.path_params["entry_id"]
    if sidecar.cache is None:
        raise HookError(409, "cache_disabled", "the cache is disabled")
    found = await sidecar.cache.delete(entry_id)
    if not found:
        raise HookError(404, "not_found", f"no cache entry {entry_id!r}")
    return JSONResponse({"deleted": entry_id})


async def delete_partition(request: Request, sidecar: Sidecar) -> Response:
    key = request.path_params["cache_key"]
    if sidecar.cache is None:
        raise HookError(409, "cache_disabled", "the cache is disabled")
    count = await sidecar.cache.delete_partition(key)
    return JSONResponse({"partition": key, "deleted": count})


#: which routes a listener serves: both on one port, or hooks and admin API on their own ports
Listener = Literal["all", "hooks", "admin"]


def build_routes(sidecar: Sidecar, listener: Listener = "all") -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok, detail = await sidecar.readiness()
        return JSONResponse(detail, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(
            sidecar.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    routes: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET"])]
    if listener in ("all", "admin"):
        routes += [
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route(
                "/v1/cache/entries/{entry_id:str}",
                _guarded(delete_entry, sidecar),
                methods=["DELETE"],
            ),
            Route(
                "/v1/cache/partitions/{cache_key:path}",
                _guarded(delete_partition, sidecar),
                methods=["DELETE"],
            ),
        ]
    if listener in ("all", "hooks"):
        routes += [
            Route("/v1/hooks/request", _guarded(request_hook, sidecar), methods=["POST"]),
            Route("/v1/hooks/response", _guarded(response_hook, sidecar), methods=["POST"]),
        ]
        if sidecar.engine is not None:
            from sidecar.transports.litellm import litellm_guardrail_routes

            routes += litellm_guardrail_routes(sidecar.engine)
    return routes


def create_app(
    sidecar: Sidecar,
    extra_routes: list[BaseRoute] | None = None,
    manage_lifecycle: bool = True,
    listener: Listener = "all",
) -> Starlette:
    """The Starlette app. With ``manage_lifecycle`` the app starts and closes the sidecar.
    With ``server.auth_token_env`` set, every route but ``/healthz`` needs the bearer token
    (raises AuthConfigError when the variable is missing)."""
    import contextlib
    from collections.abc import AsyncIterator

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_lifecycle:
            await sidecar.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await sidecar.close()

    routes = build_routes(sidecar, listener) + list(extra_routes or [])
    middleware: list[Middleware] = []
    tokens = load_tokens(sidecar.config.server)
    if tokens is not None:
        rejected = sidecar.metrics.hook_errors.labels(TRANSPORT, "unauthorized")
        middleware.append(Middleware(BearerAuth, tokens=tokens, on_reject=rejected.inc))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
