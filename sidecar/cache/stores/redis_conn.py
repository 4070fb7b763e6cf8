"""Connections to Redis / Valkey for the shared cache stores (redis-py asyncio).

URL forms (credentials go in the URL's user-info and never reach logs or errors):

- ``redis://[user:password@]host:port[/db][?options]`` plain TCP
- ``rediss://...`` TLS (``?ssl_cert_reqs=none|optional|required``, ``ssl_ca_certs=...``)
- ``redis+cluster://host:port`` / ``rediss+cluster://...`` Redis Cluster (seed node)

Query options understood by redis-py pass through (``socket_timeout``, ``socket_connect_timeout``,
``max_connections``, ...). Defaults here are short so a dead backend costs a request about a
second at worst, never a hang; pools reconnect on the next call, so recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sidecar.cache.stores.base import StoreUnavailable

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
RedisClient = Redis | RedisCluster

# One retry: the first command after a server restart meets a dead pooled socket; the retry
# opens a fresh one. More retries would only multiply the wait when the server is really down.
_RETRIES = 1
_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 1.0,
    "max_connections": 64,
    # RESP2: replies of module commands (FT.*) keep one shape across redis-py versions
    # (redis-py 8 negotiates RESP3 by default). The vector store parses both anyway.
    "protocol": 2,
}
_NUMERIC_OPTIONS = ("socket_timeout", "socket_connect_timeout", "max_connections", "db")


class RedisUrlError(ValueError):
    """A Redis URL that cannot work; the message names the problem (never the password)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str  # as given, with credentials: only ever handed to redis-py
    cluster: bool
    safe: str  # scheme://host:port/db, for messages and /readyz

    def __repr__(self) -> str:  # keep the password out of tracebacks and debug output
        return f"RedisTarget({self.safe!r}, cluster={self.cluster})"


def parse_redis_url(url: str, setting: str) -> RedisTarget:
    """Check a Redis URL. Raises RedisUrlError naming ``setting`` and the problem."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RedisUrlError(f"{setting}: invalid Redis URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RedisUrlError(f"{setting}: scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    if not parts.hostname:
        raise RedisUrlError(f"{setting}: Redis URL has no host (e.g. redis://127.0.0.1:6379)")
    cluster = scheme.endswith("+cluster")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise RedisUrlError(f"{setting}: the URL path must be a database number, got {path!r}")
    if cluster and path not in ("", "0"):
        raise RedisUrlError(f"{setting}: Redis Cluster has only database 0")
    for name, value in parse_qsl(parts.query):
        if name in _NUMERIC_OPTIONS:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number < 0:
                raise RedisUrlError(
                    f"{setting}: option {name}={value!r} is not a finite non-negative number"
                )
    safe = f"{scheme}://{parts.hostname}:{port or 6379}" + (f"/{path}" if path else "")
    return RedisTarget(url=url, cluster=cluster, safe=safe)


def connect(target: RedisTarget) -> RedisClient:
    """A pooled client. Nothing is sent until the first command."""
    base = target.url.replace("+cluster", "", 1) if target.cluster else target.url
    retry = Retry(NoBackoff(), _RETRIES)
    if target.cluster:
        # Per-node pools of this size; ``in_flight_limit`` queues callers beyond it, since
        # the cluster client fails (MaxConnectionsError) where a blocking pool would wait.
        return RedisCluster.from_url(base, retry=retry, **_DEFAULTS)
    options = dict(_DEFAULTS)
    # A blocking pool waits for a free connection instead of failing under a burst.
    pool = BlockingConnectionPool.from_url(
        base, retry=retry, timeout=options["socket_timeout"], **options
    )
    return Redis(connection_pool=pool)


def in_flight_limit(target: RedisTarget) -> asyncio.Semaphore | contextlib.nullcontext[None]:
    """Bounds concurrent commands of one store to its pool size (Cluster only; a standalone
    client's blocking pool already queues)."""
    if target.cluster:
        return asyncio.Semaphore(int(_DEFAULTS["max_connections"]) // 2)
    return contextlib.nullcontext()


def unavailable(what: str, target: RedisTarget, exc: BaseException) -> StoreUnavailable:
    """A StoreUnavailable whose message names the backend but carries no credentials."""
    detail = str(exc) or type(exc).__name__
    password = urlsplit(target.url).password
    if password:
        detail = detail.replace(password, "***")
    return StoreUnavailable(f"{what} at {target.safe}: {type(exc).__name__}: {detail}")


REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def short_hash(text: str) -> str:
    """16 hex characters: safe in keys, hash tags and RediSearch TAG queries."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def namespace_slug(namespace: str) -> str:
    """A readable, key-safe form of an embedding namespace ("model:dimension") plus a hash so
    two namespaces that sanitise alike never share keys."""
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in namespace)[:48]
    return f"{readable}-{short_hash(namespace)[:8]}"
