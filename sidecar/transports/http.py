"""The HTTP hook: ``POST /v1/hooks/request`` and ``/v1/hooks/response``, plus admin routes,
served by FastAPI with an OpenAPI document at ``/openapi.json``.

This module only translates JSON envelopes to pipeline calls and back; all decisions are the
pipeline's. The hooks read their body themselves rather than through a FastAPI body parameter:
reading stops at ``server.max_body_bytes`` (FastAPI would buffer any upload whole first), orjson
parses it, and the strict envelope models of ``http_models`` validate it, so errors keep their
400 naming the field. The same models give the OpenAPI request bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import request_response as starlette_request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.auth import FailedAuthLimiter, limiter_for, load_tokens
from sidecar.cache.stores.base import StoreUnavailable
from sidecar.context import REQUEST_ID_HEADER, HookError, HookRequest, HttpAnswer, header_safe_id
from sidecar.json_body import OFF_LOOP_JSON_BYTES
from sidecar.services import Sidecar
from sidecar.transports.http_adaptive import cache_feedback, cache_stats
from sidecar.transports.http_auth import OPEN_PATHS, BearerAuth
from sidecar.transports.http_models import (
    EntryDeleted,
    ErrorReply,
    FeedbackEnvelope,
    FeedbackReply,
    HealthReply,
    PartitionDeleted,
    ReadinessReply,
    RequestHookEnvelope,
    RequestHookReply,
    ResponseHookEnvelope,
    ResponseHookReply,
    StatsReply,
    validation_error,
)
from sidecar.ui.gate import UiGate

log = logging.getLogger("sidecar.http")

TRANSPORT = "http"
E = TypeVar("E", bound=BaseModel)
# Room for the envelope around a body of max_body_bytes (headers, path, JSON quoting).
_ENVELOPE_SLACK = 64 * 1024


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_APPEND_NEWLINE)  # curl-friendly


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status)


async def _read_body(request: Request, sidecar: Sidecar) -> bytes:
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
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _decode_envelope(raw: bytes, model: type[E]) -> E:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HookError(400, "malformed_json", f"hook payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HookError(400, "bad_request", "hook payload must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def _read_envelope(request: Request, sidecar: Sidecar, model: type[E]) -> E:
    raw = await _read_body(request, sidecar)
    if len(raw) > OFF_LOOP_JSON_BYTES:
        # A large payload is decoded and validated in a thread: the GIL still serialises the
        # work, but the event loop gets its turn every switch interval instead of waiting for
        # the whole parse (exact hits and /healthz behind a flood of large hooks).
        return await asyncio.to_thread(_decode_envelope, raw, model)
    return _decode_envelope(raw, model)


def _headers(raw: dict[str, str] | None) -> dict[str, str]:
    return {name.lower(): value for name, value in raw.items()} if raw else {}


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
    # the client went away mid-body (or its body stalled past server.body_timeout); nobody
    # reads this answer, but the error is counted instead of logged as a crash
    ClientDisconnect: (400, "client_disconnected", "the client stopped sending the request"),
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


async def _answer(
    sidecar: Sidecar, handler: Callable[[Request, Sidecar], Awaitable[Response]], request: Request
) -> Response:
    """Run a hook or admin handler; errors become JSON answers (``error_answer``)."""
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


def _id_header(request_id: str) -> dict[str, str]:
    safe = header_safe_id(request_id)
    return {} if safe is None else {REQUEST_ID_HEADER: safe}


async def request_hook(request: Request, sidecar: Sidecar) -> Response:
    envelope = await _read_envelope(request, sidecar, RequestHookEnvelope)
    request_id = envelope.request_id
    if request_id is not None and not request_id.strip():
        raise HookError(400, "wrong_type", "field 'request_id' must not be empty")
    body = envelope.body
    if envelope.method.upper() == "POST" and body is None:
        raise HookError(400, "missing_field", "missing field 'body'")
    hook = HookRequest(
        method=envelope.method,
        path=envelope.path,
        headers=_headers(envelope.headers),
        body=body,
        request_id=request_id,
    )
    assert sidecar.pipeline is not None
    if request_id is not None:
        await sidecar.pending.ensure_free(request_id)  # 409 before any work
    ctx, outcome = await sidecar.pipeline.on_request(hook, TRANSPORT)
    reply: dict[str, Any] = {
        "request_id": ctx.request_id,
        "action": outcome.action,
        "cache": outcome.cache.to_json(),
    }
    if outcome.action == "continue":
        reply["request_secret"] = await sidecar.pending.hold(ctx)  # 409 / 503 beyond bounds
    if outcome.body is not None:
        reply["body"] = outcome.body
    if outcome.response is not None:
        reply["response"] = _answer_json(outcome.response)
    return JSONResponse(reply, headers=_id_header(ctx.request_id))


async def response_hook(request: Request, sidecar: Sidecar) -> Response:
    envelope = await _read_envelope(request, sidecar, ResponseHookEnvelope)
    request_id = envelope.request_id
    secret = envelope.request_secret
    status = envelope.status
    headers = _headers(envelope.headers)
    body = envelope.body
    raw = body.encode("utf-8") if isinstance(body, str) else orjson.dumps(body)
    ctx = await sidecar.pending.take(request_id, secret)  # 404 unless id and secret match
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
    return JSONResponse(reply, headers=_id_header(request_id))


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

_ERRORS = {"model": ErrorReply}
_HOOK_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERRORS, "description": "malformed JSON, a missing or mistyped field (named)"},
    401: {**_ERRORS, "description": "missing or wrong bearer token"},
    409: {**_ERRORS, "description": "conflict with a pending request"},
    413: {**_ERRORS, "description": "payload over server.max_body_bytes"},
    503: {**_ERRORS, "description": "not ready, or over a capacity bound"},
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_ERRORS, "description": "missing or wrong bearer token"},
    409: {**_ERRORS, "description": "the cache is disabled"},
    503: {**_ERRORS, "description": "not ready, or the cache backend is unavailable"},
}


class RequestOnlyRoute(APIRoute):
    """An API route whose endpoint takes the ``Request`` alone and returns a ``Response``.

    FastAPI's handler solves dependencies, parses query parameters and checks the return
    value on every call; for such an endpoint there is nothing to solve, and that work (with
    its per-call exit stacks) cost about 40 us of CPU per hook call here, a third of an exact
    hit's time in the app. The route is still an ``APIRoute`` (same routing, same OpenAPI
    entry); only the call goes straight to the endpoint.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        # Starlette's request/response adapter: FastAPI's adds two exit stacks per call for
        # dependencies with ``yield``, which these endpoints do not have.
        self.app = starlette_request_response(endpoint)


def _direct(endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


class SidecarAPI(FastAPI):
    """FastAPI with a fast path for the calls a proxy makes on every request.

    ``POST /v1/hooks/request``, ``POST /v1/hooks/response`` and ``GET /healthz`` are FastAPI
    routes like the others (routing, OpenAPI entries), but a call to exactly one of them goes
    straight to its endpoint, behind the bearer-token check, instead of through FastAPI's
    middleware stack and router. Measured side by side (benchmarks/hook_ab.py), the full
    stack cost about 18% of the server's CPU per exact hit. The endpoints answer every error
    they expect themselves (``_answer``), so the skipped exception middleware had nothing to
    do on these paths; an unexpected exception still becomes uvicorn's 500.
    """

    hot_paths: dict[tuple[str, str], ASGIApp]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hot = self.hot_paths.get((scope["method"], scope["path"]))
            if hot is not None:
                await hot(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a hook. The hooks read and validate the body themselves
    (bounded read, orjson, the same strict model), so FastAPI only documents it."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _add_routes(app: FastAPI, sidecar: Sidecar, listener: Listener) -> None:
    async def healthz(request: Request) -> Response:
        """Liveness: answers while the process serves HTTP; open without a token."""
        return JSONResponse({"status": "ok"})

    app.router.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        route_class_override=RequestOnlyRoute,
        responses={200: {"model": HealthReply}},
        openapi_extra={"security": []},
    )
    if listener in ("all", "hooks"):

        async def request_hook_route(request: Request) -> Response:
            """The client's request, before the provider: cache lookup and input guardrails."""
            return await _answer(sidecar, request_hook, request)

        async def response_hook_route(request: Request) -> Response:
            """The provider's answer: output guardrails and cache store."""
            return await _answer(sidecar, response_hook, request)

        app.router.add_api_route(
            "/v1/hooks/request",
            request_hook_route,
            methods=["POST"],
            route_class_override=RequestOnlyRoute,
            responses={200: {"model": RequestHookReply}, **_HOOK_ERRORS},
            openapi_extra=_json_body(RequestHookEnvelope),
        )
        app.router.add_api_route(
            "/v1/hooks/response",
            response_hook_route,
            methods=["POST"],
            route_class_override=RequestOnlyRoute,
            responses={
                200: {"model": ResponseHookReply},
                404: {**_ERRORS, "description": "unknown or expired request_id"},
                **_HOOK_ERRORS,
            },
            openapi_extra=_json_body(ResponseHookEnvelope),
        )
        if sidecar.engine is not None:
            from sidecar.transports.litellm import litellm_guardrail_routes

            # LiteLLM's own envelope and error shape (docs/guardrails.md); not in the schema.
            app.router.routes.extend(
                litellm_guardrail_routes(
                    sidecar.engine, max_body_bytes=sidecar.config.server.max_body_bytes
                )
            )
    if listener in ("all", "admin"):

        async def readyz() -> Response:
            """Readiness: 503 until the model and stores are loaded or while one is down."""
            ok, detail = await sidecar.readiness()
            return JSONResponse(detail, status_code=200 if ok else 503)

        async def metrics() -> Response:
            """Prometheus metrics."""
            return Response(
                sidecar.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
            )

        async def delete_entry_route(request: Request, entry_id: str) -> Response:
            """Delete one cache entry (its id is in x-bf-cache-entry-id)."""
            return await _answer(sidecar, delete_entry, request)

        async def delete_partition_route(request: Request, cache_key: str) -> Response:
            """Delete every entry of a cache partition (an x-bf-cache-key value)."""
            return await _answer(sidecar, delete_partition, request)

        app.add_api_route(
            "/readyz",
            readyz,
            methods=["GET"],
            responses={
                200: {"model": ReadinessReply},
                401: {**_ERRORS, "description": "missing or wrong bearer token"},
                503: {"model": ReadinessReply},
            },
        )
        app.add_api_route(
            "/metrics",
            metrics,
            methods=["GET"],
            responses={
                200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                401: {**_ERRORS, "description": "missing or wrong bearer token"},
            },
        )

        async def feedback_route(request: Request) -> Response:
            """Report a served semantic hit as wrong (docs/adaptive.md)."""
            return await _answer(sidecar, cache_feedback, request)

        async def stats_route(request: Request) -> Response:
            """Per-partition figures of the adaptive cache (docs/adaptive.md)."""
            return await _answer(sidecar, cache_stats, request)

        app.add_api_route(
            "/v1/cache/feedback",
            feedback_route,
            methods=["POST"],
            openapi_extra=_json_body(FeedbackEnvelope),
            responses={
                200: {"model": FeedbackReply},
                400: {**_ERRORS, "description": "malformed feedback"},
                404: {**_ERRORS, "description": "unknown request_id or entry_id"},
                **_ADMIN_ERRORS,
            },
        )
        app.add_api_route(
            "/v1/cache/stats",
            stats_route,
            methods=["GET"],
            responses={200: {"model": StatsReply}, **_ADMIN_ERRORS},
        )
        app.add_api_route(
            "/v1/cache/entries/{entry_id}",
            delete_entry_route,
            methods=["DELETE"],
            responses={
                200: {"model": EntryDeleted},
                404: {**_ERRORS, "description": "no such entry"},
                **_ADMIN_ERRORS,
            },
        )
        app.add_api_route(
            "/v1/cache/partitions/{cache_key:path}",
            delete_partition_route,
            methods=["DELETE"],
            responses={
                200: {"model": PartitionDeleted},
                # the route's ``path`` segment matches no line break, and no partition key
                # (an HTTP header value) can hold one: such a path is not this route
                404: {**_ERRORS, "description": "a key with a line break: no such route"},
                **_ADMIN_ERRORS,
            },
        )


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-cache-sidecar")
    except PackageNotFoundError:
        return "0.0.0"


async def _http_error(request: Request, exc: Exception) -> Response:
    """Framework errors (no such route, method not allowed) in the API's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = _error(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}")
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def create_app(
    sidecar: Sidecar, manage_lifecycle: bool = True, listener: Listener = "all"
) -> FastAPI:
    """The FastAPI app serving ``listener``'s routes and ``/openapi.json``. With
    ``manage_lifecycle`` the app starts and closes the sidecar. With ``server.auth_token_env``
    set, every route but ``/healthz`` needs the bearer token, the OpenAPI document included
    (raises AuthConfigError when the variable is missing)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await sidecar.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await sidecar.close()

    tokens = load_tokens(sidecar.config.server)
    dashboard = sidecar.dashboard if listener in ("all", "admin") else None
    middleware: list[Middleware] = []
    limiter: FailedAuthLimiter | None = None
    if tokens is not None:
        rejected = sidecar.metrics.hook_errors.labels(TRANSPORT, "unauthorized")
        locked = sidecar.metrics.hook_errors.labels(TRANSPORT, "auth_locked_out")
        limiter = limiter_for(sidecar.config.server)
        gate = UiGate(dashboard.sessions) if dashboard is not None else None
        middleware.append(
            Middleware(
                BearerAuth,
                tokens=tokens,
                on_reject=rejected.inc,
                ui_gate=gate,
                limiter=limiter,
                on_locked=locked.inc,
            )
        )
    app = SidecarAPI(
        title="llm-cache-sidecar",
        version=_package_version(),
        summary="HTTP hook and admin API of the semantic cache and guardrails sidecar",
        lifespan=lifespan,
        middleware=middleware,
        docs_url=None,  # the interactive pages load scripts from a CDN; the schema is enough
        **_no_telemetry(),
        redoc_url=None,
        exception_handlers={StarletteHTTPException: _http_error},
    )
    _add_routes(app, sidecar, listener)
    if dashboard is not None:
        from sidecar.ui.routes import ui_routes

        app.router.routes.extend(ui_routes(dashboard, tokens, sidecar.config.server, limiter))
    app.hot_paths = {}
    for route in app.routes:
        if isinstance(route, RequestOnlyRoute):
            hot = _direct(route.endpoint)
            if tokens is not None and route.path not in OPEN_PATHS:
                hot = BearerAuth(
                    hot, tokens, on_reject=rejected.inc, limiter=limiter, on_locked=locked.inc
                )
            for method in route.methods or ():
                app.hot_paths[(method, route.path)] = hot
    if tokens is not None:
        _declare_bearer_auth(app)
    return app


def _no_telemetry() -> dict[str, Any]:
    """FastAPI's OpenTelemetry hook (newer FastAPI) looks for a configured provider on every
    request; the sidecar exports Prometheus metrics instead, so it is switched off."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


_ERROR_REF = "#/components/schemas/ErrorReply"


def _declare_bearer_auth(app: FastAPI) -> None:
    """State in the OpenAPI document that every operation but /healthz needs the token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            locked = {
                "description": "too many wrong tokens from this address "
                "(server.auth_max_failures); see Retry-After",
                "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
            }
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if "401" in responses:
                        responses.setdefault("429", locked)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
