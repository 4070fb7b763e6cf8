"""The embedded vector index saves its HNSW graphs and loads them at the next start instead of
rebuilding them; SQLite stays the source of truth (sidecar/cache/stores/embedded_snapshot.py).

Real stores throughout: SQLite in a temporary data directory, real usearch graphs (a small
``graph_at`` so a few dozen entries make a graph), a real process killed with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest

from sidecar.cache.model import CachedAnswer, CacheEntry
from sidecar.cache.stores import embedded
from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex

DIM = 16
GRAPH_AT = 8
NAMESPACE = f"test-model:{DIM}"
ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return [float(x) for x in v / np.linalg.norm(v)]


def make_entry(n: int, clock: Clock, ttl: float = 3600.0, scope: str = "scope-a") -> CacheEntry:
    return CacheEntry(
        id=f"id-{n}",
        partition="p",
        scope=scope,
        question=f"question {n}",
        answer=CachedAnswer(200, {}, f"answer {n}".encode()),
        created_at=clock(),
        expires_at=clock() + ttl,
        vector=vector(n),
    )


async def open_stores(
    data: Path, clock: Clock, dtype: str = "i8"
) -> tuple[EmbeddedExactStore, EmbeddedVectorIndex]:
    exact = EmbeddedExactStore(str(data), 100_000, 1 << 30, clock)
    await exact.start()
    index = EmbeddedVectorIndex(graph_at=GRAPH_AT, data_dir=str(data), graph_dtype=dtype)
    await index.start(NAMESPACE, DIM)
    return exact, index


async def store(exact: EmbeddedExactStore, index: EmbeddedVectorIndex, e: CacheEntry) -> None:
    await exact.put(e)
    assert e.vector is not None
    await index.add(e.id, e.scope, e.partition, e.vector, e.expires_at)


async def fill(data: Path, clock: Clock, n: int, dtype: str = "i8") -> None:
    """``n`` entries in one scope, then a clean close (which saves the index)."""
    exact, index = await open_stores(data, clock, dtype)
    for i in range(n):
        await store(exact, index, make_entry(i, clock))
    await index.close()
    await exact.close()


async def nearest(index: EmbeddedVectorIndex, n: int, scope: str = "scope-a") -> str | None:
    found = await index.search(scope, vector(n), 1)
    return found[0].id if found else None


async def test_a_saved_index_is_loaded_not_rebuilt(tmp_path: Path) -> None:
    clock = Clock()
    await fill(tmp_path, clock, 40)
    assert (tmp_path / "vector-index" / "manifest.json").exists()

    exact, index = await open_stores(tmp_path, clock)
    restored = await index.restore_from(exact)
    assert (restored.loaded, restored.stale, restored.added) == (40, 0, 0)
    assert await index.count() == 40
    for n in (0, 17, 39):
        assert await nearest(index, n) == f"id-{n}"
    await exact.close()


async def test_a_graph_saved_before_graphs_had_a_dtype_loads_as_f32(tmp_path: Path) -> None:
    # Snapshots written before ``cache.vector_graph_dtype`` hold f32 graphs and no "dtype":
    # they load as they are (no rebuild), and keep f32 until a rebuild.
    clock = Clock()
    exact, index = await open_stores(tmp_path, clock)
    f32 = EmbeddedVectorIndex(graph_at=GRAPH_AT, data_dir=str(tmp_path), graph_dtype="f32")
    await f32.start(NAMESPACE, DIM)
    for i in range(40):
        await store(exact, f32, make_entry(i, clock))
    await f32.close()
    await exact.close()
    manifest = tmp_path / "vector-index" / "manifest.json"
    old = orjson.loads(manifest.read_bytes())
    for graph in old["graphs"]:
        assert graph.pop("dtype") == "f32"
    manifest.write_bytes(orjson.dumps(old))

    exact, index = await open_stores(tmp_path, clock)  # the default, i8, for new graphs
    restored = await index.restore_from(exact)
    assert (restored.loaded, restored.added) == (40, 0)
    found = await index.search("scope-a", vector(17), 1)
    assert found[0].id == "id-17" and found[0].exact
    await store(exact, index, make_entry(40, clock, scope="scope-b"))  # a new scope...
    for i in range(41, 41 + GRAPH_AT):
        await store(exact, index, make_entry(i, clock, scope="scope-b"))
    assert not (await index.search("scope-b", vector(41), 1))[0].exact  # ... is an i8 graph
    await index.close()
    await exact.close()
    saved = orjson.loads(manifest.read_bytes())
    assert sorted(g["dtype"] for g in saved["graphs"]) == ["f32", "i8"]


async def test_a_rebuild_in_batches_finds_what_adds_one_by_one_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a saved index a restart re-adds every stored vector from SQLite in batches, one
    usearch call each (the first makes the graph, the next ones add to it): the rebuilt graph
    must find what the graph built by adds one at a time finds, the exact nearest ones."""
    monkeypatch.setattr(embedded, "_READ_BATCH", 100)  # 350 entries: four batches
    clock = Clock()
    exact, live = await open_stores(tmp_path, clock)
    for i in range(350):
        await store(exact, live, make_entry(i, clock))
    await exact.close()  # ``live`` is not closed: nothing saved, the next start rebuilds

    exact, rebuilt = await open_stores(tmp_path, clock)
    restored = await rebuilt.restore_from(exact)
    assert (restored.loaded, restored.stale, restored.added) == (0, 0, 350)
    assert rebuilt._scopes["scope-a"].graph is not None  # a graph, not brute force
    # every entry should find itself; a graph search is approximate and a multi-threaded
    # build's order varies, so a rare miss is allowed (seen: 1 of 350 in one CI run)
    itself = sum([await nearest(rebuilt, n) == f"id-{n}" for n in range(350)])
    assert itself >= 345, itself
    # Random queries among random vectors: their top three are nearly tied, and a graph search
    # is approximate (its build order depends on threads), so the exact order is not asserted;
    # both graphs must find nearly all of the exact top three.
    stored = np.array([vector(n) for n in range(350)], dtype=np.float32)
    found = {"rebuilt": 0, "one by one": 0}
    for q in range(100):
        query = vector(10_000 + q)
        exact_top = {f"id-{n}" for n in np.argsort(-(stored @ np.array(query)))[:3]}
        for name, index in (("rebuilt", rebuilt), ("one by one", live)):
            found[name] += len(exact_top & {m.id for m in await index.search("scope-a", query, 3)})
    assert found["rebuilt"] >= 285 and found["one by one"] >= 285, found  # recall@3 >= 0.95
    await exact.close()


@pytest.mark.parametrize(
    "damage",
    ["flipped bytes", "truncated graph", "other embedder", "unknown dtype", "garbage manifest"],
)
async def test_a_corrupt_or_foreign_index_is_discarded_and_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    await fill(tmp_path, clock, 40)
    folder = tmp_path / "vector-index"
    graph = next(folder.glob("*.usearch"))
    manifest = folder / "manifest.json"
    if damage == "flipped bytes":
        raw = bytearray(graph.read_bytes())
        raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
        graph.write_bytes(bytes(raw))
    elif damage == "truncated graph":
        graph.write_bytes(graph.read_bytes()[:100])
    elif damage == "other embedder":
        manifest.write_bytes(manifest.read_bytes().replace(NAMESPACE.encode(), b"other:16"))
    elif damage == "unknown dtype":
        manifest.write_bytes(manifest.read_bytes().replace(b'"dtype":"i8"', b'"dtype":"b1"'))
    else:
        manifest.write_bytes(b"{not json")

    exact, index = await open_stores(tmp_path, clock)
    with caplog.at_level(logging.WARNING, logger="sidecar.cache.embedded"):
        restored = await index.restore_from(exact)
    assert (restored.loaded, restored.added) == (0, 40)
    assert any("discarded, rebuilding" in r.getMessage() for r in caplog.records)
    assert not graph.exists()  # the damaged file is not kept for a later start
    for n in (0, 39):
        assert await nearest(index, n) == f"id-{n}"
    await index.close()
    await exact.close()
    # the rebuilt index was saved again and loads cleanly
    exact, index = await open_stores(tmp_path, clock)
    assert (await index.restore_from(exact)).loaded == 40
    await exact.close()


async def test_entries_deleted_expired_or_restored_after_the_save_are_never_served(
    tmp_path: Path,
) -> None:
    clock = Clock()
    await fill(tmp_path, clock, 40)
    # Changes after the save; the index is not closed (not saved again), as after a crash.
    exact, index = await open_stores(tmp_path, clock)
    await index.restore_from(exact)
    await exact.delete("id-3")
    await index.remove(["id-3"])
    await store(exact, index, make_entry(5, clock, ttl=10))  # re-stored: expires soon
    await store(exact, index, make_entry(7, clock, scope="scope-b"))  # moved to another scope
    for n in range(40, 50):
        await store(exact, index, make_entry(n, clock))
    await exact.close()

    clock.now += 60  # id-5's new version has expired
    exact, index = await open_stores(tmp_path, clock)
    restored = await index.restore_from(exact)
    assert restored.loaded == 37  # 40 saved, less id-3 (deleted), id-5 (expired), id-7 (moved)
    assert restored.stale == 3
    assert restored.added == 11  # the ten stored after the save, and id-7 in scope-b
    assert await nearest(index, 3) != "id-3"
    assert await nearest(index, 5) != "id-5"
    assert await nearest(index, 7) != "id-7"
    assert await nearest(index, 7, "scope-b") == "id-7"
    for n in range(40, 50):
        assert await nearest(index, n) == f"id-{n}"
    assert await index.count() == 48  # 37 + 11
    await exact.close()


CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_vector_snapshot import Clock, make_entry, open_stores, store
    from pathlib import Path

    async def main() -> None:
        clock = Clock()
        exact, index = await open_stores(Path({data!r}), clock)
        await index.restore_from(exact)
        for n in range(40, 60):
            await store(exact, index, make_entry(n, clock))
        await exact.delete("id-0")
        await index.remove(["id-0"])
        await index.save()
        for n in range(60, 70):
            await store(exact, index, make_entry(n, clock))
        await exact.delete("id-1")
        await index.remove(["id-1"])
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def test_a_restart_after_kill_9_between_save_and_exit_is_correct(tmp_path: Path) -> None:
    clock = Clock()
    await fill(tmp_path, clock, 40)
    script = CRASHING_WRITER.format(tests=str(Path(__file__).parent), data=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]

    exact, index = await open_stores(tmp_path, clock)
    restored = await index.restore_from(exact)
    # the second save holds ids 1..59; id-1 was deleted after it; 60..69 were never saved
    assert (restored.loaded, restored.stale, restored.added) == (58, 1, 10)
    assert await nearest(index, 0) != "id-0"
    assert await nearest(index, 1) != "id-1"
    for n in (2, 45, 59, 60, 69):
        assert await nearest(index, n) == f"id-{n}"
    assert await index.count() == 68
    await exact.close()


async def test_an_admin_delete_erases_the_saved_index_until_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    await fill(tmp_path, clock, 40, "f32")  # f32: the vector's bytes can be looked for
    folder = tmp_path / "vector-index"
    deleted = np.asarray(vector(3), dtype=np.float32).tobytes()
    assert any(deleted in p.read_bytes() for p in folder.glob("*.usearch"))

    exact, index = await open_stores(tmp_path, clock, "f32")
    await index.restore_from(exact)
    await exact.delete("id-3")
    await index.remove(["id-3"])
    await index.erase_saved()  # what DualCache.delete does after an admin delete
    assert list(folder.iterdir()) == []
    await store(exact, index, make_entry(40, clock))
    await index.close()  # its graph still holds id-3's bytes: nothing saved
    await exact.close()
    assert list(folder.iterdir()) == []

    exact, index = await open_stores(tmp_path, clock, "f32")
    restored = await index.restore_from(exact)
    assert (restored.loaded, restored.added) == (0, 40)
    assert await nearest(index, 3) != "id-3"
    await index.close()
    await exact.close()
    assert not any(deleted in p.read_bytes() for p in folder.glob("*.usearch"))
    assert any(folder.glob("*.usearch"))


async def test_the_sweep_saves_a_changed_index_when_due(tmp_path: Path) -> None:
    clock = Clock()
    exact = EmbeddedExactStore(str(tmp_path), 100_000, 1 << 30, clock)
    await exact.start()
    index = EmbeddedVectorIndex(graph_at=GRAPH_AT, data_dir=str(tmp_path), save_every=0)
    await index.start(NAMESPACE, DIM)
    manifest = tmp_path / "vector-index" / "manifest.json"
    await index.sweep()
    assert not manifest.exists()  # nothing changed: nothing written
    for n in range(20):
        await store(exact, index, make_entry(n, clock))
    await index.sweep()
    assert manifest.exists()
    await exact.close()  # no close of the index: as if killed after the sweep

    exact, index = await open_stores(tmp_path, clock)
    assert (await index.restore_from(exact)).loaded == 20
    await exact.close()
