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

from sidecar.auth import TokenSet, tokens_from_request
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


class BearerAuth:
    def __init__(
        self,
        app: ASGIApp,
        tokens: TokenSet,
        on_reject: Callable[[], None] | None = None,
        ui_gate: UiGate | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.on_reject = on_reject
        self.ui_gate = ui_gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        offered = tokens_from_request(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name in _TOKEN_HEADERS
        )
        if self.tokens.accepts_any(offered):
            await self.app(scope, receive, send)
            return
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
