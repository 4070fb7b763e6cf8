"""The two store interfaces the cache is built on, and the errors they raise.

Every backend (embedded, Redis, Qdrant, Weaviate) implements one or both. The cache layer
(``sidecar.cache.layer``) owns TTL policy and decisions; stores only keep, find and forget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from sidecar.cache.model import CacheEntry

#: told how many stored entries a store found but could not read (the cache counts them in
#: ``sidecar_cache_unreadable_entries_total``); the store itself logs their ids
UnreadableCounter = Callable[[int], None]


class StoreUnavailable(RuntimeError):
    """The backend cannot be reached. The request proceeds uncached; /readyz reports it."""


def as_vector(vector: Sequence[float], dimension: int) -> np.ndarray:
    """float32 vector of the index's dimension; any other shape is a ValueError."""
    v = np.asarray(vector, dtype=np.float32)
    if v.shape != (dimension,):
        raise ValueError(f"vector has dimension {v.shape}, index expects {dimension}")
    return v


def unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


@dataclass(frozen=True, slots=True)
class Neighbour:
    id: str
    similarity: float  # cosine similarity in [-1, 1]
    # False: the index's similarity is an approximation (a quantised graph, embedded.py); the
    # cache re-scores the candidate with its stored vector before deciding (layer.py)
    exact: bool = True


@runtime_checkable
class ExactStore(Protocol):
    """Entries by id. Must honour ``expires_at`` (never return an expired entry)."""

    name: str
    #: the cache layer replaces it to count entries that cannot be read (logged by id, skipped)
    report_unreadable: UnreadableCounter

    async def start(self) -> None: ...

    async def get(self, entry_id: str, partition: str | None = None) -> CacheEntry | None:
        """``partition``, when the caller knows it, lets a sharded store (Redis, keyed by
        partition hash tag) find the entry in one round trip; stores may ignore it."""
        ...

    async def put(self, entry: CacheEntry) -> list[str]:
        """Store (or replace) an entry; return ids evicted to make room."""
        ...

    async def delete(self, entry_id: str) -> bool: ...

    async def delete_partition(self, partition: str) -> list[str]:
        """Delete every entry of a partition; return their ids."""
        ...

    async def count(self) -> int: ...

    async def health(self) -> str | None:
        """None when healthy, else a short reason."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest-neighbour search restricted to one scope.

    ``namespace`` encodes the embedding model and dimension so vectors of different models
    never mix.
    """

    name: str

    async def start(self, namespace: str, dimension: int) -> None: ...

    async def add(
        self, entry_id: str, scope: str, partition: str, vector: Sequence[float], expires_at: float
    ) -> None: ...

    async def search(self, scope: str, vector: Sequence[float], k: int) -> list[Neighbour]:
        """Up to k nearest entries of the scope, best first. May include expired ids; the cache
        layer re-checks every candidate against the exact store."""
        ...

    async def remove(self, entry_ids: Sequence[str]) -> None: ...

    async def remove_partition(self, partition: str) -> None: ...

    async def count(self) -> int: ...

    async def health(self) -> str | None: ...

    async def close(self) -> None: ...
