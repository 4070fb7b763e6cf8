"""The vector index on Weaviate (weaviate-client v4, async).

URL forms (``cache.vector_store``):

- ``weaviate://host:8080``   HTTP, with gRPC on the same host at port 50051
- ``weaviates://host:443``   HTTPS and TLS gRPC
- options: ``?grpc_port=50051``, ``?grpc_host=other-host``, ``?timeout=5`` (seconds),
  ``?api_key_env=WEAVIATE_API_KEY`` (or the key as the URL's password)

One collection per namespace (``<Prefix>_<slug>``: the slug encodes model and dimension), with
self-provided vectors in an HNSW index with cosine distance, and filterable properties
``entry_id``, ``scope`` and ``partition`` (16-hex hashes, exact-match tokenisation) and
``expires_at``. Object UUIDs are UUIDv5 of the entry id, so a re-added entry replaces itself.
Searches skip expired objects; ``sweep`` deletes them. Similarity = 1 - cosine distance.
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

from sidecar.cache.stores.backends import BackendConfigError
from sidecar.cache.stores.base import Neighbour, StoreUnavailable, as_vector
from sidecar.cache.stores.redis_conn import namespace_slug, short_hash

log = logging.getLogger("sidecar.cache.weaviate")

SCHEMES = ("weaviate", "weaviates")
_OBJECT_NAMESPACE = uuid.UUID("0b7a4c7e-58d2-5a43-8f0e-3c9d2b61e4f5")
_OPTIONS = ("grpc_port", "grpc_host", "timeout", "api_key_env")
_DELETE_ROUNDS = 100  # delete_many removes up to the server's query limit (10,000) per call


@dataclass(frozen=True, slots=True)
class WeaviateTarget:
    http_host: str
    http_port: int
    grpc_host: str
    grpc_port: int
    secure: bool
    timeout: float
    api_key: str | None
    safe: str

    def __repr__(self) -> str:
        return f"WeaviateTarget({self.safe!r})"


def parse_weaviate_url(url: str, setting: str = "cache.vector_store") -> WeaviateTarget:
    """Check a Weaviate URL. Raises BackendConfigError naming the problem."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BackendConfigError(f"{setting}: invalid Weaviate URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BackendConfigError(f"{setting}: scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    if not parts.hostname:
        raise BackendConfigError(f"{setting}: Weaviate URL has no host (weaviate://host:8080)")
    options = dict(parse_qsl(parts.query))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise BackendConfigError(
            f"{setting}: unknown Weaviate URL option(s) {', '.join(unknown)} "
            f"(known: {', '.join(_OPTIONS)})"
        )
    secure = scheme == "weaviates"
    try:
        grpc_port = int(options.get("grpc_port", "443" if secure else "50051"))
        timeout = float(options.get("timeout", "2"))
    except ValueError:
        raise BackendConfigError(f"{setting}: grpc_port and timeout must be numbers") from None
    api_key = parts.password or None
    if api_key is None and "api_key_env" in options:
        api_key = os.environ.get(options["api_key_env"]) or None
        if api_key is None:
            raise BackendConfigError(
                f"{setting}: environment variable {options['api_key_env']} is not set"
            )
    http_port = port or (443 if secure else 8080)
    return WeaviateTarget(
        http_host=parts.hostname,
        http_port=http_port,
        grpc_host=options.get("grpc_host", parts.hostname),
        grpc_port=grpc_port,
        secure=secure,
        timeout=timeout,
        api_key=api_key,
        safe=f"{scheme}://{parts.hostname}:{http_port}",
    )


def object_id(entry_id: str) -> str:
    return str(uuid.uuid5(_OBJECT_NAMESPACE, entry_id))


def _collection_name(prefix: str, namespace: str) -> str:
    raw = "".join(c if c.isalnum() else "_" for c in f"{prefix}_{namespace_slug(namespace)}")
    if not raw[:1].isalpha():
        raw = "C" + raw
    return raw[0].upper() + raw[1:]


class WeaviateVectorIndex:
    name = "weaviate"

    def __init__(
        self, target: WeaviateTarget, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.target = target
        self.prefix = prefix
        self._clock = clock
        self._client: Any = None  # WeaviateAsyncClient, made on first use
        self._dimension = 0
        self.collection = ""
        self._ready = False

    def _make_client(self) -> Any:
        import weaviate
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout

        t = self.target
        return weaviate.use_async_with_custom(
            http_host=t.http_host,
            http_port=t.http_port,
            http_secure=t.secure,
            grpc_host=t.grpc_host,
            grpc_port=t.grpc_port,
            grpc_secure=t.secure,
            auth_credentials=Auth.api_key(t.api_key) if t.api_key else None,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=t.timeout, query=t.timeout, insert=t.timeout)
            ),
            skip_init_checks=True,  # connect lazily; a down server must not stop start-up
        )

    async def _call(self, op: str, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            if self._client is None:
                self._client = self._make_client()
            if not self._client.is_connected():
                await self._client.connect()
            return await fn(self._client)
        except Exception as exc:  # connection, gRPC and server errors alike: not available
            self._ready = self._ready and "could not find class" not in str(exc).lower()
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.target.api_key:
                detail = detail.replace(self.target.api_key, "***")
            raise StoreUnavailable(
                f"weaviate vector store ({op}) at {self.target.safe}: "
                f"{type(exc).__name__}: {detail[:300]}"
            ) from None

    def _collection(self, client: Any) -> Any:
        return client.collections.get(self.collection)

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
        from weaviate.classes.config import (
            Configure,
            DataType,
            Property,
            Tokenization,
            VectorDistances,
        )

        async def create(client: Any) -> None:
            if await client.collections.exists(self.collection):
                return
            exact = Tokenization.FIELD
            try:
                await client.collections.create(
                    self.collection,
                    vectorizer_config=Configure.Vectorizer.none(),
                    vector_index_config=Configure.VectorIndex.hnsw(
                        distance_metric=VectorDistances.COSINE
                    ),
                    properties=[
                        Property(name="entry_id", data_type=DataType.TEXT, tokenization=exact),
                        Property(name="scope", data_type=DataType.TEXT, tokenization=exact),
                        Property(name="partition", data_type=DataType.TEXT, tokenization=exact),
                        Property(name="expires_at", data_type=DataType.NUMBER),
                    ],
                )
            except Exception:
                if not await client.collections.exists(self.collection):
                    raise  # not a race with another replica creating it

        await self._call("create collection", create)
        self._ready = True

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def health(self) -> str | None:
        try:
            await self._ensure()
            if not await self._call("health", lambda c: c.is_ready()):
                return f"weaviate at {self.target.safe} is not ready"
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
        from weaviate.classes.data import DataObject

        obj = DataObject(
            properties={
                "entry_id": entry_id,
                "scope": short_hash(scope),
                "partition": short_hash(partition),
                "expires_at": float(expires_at),
            },
            uuid=object_id(entry_id),
            vector=self._vector(vector),
        )

        async def insert(client: Any) -> None:
            # Batch insert overwrites an object with the same UUID: add is an upsert.
            result = await self._collection(client).data.insert_many([obj])
            if result.errors:
                raise RuntimeError(next(iter(result.errors.values())).message)

        await self._ensure()
        await self._call("add", insert)

    async def search(self, scope: str, vector: Sequence[float], k: int) -> list[Neighbour]:
        from weaviate.classes.query import Filter, MetadataQuery

        query = self._vector(vector)
        live = Filter.by_property("scope").equal(short_hash(scope)) & Filter.by_property(
            "expires_at"
        ).greater_than(self._clock())

        async def near(client: Any) -> Any:
            return await self._collection(client).query.near_vector(
                near_vector=query,
                limit=int(k),
                filters=live,
                return_metadata=MetadataQuery(distance=True),
                return_properties=["entry_id"],
            )

        await self._ensure()
        reply = await self._call("search", near)
        found = [
            Neighbour(str(o.properties["entry_id"]), 1.0 - float(o.metadata.distance))
            for o in reply.objects
        ]
        found.sort(key=lambda n: -n.similarity)
        return found

    async def _delete_where(self, op: str, where: Any) -> None:
        async def delete(client: Any) -> None:
            for _ in range(_DELETE_ROUNDS):
                result = await self._collection(client).data.delete_many(where=where)
                if not result.matches or result.matches == result.failed:
                    return

        await self._ensure()
        await self._call(op, delete)

    async def remove(self, entry_ids: Sequence[str]) -> None:
        from weaviate.classes.query import Filter

        if entry_ids:
            ids = [object_id(i) for i in entry_ids]
            await self._delete_where("remove", Filter.by_id().contains_any(ids))

    async def remove_partition(self, partition: str) -> None:
        from weaviate.classes.query import Filter

        where = Filter.by_property("partition").equal(short_hash(partition))
        await self._delete_where("remove_partition", where)

    async def sweep(self) -> None:
        """Delete objects whose ``expires_at`` has passed (searches already skip them)."""
        from weaviate.classes.query import Filter

        where = Filter.by_property("expires_at").less_or_equal(self._clock())
        await self._delete_where("sweep", where)

    async def count(self) -> int:
        async def total(client: Any) -> int:
            reply = await self._collection(client).aggregate.over_all(total_count=True)
            return int(reply.total_count or 0)

        await self._ensure()
        return int(await self._call("count", total))
