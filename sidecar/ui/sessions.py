"""Login sessions of the dashboard: random ids held in this process, bounded and expiring.

A browser cannot send a bearer header when it loads a page, so ``POST /ui/login`` exchanges
the token for a session id in an HttpOnly cookie. The id is 32 random bytes
(``secrets.token_urlsafe``); the server keeps the ids it issued with their expiry, at most
``max_sessions`` of them (a new login pushes the oldest out). Sessions are per process: each
replica has its own, and a restart logs everyone out.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

COOKIE = "sidecar_ui_session"


class SessionStore:
    def __init__(
        self, ttl_s: float, max_sessions: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0 or max_sessions < 1:
            raise ValueError("SessionStore needs ttl_s > 0 and max_sessions >= 1")
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()  # oldest login first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def create(self) -> str:
        session = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._drop_expired(now)
            while len(self._expiry) >= self.max_sessions:
                self._expiry.popitem(last=False)
            self._expiry[session] = now + self.ttl_s
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        now = self.clock()
        with self._lock:
            # a dict lookup by the secret id: the id is 256 random bits, so its timing tells
            # an attacker nothing usable (a guess matches with probability 2^-256)
            expiry = self._expiry.get(session)
            if expiry is None:
                return False
            if expiry <= now:
                del self._expiry[session]
                return False
            return True

    def end(self, session: str | None) -> None:
        if session:
            with self._lock:
                self._expiry.pop(session, None)

    def _drop_expired(self, now: float) -> None:
        # oldest first and every session has the same lifetime: expired ones are at the front
        while self._expiry:
            first, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                break
            del self._expiry[first]


def session_from_cookie_header(header: str | None) -> str | None:
    """The session id among a ``Cookie`` header's pairs (a parser of the few lines needed:
    ``http.cookies.SimpleCookie`` drops every pair after one it cannot parse)."""
    if not header:
        return None
    for pair in header.split(";"):
        name, _, value = pair.strip().partition("=")
        if name == COOKIE and value:
            return value.strip('"')
    return None
