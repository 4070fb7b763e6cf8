"""Pending request contexts in Redis, shared by every replica, sealed with AES-GCM.

A context holds the request's text and the reversible-PII vault (placeholder -> personal
data), so nothing leaves the process in clear: the context is serialised, then encrypted and
authenticated with AES-256-GCM (``cryptography``) under a key read from the environment
variable named by ``server.pending_key_env`` (32 bytes, base64; several, comma-separated,
while a key rotates). The request id is the associated data, so a sealed context cannot be
replayed under another id. All replicas need the same key.

Key layout (``P`` = ``cache.namespace``; ``{pending}`` is a Cluster hash tag so one script
touches all of them on one node):

- ``P:{pending}:c:<sha256(id, secret)>``  the sealed context, ``PX`` = ``server.pending_ttl``
- ``P:{pending}:id:<sha256(id)>``         marks the id as pending (409 for a second request)
- ``P:{pending}:exp`` / ``:size`` / ``:bytes``  expiry order, size per id, total bytes: the
  ``max_pending`` and ``max_pending_bytes`` bounds hold across all replicas

The context's key is derived from the id *and* the secret, so taking it is one ``GETDEL``
(inside a script that also releases its accounting): a response hook is answered once, and a
wrong secret finds nothing and consumes nothing. Expiry uses the Redis server's clock.

Serialisation is pickle, because a context is a graph of the pipeline's own dataclasses plus
state that each guardrail check keeps for the request (the PII vault, grounding sources), which
no fixed schema covers. It is only ever unpickled after AES-GCM has authenticated it (only a
holder of the key can produce it), and then by an unpickler that resolves nothing but classes
of this project and numpy arrays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import pickle
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.commands.core import AsyncScript

from sidecar.cache.stores.redis_conn import (
    REDIS_ERRORS,
    RedisClient,
    RedisTarget,
    RedisUrlError,
    connect,
    parse_redis_url,
    unavailable,
)
from sidecar.config import SidecarConfig
from sidecar.context import HookError, RequestContext
from sidecar.pending import (
    PendingConfigError,
    PendingConflict,
    PendingStats,
    PendingUnknown,
    overloaded_by_bytes,
    overloaded_by_count,
    secrets_match,
)

log = logging.getLogger("sidecar.pending")

_NONCE_BYTES = 12
_AAD_PREFIX = b"sidecar-pending/1\x00"
# Expired ids pruned per put at most, so one call never blocks the server for long.
_PRUNE_BATCH = 200

# Shared by both scripts: drop ids whose expiry passed (their values expired natively).
_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, _BATCH_)
for _, m in ipairs(old) do
  local s = tonumber(redis.call('HGET', KEYS[4], m) or '0')
  redis.call('HDEL', KEYS[4], m)
  redis.call('ZREM', KEYS[3], m)
  if s > 0 then redis.call('DECRBY', KEYS[5], s) end
end
""".replace("_BATCH_", str(_PRUNE_BATCH))
# KEYS: value, marker, exp, sizes, total. ARGV: member, blob, ttl_ms, size, max_items, max_bytes.
# Returns 1 held, -1 id already pending, -2 too many, or the bytes held when over the cap.
_PUT = (
    _PRUNE
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return -2 end
local total = tonumber(redis.call('GET', KEYS[5]) or '0')
local size = tonumber(ARGV[4])
if total + size > tonumber(ARGV[6]) then return {total} end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('SET', KEYS[2], '1', 'PX', ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], size)
redis.call('INCRBY', KEYS[5], size)
for i = 3, 5 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""
)
# KEYS: value, marker, exp, sizes, total. ARGV: member. Returns the sealed context or nil.
_TAKE = (
    _PRUNE
    + """
local v = redis.call('GETDEL', KEYS[1])
if not v then return false end
redis.call('DEL', KEYS[2])
local s = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if s > 0 then redis.call('DECRBY', KEYS[5], s) end
return v
"""
)


def load_keys(env_name: str, environ: Mapping[str, str] | None = None) -> list[bytes]:
    """The AES-256 keys in ``env_name``: base64 of 32 bytes each, comma-separated. The first
    seals, every one opens, so keys rotate without losing waiting requests: add the new key
    second on every replica, then move it first, then drop the old one after pending_ttl.
    Errors name the variable, never its value."""
    source = os.environ if environ is None else environ
    raw = source.get(env_name, "").strip()
    how = (
        'generate one with: python -c "import base64,os; print(base64.b64encode(os.urandom(32))'
        '.decode())"; every replica needs the same key'
    )
    if not raw:
        raise PendingConfigError(
            f"server.pending_key_env: environment variable {env_name} is not set; pending "
            f"request contexts are kept in Redis and must be encrypted: {how}"
        )
    keys = []
    for n, text in enumerate((t.strip() for t in raw.split(",")), start=1):
        padded = text + "=" * (-len(text) % 4)
        try:
            key = base64.b64decode(padded, validate=True)
        except binascii.Error:
            try:  # the URL-safe alphabet (secrets.token_urlsafe) is accepted too
                key = base64.b64decode(padded, altchars=b"-_", validate=True)
            except binascii.Error:
                raise PendingConfigError(
                    f"server.pending_key_env: key {n} in {env_name} is not valid base64: {how}"
                ) from None
        if len(key) != 32:
            raise PendingConfigError(
                f"server.pending_key_env: key {n} in {env_name} decodes to {len(key)} bytes, "
                f"AES-256 needs 32: {how}"
            )
        keys.append(key)
    return keys


def check_redis_settings(
    config: SidecarConfig, url: str, environ: Mapping[str, str] | None = None
) -> tuple[RedisTarget, list[bytes]]:
    """The Redis target and keys of the pending store. Raises PendingConfigError."""
    auto = config.server.pending_store.strip() == "auto"
    try:
        target = parse_redis_url(url, "cache.exact_store" if auto else "server.pending_store")
    except RedisUrlError as exc:
        raise PendingConfigError(str(exc)) from None
    return target, load_keys(config.server.pending_key_env, environ)


class _ProjectUnpickler(pickle.Unpickler):
    """Resolves only this project's classes and numpy's array reconstruction."""

    _NUMPY = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
    }
    _BUILTINS = {"set", "frozenset"}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._NUMPY or (module == "builtins" and name in self._BUILTINS):
            return super().find_class(module, name)
        if module.split(".")[0] in ("sidecar", "guardrails"):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a pending context")


class ContextSeal:
    """Serialise + AES-GCM seal a context (and its secret), bound to its request id. The
    first key seals; any of them opens (rotation)."""

    def __init__(self, keys: list[bytes]) -> None:
        self._aeads = [AESGCM(key) for key in keys]

    def seal(self, ctx: RequestContext, secret: str) -> bytes:
        try:
            plain = pickle.dumps((secret, ctx), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise HookError(
                500,
                "pending_unserialisable",
                f"this request's context cannot be kept in the shared pending store "
                f"({type(exc).__name__}); a guardrail check keeps state that does not serialise",
            ) from None
        nonce = os.urandom(_NONCE_BYTES)
        aad = _AAD_PREFIX + ctx.request_id.encode()
        return nonce + self._aeads[0].encrypt(nonce, plain, aad)

    def open(self, request_id: str, blob: bytes) -> tuple[str, RequestContext]:
        """Raises InvalidTag when the blob was not sealed with this key for this id."""
        nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
        aad = _AAD_PREFIX + request_id.encode()
        for aead in self._aeads[:-1]:
            try:
                plain = aead.decrypt(nonce, sealed, aad)
                break
            except InvalidTag:
                continue
        else:
            plain = self._aeads[-1].decrypt(nonce, sealed, aad)
        secret, ctx = _ProjectUnpickler(io.BytesIO(plain)).load()
        if not isinstance(secret, str) or not isinstance(ctx, RequestContext):
            raise pickle.UnpicklingError("a pending context of an unexpected shape")
        return secret, ctx


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


class RedisPendingStore:
    name = "redis"

    def __init__(
        self,
        target: RedisTarget,
        prefix: str,
        keys: list[bytes],
        *,
        ttl: float,
        max_items: int,
        max_bytes: int,
        key_env: str = "",
    ) -> None:
        self.target = target
        self._prefix = f"{prefix}:{{pending}}"
        self._seal = ContextSeal(keys)
        self._ttl_ms = max(1, int(ttl * 1000))
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._key_env = key_env
        self._client: RedisClient = connect(target)
        self._scripts: dict[str, AsyncScript] = {}

    @classmethod
    def from_config(
        cls, config: SidecarConfig, url: str, environ: Mapping[str, str] | None = None
    ) -> RedisPendingStore:
        from sidecar.cache.stores.backends import _namespace

        target, keys = check_redis_settings(config, url, environ)
        server = config.server
        return cls(
            target,
            _namespace(config.cache),
            keys,
            ttl=server.pending_ttl,
            max_items=server.max_pending,
            max_bytes=server.max_pending_bytes,
            key_env=server.pending_key_env,
        )

    def _keys(self, request_id: str, secret: str) -> list[str]:
        p = self._prefix
        return [
            f"{p}:c:{_digest(request_id, secret)}",
            f"{p}:id:{_digest(request_id)}",
            f"{p}:exp",
            f"{p}:size",
            f"{p}:bytes",
        ]

    async def _call(self, op: str, fn: Callable[[RedisClient], Awaitable[Any]]) -> Any:
        try:
            return await fn(self._client)
        except REDIS_ERRORS as exc:
            raise unavailable(f"redis pending store ({op})", self.target, exc) from None

    async def _script(self, source: str, keys: list[str], args: list[Any], op: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return await self._call(op, lambda _c: script(keys=keys, args=args))

    async def put(self, ctx: RequestContext, secret: str, size: int) -> None:
        blob = self._seal.seal(ctx, secret)
        # The sealed bytes are what Redis holds; the estimate bounds what the request costs.
        size = max(size, len(blob))
        keys = self._keys(ctx.request_id, secret)
        args = [
            _digest(ctx.request_id),
            blob,
            self._ttl_ms,
            size,
            self._max_items,
            self._max_bytes,
        ]
        result = await self._script(_PUT, keys, args, "put")
        if result == -1:
            raise PendingConflict(ctx.request_id)
        if result == -2:
            raise overloaded_by_count(self._max_items, self._max_items)
        if isinstance(result, list):
            raise overloaded_by_bytes(int(result[0]), size, self._max_bytes)

    async def take(self, request_id: str, secret: str) -> RequestContext:
        keys = self._keys(request_id, secret)
        blob = await self._script(_TAKE, keys, [_digest(request_id)], "take")
        if blob is None:
            raise PendingUnknown(request_id)
        try:
            stored_secret, ctx = self._seal.open(request_id, bytes(blob))
        except (InvalidTag, pickle.UnpicklingError, ValueError, EOFError) as exc:
            # Another key (replicas configured differently) or tampering; never the content.
            # The unpickler's message names a class, never data; InvalidTag says nothing more.
            detail = str(exc) if isinstance(exc, pickle.UnpicklingError) else ""
            log.error("pending context could not be opened: %s %s", type(exc).__name__, detail)
            raise HookError(
                503,
                "pending_unreadable",
                "the pending context of this request_id could not be authenticated: every "
                f"replica needs the same key in {self._key_env or 'server.pending_key_env'}",
            ) from None
        if not secrets_match(stored_secret, secret) or ctx.request_id != request_id:
            raise PendingUnknown(request_id)
        return ctx

    async def contains(self, request_id: str) -> bool:
        marker = f"{self._prefix}:id:{_digest(request_id)}"
        return bool(await self._call("contains", lambda c: c.exists(marker)))

    async def stats(self) -> PendingStats:
        p = self._prefix

        async def both(c: RedisClient) -> tuple[int, int]:
            count = await c.zcard(f"{p}:exp")
            total = await c.get(f"{p}:bytes")
            return int(count), int(total or 0)

        items, total = await self._call("stats", both)
        return PendingStats(items, total)

    async def close(self) -> None:
        await self._client.aclose()
