"""The vector index on Qdrant (qdrant-client, async).

URL forms (``cache.vector_store``):

- ``qdrant://host:6333``        REST; ``qdrants://host:6333`` for HTTPS
- ``qdrant+grpc://host:6334``   gRPC for points traffic (REST port: ``?http_port=6333``);
  ``qdrants+grpc://`` with TLS
- ``qdrant+local://:memory:``   qdrant-client's local mode, in memory (tests, demos)
- ``qdrant+local:///abs/dir``   local mode persisted in a directory (``qdrant+local://rel/dir``)

An API key goes in the URL's password (``qdrant://:KEY@host:6333``) or, better, in an
environment variable named by ``?api_key_env=QDRANT_API_KEY``. ``?timeout=`` sets seconds.

One collection per namespace (``<prefix>_<slug>``: the slug encodes model and dimension), cosine
distance, payload indexes on ``scope``, ``partition`` (16-hex hashes) and ``expires_at``. Point
ids are UUIDv5 of the entry id (Qdrant accepts only integers and UUIDs); the entry id rides in
the payload. Expired points are filtered out of every search and removed by ``sweep``.
Local mode is exact (no HNSW) and slow at scale: tests only.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from qdrant_client import AsyncQdrantClient, models

from sidecar.cache.stores.backends import BackendConfigError
from sidecar.cache.stores.base import Neighbour, StoreUnavailable, as_vector
from sidecar.cache.stores.redis_conn import namespace_slug, short_hash

log = logging.getLogger("sidecar.cache.qdrant")

SCHEMES = ("qdrant", "qdrants", "qdrant+grpc", "qdrants+grpc", "qdrant+local")
_POINT_NAMESPACE = uuid.UUID("6f1d7a52-3c0e-5b8e-9d4a-2f61c0de7a11")
_OPTIONS = ("api_key_env", "timeout", "http_port")


@dataclass(frozen=True, slots=True)
class QdrantTarget:
    kwargs: dict[str, Any]  # for AsyncQdrantClient (may hold the API key: never logged)
    safe: str

    def __repr__(self) -> str:
        return f"QdrantTarget({self.safe!r})"


def parse_qdrant_url(url: str, setting: str = "cache.vector_store") -> QdrantTarget:
    """Check a Qdrant URL. Raises BackendConfigError naming the problem."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise BackendConfigError(f"{setting}: scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    if scheme == "qdrant+local":
        location = rest.split("?", 1)[0]
        if not location:
            raise BackendConfigError(
                f"{setting}: qdrant+local needs a directory or :memory: "
                "(qdrant+local:///var/lib/cache, qdrant+local://:memory:)"
            )
        if location == ":memory:":
            return QdrantTarget({"location": ":memory:"}, "qdrant+local://:memory:")
        return QdrantTarget({"path": location}, f"qdrant+local://{location}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BackendConfigError(f"{setting}: invalid Qdrant URL ({exc})") from None
    if not parts.hostname:
        raise BackendConfigError(f"{setting}: Qdrant URL has no host (qdrant://host:6333)")
    options = dict(parse_qsl(parts.query))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise BackendConfigError(
            f"{setting}: unknown Qdrant URL option(s) {', '.join(unknown)} "
            f"(known: {', '.join(_OPTIONS)})"
        )
    grpc = scheme.endswith("+grpc")
    kwargs: dict[str, Any] = {
        "host": parts.hostname,
        "https": scheme.startswith("qdrants"),
        "prefer_grpc": grpc,
        # The server's version check is a blocking call at construction: skip it, so a server
        # that is down at start cannot stall or stop the sidecar.
        "check_compatibility": False,
    }
    try:
        kwargs["timeout"] = int(float(options.get("timeout", "2")))
        if grpc:
            kwargs["grpc_port"] = port or 6334
            kwargs["port"] = int(options.get("http_port", "6333"))
        else:
            kwargs["port"] = port or 6333
    except ValueError:
        raise BackendConfigError(f"{setting}: timeout and http_port must be numbers") from None
    if parts.password:
        kwargs["api_key"] = parts.password
    elif "api_key_env" in options:
        name = options["api_key_env"]
        key = os.environ.get(name)
        if not key:
            raise BackendConfigError(f"{setting}: environment variable {name} is not set")
        kwargs["api_key"] = key
    safe = f"{scheme}://{parts.hostname}:{kwargs.get('grpc_port', kwargs['port'])}"
    return QdrantTarget(kwargs, safe)


def _describe(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # grpc.aio.AioRpcError
        return f"{getattr(code(), 'name', code())}: {details()}"
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def point_id(entry_id: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, entry_id))


def _collection_name(prefix: str, namespace: str) -> str:
    raw = f"{prefix}_{namespace_slug(namespace)}"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)


class QdrantVectorIndex:
    name = "qdrant"

    def __init__(
        self, target: QdrantTarget, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.target = target
        self.prefix = prefix
        self._clock = clock
        self._client = AsyncQdrantClient(**target.kwargs)
        self._dimension = 0
        self.collection = ""
        self._ready = False

    async def _call(self, op: str, fn: Callable[[AsyncQdrantClient], Awaitable[Any]]) -> Any:
        try:
            return await fn(self._client)
        except Exception as exc:  # httpx, grpc and qdrant errors alike mean "not available"
            if "not found" in str(exc).lower():
                self._ready = False  # collection dropped behind our back: recreate next call
            detail = _describe(exc)
            api_key = self.target.kwargs.get("api_key")
            if api_key:
                detail = detail.replace(api_key, "***")
            raise StoreUnavailable(
                f"qdrant vector store ({op}) at {self.target.safe}: {type(exc).__name__}: {detail}"
            ) from None

    # -- lifecycle
    async def start(self, namespace: str, dimension: int) -> None:
        self._dimension = dimension
        self.collection = _collection_name(self.prefix, namespace)
        try:
            await self._ensure()
        except StoreUnavailable as exc:
            log.error("cache backend unavailable at start, serving uncached: %s", exc)

    async def _ensure(self) -> None:
        if self._ready:
            return
        name = self.collection
        if not await self._call("collection_exists", lambda c: c.collection_exists(name)):
            try:
                await self._client.create_collection(
                    name,
                    vectors_config=models.VectorParams(
                        size=self._dimension, distance=models.Distance.COSINE
                    ),
                )
            except Exception as exc:  # another replica may have created it meanwhile
                if not await self._call("collection_exists", lambda c: c.collection_exists(name)):
                    await self._call("create_collection", _reraise(exc))
            indexes: tuple[tuple[str, models.PayloadSchemaType], ...] = (
                ("scope", models.PayloadSchemaType.KEYWORD),
                ("partition", models.PayloadSchemaType.KEYWORD),
                ("expires_at", models.PayloadSchemaType.FLOAT),
            )
            if "location" in self.target.kwargs or "path" in self.target.kwargs:
                indexes = ()  # local mode filters by scanning, and warns about payload indexes
            for field, schema in indexes:
                await self._call("create_payload_index", _payload_index(name, field, schema))
        self._ready = True

    async def close(self) -> None:
        await self._client.close()

    async def health(self) -> str | None:
        try:
            await self._ensure()
            name = self.collection
            if not await self._call("health", lambda c: c.collection_exists(name)):
                self._ready = False
                return f"qdrant collection {name} is missing"
        except StoreUnavailable as exc:
            return str(exc)
        return None

    # -- VectorIndex
    def _vector(self, vector: Sequence[float]) -> list[float]:
        result: list[float] = as_vector(vector, self._dimension).tolist()
        return result

    async def add(
        self, entry_id: str, scope: str, partition: str, vector: Sequence[float], expires_at: float
    ) -> None:
        point = models.PointStruct(
            id=point_id(entry_id),
            vector=self._vector(vector),
            payload={
                "entry_id": entry_id,
                "scope": short_hash(scope),
                "partition": short_hash(partition),
                "expires_at": float(expires_at),
            },
        )
        await self._ensure()
        await self._call("add", lambda c: c.upsert(self.collection, [point], wait=True))

    async def search(self, scope: str, vector: Sequence[float], k: int) -> list[Neighbour]:
        query = self._vector(vector)
        await self._ensure()
        in_scope = models.MatchValue(value=short_hash(scope))
        live = models.Filter(
            must=[
                models.FieldCondition(key="scope", match=in_scope),
                models.FieldCondition(key="expires_at", range=models.Range(gt=self._clock())),
            ]
        )
        reply = await self._call(
            "search",
            lambda c: c.query_points(
                self.collection,
                query=query,
                query_filter=live,
                limit=int(k),
                with_payload=["entry_id"],
            ),
        )
        found = [
            Neighbour(str((p.payload or {})["entry_id"]), float(p.score)) for p in reply.points
        ]
        found.sort(key=lambda n: -n.similarity)
        return found

    async def remove(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        ids: list[int | str] = [point_id(i) for i in entry_ids]
        await self._ensure()
        await self._call(
            "remove",
            lambda c: c.delete(self.collection, models.PointIdsList(points=ids), wait=True),
        )

    async def _delete_where(self, op: str, where: models.Filter) -> None:
        await self._ensure()
        await self._call(
            op, lambda c: c.delete(self.collection, models.FilterSelector(filter=where), wait=True)
        )

    async def remove_partition(self, partition: str) -> None:
        match = models.MatchValue(value=short_hash(partition))
        await self._delete_where(
            "remove_partition",
            models.Filter(must=[models.FieldCondition(key="partition", match=match)]),
        )

    async def sweep(self) -> None:
        """Delete points whose ``expires_at`` has passed (searches already skip them)."""
        expired = models.Range(lte=self._clock())
        await self._delete_where(
            "sweep", models.Filter(must=[models.FieldCondition(key="expires_at", range=expired)])
        )

    async def count(self) -> int:
        await self._ensure()
        reply = await self._call("count", lambda c: c.count(self.collection, exact=True))
        return int(reply.count)


def _payload_index(
    collection: str, field: str, schema: models.PayloadSchemaType
) -> Callable[[AsyncQdrantClient], Awaitable[Any]]:
    async def create(client: AsyncQdrantClient) -> Any:
        return await client.create_payload_index(collection, field, field_schema=schema)

    return create


def _reraise(exc: Exception) -> Callable[[AsyncQdrantClient], Awaitable[Any]]:
    async def fail(_client: AsyncQdrantClient) -> Any:
        raise exc

    return fail
