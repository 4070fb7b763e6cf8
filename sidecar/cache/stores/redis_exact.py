"""The exact store on Redis / Valkey (standalone or Cluster), shared by every sidecar replica.

Key layout (``P`` = ``cache.namespace``, ``h`` = 16-hex hash of the partition):

- ``P:{h}:e:<id>``  the entry (``CacheEntry.to_bytes`` without its vector), ``PX`` = its TTL
- ``P:{h}:m``       sorted set of the partition's ids scored by ``expires_at``; it expires with
  its longest-lived entry and is pruned of expired ids on every write, so it cannot grow forever
- ``P:{h}:l:<id>``  single-flight lock of a key in flight (``SET NX PX``)
- ``P:i:<id>``      the partition hash of an id, same TTL: deletion by id alone (admin API)
- ``P:parts``       sorted set of partition hashes by latest expiry: counting entries walks the
  partitions, never the whole (possibly shared) keyspace

The ``{h}`` hash tag puts a partition's entries, member set and locks in one Cluster slot, so the
scripts that touch several of them run atomically on one node. Every entry carries a native
expiry (Bifrost's Redis store writes none and grows forever). The vector is not stored: the
vector store keeps its own copy. TTLs are computed against the cache's clock, so a test clock
moves logical expiry while Redis expires keys in real time; ``get`` checks both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.commands.core import AsyncScript

from sidecar.cache.model import CacheEntry, UnreadableEntry
from sidecar.cache.single_flight import new_token
from sidecar.cache.stores.base import UnreadableCounter
from sidecar.cache.stores.redis_conn import (
    REDIS_ERRORS,
    RedisClient,
    RedisTarget,
    connect,
    in_flight_limit,
    short_hash,
    unavailable,
)

log = logging.getLogger("sidecar.cache.redis")

# KEYS: entry, members. ARGV: id, data, ttl_ms, expires_at, now.
_PUT = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""
# KEYS: entry, members. ARGV: id.
_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
"""
# KEYS: members. ARGV: entry key prefix (same hash tag, so same slot), batch size.
# Pops a batch so a huge partition never blocks the server in one long script.
_DELETE_BATCH = """
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
local gone = {}
for i = 1, #popped, 2 do
  if redis.call('DEL', ARGV[1] .. popped[i]) == 1 then gone[#gone + 1] = popped[i] end
end
return {gone, redis.call('ZCARD', KEYS[1])}
"""
# KEYS: partition registry. ARGV: partition hash, expires_at, ttl_ms.
_REGISTER = """
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""
# KEYS: lock. ARGV: token. Only the owner may release.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_BATCH = 500


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisExactStore:
    name = "redis"
    report_unreadable: UnreadableCounter = staticmethod(lambda n: None)  # set by the cache

    def __init__(
        self,
        target: RedisTarget,
        prefix: str,
        clock: Callable[[], float] = time.time,
        count_interval: float = 5.0,
    ) -> None:
        self.target = target
        self.prefix = prefix
        self._clock = clock
        self._client: RedisClient = connect(target)
        self._limit = in_flight_limit(target)
        self._scripts: dict[str, AsyncScript] = {}
        # count() reads every partition: memoised, since the cache refreshes its gauge per write.
        self._count_interval = count_interval
        self._count: tuple[float, int] | None = None

    # -- keys
    def _tag(self, partition: str) -> str:
        return f"{self.prefix}:{{{short_hash(partition)}}}"

    def _entry_key(self, tag: str, entry_id: str) -> str:
        return f"{tag}:e:{entry_id}"

    @property
    def _parts_key(self) -> str:
        return f"{self.prefix}:parts"

    def _index_key(self, entry_id: str) -> str:
        return f"{self.prefix}:i:{entry_id}"

    def lock_key(self, partition: str, key: str) -> str:
        return f"{self._tag(partition)}:l:{key}"

    # -- plumbing
    async def call(self, op: str, fn: Callable[[RedisClient], Awaitable[Any]]) -> Any:
        """Run one client call; every Redis failure becomes StoreUnavailable (no secrets)."""
        try:
            async with self._limit:
                return await fn(self._client)
        except REDIS_ERRORS as exc:
            raise unavailable(f"redis exact store ({op})", self.target, exc) from None

    async def script(self, source: str, keys: list[str], args: list[Any], op: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return await self.call(op, lambda _c: script(keys=keys, args=args))

    # -- lifecycle
    async def start(self) -> None:
        # A backend that is down at start must not stop the sidecar: it serves uncached and
        # recovers on its own (the pool reconnects on the next call).
        if (why := await self.health()) is not None:
            log.error("cache backend unavailable at start, serving uncached: %s", why)

    async def close(self) -> None:
        client = self._client
        if hasattr(client, "connection_pool"):
            await client.aclose(close_connection_pool=True)  # type: ignore[call-arg]
        else:
            await client.aclose()

    async def health(self) -> str | None:
        try:
            await self.call("ping", lambda c: c.ping())
        except Exception as exc:  # StoreUnavailable, or a cluster still discovering its nodes
            return str(exc)
        return None

    # -- ExactStore
    async def get(self, entry_id: str, partition: str | None = None) -> CacheEntry | None:
        if partition is None:
            tag_hash = await self.call("get", lambda c: c.get(self._index_key(entry_id)))
            if tag_hash is None:
                return None
            tag = f"{self.prefix}:{{{_text(tag_hash)}}}"
        else:
            tag = self._tag(partition)
        raw = await self.call("get", lambda c: c.get(self._entry_key(tag, entry_id)))
        if raw is None:
            return None
        try:
            entry = CacheEntry.from_bytes(raw)
        except UnreadableEntry as exc:
            # A miss, never an error: the answer is fetched again and overwrites this key. Not
            # deleted here: during a rolling upgrade a newer replica may have written it.
            log.warning("redis cache entry %r cannot be read, treated as a miss: %s", entry_id, exc)
            self.report_unreadable(1)
            return None
        if entry.id != entry_id or entry.expired(self._clock()):
            return None
        return entry

    async def put(self, entry: CacheEntry) -> list[str]:
        """Redis evicts by its own ``maxmemory-policy``; no ids are reported evicted."""
        now = self._clock()
        ttl_ms = int((entry.expires_at - now) * 1000)
        if ttl_ms <= 0:  # already expired: nothing to keep, and an old copy must not survive
            await self.delete(entry.id)
            return []
        tag = self._tag(entry.partition)
        data = dataclasses.replace(entry, vector=None).to_bytes()
        tag_hash = short_hash(entry.partition)
        put = self.script(
            _PUT,
            [self._entry_key(tag, entry.id), f"{tag}:m"],
            [entry.id, data, ttl_ms, repr(entry.expires_at), repr(now)],
            "put",
        )
        index = self.call(
            "put",
            lambda c: c.set(self._index_key(entry.id), tag_hash, px=ttl_ms, get=True),
        )
        register = self.script(
            _REGISTER, [self._parts_key], [tag_hash, repr(entry.expires_at), ttl_ms], "put"
        )
        _, previous, _ = await asyncio.gather(put, index, register)
        if previous is not None and _text(previous) != tag_hash:
            # The id moved to another partition: drop the copy left under the old one.
            old = f"{self.prefix}:{{{_text(previous)}}}"
            await self.script(
                _DELETE, [self._entry_key(old, entry.id), f"{old}:m"], [entry.id], "put"
            )
        return []

    async def delete(self, entry_id: str) -> bool:
        tag_hash = await self.call("delete", lambda c: c.get(self._index_key(entry_id)))
        if tag_hash is None:
            return False
        tag = f"{self.prefix}:{{{_text(tag_hash)}}}"
        removed = await self.script(
            _DELETE, [self._entry_key(tag, entry_id), f"{tag}:m"], [entry_id], "delete"
        )
        await self.call("delete", lambda c: c.delete(self._index_key(entry_id)))
        self._count = None
        return bool(removed)

    async def delete_partition(self, partition: str) -> list[str]:
        tag = self._tag(partition)
        members = f"{tag}:m"
        total = int(await self.call("delete_partition", lambda c: c.zcard(members)))
        gone: list[str] = []
        # Bounded: the batches present at the start, plus a few for writes racing the delete.
        for _ in range(total // _BATCH + 3):
            ids, remaining = await self.script(
                _DELETE_BATCH, [members], [f"{tag}:e:", _BATCH], "delete_partition"
            )
            batch = [_text(i) for i in ids]
            gone.extend(batch)
            if batch:
                index_keys = [self._index_key(i) for i in batch]
                await self.call("delete_partition", _delete_each(index_keys))
            if not int(remaining):
                break
        await self.call(
            "delete_partition", lambda c: c.zrem(self._parts_key, short_hash(partition))
        )
        self._count = None
        return gone

    async def count(self) -> int:
        now = time.monotonic()
        if self._count is not None and now - self._count[0] < self._count_interval:
            return self._count[1]
        clock_now = repr(self._clock())

        async def live_entries(c: RedisClient) -> int:
            await c.zremrangebyscore(self._parts_key, "-inf", clock_now)
            parts = await c.zrange(self._parts_key, 0, -1)
            if not parts:
                return 0
            pipe = c.pipeline(transaction=False)
            for part in parts:  # one ZCOUNT per partition: each lives in its own slot
                tag_hash = part.decode() if isinstance(part, bytes) else str(part)
                pipe.zcount(f"{self.prefix}:{{{tag_hash}}}:m", f"({clock_now}", "+inf")
            return sum(int(n) for n in await pipe.execute())

        value = int(await self.call("count", live_entries))
        self._count = (now, value)
        return value

    def miss_lock(self) -> RedisMissLock:
        return RedisMissLock(self)


def _delete_each(keys: list[str]) -> Callable[[RedisClient], Awaitable[Any]]:
    async def delete(client: RedisClient) -> Any:
        # One DEL per key: in Cluster the keys live in different slots.
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        return await pipe.execute()

    return delete


class RedisMissLock:
    """Single-flight across replicas: ``SET NX PX`` in the partition's slot, owner-only release.

    Waiters poll for the lock's disappearance (a few ms apart, backing off to 50 ms): one
    ``EXISTS`` per poll, and no connection held between polls.
    """

    name = "redis"

    def __init__(self, store: RedisExactStore) -> None:
        self._store = store

    async def acquire(self, key: str, partition: str, ttl: float) -> str | None:
        token = new_token()
        lock = self._store.lock_key(partition, key)
        ms = max(1, int(ttl * 1000))
        taken = await self._store.call("lock", lambda c: c.set(lock, token, nx=True, px=ms))
        return token if taken else None

    async def wait(self, key: str, partition: str, timeout: float) -> bool:
        lock = self._store.lock_key(partition, key)
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            if not await self._store.call("lock", lambda c: c.exists(lock)):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)

    async def release(self, key: str, partition: str, token: str) -> None:
        lock = self._store.lock_key(partition, key)
        await self._store.script(_RELEASE, [lock], [token], "unlock")
