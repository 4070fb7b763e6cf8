"""HTTP routes of the dashboard: the page, its JSON, its scripts and the login form.

Plain Starlette routes (not in the OpenAPI document: they serve a browser, not an API
client). The charting library is plotly.js as the ``plotly`` wheel ships it
(``plotly/package_data/plotly.min.js``), served from the installed package: no build step, no
CDN. Every answer carries a Content-Security-Policy that lets the page load scripts from this
server only.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import threading
from pathlib import Path
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from sidecar.auth import FailedAuthLimiter, TokenSet, is_loopback
from sidecar.config import ServerConfig
from sidecar.ui.dashboard import MAX_DECISIONS_PER_READ, Dashboard
from sidecar.ui.gate import LOGIN_PATH
from sidecar.ui.sessions import COOKIE, session_from_cookie_header

STATIC = Path(__file__).resolve().parent / "static"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_SECURITY_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_MAX_LOGIN_BODY = 4096
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def plotly_js_path() -> Path:
    """plotly.min.js inside the installed ``plotly`` package (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'plotly' package is not installed (pip install plotly)")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


class Asset:
    """A static file read once, with its ETag and a gzip copy made on first use."""

    def __init__(self, path: Path, media_type: str) -> None:
        self.path = path
        self.media_type = media_type
        self._body: bytes | None = None
        self._gzip: bytes | None = None
        self.etag = ""
        self._lock = threading.Lock()

    def load(self) -> tuple[bytes, bytes]:
        with self._lock:
            if self._body is None:
                body = self.path.read_bytes()
                self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
                self._gzip = gzip.compress(body, compresslevel=6, mtime=0)
                self._body = body
            assert self._gzip is not None
            return self._body, self._gzip

    def response(self, request: Request) -> Response:
        body, zipped = self.load()
        headers = {**_SECURITY_HEADERS, "cache-control": "private, max-age=3600", "etag": self.etag}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["content-encoding"] = "gzip"
            headers["vary"] = "accept-encoding"
            body = zipped
        return Response(body, media_type=self.media_type, headers=headers)


def _page(name: str, status: int = 200, error: str = "") -> Response:
    html = (STATIC / name).read_text(encoding="utf-8").replace("{{error}}", error)
    return Response(html, status, media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)


def _json(content: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(content), status, media_type="application/json", headers=_SECURITY_HEADERS
    )


def _error(status: int, kind: str, message: str) -> Response:
    return _json({"error": {"kind": kind, "message": message}}, status)


def ui_routes(
    dashboard: Dashboard,
    tokens: TokenSet | None,
    server: ServerConfig,
    limiter: FailedAuthLimiter | None = None,
) -> list[BaseRoute]:
    """The routes of ``/ui``. With ``tokens`` None (no token configured: loopback only) the
    page is open and the login form only sends the browser on to it. ``limiter`` is the app's
    failed-token limiter: a wrong token in the form counts like a wrong bearer token."""
    assets = {
        "dashboard.js": Asset(STATIC / "dashboard.js", _TYPES[".js"]),
        "style.css": Asset(STATIC / "style.css", _TYPES[".css"]),
        "plotly.min.js": Asset(plotly_js_path(), _TYPES[".js"]),
    }
    # Beyond loopback (or over TLS) the cookie is only ever sent over HTTPS.
    secure = bool(server.tls_cert_file) or not is_loopback(server.http_host)
    ttl = int(dashboard.config.session_ttl)

    async def index(request: Request) -> Response:
        return _page("index.html")

    async def login_form(request: Request) -> Response:
        if tokens is None:
            return RedirectResponse("/ui", 303)
        return _page("login.html")

    async def login(request: Request) -> Response:
        if tokens is None:
            return RedirectResponse("/ui", 303)
        address = request.client.host if request.client else None
        if limiter is not None and (wait := limiter.retry_after(address)):
            response = _page(
                "login.html", 429, f"Too many wrong tokens from this address: retry in {wait} s."
            )
            response.headers["retry-after"] = str(wait)
            return response
        if request.url.query:
            # a token in a URL ends up in history, logs and referrers: never read from there
            return _page("login.html", 400, "The token is only accepted in the form's body.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_LOGIN_BODY:
                return _page("login.html", 413, "The form is too large.")
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            return _page("login.html", 400, "The form could not be read.")
        offered = [t.strip() for t in fields.get("token", []) if t.strip()]
        if not offered or not tokens.accepts_any(offered):  # constant-time comparisons
            if offered and limiter is not None:
                limiter.failed(address)
            return _page("login.html", 401, "Wrong token.")
        session = dashboard.sessions.create()
        response = RedirectResponse("/ui", 303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            session,
            max_age=ttl,
            path="/ui",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        dashboard.sessions.end(session_from_cookie_header(request.headers.get("cookie")))
        response = RedirectResponse(LOGIN_PATH if tokens is not None else "/ui", 303)
        response.delete_cookie(COOKIE, path="/ui", secure=secure, httponly=True, samesite="strict")
        return response

    async def api_summary(request: Request) -> Response:
        raw = request.query_params.get("decisions", "100")
        if not raw.isdigit() or not 0 <= int(raw) <= MAX_DECISIONS_PER_READ:
            return _error(
                400,
                "bad_request",
                f"query parameter 'decisions' must be an integer 0-{MAX_DECISIONS_PER_READ}",
            )
        return _json(dashboard.summary(int(raw)))

    async def static(request: Request) -> Response:
        asset = assets.get(request.path_params["name"])
        if asset is None:
            return _error(404, "not_found", f"no dashboard asset {request.url.path}")
        return asset.response(request)

    return [
        Route("/ui", index, methods=["GET"], include_in_schema=False),
        Route("/ui/", index, methods=["GET"], include_in_schema=False),
        Route(LOGIN_PATH, login_form, methods=["GET"], include_in_schema=False),
        Route(LOGIN_PATH, login, methods=["POST"], include_in_schema=False),
        Route("/ui/logout", logout, methods=["POST"], include_in_schema=False),
        Route("/ui/api/summary", api_summary, methods=["GET"], include_in_schema=False),
        Route("/ui/static/{name}", static, methods=["GET"], include_in_schema=False),
    ]
