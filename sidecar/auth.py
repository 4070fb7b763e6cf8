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
import os
from collections.abc import Iterable, Mapping

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
