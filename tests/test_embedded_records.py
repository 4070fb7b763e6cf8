"""The embedded exact store keeps only a record per entry in memory and reads entries from
SQLite on a hit (sidecar/cache/stores/embedded_exact.py).

Real stores throughout: SQLite files in a temporary data directory, real usearch graphs.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import orjson
import pytest

from sidecar.cache.model import CachedAnswer, CacheEntry
from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex

DIM = 16


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_entry(n: int, clock: Clock, partition: str = "p", ttl: float = 3600.0) -> CacheEntry:
    # vectors of float32 values, as every embedder gives (the store keeps float32)
    vector = [float(i + n) / 64 for i in range(DIM)]
    return CacheEntry(
        id=f"id-{n}",
        partition=partition,
        scope="scope-a",
        question=f"question {n}",
        answer=CachedAnswer(200, {"content-type": "text/plain"}, f"answer {n}".encode()),
        created_at=clock(),
        expires_at=clock() + ttl,
        vector=vector,
        meta={"n": n},
    )


async def test_entries_beyond_the_parsed_ones_are_read_back_whole(tmp_path: Path) -> None:
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock, hot_entries=4)
    await exact.start()
    entries = [make_entry(n, clock) for n in range(30)]
    for e in entries:
        await exact.put(e)
    for e in entries:  # most were pushed out of the parsed LRU: read from SQLite
        assert await exact.get(e.id) == e
    await exact.close()
    # after a restart too, and the size bound's accounting is the same as before it
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock, hot_entries=4)
    await exact.start()
    assert await exact.count() == 30
    assert exact.bytes_used == sum(e.size_bytes() for e in entries)
    for e in reversed(entries):
        assert await exact.get(e.id) == e
    await exact.close()


async def test_the_lru_order_and_bounds_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    await exact.start()
    for n in range(10):
        clock.now += 1
        await exact.put(make_entry(n, clock))
    await exact.close()
    # a smaller bound at the next start evicts the oldest stored, and their rows
    exact = EmbeddedExactStore(str(tmp_path), 6, 1 << 30, clock)
    await exact.start()
    assert await exact.count() == 6
    assert await exact.get("id-3") is None and await exact.get("id-4") is not None
    rows = await exact.vector_rows()
    assert sorted(r[0] for r in rows) == [f"id-{n}" for n in range(4, 10)]
    await exact.close()
    with sqlite3.connect(str(tmp_path / "cache.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 6


async def test_expiry_partition_delete_and_sweep_use_the_records(tmp_path: Path) -> None:
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock, hot_entries=1)
    await exact.start()
    for n in range(6):
        await exact.put(make_entry(n, clock, partition="a" if n < 3 else "b", ttl=10 + n))
    assert sorted(await exact.delete_partition("a")) == ["id-0", "id-1", "id-2"]
    assert await exact.get("id-1") is None
    clock.now += 13.5  # id-3 (ttl 13) has expired, id-4 and id-5 not
    assert await exact.sweep() == ["id-3"]
    assert await exact.get("id-4") is not None
    clock.now += 1  # id-4 (ttl 14) expires: a get sees it without a sweep
    assert await exact.get("id-4") is None
    assert await exact.count() == 1
    await exact.close()
    with sqlite3.connect(str(tmp_path / "cache.sqlite3")) as db:
        assert [r[0] for r in db.execute("SELECT id FROM entries")] == ["id-5"]


async def test_a_trusted_row_damaged_on_disk_is_a_counted_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Start-up trusts rows this store wrote and does not read them; damage that bypassed the
    trigger (the disk, not an UPDATE of data) shows on the hit: a miss, counted, named by id,
    left in the file and deletable."""
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    await exact.start()
    for n in range(3):
        await exact.put(make_entry(n, clock))
    await exact.close()
    with sqlite3.connect(str(tmp_path / "cache.sqlite3")) as db:
        db.execute("DROP TRIGGER entries_changed_elsewhere")  # as damage bypasses it
        db.execute("UPDATE entries SET data = ? WHERE id = 'id-1'", (b"\x00secret answer",))
    counted: list[int] = []
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    exact.report_unreadable = counted.append
    caplog.set_level(logging.INFO, logger="sidecar")
    await exact.start()
    assert await exact.count() == 3 and counted == [0]  # not read at start
    assert await exact.get("id-1") is None
    assert counted == [0, 1] and await exact.count() == 2
    assert await exact.get("id-1") is None and counted == [0, 1]  # counted once
    assert (await exact.get("id-2")) == make_entry(2, clock)
    line = next(r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage())
    assert "'id-1'" in line and "secret" not in line
    assert await exact.delete("id-1")  # the named row can be deleted
    await exact.close()
    with sqlite3.connect(str(tmp_path / "cache.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM entries WHERE id = 'id-1'").fetchone()[0] == 0


async def test_a_row_changed_elsewhere_is_checked_at_the_next_start(tmp_path: Path) -> None:
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    await exact.start()
    await exact.put(make_entry(1, clock))
    await exact.close()
    with sqlite3.connect(str(tmp_path / "cache.sqlite3")) as db:
        (raw,) = db.execute("SELECT data FROM entries WHERE id = 'id-1'").fetchone()
        changed = orjson.loads(raw)
        changed["answer"]["body"] = "edited by an operator"
        changed["vector"] = [0.5] * DIM  # an older sidecar kept the vector in the JSON
        db.execute("UPDATE entries SET data = ? WHERE id = 'id-1'", (orjson.dumps(changed),))
        assert db.execute("SELECT written FROM entries").fetchone()[0] is None
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    await exact.start()
    entry = await exact.get("id-1")
    assert entry is not None and entry.answer.body == b"edited by an operator"
    assert entry.vector == [0.5] * DIM
    (row,) = await exact.vector_rows()
    assert row[0] == "id-1" and row[4] == DIM
    await exact.close()
    with sqlite3.connect(str(tmp_path / "cache.sqlite3")) as db:
        written, data = db.execute("SELECT written, data FROM entries").fetchone()
    assert written is not None and orjson.loads(data)["vector"] is None  # moved to its column


async def test_a_restart_without_a_saved_index_reads_the_vectors_from_sqlite(
    tmp_path: Path,
) -> None:
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    await exact.start()
    for n in range(20):
        await exact.put(make_entry(n, clock))
    await exact.close()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    await exact.start()
    index = EmbeddedVectorIndex(graph_at=8, data_dir=str(tmp_path))
    await index.start(f"test:{DIM}", DIM)
    restored = await index.restore_from(exact)
    assert (restored.loaded, restored.added) == (0, 20)
    found = await index.search("scope-a", make_entry(7, clock).vector or [], 1)
    assert found[0].id == "id-7"
    await exact.close()


async def test_a_vector_attached_later_is_kept_with_the_entry(tmp_path: Path) -> None:
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock, hot_entries=1)
    await exact.start()
    first = make_entry(1, clock)
    pending = CacheEntry(
        first.id, "p", "scope-a", "question 1", first.answer, clock(), clock() + 60,
        None, {"vector_pending": True},
    )  # fmt: skip
    await exact.put(pending)
    await exact.put(make_entry(2, clock))  # pushes id-1 out of the parsed LRU
    await exact.close()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock, hot_entries=1)
    await exact.start()
    assert [e.id for e in await exact.entries_missing_vectors()] == ["id-1"]
    assert await exact.set_vector("id-1", first.vector or []) == []
    await exact.close()
    exact = EmbeddedExactStore(str(tmp_path), 1000, 1 << 30, clock)
    await exact.start()
    assert await exact.entries_missing_vectors() == []
    entry = await exact.get("id-1")
    assert entry is not None and entry.vector == first.vector and entry.meta == {}
    assert sorted(r[0] for r in await exact.vector_rows()) == ["id-1", "id-2"]
    await exact.close()


async def test_in_memory_writes_not_awaited_are_read_and_deleted_in_order() -> None:
    """In memory, ``put`` returns before its SQLite write (nothing outlives the process): a
    read of an entry no longer parsed, a delete or a close issued at once must still queue
    behind that write."""
    clock = Clock()
    exact = EmbeddedExactStore(":memory:", 1000, 1 << 30, clock, hot_entries=2)
    await exact.start()
    entries = [make_entry(n, clock) for n in range(20)]
    for e in entries:
        await exact.put(e)  # no turn of the loop between them: every write still unsent
    for e in entries:  # most are beyond the two parsed ones: read back from SQLite
        assert await exact.get(e.id) == e
    await exact.put(make_entry(99, clock))
    assert await exact.delete("id-99")
    assert await exact.get("id-99") is None
    assert await exact.count() == 20
    await exact.put(make_entry(100, clock))
    await exact.close()  # the write handed over before the connection closes: no error
