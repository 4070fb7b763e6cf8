"""The embedded exact store's SQLite table: its schema, the start-up queries and how an entry's
vector and pending flag are written. Split from embedded_exact.py, which reads and writes
the rows (see its docstring for why rows are trusted at start)."""

from __future__ import annotations

import numpy as np

from sidecar.cache.model import CacheEntry

# Columns added to the first table (id, partition, expires_at, used_at, data) by ALTER TABLE.
NEW_COLUMNS = {
    "scope": "TEXT",
    "size": "INTEGER",
    "dims": "INTEGER",  # vector length, 0 without one
    "pending": "INTEGER",  # 1: stored before its vector, which is still to be computed
    "written": "INTEGER",  # write sequence number; NULL: to be checked at the next start
    "vector": "BLOB",
}
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, partition TEXT NOT NULL,"
    " expires_at REAL NOT NULL, used_at REAL NOT NULL, scope TEXT, size INTEGER, dims INTEGER,"
    " pending INTEGER, written INTEGER, vector BLOB, data BLOB NOT NULL)",
]
INDEXES = [
    # covering index of the start-up scan, in LRU order: no table page is read at start
    "CREATE INDEX IF NOT EXISTS entries_catalog ON entries"
    " (used_at, id, partition, scope, expires_at, size, dims, pending, written)",
    "CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at)",
    # a change of data not made by this store (which always sets a new ``written``) marks the
    # row for a full check at the next start
    "CREATE TRIGGER IF NOT EXISTS entries_changed_elsewhere AFTER UPDATE OF data ON entries"
    " WHEN NEW.written IS OLD.written"
    " BEGIN UPDATE entries SET written = NULL WHERE id = NEW.id; END",
]
CATALOG_SCAN = (
    "SELECT id, partition, expires_at, size, written"
    " FROM entries INDEXED BY entries_catalog ORDER BY used_at"
)
VECTOR_ROWS = (
    "SELECT id, scope, partition, expires_at, dims FROM entries INDEXED BY entries_catalog"
    " WHERE dims > 0 AND written IS NOT NULL"
)
PENDING_IDS = (
    "SELECT id FROM entries INDEXED BY entries_catalog"
    " WHERE pending = 1 AND dims = 0 AND written IS NOT NULL"
)


# What the vector index needs of a stored vector at start (the vector itself only if the
# saved index lacks it): id, scope, partition, expires_at, vector length. Plain tuples, as
# SQLite returns them: at 1M entries a NamedTuple per row would add seconds to the start-up.
VectorRow = tuple[str, str, str, float, int]


def vector_bytes(entry: CacheEntry) -> bytes | None:
    if entry.vector is None:
        return None
    return np.asarray(entry.vector, dtype=np.float32).tobytes()


def pending_flag(entry: CacheEntry) -> int:
    return int(
        entry.vector is None and bool(entry.question) and bool(entry.meta.get("vector_pending"))
    )
