"""In-process stores: the default, needing no server.

``EmbeddedExactStore`` (embedded_exact.py) keeps entries in SQLite in the data directory and a
small record of each in memory, so a restart keeps the cache and is ready without reading the
entries. ``EmbeddedVectorIndex`` keeps one index per scope: brute force while a scope is small,
a usearch HNSW graph once it grows, saved and loaded at the next start (embedded_snapshot.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sidecar.cache.stores import embedded_snapshot as snapshot
from sidecar.cache.stores.base import Neighbour, as_vector, unit
from sidecar.cache.stores.embedded_exact import EmbeddedExactStore
from sidecar.cache.stores.embedded_schema import VectorRow

log = logging.getLogger("sidecar.cache.embedded")

__all__ = ["EmbeddedExactStore", "EmbeddedVectorIndex", "Restored", "VectorRow"]


class _ScopeIndex:
    """Vectors of one scope. Brute force up to ``graph_at`` rows, then an HNSW graph."""

    def __init__(self, dimension: int, graph_at: int, graph_dtype: str) -> None:
        self.dimension = dimension
        self.graph_at = graph_at
        self.graph_dtype = graph_dtype  # of the graph built once large (a loaded one keeps its own)
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}
        self.matrix = np.zeros((16, dimension), dtype=np.float32)
        self.graph: Any = None  # usearch Index once large
        self.labels: dict[str, int] = {}
        self.by_label: dict[int, str] = {}
        self._next_label = 0

    def __len__(self) -> int:
        return len(self.rows) if self.graph is None else len(self.labels)

    @classmethod
    def from_saved(
        cls, dimension: int, graph_at: int, graph: Any, saved: snapshot.SavedGraph
    ) -> _ScopeIndex:
        index = cls(dimension, graph_at, saved.dtype)
        index.matrix = np.zeros((0, dimension), dtype=np.float32)
        index.graph = graph
        index.labels = dict(zip(saved.ids, saved.labels, strict=True))
        index.by_label = dict(zip(saved.labels, saved.ids, strict=True))
        index._next_label = saved.next_label
        return index

    def saved_form(self, scope: str, stamps: dict[str, float]) -> snapshot.SavedGraph:
        ids = list(self.labels)
        return snapshot.SavedGraph(
            scope,
            Path(),
            ids,
            [self.labels[i] for i in ids],
            [stamps[i] for i in ids],
            self._next_label,
            snapshot.dtype_of(self.graph),
        )

    def add(self, entry_id: str, vector: np.ndarray) -> None:
        self.remove(entry_id)
        if self.graph is None and len(self.rows) >= self.graph_at:
            self._build_graph()
        if self.graph is not None:
            label = self._next_label
            self._next_label += 1
            self.graph.add(label, vector)
            self.labels[entry_id] = label
            self.by_label[label] = entry_id
            return
        n = len(self.ids)
        if n == self.matrix.shape[0]:
            grown = np.zeros((n * 2, self.dimension), dtype=np.float32)
            grown[:n] = self.matrix
            self.matrix = grown
        self.matrix[n] = vector
        self.ids.append(entry_id)
        self.rows[entry_id] = n

    def add_many(self, entry_ids: list[str], vectors: np.ndarray) -> None:
        """Add new ids (not in the index) at once: a graph takes them in one usearch call,
        which spreads the insertions over the free cores (on 2 busy cores no faster than one
        by one: a rebuild is slow either way, which is why the graphs are saved)."""
        if self.graph is None and len(self.rows) + len(entry_ids) <= self.graph_at:
            for entry_id, vector in zip(entry_ids, vectors, strict=True):
                self.add(entry_id, vector)
            return
        if self.graph is None:
            if len(self.rows) == 0:
                self.graph = self._new_graph()
            else:
                self._build_graph()
        labels = np.arange(self._next_label, self._next_label + len(entry_ids), dtype=np.uint64)
        graph: Any = self.graph
        graph.add(labels, vectors, threads=0)  # 0: every core
        for entry_id, label in zip(entry_ids, labels.tolist(), strict=True):
            self.labels[entry_id] = label
            self.by_label[label] = entry_id
        self._next_label += len(entry_ids)

    def _new_graph(self) -> Any:
        self.matrix = np.zeros((0, self.dimension), dtype=np.float32)
        return snapshot.new_graph(self.dimension, dtype=self.graph_dtype)

    def _build_graph(self) -> None:
        graph = snapshot.new_graph(self.dimension, dtype=self.graph_dtype)
        n = len(self.ids)
        labels = np.arange(n, dtype=np.uint64)
        graph.add(labels, self.matrix[:n], threads=0)
        self.labels = {entry_id: i for i, entry_id in enumerate(self.ids)}
        self.by_label = dict(enumerate(self.ids))
        self._next_label = n
        self.graph = graph
        self.ids, self.rows = [], {}
        self.matrix = np.zeros((0, self.dimension), dtype=np.float32)

    def remove(self, entry_id: str) -> None:
        if self.graph is not None:
            label = self.labels.pop(entry_id, None)
            if label is not None:
                self.graph.remove(label)
                del self.by_label[label]
            return
        row = self.rows.pop(entry_id, None)
        if row is None:
            return
        last = len(self.ids) - 1
        if row != last:  # swap-remove keeps the matrix dense
            moved = self.ids[last]
            self.matrix[row] = self.matrix[last]
            self.ids[row] = moved
            self.rows[moved] = row
        self.ids.pop()

    def search(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        if self.graph is not None:
            if not self.labels:
                return []
            found = self.graph.search(vector, min(k, len(self.labels)))
            exact = self.graph_dtype == "f32"
            return [
                Neighbour(self.by_label[int(label)], 1.0 - float(dist), exact)
                for label, dist in zip(found.keys, found.distances, strict=False)
                if int(label) in self.by_label
            ]
        n = len(self.ids)
        if n == 0:
            return []
        scores = self.matrix[:n] @ vector
        if n <= k:
            order = np.argsort(-scores)
        else:
            top = np.argpartition(-scores, k)[:k]
            order = top[np.argsort(-scores[top])]
        return [Neighbour(self.ids[i], float(scores[i])) for i in order]


_READ_BATCH = 50_000  # vectors read from SQLite per batch when re-adding (77 MB at 384 dims)


class Restored(NamedTuple):
    """What ``EmbeddedVectorIndex.restore`` did: vectors taken from the saved graphs, saved
    vectors dropped because SQLite no longer holds them as saved, vectors added from SQLite."""

    loaded: int
    stale: int
    added: int


class EmbeddedVectorIndex:
    """Vectors in memory, one index per scope. With a ``data_dir`` the HNSW graphs are saved
    there (at close, and by ``sweep`` at most every ``save_every`` seconds while changed) and
    loaded by ``restore`` at the next start instead of being rebuilt: see embedded_snapshot."""

    name = "embedded"

    def __init__(
        self,
        graph_at: int = 2048,
        data_dir: str | None = None,
        save_every: float = 600.0,
        graph_dtype: str = snapshot.GRAPH_DTYPE,
    ) -> None:
        if graph_dtype not in snapshot.GRAPH_DTYPES:
            raise ValueError(
                f"graph_dtype must be one of {snapshot.GRAPH_DTYPES}, not {graph_dtype!r}"
            )
        self._graph_at = graph_at
        self._graph_dtype = graph_dtype
        self._dimension = 0
        self._namespace = ""
        self._scopes: dict[str, _ScopeIndex] = {}
        self._scope_of: dict[str, str] = {}
        self._partition_of: dict[str, str] = {}
        self._expires_of: dict[str, float] = {}
        self._lock = threading.Lock()
        self._dir = None if data_dir in (None, ":memory:") else Path(str(data_dir)) / "vector-index"
        self._save_every = save_every
        self._generation = 0
        self._changes = 0  # adds and removes since the last save
        self._saved_at = time.monotonic()
        # usearch keeps a removed vector's bytes in the graph (and so in a saved file): after a
        # delete through the admin API nothing is saved until a restart rebuilds the graph.
        self._may_save = True
        self._save_lock = threading.Lock()  # one save at a time

    async def start(self, namespace: str, dimension: int) -> None:
        self._dimension = dimension
        self._namespace = namespace

    def _add_locked(
        self, entry_id: str, scope: str, partition: str, v: np.ndarray, expires_at: float
    ) -> None:
        old_scope = self._scope_of.get(entry_id)
        if old_scope is not None and old_scope != scope:
            self._scopes[old_scope].remove(entry_id)
        index = self._scopes.get(scope)
        if index is None:
            index = self._scopes[scope] = _ScopeIndex(
                self._dimension, self._graph_at, self._graph_dtype
            )
        index.add(entry_id, v)
        self._scope_of[entry_id] = scope
        self._partition_of[entry_id] = partition
        self._expires_of[entry_id] = expires_at
        self._changes += 1

    async def add(
        self, entry_id: str, scope: str, partition: str, vector: Sequence[float], expires_at: float
    ) -> None:
        v = unit(as_vector(vector, self._dimension))
        with self._lock:
            self._add_locked(entry_id, scope, partition, v, expires_at)

    async def restore(
        self,
        rows: Sequence[VectorRow],
        read_vectors: Callable[[Sequence[str], int], Awaitable[np.ndarray]],
    ) -> Restored:
        """Fill the index with the stored vectors ``rows`` (the exact store's records, from
        SQLite): load the saved graphs, drop what SQLite no longer holds as saved, and add what
        they lack, its vectors read with ``read_vectors`` (only those: a restart after a clean
        save reads no vector at all)."""
        started = time.perf_counter()
        loaded, stale, missing = await asyncio.to_thread(self._restore_saved, rows)
        added = 0
        for at in range(0, len(missing), _READ_BATCH):
            batch = missing[at : at + _READ_BATCH]
            vectors = await read_vectors([r[0] for r in batch], self._dimension)
            added += await asyncio.to_thread(self._add_rows, batch, vectors)
        with self._lock:
            self._changes = added + stale
        log.info(
            "embedded vector index: %d vectors loaded from the saved index, %d stale ones "
            "dropped, %d added from the cache database, in %.2f s",
            loaded,
            stale,
            added,
            time.perf_counter() - started,
        )
        return Restored(loaded, stale, added)

    async def restore_from(self, exact: EmbeddedExactStore) -> Restored:
        """``restore`` with the vectors ``exact`` holds."""
        return await self.restore(await exact.vector_rows(), exact.read_vectors)

    def _restore_saved(self, rows: Sequence[VectorRow]) -> tuple[int, int, list[VectorRow]]:
        """Load the saved graphs and check them against ``rows``; the rows they lack."""
        wanted = {r[0]: r for r in rows if r[4] == self._dimension}  # (id, .., dims): see VectorRow
        loaded = stale = 0
        with self._lock:
            for scope, index, saved in self._load_snapshot():
                for entry_id, expires_at in zip(saved.ids, saved.stamps, strict=True):
                    row = wanted.get(entry_id)
                    if row is None or row[1] != scope or row[3] != expires_at:
                        index.remove(entry_id)  # deleted, expired or re-stored since the save
                        stale += 1
                        continue
                    del wanted[entry_id]
                    self._scope_of[entry_id] = scope
                    self._partition_of[entry_id] = row[2]
                    self._expires_of[entry_id] = expires_at
                    loaded += 1
                if len(index):
                    self._scopes[scope] = index
        return loaded, stale, list(wanted.values())

    def _add_rows(self, rows: list[VectorRow], vectors: np.ndarray) -> int:
        """Add vectors not in the index yet, one batch per scope; a row whose vector could
        not be read (NaN: gone meanwhile) is skipped."""
        readable = ~np.isnan(vectors).any(axis=1)
        by_scope: dict[str, list[int]] = {}
        for at, row in enumerate(rows):
            if readable[at]:
                by_scope.setdefault(row[1], []).append(at)
        with self._lock:
            for scope, picks in by_scope.items():
                matrix = vectors[picks]
                matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
                index = self._scopes.get(scope)
                if index is None:
                    index = self._scopes[scope] = _ScopeIndex(
                        self._dimension, self._graph_at, self._graph_dtype
                    )
                index.add_many([rows[at][0] for at in picks], matrix)
                for at in picks:
                    entry_id, _, partition, expires_at, _ = rows[at]
                    self._scope_of[entry_id] = scope
                    self._partition_of[entry_id] = partition
                    self._expires_of[entry_id] = expires_at
        return sum(len(p) for p in by_scope.values())

    def _load_snapshot(self) -> list[tuple[str, _ScopeIndex, snapshot.SavedGraph]]:
        if self._dir is None:
            return []
        try:
            found = snapshot.read_manifest(self._dir, self._namespace)
            if found is None:
                return []
            self._generation, graphs = found
            return [
                (
                    saved.scope,
                    _ScopeIndex.from_saved(
                        self._dimension,
                        self._graph_at,
                        snapshot.load_graph(saved, self._dimension),
                        saved,
                    ),
                    saved,
                )
                for saved in graphs
            ]
        except snapshot.SnapshotInvalid as exc:
            log.warning("saved vector index %s discarded, rebuilding it: %s", self._dir, exc)
            snapshot.discard(self._dir)
            return []

    async def save(self) -> None:
        """Write the graphs to ``data_dir`` (a no-op without one). Adds and searches wait."""
        if self._dir is not None and self._may_save:
            await asyncio.to_thread(self._save)

    async def erase_saved(self) -> None:
        """An entry was deleted through the admin API: zero and remove the saved graphs, which
        may hold its vector, and save none from this process (its graphs hold it too). The
        next start rebuilds the index from SQLite."""
        self._may_save = False
        if self._dir is not None:
            await asyncio.to_thread(self._erase)

    def _erase(self) -> None:
        assert self._dir is not None
        with self._save_lock:  # after a save under way, never under it
            snapshot.discard(self._dir, erase=True)

    def _save(self) -> None:
        assert self._dir is not None
        started = time.perf_counter()
        with self._save_lock:
            if not self._may_save:
                return
            with self._lock:  # lookups wait while the graphs are written, not while checksummed
                graphs = [
                    (index.graph, index.saved_form(scope, self._expires_of))
                    for scope, index in self._scopes.items()
                    if index.graph is not None
                ]
                self._generation += 1
                generation = self._generation
                snapshot.write_graphs(self._dir, generation, graphs)
                self._changes = 0
                self._saved_at = time.monotonic()
                locked = time.perf_counter() - started
            saved = [g[1] for g in graphs]
            snapshot.write_manifest(self._dir, self._namespace, generation, saved)
        log.info(
            "embedded vector index saved: %d graphs, %d vectors, generation %d, in %.2f s "
            "(lookups waited %.2f s)",
            len(saved),
            sum(len(g.ids) for g in saved),
            generation,
            time.perf_counter() - started,
            locked,
        )

    async def sweep(self) -> None:
        """Called with the cache's periodic sweep: save when changed and due."""
        if self._changes and time.monotonic() - self._saved_at >= self._save_every:
            await self.save()

    async def scope_is_empty(self, scope: str) -> bool:
        """No vector indexed in ``scope`` (in memory: cheap enough for every lookup)."""
        with self._lock:
            index = self._scopes.get(scope)
            return index is None or len(index) == 0

    async def search(self, scope: str, vector: Sequence[float], k: int) -> list[Neighbour]:
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                return []
            return index.search(unit(np.asarray(vector, dtype=np.float32)), k)

    async def remove(self, entry_ids: Sequence[str]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                scope = self._scope_of.pop(entry_id, None)
                self._partition_of.pop(entry_id, None)
                self._expires_of.pop(entry_id, None)
                if scope is None:
                    continue
                self._changes += 1
                index = self._scopes[scope]
                index.remove(entry_id)
                if len(index) == 0:
                    del self._scopes[scope]

    async def remove_partition(self, partition: str) -> None:
        ids = [i for i, p in self._partition_of.items() if p == partition]
        await self.remove(ids)

    async def count(self) -> int:
        return len(self._scope_of)

    async def health(self) -> str | None:
        return None

    async def close(self) -> None:
        if self._changes:
            await self.save()
