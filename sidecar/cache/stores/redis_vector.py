"""The vector index on Redis / Valkey with a search module (RediSearch: Redis Stack, Redis 8,
Valkey + RediSearch; valkey-search speaks the same commands).

One index per namespace (``P:vidx:<slug>`` over hashes ``P:v:<slug>:<id>``, where the slug
encodes model and dimension, so vectors of two models never meet):

    FT.CREATE idx ON HASH PREFIX 1 P:v:<slug>: SCHEMA scope TAG partition TAG
        expires_at NUMERIC vec VECTOR HNSW 12 TYPE FLOAT32 DIM d DISTANCE_METRIC COSINE ...

``scope`` and ``partition`` hold 16-hex hashes, so TAG queries need no escaping. A search is a
KNN query prefiltered on the scope (DIALECT 2). It does not use ``SORTBY``: valkey-search
rejects sorting on the KNN score (Bifrost's semantic search never hits on Valkey for that
reason); results are sorted here instead (RediSearch does not order them in every hybrid mode).
Similarity = 1 - cosine distance. TTL is native: each hash gets a ``PEXPIRE`` (its
``expires_at`` field is indexed for operators' queries, not filtered on per search).

Empty scopes: each scope that received a vector has a marker ``P:vs:<slug>:<scope hash>``
whose expiry is pushed out to its longest-lived vector's. ``scope_is_empty`` is one ``EXISTS``;
it is shared by every replica and errs one way only: deletions do not clear the marker (the
lookup then embeds as before), but no live vector exists without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from sidecar.cache.stores.backends import BackendConfigError
from sidecar.cache.stores.base import Neighbour, StoreUnavailable, as_vector, unit
from sidecar.cache.stores.redis_conn import (
    REDIS_ERRORS,
    RedisClient,
    RedisTarget,
    connect,
    in_flight_limit,
    namespace_slug,
    short_hash,
    unavailable,
)

log = logging.getLogger("sidecar.cache.redis")

# EF_CONSTRUCTION trades write cost (each store inserts into the graph on the server) for
# recall; 128 with EF_RUNTIME 64 kept top-1 recall at ~0.98 on 100k random 384-d vectors.
_HNSW = ("M", 16, "EF_CONSTRUCTION", 128, "EF_RUNTIME", 64)
_DELETE_BATCH = 1000
#: extend a key's expiry to ARGV[1] ms unless it already lives longer (any Redis version)
_EXTEND_TTL = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _search_total(reply: Any) -> int:
    if isinstance(reply, dict):
        return int({_text(k): v for k, v in reply.items()}.get("total_results", 0))
    return int(reply[0])


def _search_rows(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """(key, returned fields) of an FT.SEARCH reply, RESP2 or RESP3, with or without content."""
    rows: list[tuple[str, dict[str, str]]] = []
    if isinstance(reply, dict):  # RESP3: {"results": [{"id": k, "extra_attributes": {...}}]}
        named = {_text(k): v for k, v in reply.items()}
        for result in named.get("results", []):
            item = {_text(k): v for k, v in result.items()}
            extra = item.get("extra_attributes") or {}
            fields = {_text(k): _text(v) for k, v in extra.items()}
            rows.append((_text(item["id"]), fields))
        return rows
    items = list(reply[1:])  # RESP2: [total, key, [field, value, ...], key, ...]
    with_content = len(items) >= 2 and isinstance(items[1], list)
    step = 2 if with_content else 1
    for i in range(0, len(items), step):
        values = items[i + 1] if with_content else []
        fields = {_text(values[j]): _text(values[j + 1]) for j in range(0, len(values) - 1, 2)}
        rows.append((_text(items[i]), fields))
    return rows


def _missing_index(exc: ResponseError) -> bool:
    text = str(exc).lower()
    return "unknown index" in text or "no such index" in text


class RedisVectorIndex:
    name = "redis"

    def __init__(
        self, target: RedisTarget, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.target = target
        self.prefix = prefix
        self._clock = clock
        self._client: RedisClient = connect(target)
        self._limit = in_flight_limit(target)
        self._dimension = 0
        self.index = ""
        self._key_prefix = ""
        self._scope_prefix = ""
        self._ready = False  # index known to exist; re-checked after errors

    async def _call(self, op: str, fn: Callable[[RedisClient], Awaitable[Any]]) -> Any:
        try:
            async with self._limit:
                return await fn(self._client)
        except ResponseError as exc:
            if _missing_index(exc):
                self._ready = False
            raise unavailable(f"redis vector store ({op})", self.target, exc) from None
        except REDIS_ERRORS as exc:
            raise unavailable(f"redis vector store ({op})", self.target, exc) from None

    async def _indexed(self, op: str, fn: Callable[[RedisClient], Awaitable[Any]]) -> Any:
        """A call that needs the index; an index that vanished (server restarted empty,
        FLUSHALL) is recreated once and the call retried, so recovery needs no restart."""
        await self._ensure()
        try:
            return await self._call(op, fn)
        except StoreUnavailable:
            if self._ready:
                raise
        await self._ensure()
        return await self._call(op, fn)

    # -- lifecycle
    async def start(self, namespace: str, dimension: int) -> None:
        slug = namespace_slug(namespace)
        self._dimension = dimension
        self.index = f"{self.prefix}:vidx:{slug}"
        self._key_prefix = f"{self.prefix}:v:{slug}:"
        self._scope_prefix = f"{self.prefix}:vs:{slug}:"
        try:
            await self._ensure()
        except StoreUnavailable as exc:
            # Down at start: serve uncached; the index is created on the first call that works.
            log.error("cache backend unavailable at start, serving uncached: %s", exc)

    async def _ensure(self) -> None:
        if self._ready:
            return
        args: list[Any] = [
            "FT.CREATE", self.index, "ON", "HASH", "PREFIX", 1, self._key_prefix,
            "SCHEMA", "scope", "TAG", "partition", "TAG", "expires_at", "NUMERIC",
            "vec", "VECTOR", "HNSW", 6 + len(_HNSW),
            "TYPE", "FLOAT32", "DIM", self._dimension, "DISTANCE_METRIC", "COSINE", *_HNSW,
        ]  # fmt: skip
        try:
            await self._client.execute_command(*args)
        except ResponseError as exc:
            text = str(exc).lower()
            if "unknown command" in text:
                raise BackendConfigError(
                    f"cache.vector_store: {self.target.safe} has no search module "
                    "(FT.CREATE unknown): use Redis Stack, Redis 8, or Valkey with "
                    "valkey-search / RediSearch"
                ) from None
            if "already exists" not in text:
                raise unavailable("redis vector store (create index)", self.target, exc) from None
        except REDIS_ERRORS as exc:
            raise unavailable("redis vector store (create index)", self.target, exc) from None
        self._ready = True

    async def close(self) -> None:
        client = self._client
        if hasattr(client, "connection_pool"):
            await client.aclose(close_connection_pool=True)  # type: ignore[call-arg]
        else:
            await client.aclose()

    async def health(self) -> str | None:
        try:
            await self._indexed("info", lambda c: c.execute_command("FT.INFO", self.index))
        except (StoreUnavailable, BackendConfigError) as exc:
            return str(exc)
        return None

    # -- VectorIndex
    def _blob(self, vector: Sequence[float]) -> bytes:
        return bytes(unit(as_vector(vector, self._dimension)).tobytes())

    async def add(
        self, entry_id: str, scope: str, partition: str, vector: Sequence[float], expires_at: float
    ) -> None:
        blob = self._blob(vector)
        key = self._key_prefix + entry_id
        ttl_ms = int((expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            await self.remove([entry_id])
            return
        await self._ensure()
        fields = {
            "scope": short_hash(scope),
            "partition": short_hash(partition),
            "expires_at": repr(expires_at),
            "vec": blob,
        }

        marker = self._scope_prefix + short_hash(scope)

        async def write(c: RedisClient) -> Any:
            pipe = c.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, ttl_ms)
            pipe.eval(_EXTEND_TTL, 1, marker, ttl_ms)
            return await pipe.execute()

        await self._call("add", write)

    async def scope_is_empty(self, scope: str) -> bool:
        """True when no vector of ``scope`` can be live (see the module's notes)."""
        marker = self._scope_prefix + short_hash(scope)
        found = await self._call("scope_is_empty", lambda c: c.exists(marker))
        return not found

    async def search(self, scope: str, vector: Sequence[float], k: int) -> list[Neighbour]:
        blob = self._blob(vector)
        # No expires_at range in the prefilter: it made the query 20-25% slower, and native
        # PEXPIRE already drops expired hashes (the cache layer re-checks every candidate).
        query = f"(@scope:{{{short_hash(scope)}}})=>[KNN {int(k)} @vec $B AS dist]"
        args = ("FT.SEARCH", self.index, query, "PARAMS", 2, "B", blob,
                "RETURN", 1, "dist", "LIMIT", 0, int(k), "DIALECT", 2)  # fmt: skip
        reply = await self._indexed("search", lambda c: c.execute_command(*args))
        found = [
            Neighbour(key[len(self._key_prefix) :], 1.0 - float(fields["dist"]))
            for key, fields in _search_rows(reply)
        ]
        found.sort(key=lambda n: -n.similarity)
        return found

    async def remove(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        keys = [self._key_prefix + i for i in entry_ids]

        async def delete(c: RedisClient) -> Any:
            pipe = c.pipeline(transaction=False)
            for key in keys:  # one DEL per key: in Cluster they live in different slots
                pipe.delete(key)
            return await pipe.execute()

        await self._call("remove", delete)

    async def remove_partition(self, partition: str) -> None:
        query = f"@partition:{{{short_hash(partition)}}}"
        args = ("FT.SEARCH", self.index, query, "NOCONTENT", "LIMIT", 0, _DELETE_BATCH,
                "DIALECT", 2)  # fmt: skip
        total = None
        rounds = 0
        while True:
            reply = await self._indexed("remove_partition", lambda c: c.execute_command(*args))
            if total is None:
                total = _search_total(reply)
            keys = [key for key, _ in _search_rows(reply)]
            if not keys:
                return
            await self.remove([k[len(self._key_prefix) :] for k in keys])
            rounds += 1
            if rounds > total // _DELETE_BATCH + 3:  # writes racing the delete: stop anyway
                return

    async def count(self) -> int:
        info = await self._indexed("count", lambda c: c.execute_command("FT.INFO", self.index))
        if not isinstance(info, dict):
            info = {info[i]: info[i + 1] for i in range(0, len(info) - 1, 2)}
        fields = {_text(k): v for k, v in info.items()}
        num_docs = fields.get("num_docs", 0)
        return int(float(_text(num_docs) if isinstance(num_docs, bytes | str) else num_docs))
