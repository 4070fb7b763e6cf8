"""Choose store implementations from the ``cache.exact_store`` / ``cache.vector_store`` URLs.

``embedded`` (the default) needs no server. Shared backends, for many replicas:

==========================  ===========  ============  ===================================
URL                         exact store  vector store  notes
==========================  ===========  ============  ===================================
``redis://h:6379/0``        yes          yes (*)       ``rediss://`` for TLS; auth in URL
``redis+cluster://h:7000``  yes          yes (*)       Redis Cluster (``rediss+cluster``)
``qdrant://h:6333``         no           yes           ``qdrants://`` TLS
``qdrant+grpc://h:6334``    no           yes           gRPC points traffic
``qdrant+local://:memory:`` no           yes           qdrant-client local mode (tests)
``weaviate://h:8080``       no           yes           ``weaviates://`` TLS
==========================  ===========  ============  ===================================

(*) needs a search module: Redis Stack, Redis 8, or Valkey with valkey-search / RediSearch.
``cache.vector_store: none`` (or empty) disables the semantic layer. Every backend's keys or
collections start with ``cache.namespace``; see docs/backends.md.

Client libraries are imported only when their backend is configured.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.cache.single_flight import LocalMissLock, MissLock, SingleFlight
from sidecar.cache.stores.base import ExactStore, VectorIndex
from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex
from sidecar.config import CacheConfig

if TYPE_CHECKING:
    from sidecar.cache.stores.redis_conn import RedisTarget


class BackendConfigError(ValueError):
    pass


_EXACT_KINDS = "embedded, redis://, rediss://, redis+cluster://, rediss+cluster://"
_VECTOR_KINDS = (
    "embedded, none, redis://, rediss://, redis+cluster://, qdrant://, qdrants://, "
    "qdrant+grpc://, qdrant+local://, weaviate://, weaviates://"
)
# Used in Redis keys before a {hash tag}, and in collection names: no braces, globs or spaces.
_NAMESPACE_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def _namespace(config: CacheConfig) -> str:
    if not _NAMESPACE_OK.match(config.namespace):
        raise BackendConfigError(
            f"cache.namespace {config.namespace!r}: use 1-64 letters, digits, '_', '.' or '-' "
            "(it prefixes Redis keys and collection names)"
        )
    return config.namespace


def _redis_target(url: str, setting: str) -> RedisTarget:
    from sidecar.cache.stores.redis_conn import RedisUrlError, parse_redis_url

    try:
        return parse_redis_url(url, setting)
    except RedisUrlError as exc:
        raise BackendConfigError(str(exc)) from None


def build_exact_store(config: CacheConfig, clock: Callable[[], float] = time.time) -> ExactStore:
    url = config.exact_store.strip()
    if url == "embedded":
        return EmbeddedExactStore(config.data_dir, config.max_entries, config.max_bytes, clock)
    scheme = _scheme(url)
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from sidecar.cache.stores.redis_exact import RedisExactStore

        target = _redis_target(url, "cache.exact_store")
        return RedisExactStore(target, _namespace(config), clock)
    if scheme.startswith(("qdrant", "weaviate")):
        raise BackendConfigError(
            f"cache.exact_store: {scheme} is a vector database; the exact store must be "
            f"one of: {_EXACT_KINDS}"
        )
    raise BackendConfigError(
        f"cache.exact_store: unsupported backend {(scheme or url)!r} (supported: {_EXACT_KINDS})"
    )


def build_vector_index(
    config: CacheConfig, clock: Callable[[], float] = time.time
) -> VectorIndex | None:
    """The vector index, or None when the semantic layer is disabled (``none`` or empty)."""
    url = config.vector_store.strip()
    if url == "embedded":
        return EmbeddedVectorIndex(
            graph_at=config.vector_graph_at,
            data_dir=config.data_dir,
            graph_dtype=config.vector_graph_dtype,
        )
    if url.lower() in ("", "none"):
        return None
    scheme = _scheme(url)
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from sidecar.cache.stores.redis_vector import RedisVectorIndex

        target = _redis_target(url, "cache.vector_store")
        return RedisVectorIndex(target, _namespace(config), clock)
    if scheme.startswith("qdrant"):
        from sidecar.cache.stores.qdrant import QdrantVectorIndex, parse_qdrant_url

        return QdrantVectorIndex(parse_qdrant_url(url), _namespace(config), clock)
    if scheme.startswith("weaviate"):
        from sidecar.cache.stores.weaviate import WeaviateVectorIndex, parse_weaviate_url

        return WeaviateVectorIndex(parse_weaviate_url(url), _namespace(config), clock)
    raise BackendConfigError(
        f"cache.vector_store: unsupported backend {(scheme or url)!r} (supported: {_VECTOR_KINDS})"
    )


def build_single_flight(config: CacheConfig, exact: ExactStore) -> SingleFlight | None:
    """The miss lock: shared through Redis when the exact store is Redis, else in-process."""
    if not config.single_flight or config.lock_wait_ms <= 0:
        return None
    make_shared = getattr(exact, "miss_lock", None)
    lock: MissLock = make_shared() if make_shared is not None else LocalMissLock()
    return SingleFlight(lock, config.lock_wait_ms / 1000, config.lock_ttl_ms / 1000)
