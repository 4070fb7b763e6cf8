"""Who may open ``/ui`` when ``server.auth_token_env`` is set.

The bearer-token middleware (sidecar/transports/http_auth.py) hands every ``/ui`` path to
``UiGate``: a request passes with the bearer token (as everywhere) or with a valid session
cookie from the login form; the login page and its style sheet are open. The cookie is looked at for
``/ui`` paths only, so it never opens the hooks or the admin API. Refused page loads are
redirected to the login form; refused JSON and assets get 401.
"""

from __future__ import annotations

import orjson
from starlette.types import Scope, Send

from sidecar.ui.sessions import SessionStore, session_from_cookie_header

PREFIX = "/ui"
LOGIN_PATH = "/ui/login"
#: open without a session: the login form and its style sheet
OPEN = frozenset({LOGIN_PATH, "/ui/static/style.css"})
#: pages a browser navigates to (redirected to the login form when refused)
PAGES = frozenset({"/ui", "/ui/"})
_UNAUTHORIZED = orjson.dumps(
    {
        "error": {
            "kind": "unauthorized",
            "message": "log in at /ui/login (session cookie) or send 'Authorization: Bearer "
            "<token>'",
        }
    }
)


def is_ui_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class UiGate:
    def __init__(self, sessions: SessionStore) -> None:
        self.sessions = sessions

    def allows(self, scope: Scope) -> bool:
        """True for the login page, or a request carrying a valid session cookie."""
        if scope["path"] in OPEN:
            return True
        for name, value in scope["headers"]:
            if name == b"cookie" and self.sessions.valid(
                session_from_cookie_header(value.decode("latin-1"))
            ):
                return True
        return False

    async def refuse(self, scope: Scope, send: Send) -> None:
        if scope["method"] in ("GET", "HEAD") and scope["path"] in PAGES:
            headers = [(b"location", LOGIN_PATH.encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 303, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_UNAUTHORIZED)).encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
