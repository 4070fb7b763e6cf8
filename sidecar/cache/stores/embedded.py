"""In-process stores: the default, needing no server.

``EmbeddedExactStore`` keeps entries in memory (LRU, bounded by count and bytes) and writes
them through to SQLite in the data directory, so a restart keeps the cache. ``EmbeddedVectorIndex``
keeps one index per scope: brute force while a scope is small, a usearch HNSW graph once it
grows (a scope of 100,000 entries is searched in well under a millisecond).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sidecar.cache.model import SCHEMA_VERSION, CacheEntry, UnreadableEntry
from sidecar.cache.stores import embedded_snapshot as snapshot
from sidecar.cache.stores.base import Neighbour, UnreadableCounter, as_vector, unit

log = logging.getLogger("sidecar.cache.embedded")
_NAMED_ROWS = 50  # ids named in the start-up line; the metric counts them all


def _name_rows(rows: list[tuple[str, str]]) -> str:
    if not rows:
        return ""
    named = ", ".join(f"{row_id[:80]!r} ({why})" for row_id, why in rows[:_NAMED_ROWS])
    more = f", and {len(rows) - _NAMED_ROWS} more" if len(rows) > _NAMED_ROWS else ""
    return f": {named}{more}"


class EmbeddedExactStore:
    name = "embedded"
    report_unreadable: UnreadableCounter = staticmethod(lambda n: None)  # set by the cache

    def __init__(
        self,
        data_dir: str,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._path = None if data_dir == ":memory:" else Path(data_dir) / "cache.sqlite3"
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._partitions: dict[str, set[str]] = {}
        self._bytes = 0
        # rows skipped at start because they cannot be read: the admin API may delete them
        self._unreadable: set[str] = set()
        self._db: sqlite3.Connection | None = None
        # One thread owns the SQLite connection; writes keep their order and stay off the loop.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-sqlite")
        self._lock = threading.Lock()

    # -- lifecycle
    async def start(self) -> None:
        """Load the persisted entries. Never fails on a row: a row that cannot be read is
        named by id (never its content) in one summary line, counted, left in the file for a
        newer sidecar or an operator, and skipped. Rows of an older schema are rewritten."""
        if self._path is None:
            return
        rows = await self._run(self._open)
        now = self._clock()
        unreadable: list[tuple[str, str]] = []
        migrated: list[CacheEntry] = []
        for row_id, raw in rows:
            try:
                entry, version = CacheEntry.read(raw)
                if entry.id != row_id:
                    raise UnreadableEntry("the id inside differs from the row's id")
            except UnreadableEntry as exc:
                unreadable.append((str(row_id), str(exc)))
                continue
            if entry.expired(now):
                continue
            if version != SCHEMA_VERSION:
                migrated.append(entry)
            self._insert(entry)
        evicted = self._evict()
        migrated = [e for e in migrated if e.id in self._entries]
        if migrated or evicted:
            await self._run(self._rewrite, migrated, evicted)
        self._unreadable = {row_id for row_id, _ in unreadable}
        self.report_unreadable(len(unreadable))
        log.info(
            "embedded cache %s: %d entries loaded, %d migrated to schema version %d, "
            "%d evicted by the size bounds, %d unreadable rows skipped%s",
            self._path,
            len(self._entries),
            len(migrated),
            SCHEMA_VERSION,
            len(evicted),
            len(unreadable),
            _name_rows(unreadable),
        )

    def _open(self) -> list[tuple[Any, Any]]:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self._path), check_same_thread=False)
        # secure_delete: a deleted answer's bytes are overwritten with zeros in the database
        # pages, and the WAL is checkpointed and truncated after deletes (see _delete_rows), so
        # an answer deleted through the admin API is not left readable on disk.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, partition TEXT NOT NULL,"
            " expires_at REAL NOT NULL, used_at REAL NOT NULL, data BLOB NOT NULL)"
        )
        self._db.execute("DELETE FROM entries WHERE expires_at <= ?", (self._clock(),))
        self._db.commit()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # expired answers leave the WAL too
        cur = self._db.execute("SELECT id, data FROM entries ORDER BY used_at")
        return [(row[0], row[1]) for row in cur.fetchall()]

    def _rewrite(self, entries: list[CacheEntry], evicted: list[str]) -> None:
        if self._db is None:
            return
        self._db.executemany(
            "UPDATE entries SET data = ? WHERE id = ?", [(e.to_bytes(), e.id) for e in entries]
        )
        self._delete_rows(evicted)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._io.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # -- in-memory structure
    def _insert(self, entry: CacheEntry) -> None:
        old = self._entries.pop(entry.id, None)
        if old is not None:
            self._bytes -= old.size_bytes()
            self._partitions.get(old.partition, set()).discard(old.id)
        self._entries[entry.id] = entry
        self._bytes += entry.size_bytes()
        self._partitions.setdefault(entry.partition, set()).add(entry.id)

    def _remove(self, entry_id: str) -> CacheEntry | None:
        entry = self._entries.pop(entry_id, None)
        if entry is not None:
            self._bytes -= entry.size_bytes()
            ids = self._partitions.get(entry.partition)
            if ids is not None:
                ids.discard(entry_id)
                if not ids:
                    del self._partitions[entry.partition]
        return entry

    def _evict(self) -> list[str]:
        evicted: list[str] = []
        while self._entries and (
            len(self._entries) > self._max_entries or self._bytes > self._max_bytes
        ):
            oldest = next(iter(self._entries))
            self._remove(oldest)
            evicted.append(oldest)
        return evicted

    # -- ExactStore
    async def get(self, entry_id: str, partition: str | None = None) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None:
                return None
            if entry.expired(self._clock()):
                self._remove(entry_id)
                expired = True
            else:
                self._entries.move_to_end(entry_id)
                expired = False
        if expired:
            await self._persist_delete([entry_id])
            return None
        return entry

    async def put(self, entry: CacheEntry) -> list[str]:
        with self._lock:
            self._insert(entry)
            evicted = self._evict()
        if self._path is not None:
            await self._run(self._write, entry, evicted)
        return evicted

    def _write(self, entry: CacheEntry, evicted: list[str]) -> None:
        if self._db is None:
            return
        self._db.execute(
            "INSERT OR REPLACE INTO entries (id, partition, expires_at, used_at, data)"
            " VALUES (?, ?, ?, ?, ?)",
            (entry.id, entry.partition, entry.expires_at, self._clock(), entry.to_bytes()),
        )
        # Evictions make room on the hot write path: no checkpoint here (SQLite's automatic
        # one, every 1000 pages, copies the zeroed pages back and recycles the WAL).
        self._delete_rows(evicted, checkpoint=False)

    def _delete_rows(self, ids: list[str], checkpoint: bool = True) -> None:
        """Delete rows and commit. With ``checkpoint``, then copy the WAL into the database
        and truncate it: secure_delete zeroes the deleted bytes in the new page versions, and
        the checkpoint drops the old versions the WAL still holds."""
        assert self._db is not None
        if ids:
            self._db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])
        self._db.commit()
        if ids and checkpoint:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def set_vector(self, entry_id: str, vector: list[float]) -> list[str]:
        """Attach a vector computed after the entry was stored (persisted with it, so the
        index rebuild at start sees it). Returns ids evicted by the byte bound; nothing
        when the entry is gone."""
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None:
                return []
            meta = {k: v for k, v in entry.meta.items() if k != "vector_pending"}
            updated = dataclasses.replace(entry, vector=vector, meta=meta)
            self._bytes += updated.size_bytes() - entry.size_bytes()
            self._entries[entry_id] = updated  # keeps its LRU position
            evicted = self._evict()
        if self._path is not None and entry_id not in evicted:
            await self._run(self._update, updated, evicted)
        elif evicted:
            await self._persist_delete(evicted)
        return evicted

    def _update(self, entry: CacheEntry, evicted: list[str]) -> None:
        if self._db is None:
            return
        self._db.execute("UPDATE entries SET data = ? WHERE id = ?", (entry.to_bytes(), entry.id))
        self._delete_rows(evicted, checkpoint=False)  # evictions: on the write path

    async def _persist_delete(self, ids: list[str]) -> None:
        if self._path is None or not ids:
            return

        def _delete() -> None:
            if self._db is not None:
                self._delete_rows(ids)

        await self._run(_delete)

    async def delete(self, entry_id: str) -> bool:
        with self._lock:
            found = self._remove(entry_id) is not None
            if entry_id in self._unreadable:  # a row named in the start-up line as unreadable
                self._unreadable.discard(entry_id)
                found = True
        if found:
            await self._persist_delete([entry_id])
        return found

    async def delete_partition(self, partition: str) -> list[str]:
        with self._lock:
            ids = list(self._partitions.get(partition, ()))
            for entry_id in ids:
                self._remove(entry_id)
        await self._persist_delete(ids)
        return ids

    async def sweep(self) -> list[str]:
        """Drop expired entries (reads check TTL too; this frees memory of unread ones)."""
        now = self._clock()
        with self._lock:
            ids = [e.id for e in self._entries.values() if e.expired(now)]
            for entry_id in ids:
                self._remove(entry_id)
        await self._persist_delete(ids)
        return ids

    async def count(self) -> int:
        return len(self._entries)

    def entries_with_vectors(self) -> list[CacheEntry]:
        with self._lock:
            return [e for e in self._entries.values() if e.vector is not None]

    def entries_missing_vectors(self) -> list[CacheEntry]:
        """Entries stored before their vector (``meta["vector_pending"]``, set by the cache
        layer) whose vector never landed: the process stopped first."""
        with self._lock:
            return [
                e
                for e in self._entries.values()
                if e.vector is None and e.question and e.meta.get("vector_pending")
            ]

    @property
    def bytes_used(self) -> int:
        return self._bytes

    async def health(self) -> str | None:
        return None


class _ScopeIndex:
    """Vectors of one scope. Brute force up to ``graph_at`` rows, then an HNSW graph."""

    def __init__(self, dimension: int, graph_at: int) -> None:
        self.dimension = dimension
        self.graph_at = graph_at
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
        index = cls(dimension, graph_at)
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
        graph.add(labels, vectors)
        for entry_id, label in zip(entry_ids, labels.tolist(), strict=True):
            self.labels[entry_id] = label
            self.by_label[label] = entry_id
        self._next_label += len(entry_ids)

    def _new_graph(self) -> Any:
        from usearch.index import Index

        self.matrix = np.zeros((0, self.dimension), dtype=np.float32)
        return Index(ndim=self.dimension, metric="cos", dtype="f32")

    def _build_graph(self) -> None:
        from usearch.index import Index

        graph = Index(ndim=self.dimension, metric="cos", dtype="f32")
        n = len(self.ids)
        labels = np.arange(n, dtype=np.uint64)
        graph.add(labels, self.matrix[:n])
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
            return [
                Neighbour(self.by_label[int(label)], 1.0 - float(dist))
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
        self, graph_at: int = 2048, data_dir: str | None = None, save_every: float = 600.0
    ) -> None:
        self._graph_at = graph_at
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
            index = self._scopes[scope] = _ScopeIndex(self._dimension, self._graph_at)
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

    async def restore(self, entries: Sequence[CacheEntry]) -> Restored:
        """Fill the index with ``entries`` (the exact store's, read from SQLite): load the saved
        graphs, drop what SQLite no longer holds, add what they lack."""
        return await asyncio.to_thread(self._restore, entries)

    def _restore(self, entries: Sequence[CacheEntry]) -> Restored:
        started = time.perf_counter()
        wanted = {
            e.id: e for e in entries if e.vector is not None and len(e.vector) == self._dimension
        }
        loaded = stale = 0
        with self._lock:
            for scope, index, saved in self._load_snapshot():
                for entry_id, expires_at in zip(saved.ids, saved.stamps, strict=True):
                    entry = wanted.get(entry_id)
                    if entry is None or entry.scope != scope or entry.expires_at != expires_at:
                        index.remove(entry_id)  # deleted, expired or re-stored since the save
                        stale += 1
                        continue
                    del wanted[entry_id]
                    self._scope_of[entry_id] = scope
                    self._partition_of[entry_id] = entry.partition
                    self._expires_of[entry_id] = expires_at
                    loaded += 1
                if len(index):
                    self._scopes[scope] = index
            self._add_all(list(wanted.values()))
            self._changes = len(wanted) + stale
        log.info(
            "embedded vector index: %d vectors loaded from the saved index, %d stale ones "
            "dropped, %d added from the cache database, in %.2f s",
            loaded,
            stale,
            len(wanted),
            time.perf_counter() - started,
        )
        return Restored(loaded, stale, len(wanted))

    def _add_all(self, entries: list[CacheEntry]) -> None:
        """Add entries not in the index yet, one batch per scope."""
        by_scope: dict[str, list[CacheEntry]] = {}
        for entry in entries:
            by_scope.setdefault(entry.scope, []).append(entry)
        for scope, group in by_scope.items():
            matrix = np.asarray([e.vector for e in group], dtype=np.float32)
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            index = self._scopes.get(scope)
            if index is None:
                index = self._scopes[scope] = _ScopeIndex(self._dimension, self._graph_at)
            index.add_many([e.id for e in group], matrix)
            for e in group:
                self._scope_of[e.id] = scope
                self._partition_of[e.id] = e.partition
                self._expires_of[e.id] = e.expires_at

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
