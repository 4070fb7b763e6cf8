"""The embedded exact store: SQLite in the data directory, the source of truth.

Start-up reads one small record per entry, not the entries: id, partition, expiry and size
(for the LRU order and the size bounds), plus scope and vector length for the vector index's
restore. They come from a covering index (``entries_catalog``), so SQLite never reads the
answer bodies at start: at 1M entries the start-up is a scan of that index. An entry is read
from SQLite and parsed on a hit, and kept in a small LRU of parsed entries (``hot_entries``,
``hot_bytes``), so repeated exact hits never touch SQLite.

Rows are trusted at start because this store wrote them and checked them then: every write
sets ``written`` (a sequence number). A row whose ``data`` is changed by anything else (an
operator, an older sidecar) loses its ``written`` through a trigger, as does a row inserted
without it; such rows, and rows of an older table without these columns, are read and checked
in full at the next start (counted, named by id if unreadable, rewritten if of an older schema).
A trusted row that still fails to parse on a hit (the disk damaged it) is a miss, counted and
named by id, and left in the file.

The vector is stored as float32 bytes in the ``vector`` column, not in the JSON ``data``: a
quarter of the bytes, and a restart that must re-add vectors reads them without parsing JSON
(vectors come from float32 models, so nothing is lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np

from sidecar.cache.model import SCHEMA_VERSION, CacheEntry, UnreadableEntry
from sidecar.cache.stores.base import UnreadableCounter
from sidecar.cache.stores.embedded_schema import (
    CATALOG_SCAN,
    INDEXES,
    NEW_COLUMNS,
    PENDING_IDS,
    SCHEMA,
    VECTOR_ROWS,
    VectorRow,
    pending_flag,
    vector_bytes,
)

log = logging.getLogger("sidecar.cache.embedded")
_NAMED_ROWS = 50  # ids named in the start-up line; the metric counts them all

# One entry's record in memory (a plain tuple for the same reason): partition, expires_at, size
_Row = tuple[str, float, int]
_PARTITION: Final = 0
_EXPIRES: Final = 1
_SIZE: Final = 2


def _name_rows(rows: list[tuple[str, str]]) -> str:
    if not rows:
        return ""
    named = ", ".join(f"{row_id[:80]!r} ({why})" for row_id, why in rows[:_NAMED_ROWS])
    more = f", and {len(rows) - _NAMED_ROWS} more" if len(rows) > _NAMED_ROWS else ""
    return f": {named}{more}"


def _write_failed(done: Future[None]) -> None:
    """A write nobody awaits (a store in memory): its failure is logged, never lost."""
    exc = done.exception()
    if exc is not None:
        log.error("embedded cache: writing an entry in memory failed: %r", exc)


class EmbeddedExactStore:
    name = "embedded"
    report_unreadable: UnreadableCounter = staticmethod(lambda n: None)  # set by the cache

    def __init__(
        self,
        data_dir: str,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        hot_entries: int = 4096,
        hot_bytes: int = 32 << 20,
    ) -> None:
        self._clock = clock
        self._path = None if data_dir == ":memory:" else Path(data_dir) / "cache.sqlite3"
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._hot_entries = hot_entries
        self._hot_bytes_max = hot_bytes
        # every entry, in LRU order (oldest first); the entries themselves stay in SQLite
        self._rows: OrderedDict[str, _Row] = OrderedDict()
        self._bytes = 0
        # parsed entries of recent hits and stores, bounded by count and bytes
        self._hot: OrderedDict[str, CacheEntry] = OrderedDict()
        self._hot_bytes = 0
        # rows found unreadable (at start or on a hit): the admin API may delete them
        self._unreadable: set[str] = set()
        # what the start-up scan found for the vector index; None once anything was written
        self._vector_rows: list[VectorRow] | None = None
        self._pending_ids: list[str] | None = None
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._written = 0  # the highest write sequence number in the table
        # stores in memory not yet handed to the writing thread (see put)
        self._unsent: list[tuple[CacheEntry, list[str]]] = []
        # One thread owns the writing connection: writes keep their order and stay off the
        # loop. A read on a hit uses its own connection on the event loop (WAL: it never waits
        # for a write): a read by primary key takes tens of microseconds, less than a hop to a
        # thread, which on a busy machine waits milliseconds for a core. A database in memory
        # has one connection: its reads go to the writing thread.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-sqlite")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the database and read the record of every entry (never an entry's data, but
        for rows to be checked: see the module docstring). Never fails on a row: one that
        cannot be read is named by id (never its content) in one summary line, counted, left
        in the file for a newer sidecar or an operator, and skipped. Rows of an older schema
        are rewritten."""
        await self._run(self._open)
        if self._path is not None:
            self._reader = self._connect()
        unreadable, migrated, checked = await self._run(self._scan)
        with self._lock:
            evicted = self._evict()
        if evicted:
            self._start_scan_outdated()  # the scan's vector rows include the evicted ones
            await self._persist_delete(evicted)
        self._unreadable = {row_id for row_id, _ in unreadable}
        self.report_unreadable(len(unreadable))
        log.info(
            "embedded cache %s: %d rows checked in full, %d entries loaded, %d migrated to "
            "schema version %d, %d evicted by the size bounds, %d unreadable rows skipped%s",
            self._path or ":memory:",
            checked,
            len(self._rows),
            migrated,
            SCHEMA_VERSION,
            len(evicted),
            len(unreadable),
            _name_rows(unreadable),
        )

    def _connect(self) -> sqlite3.Connection:
        if self._path is None:
            return sqlite3.connect(":memory:", check_same_thread=False)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(str(self._path), check_same_thread=False)

    def _open(self) -> None:
        db = self._db = self._connect()
        # secure_delete: a deleted answer's bytes are overwritten with zeros in the database
        # pages, and the WAL is checkpointed and truncated after deletes (see _delete_rows), so
        # an answer deleted through the admin API is not left readable on disk.
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            db.execute(statement)
        have = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
        for column, kind in NEW_COLUMNS.items():
            if column not in have:  # a table of an earlier release: its rows get checked
                db.execute(f"ALTER TABLE entries ADD COLUMN {column} {kind}")
        for statement in INDEXES:
            db.execute(statement)
        db.execute("DELETE FROM entries WHERE expires_at <= ?", (self._clock(),))
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # expired answers leave the WAL too

    def _scan(self) -> tuple[list[tuple[str, str]], int, int]:
        """The start-up read (in the SQLite thread): every row's record from the covering
        index, in LRU order; rows to be checked are read in full. Returns the unreadable rows,
        the number migrated from an older schema and the number checked."""
        assert self._db is not None
        to_check: list[str] = []
        rows, intern = self._rows, sys.intern
        total = written_max = 0
        for row_id, partition, expires_at, size, written in self._db.execute(CATALOG_SCAN):
            if written is None:
                to_check.append(row_id)
                rows[row_id] = ("", 0.0, 0)  # keeps its LRU place until checked
                continue
            rows[row_id] = (intern(partition), expires_at, size)
            total += size
            if written > written_max:
                written_max = written
        self._written = written_max
        # whole result sets, built by sqlite3 in C: no Python per row
        vector_rows: list[VectorRow] = self._db.execute(VECTOR_ROWS).fetchall()
        pending: list[str] = [row[0] for row in self._db.execute(PENDING_IDS).fetchall()]
        self._bytes = total
        unreadable: list[tuple[str, str]] = []
        migrated = 0
        now = self._clock()
        for row_id in to_check:
            found = self._db.execute("SELECT data FROM entries WHERE id = ?", (row_id,)).fetchone()
            try:
                entry, version = CacheEntry.read(found[0])
                if entry.id != row_id:
                    raise UnreadableEntry("the id inside differs from the row's id")
            except UnreadableEntry as exc:
                unreadable.append((str(row_id), str(exc)))
                del rows[row_id]
                continue
            if entry.expired(now):
                del rows[row_id]
                continue
            migrated += version != SCHEMA_VERSION
            self._write_row(entry, used_at=None)  # the columns filled, the vector moved out
            rows[row_id] = (intern(entry.partition), entry.expires_at, entry.size_bytes())
            self._bytes += entry.size_bytes()
            if entry.vector is not None:
                vector_rows.append(
                    (entry.id, entry.scope, entry.partition, entry.expires_at, len(entry.vector))
                )
            elif pending_flag(entry):
                pending.append(entry.id)
        if to_check:
            self._db.commit()
        self._vector_rows, self._pending_ids = vector_rows, pending
        return unreadable, migrated, len(to_check)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._run(_close)
        self._io.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        self._send_writes()
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # ------------------------------------------------------------------ memory (under the lock)
    def _set_row(self, entry: CacheEntry) -> None:
        old = self._rows.pop(entry.id, None)
        if old is not None:
            self._bytes -= old[_SIZE]
        self._rows[entry.id] = (sys.intern(entry.partition), entry.expires_at, entry.size_bytes())
        self._bytes += entry.size_bytes()
        self._remember(entry)

    def _remember(self, entry: CacheEntry) -> None:
        """Keep ``entry`` parsed (most recent last), within the hot bounds."""
        old = self._hot.pop(entry.id, None)
        if old is not None:
            self._hot_bytes -= old.size_bytes()
        if entry.size_bytes() > self._hot_bytes_max:
            return
        self._hot[entry.id] = entry
        self._hot_bytes += entry.size_bytes()
        while len(self._hot) > self._hot_entries or self._hot_bytes > self._hot_bytes_max:
            _, dropped = self._hot.popitem(last=False)
            self._hot_bytes -= dropped.size_bytes()

    def _forget(self, entry_id: str) -> bool:
        row = self._rows.pop(entry_id, None)
        if row is not None:
            self._bytes -= row[_SIZE]
        hot = self._hot.pop(entry_id, None)
        if hot is not None:
            self._hot_bytes -= hot.size_bytes()
        return row is not None

    def _evict(self) -> list[str]:
        evicted: list[str] = []
        while self._rows and (len(self._rows) > self._max_entries or self._bytes > self._max_bytes):
            oldest = next(iter(self._rows))
            self._forget(oldest)
            evicted.append(oldest)
        return evicted

    def _start_scan_outdated(self) -> None:
        self._vector_rows = self._pending_ids = None

    # ------------------------------------------------------------------ SQLite (its threads)
    def _write_row(self, entry: CacheEntry, used_at: float | None) -> None:
        """Insert or replace ``entry``'s row (``used_at`` None: keep the row's own); no commit."""
        assert self._db is not None
        self._written += 1
        vector = vector_bytes(entry)
        values = (
            entry.partition,
            entry.expires_at,
            entry.scope,
            entry.size_bytes(),
            len(entry.vector or ()),
            pending_flag(entry),
            self._written,
            vector,
            dataclasses.replace(entry, vector=None).to_bytes(),
        )
        if used_at is None:
            self._db.execute(
                "UPDATE entries SET partition = ?, expires_at = ?, scope = ?, size = ?, dims = ?,"
                " pending = ?, written = ?, vector = ?, data = ? WHERE id = ?",
                (*values, entry.id),
            )
            return
        self._db.execute(
            "INSERT OR REPLACE INTO entries (partition, expires_at, scope, size, dims, pending,"
            " written, vector, data, id, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, entry.id, used_at),
        )

    def _read_row(self, entry_id: str) -> CacheEntry | str | None:
        """The entry, None when the row is gone, or why it cannot be read."""
        db = self._reader if self._reader is not None else self._db
        if db is None:
            return None
        found = db.execute("SELECT data, vector FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if found is None:
            return None
        try:
            entry, _ = CacheEntry.read(found[0])
            if entry.id != entry_id:
                raise UnreadableEntry("the id inside differs from the row's id")
            if found[1] is not None:
                blob = found[1]
                if not isinstance(blob, bytes) or len(blob) % 4:
                    raise UnreadableEntry("vector column is not float32 bytes")
                vector = np.frombuffer(blob, dtype=np.float32)
                if not np.isfinite(vector).all():
                    raise UnreadableEntry("vector is not a list of finite numbers")
                entry.vector = vector.tolist()
        except UnreadableEntry as exc:
            return str(exc)
        return entry

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

    async def _persist_delete(self, ids: list[str]) -> None:
        if not ids:
            return

        def _delete() -> None:
            if self._db is not None:
                self._delete_rows(ids, checkpoint=self._path is not None)

        await self._run(_delete)

    async def _load(self, entry_id: str, row: _Row) -> CacheEntry | None:
        """Read an entry from SQLite on a hit. An unreadable row becomes a miss: counted,
        named by id, forgotten in memory and left in the file."""
        if self._reader is not None:
            found = self._read_row(entry_id)
        else:
            found = await self._run(self._read_row, entry_id)
        if isinstance(found, str):
            with self._lock:
                if self._rows.get(entry_id) is row:
                    self._forget(entry_id)
                    self._unreadable.add(entry_id)
            self.report_unreadable(1)
            log.warning(
                "cached entry %r cannot be read, served as a miss: %s", entry_id[:80], found
            )
            return None
        if found is None:
            return None
        with self._lock:
            if self._rows.get(entry_id) is row:  # not replaced or deleted meanwhile
                self._remember(found)
        return found

    # ------------------------------------------------------------------ ExactStore
    async def get(self, entry_id: str, partition: str | None = None) -> CacheEntry | None:
        with self._lock:
            row = self._rows.get(entry_id)
            if row is None:
                return None
            expired = self._clock() >= row[_EXPIRES]
            if expired:
                self._forget(entry_id)
                hot = None
            else:
                self._rows.move_to_end(entry_id)
                hot = self._hot.get(entry_id)
                if hot is not None:
                    self._hot.move_to_end(entry_id)
        if expired:
            await self._persist_delete([entry_id])
            return None
        if hot is not None:
            return hot
        return await self._load(entry_id, row)

    async def put(self, entry: CacheEntry) -> list[str]:
        with self._lock:
            self._start_scan_outdated()
            self._set_row(entry)
            evicted = self._evict()
        if self._path is None:
            # In memory nothing outlives the process, so the answer does not wait for the
            # write (a thread hop: milliseconds on a busy machine, and the woken thread then
            # contends for the GIL). The entry is served from the rows above at once, and any
            # read of its data queues behind the write on the same thread. The hand-over
            # itself waits for the loop's next turn, after the caller's reply has gone out.
            self._unsent.append((entry, evicted))
            if len(self._unsent) == 1:
                asyncio.get_running_loop().call_soon(self._send_writes)
            return evicted
        await self._run(self._write, entry, evicted)
        return evicted

    async def put_many(self, entries: Sequence[CacheEntry]) -> list[str]:
        """``put`` of many entries in one SQLite transaction (bulk loads: imports, the scale
        benchmark). Returns the evicted ids."""
        with self._lock:
            self._start_scan_outdated()
            for entry in entries:
                self._set_row(entry)
            evicted = self._evict()

        def _write_all() -> None:
            if self._db is None:
                return
            now = self._clock()
            for entry in entries:
                self._write_row(entry, used_at=now)
            self._delete_rows(evicted, checkpoint=False)

        await self._run(_write_all)
        return evicted

    def _send_writes(self) -> None:
        """Hand the writes ``put`` left for later to the writing thread, in order, ahead of
        any other job (``_run`` calls this first, so a read or delete never overtakes them)."""
        if not self._unsent:
            return
        batch, self._unsent = self._unsent, []

        def _write_all() -> None:
            for entry, evicted in batch:
                self._write(entry, evicted)

        try:
            self._io.submit(_write_all).add_done_callback(_write_failed)
        except RuntimeError:  # closed meanwhile: nothing in memory outlives the process
            log.warning("embedded cache closed before %d entries were written", len(batch))

    def _write(self, entry: CacheEntry, evicted: list[str]) -> None:
        if self._db is None:
            return
        self._write_row(entry, used_at=self._clock())
        # Evictions make room on the hot write path: no checkpoint here (SQLite's automatic
        # one, every 1000 pages, copies the zeroed pages back and recycles the WAL).
        self._delete_rows(evicted, checkpoint=False)

    async def set_vector(self, entry_id: str, vector: list[float]) -> list[str]:
        """Attach a vector computed after the entry was stored (persisted with it, so the
        index restore at start sees it). Returns ids evicted by the byte bound; nothing
        when the entry is gone."""
        with self._lock:
            row = self._rows.get(entry_id)
            entry = self._hot.get(entry_id)
        if row is None:
            return []
        if entry is None:
            entry = await self._load(entry_id, row)
            if entry is None:
                return []
        meta = {k: v for k, v in entry.meta.items() if k != "vector_pending"}
        updated = dataclasses.replace(entry, vector=vector, meta=meta)
        with self._lock:
            if self._rows.get(entry_id) is not row:
                return []  # deleted or stored again meanwhile
            self._start_scan_outdated()
            self._bytes += updated.size_bytes() - row[_SIZE]
            # assigned in place: the entry keeps its LRU position
            self._rows[entry_id] = (row[_PARTITION], row[_EXPIRES], updated.size_bytes())
            self._remember(updated)
            evicted = self._evict()
        if entry_id not in evicted:
            await self._run(self._update, updated, evicted)
        elif evicted:
            await self._persist_delete(evicted)
        return evicted

    def _update(self, entry: CacheEntry, evicted: list[str]) -> None:
        if self._db is None:
            return
        self._write_row(entry, used_at=None)
        self._delete_rows(evicted, checkpoint=False)  # evictions: on the write path

    async def delete(self, entry_id: str) -> bool:
        with self._lock:
            self._start_scan_outdated()
            found = self._forget(entry_id)
            if entry_id in self._unreadable:  # a row named as unreadable
                self._unreadable.discard(entry_id)
                found = True
        if found:
            await self._persist_delete([entry_id])
        return found

    async def delete_partition(self, partition: str) -> list[str]:
        with self._lock:  # an admin operation: one pass over the records is fine
            self._start_scan_outdated()
            ids = [i for i, row in self._rows.items() if row[_PARTITION] == partition]
            for entry_id in ids:
                self._forget(entry_id)
        await self._persist_delete(ids)
        return ids

    async def sweep(self) -> list[str]:
        """Drop expired entries (reads check the expiry too; this frees their records and
        rows). The expired ids come from SQLite's expiry index, not a pass over memory."""
        now = self._clock()

        def _expired() -> list[str]:
            if self._db is None:
                return []
            cur = self._db.execute("SELECT id FROM entries WHERE expires_at <= ?", (now,))
            return [row[0] for row in cur]

        candidates = await self._run(_expired)
        with self._lock:
            ids = [i for i in candidates if self._forget(i)]
            if candidates:
                self._start_scan_outdated()
        await self._persist_delete(candidates)
        return ids

    async def count(self) -> int:
        return len(self._rows)

    # ------------------------------------------------------------------ for the vector index
    async def vector_rows(self) -> list[VectorRow]:
        """Every stored vector's record: the start-up scan's, handed over once (it is only
        for the index's restore, and 100 MB at 1M entries), else read from SQLite."""
        with self._lock:
            rows, self._vector_rows = self._vector_rows, None
        if rows is not None:
            return rows

        def _query() -> list[VectorRow]:
            assert self._db is not None
            found: list[VectorRow] = self._db.execute(VECTOR_ROWS).fetchall()
            return found

        found = await self._run(_query)
        with self._lock:
            return [r for r in found if r[0] in self._rows]

    async def read_vectors(self, ids: Sequence[str], dimension: int) -> np.ndarray:
        """The stored vectors of ``ids`` (rows of that ``dimension``), one row each; a row
        gone or of another length reads as NaN and is skipped by the caller."""

        def _read() -> np.ndarray:
            assert self._db is not None
            out = np.full((len(ids), dimension), np.nan, dtype=np.float32)
            for at, entry_id in enumerate(ids):
                found = self._db.execute(
                    "SELECT vector FROM entries WHERE id = ?", (entry_id,)
                ).fetchone()
                if found is not None and isinstance(found[0], bytes):
                    if len(found[0]) == 4 * dimension:
                        out[at] = np.frombuffer(found[0], dtype=np.float32)
            return out

        return await self._run(_read)

    async def entries_missing_vectors(self) -> list[CacheEntry]:
        """Entries stored before their vector (``meta["vector_pending"]``, set by the cache
        layer) whose vector never landed: the process stopped first."""
        with self._lock:
            ids, self._pending_ids = self._pending_ids, None  # handed over once, as above
        if ids is None:

            def _query() -> list[str]:
                assert self._db is not None
                return [row[0] for row in self._db.execute(PENDING_IDS)]

            ids = await self._run(_query)
        found: list[CacheEntry] = []
        for entry_id in ids:
            entry = await self.get(entry_id)
            if entry is not None and entry.vector is None:
                found.append(entry)
        return found

    @property
    def bytes_used(self) -> int:
        return self._bytes

    async def health(self) -> str | None:
        return None
