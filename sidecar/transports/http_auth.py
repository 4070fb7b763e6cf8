"""Bearer-token check in front of the HTTP app (hooks, LiteLLM endpoint, admin API).

A plain ASGI middleware rather than a per-route dependency: it runs before routing, so an
unknown path, a wrong method or the OpenAPI document answer 401 exactly like a hook does and
an unauthenticated caller learns nothing about the API. ``/healthz`` stays open for probes.
The dashboard's paths (``/ui``) also accept the session cookie of its login form, and only
they do (``sidecar.ui.gate``).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.auth import FailedAuthLimiter, TokenSet, tokens_from_request
from sidecar.ui.gate import UiGate, is_ui_path

OPEN_PATHS = frozenset({"/healthz"})
# Authorization: Bearer <token>; x-api-key: <token> (how LiteLLM's guardrail sends its api_key)
_TOKEN_HEADERS = (b"authorization", b"x-api-key")
_BODY = orjson.dumps(
    {
        "error": {
            "kind": "unauthorized",
            "message": "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
            "with a token from the variable named by server.auth_token_env",
        }
    }
)
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"www-authenticate", b'Bearer realm="sidecar"'),
]


def client_address(scope: Scope) -> str | None:
    """The TCP peer's address (never a forwarded-for header, which the caller writes)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def too_many_failures(retry_after: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of the 429 a locked-out address gets."""
    body = orjson.dumps(
        {
            "error": {
                "kind": "too_many_failures",
                "message": "too many wrong tokens from this address (server.auth_max_failures):"
                f" retry after {retry_after} s",
            }
        }
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    return headers, body


class BearerAuth:
    def __init__(
        self,
        app: ASGIApp,
        tokens: TokenSet,
        on_reject: Callable[[], None] | None = None,
        ui_gate: UiGate | None = None,
        limiter: FailedAuthLimiter | None = None,
        on_locked: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.on_reject = on_reject
        self.ui_gate = ui_gate
        # shared by every BearerAuth of one app (the hot routes have their own instances)
        self.limiter = limiter
        self.on_locked = on_locked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        offered = tokens_from_request(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name in _TOKEN_HEADERS
        )
        limiter = self.limiter
        address = client_address(scope) if limiter is not None else None
        if offered and limiter is not None and (wait := limiter.retry_after(address)):
            # a locked-out address's tokens are not compared, so it learns nothing more; one
            # that sends none gets the plain 401 below (there is nothing to guess)
            if self.on_locked is not None:
                self.on_locked()
            headers, body = too_many_failures(wait)
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if self.tokens.accepts_any(offered):
            await self.app(scope, receive, send)
            return
        if offered and limiter is not None:
            # a presented wrong token is a guess; a missing one (a browser before login, a
            # probe) is not counted, so an expired dashboard tab cannot lock its user out
            limiter.failed(address)
        gate = self.ui_gate
        if gate is not None and is_ui_path(scope["path"]):
            if gate.allows(scope):
                await self.app(scope, receive, send)
            else:
                if self.on_reject is not None:
                    self.on_reject()
                await gate.refuse(scope, send)
            return
        if self.on_reject is not None:
            self.on_reject()
        # The request body is never read: uvicorn discards it with the connection's next turn.
        await send({"type": "http.response.start", "status": 401, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _BODY})
