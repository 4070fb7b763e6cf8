"""Bearer tokens for the HTTP hook, the admin API and the ext_proc stream, and the bind policy
of ``sidecar serve``.

``server.auth_token_env`` names an environment variable; its value is one token or several
separated by commas, all accepted at once so a token can be rotated without downtime. The
transports call ``TokenSet.accepts`` with the ``Authorization`` header (HTTP) or the
``authorization`` metadata (gRPC); over HTTP ``x-api-key: <token>`` is accepted too, because
LiteLLM's Generic Guardrail API sends its ``api_key`` that way. Tokens are never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from sidecar.config import ServerConfig

_BEARER = "bearer "


def tokens_from_request(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """The bearer tokens a caller presented: ``Authorization: Bearer <token>`` and, because
    LiteLLM's generic guardrail sends its ``api_key`` that way, ``x-api-key: <token>``.

    Empty values are ignored; the caller compares each token in constant time. ``headers`` may
    be any mapping (Starlette's ``Headers`` included) or (name, value) pairs.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    tokens: list[str] = []
    for name, value in pairs:
        lower = name.lower()
        if lower == "authorization":
            scheme, _, credential = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                tokens.append(credential.strip())
        elif lower == "x-api-key" and value.strip():
            tokens.append(value.strip())
    return tokens


class AuthConfigError(ValueError):
    """``server.auth_token_env`` names a variable that is missing or holds no token."""


class TokenSet:
    """The accepted tokens. ``accepts`` compares against every one of them in constant time,
    so neither the position of a matching token nor a mismatch's prefix shows in timing."""

    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise ValueError("a TokenSet needs at least one token")
        self._tokens = [t.encode("utf-8") for t in tokens]

    def __len__(self) -> int:
        return len(self._tokens)

    def accepts_any(self, offered: Iterable[str]) -> bool:
        """True when one of ``offered`` (from ``tokens_from_request``) is a configured token;
        every pair is compared."""
        found = False
        for candidate in offered:
            raw = candidate.encode("utf-8", "replace")
            for token in self._tokens:
                found |= hmac.compare_digest(raw, token)
        return found

    def accepts(self, authorization: str | None) -> bool:
        """True for ``Bearer <token>`` with one of the configured tokens."""
        if authorization is None or authorization[:7].lower() != _BEARER:
            return False
        offered = authorization[7:].strip().encode("utf-8", "replace")
        found = False
        for token in self._tokens:  # no early exit: every token is compared
            found |= hmac.compare_digest(offered, token)
        return found


class FailedAuthLimiter:
    """Counts wrong or missing tokens per client address; past ``max_failures`` within
    ``window`` seconds the address is refused (429) without its token being compared, until
    its window ends. A guess costs a full window per ``max_failures`` tries, so a weak token
    cannot be found by brute force through the hooks, the admin API or the login form.

    The address is the TCP peer, never a forwarded-for header (a caller writes those). A
    caller with the right token never fails, so the proxy beside the sidecar is only ever
    locked out by failures from its own address. At most ``max_addresses`` windows are kept
    (the oldest is forgotten first), so a flood of addresses cannot grow memory. Written by
    hand: a fixed-window counter in a bounded ordered dict is smaller than any rate-limit
    library's set-up, and the event loop is its only user (no lock).
    """

    def __init__(
        self,
        max_failures: int,
        window: float,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, address: str | None) -> int:
        """Seconds until ``address`` may try again; 0 when it is not locked out."""
        if self.max_failures <= 0 or address is None:
            return 0
        entry = self._windows.get(address)
        if entry is None:
            return 0
        started, failures = entry
        left = started + self.window - self._clock()
        if left <= 0:
            del self._windows[address]
            return 0
        return math.ceil(left) if failures >= self.max_failures else 0

    def failed(self, address: str | None) -> None:
        """Record one wrong or missing token from ``address``."""
        if self.max_failures <= 0 or address is None:
            return
        now = self._clock()
        entry = self._windows.pop(address, None)
        if entry is None or entry[0] + self.window <= now:
            entry = (now, 0)
        self._windows[address] = (entry[0], entry[1] + 1)  # most recent failure last
        while len(self._windows) > self.max_addresses:
            self._windows.popitem(last=False)

    def locked(self) -> int:
        """Addresses locked out now (for tests and the dashboard)."""
        now = self._clock()
        return sum(
            1
            for started, failures in self._windows.values()
            if failures >= self.max_failures and started + self.window > now
        )


def limiter_for(server: ServerConfig) -> FailedAuthLimiter:
    return FailedAuthLimiter(server.auth_max_failures, server.auth_failure_window)


def load_tokens(server: ServerConfig, environ: Mapping[str, str] | None = None) -> TokenSet | None:
    """The tokens ``server.auth_token_env`` points at; None when authentication is off.
    Raises AuthConfigError naming the variable when it is missing or empty."""
    name = server.auth_token_env.strip()
    if not name:
        return None
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None:
        raise AuthConfigError(
            f"server.auth_token_env names {name!r}, but that environment variable is not set"
        )
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    if not tokens:
        raise AuthConfigError(
            f"server.auth_token_env names {name!r}, but that environment variable holds no token"
        )
    return TokenSet(tokens)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def exposed_hosts(server: ServerConfig) -> list[str]:
    """The bind addresses beyond loopback among the listeners that will run."""
    hosts = [server.http_host]
    if server.grpc_enabled:
        hosts.append(server.grpc_host)
    return sorted({h for h in hosts if not is_loopback(h)})
