"""Request contexts waiting for their response hook (HTTP hook only: ext_proc keeps its context
on the gRPC stream).

A context is held under its request id together with a per-request secret the request hook
returns as ``request_secret``; the response hook must send both back. So a caller that knows
(or guesses) another request's id can neither complete it nor store an answer under its
question, and a caller-supplied id that is already pending is refused (409) instead of
replacing the waiting context.

Two stores, chosen by ``server.pending_store`` (see ``build_pending_store``):

- ``MemoryPendingStore``: in this process (one replica, or sticky routing);
- ``RedisPendingStore`` (``sidecar.pending_redis``): shared by every replica, sealed with
  AES-GCM, so a response hook may reach a different replica than its request hook.

Both are bounded in count (``server.max_pending``), bytes (``server.max_pending_bytes``) and
time (``server.pending_ttl``). Beyond a bound a new request is refused with 503; a waiting
context is never evicted to make room (an evicted context turns a later, legitimate response
hook into a 404). Expiry after ``pending_ttl`` still frees the room of abandoned contexts.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

from sidecar.cache.stores.backends import BackendConfigError
from sidecar.cache.stores.base import StoreUnavailable
from sidecar.config import SidecarConfig
from sidecar.context import HookError, RequestContext

log = logging.getLogger("sidecar.pending")

#: random bytes in a request secret (128 bits; 22 URL-safe characters)
SECRET_BYTES = 16
# Fixed part of a context's size estimate: the context object, its plan, lookup and trace.
_CONTEXT_OVERHEAD = 2048


def new_request_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def secrets_match(expected: str, given: str) -> bool:
    """Constant-time comparison (bytes: ``compare_digest`` refuses non-ASCII ``str``)."""
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def context_bytes(ctx: RequestContext) -> int:
    """An estimate of the memory a held context keeps: its request body (as JSON), headers,
    path and a fixed overhead. The text pieces the guardrails scan are not added: they are the
    body's own strings (messages, metadata, user, tools), shared, not copied. Python objects
    cost more than their JSON for bodies made of many tiny values; for the bodies that matter
    (long messages, large ``metadata``) the body's bytes dominate."""
    size = _CONTEXT_OVERHEAD + len(ctx.request_id) + len(ctx.path) + len(ctx.method)
    size += sum(len(k) + len(v) for k, v in ctx.headers.items())
    parsed = ctx.parsed
    if parsed is not None:
        size += len(orjson.dumps(parsed.body))
    return size


class PendingConflict(HookError):
    def __init__(self, request_id: str) -> None:
        super().__init__(
            409,
            "conflict",
            f"request_id {request_id!r} is already waiting for its response hook: use a "
            "unique id per request, or omit request_id to have the sidecar issue one",
        )


class PendingOverloaded(HookError):
    def __init__(self, message: str) -> None:
        super().__init__(503, "overloaded", message)


class PendingUnknown(HookError):
    """Unknown id, expired context, wrong secret or already answered: one answer for all, so
    the refusal reveals nothing about other requests."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            404,
            "unknown_request_id",
            f"unknown or expired request_id {request_id!r}, or a request_secret that does not "
            "match it: send the request_id and request_secret the request hook returned "
            "(contexts are kept for server.pending_ttl and answered once)",
        )


class PendingUnavailable(HookError):
    def __init__(self, message: str) -> None:
        super().__init__(503, "backend_unavailable", message)


class PendingConfigError(BackendConfigError):
    """A pending store that cannot work (no key, bad key, bad URL); names the setting."""


def overloaded_by_count(held: int, limit: int) -> PendingOverloaded:
    return PendingOverloaded(
        f"too many requests waiting for their response hook ({held}, server.max_pending "
        f"{limit}): retry later; waiting requests are never dropped to make room"
    )


def overloaded_by_bytes(held: int, size: int, limit: int) -> PendingOverloaded:
    return PendingOverloaded(
        f"requests waiting for their response hook hold {held} bytes; this one needs {size} "
        f"more, over server.max_pending_bytes {limit}: retry later; waiting requests are "
        "never dropped to make room"
    )


@dataclass(frozen=True, slots=True)
class PendingStats:
    items: int
    bytes: int


class PendingStore(Protocol):
    name: str

    async def put(self, ctx: RequestContext, secret: str, size: int) -> None:
        """Hold ``ctx`` under its request id. Raises PendingConflict (id already held),
        PendingOverloaded (a bound is reached) or StoreUnavailable."""
        ...

    async def take(self, request_id: str, secret: str) -> RequestContext:
        """Remove and return the context, once. Raises PendingUnknown (unknown, expired,
        wrong secret: nothing is consumed) or StoreUnavailable."""
        ...

    async def contains(self, request_id: str) -> bool: ...

    async def stats(self) -> PendingStats: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Held:
    ctx: RequestContext
    secret: str
    size: int
    expires: float


class MemoryPendingStore:
    """Contexts in this process, in insertion order (= expiry order: one TTL for all)."""

    name = "memory"

    def __init__(
        self,
        ttl: float,
        max_items: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, _Held] = OrderedDict()
        self._bytes = 0

    def _expire(self, now: float) -> None:
        while self._items:
            first = next(iter(self._items.values()))
            if first.expires > now:
                return
            self._items.popitem(last=False)
            self._bytes -= first.size

    async def put(self, ctx: RequestContext, secret: str, size: int) -> None:
        self._expire(self._clock())
        if ctx.request_id in self._items:
            raise PendingConflict(ctx.request_id)
        if len(self._items) >= self._max_items:
            raise overloaded_by_count(len(self._items), self._max_items)
        if self._bytes + size > self._max_bytes:
            raise overloaded_by_bytes(self._bytes, size, self._max_bytes)
        self._items[ctx.request_id] = _Held(ctx, secret, size, self._clock() + self._ttl)
        self._bytes += size

    async def take(self, request_id: str, secret: str) -> RequestContext:
        self._expire(self._clock())
        held = self._items.get(request_id)
        if held is None or not secrets_match(held.secret, secret):
            raise PendingUnknown(request_id)
        del self._items[request_id]
        self._bytes -= held.size
        return held.ctx

    async def contains(self, request_id: str) -> bool:
        self._expire(self._clock())
        return request_id in self._items

    async def stats(self) -> PendingStats:
        self._expire(self._clock())
        return PendingStats(len(self._items), self._bytes)

    async def close(self) -> None:
        self._items.clear()
        self._bytes = 0


class PendingContexts:
    """What the HTTP hook calls: issues secrets, sizes contexts, maps store failures to hook
    errors, and gives back a refused context's single-flight lock.

    With a shared store, ``fallback`` (an in-process store) keeps a context when the shared
    store is unreachable: the request still goes on (the cache fails open, so must this), and
    its response hook works on this replica; on another one it gets 404 and the answer passes
    through unstored.
    """

    def __init__(
        self,
        store: PendingStore,
        release: Callable[[RequestContext], Awaitable[None]] | None = None,
        fallback: PendingStore | None = None,
        detach: Callable[[RequestContext], None] | None = None,
    ) -> None:
        self.store = store
        self._release = release
        self._fallback = fallback
        #: drops the process-local parts of a context (a running task) before it is shared
        self._detach = detach

    async def ensure_free(self, request_id: str) -> None:
        """Refuse a caller-supplied id that is already pending before any work is done (the
        store checks again, atomically, when the context is held)."""
        if self._fallback is not None and await self._fallback.contains(request_id):
            raise PendingConflict(request_id)
        try:
            if await self.store.contains(request_id):
                raise PendingConflict(request_id)
        except StoreUnavailable:
            if self._fallback is None:
                raise PendingUnavailable("pending store unavailable") from None

    async def hold(self, ctx: RequestContext) -> str:
        """Hold ``ctx`` for its response hook; returns the request secret."""
        secret = new_request_secret()
        size = context_bytes(ctx)
        try:
            if self._detach is not None and not isinstance(self.store, MemoryPendingStore):
                self._detach(ctx)
            try:
                await self.store.put(ctx, secret, size)
            except StoreUnavailable as exc:
                if self._fallback is None:
                    raise PendingUnavailable(f"pending store unavailable: {exc}") from None
                log.error("pending store unavailable, context kept in this process: %s", exc)
                await self._fallback.put(ctx, secret, size)
        except BaseException:
            # Nobody will answer this request through us: identical requests waiting on its
            # miss lock must not wait for it.
            if self._release is not None:
                await self._release(ctx)
            raise
        return secret

    async def take(self, request_id: str, secret: str) -> RequestContext:
        if self._fallback is not None and await self._fallback.contains(request_id):
            return await self._fallback.take(request_id, secret)
        try:
            return await self.store.take(request_id, secret)
        except StoreUnavailable as exc:
            raise PendingUnavailable(f"pending store unavailable: {exc}") from None

    async def stats(self) -> PendingStats:
        return await self.store.stats()

    async def close(self) -> None:
        await self.store.close()
        if self._fallback is not None:
            await self._fallback.close()


def build_pending(
    config: SidecarConfig,
    release: Callable[[RequestContext], Awaitable[None]] | None = None,
    environ: Mapping[str, str] | None = None,
    detach: Callable[[RequestContext], None] | None = None,
) -> PendingContexts:
    store = build_pending_store(config, environ)
    fallback = None
    if not isinstance(store, MemoryPendingStore):
        server = config.server
        fallback = MemoryPendingStore(
            server.pending_ttl, server.max_pending, server.max_pending_bytes
        )
    return PendingContexts(store, release, fallback, detach)


def pending_config_errors(
    config: SidecarConfig, environ: Mapping[str, str] | None = None
) -> list[str]:
    """What would stop the pending store from being built (``sidecar check-config``); nothing
    is connected."""
    url = _redis_url(config)
    if url is None:
        return []
    from sidecar.pending_redis import check_redis_settings

    try:
        check_redis_settings(config, url, environ)
    except PendingConfigError as exc:
        return [str(exc)]
    return []


def _redis_url(config: SidecarConfig) -> str | None:
    choice = config.server.pending_store.strip()
    if choice == "auto":
        exact = config.cache.exact_store.strip()
        is_redis = config.cache.enabled and exact.lower().startswith(("redis", "rediss"))
        return exact if is_redis else None
    return None if choice == "memory" else choice


def build_pending_store(
    config: SidecarConfig, environ: Mapping[str, str] | None = None
) -> PendingStore:
    """``server.pending_store``: ``memory``; a Redis URL; or ``auto`` (the default): Redis at
    ``cache.exact_store`` when that is a Redis URL (replicas sharing an exact store are
    expected to sit behind one load balancer), else memory. Raises PendingConfigError."""
    server = config.server
    url = _redis_url(config)
    if url is None:
        return MemoryPendingStore(server.pending_ttl, server.max_pending, server.max_pending_bytes)
    from sidecar.pending_redis import RedisPendingStore

    return RedisPendingStore.from_config(config, url, environ)
