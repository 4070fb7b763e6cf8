"""Choose store implementations from the ``cache.exact_store`` / ``cache.vector_store`` URLs."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlparse

from sidecar.cache.embedded import EmbeddedExactStore, EmbeddedVectorIndex
from sidecar.cache.stores import ExactStore, VectorIndex
from sidecar.config import CacheConfig


class BackendConfigError(ValueError):
    pass


def build_exact_store(config: CacheConfig, clock: Callable[[], float] = time.time) -> ExactStore:
    url = config.exact_store
    if url == "embedded":
        return EmbeddedExactStore(config.data_dir, config.max_entries, config.max_bytes, clock)
    scheme = urlparse(url).scheme
    raise BackendConfigError(
        f"cache.exact_store: unsupported backend {scheme or url!r} (supported: embedded)"
    )


def build_vector_index(config: CacheConfig) -> VectorIndex:
    url = config.vector_store
    if url == "embedded":
        return EmbeddedVectorIndex()
    scheme = urlparse(url).scheme
    raise BackendConfigError(
        f"cache.vector_store: unsupported backend {scheme or url!r} (supported: embedded)"
    )
