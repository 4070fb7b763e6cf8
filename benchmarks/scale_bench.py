"""Scale benchmark: the embedded cache at 10k, 100k (and 1M) entries.

Run: ``python -m benchmarks.scale_bench [--quick] [--sizes 10000,100000,1000000]``. Writes
``benchmarks/results/scale.json`` and prints a table. The default is 10k and 100k (about 20
minutes on 2 shared cores); 1M needs ``--sizes`` and, with today's exact store (~26 KB of RSS
per entry), a machine with over 26 GB free, and hours to build the graph (docs/benchmarks.md).

Per size, in a fresh data directory, one process writes the entries through the store API
(``EmbeddedExactStore.put``; random unit vectors of 384 dimensions, one scope, so the scope is
one HNSW graph: the worst case; short answers), builds the graph with one
``EmbeddedVectorIndex.restore`` and closes, which saves the graph. Then two restarts, each a new
process on the same data directory:

* ``rebuild``: the saved graph moved away first, so start-up re-adds every vector (the
  behaviour before the saved index);
* ``load``: the saved graph loaded and checked against SQLite.

Each restart reports: ready time (exact store load + vector index restore, as ``DualCache.start``
does), the process RSS when ready, RSS per entry (over the RSS of the process before the stores
opened), lookup p50/p99 excluding embedding (k-NN search for 3 candidates + fetch of the best from
the exact store, queries are stored vectors plus noise) and store p50 (put + add of 500 new
entries, one at a time).

Targets (issue 16): 1M entries ready <= 15 s after restart, lookup p50 <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.report import SummaryRow, latency_stats, machine, write_result

DIM = 384
SCOPE = "bench-scope"
PARTITION = "bench"
NAMESPACE = f"bench-model:{DIM}"
TTL = 30 * 24 * 3600.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _entry(n: int, vector: np.ndarray, now: float) -> Any:
    from sidecar.cache.model import CachedAnswer, CacheEntry

    answer = CachedAnswer(200, {"content-type": "application/json"}, b'{"answer": "ok %d"}' % n)
    return CacheEntry(
        f"e{n:08d}", PARTITION, SCOPE, f"question {n}", answer, now, now + TTL, vector.tolist()
    )


def _stores(data_dir: str, entries: int) -> tuple[Any, Any]:
    from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex

    exact = EmbeddedExactStore(data_dir, entries * 2, 1 << 40)
    return exact, EmbeddedVectorIndex(data_dir=data_dir)


async def _put(exact: Any, index: Any, entry: Any) -> None:
    await exact.put(entry)
    await index.add(entry.id, entry.scope, entry.partition, entry.vector, entry.expires_at)


async def child_write(data_dir: str, entries: int) -> dict[str, Any]:
    """Entries into SQLite through ``put``, then the graph built in one ``restore`` batch and
    saved by ``close``: adding 100k vectors one by one takes over an hour on this machine."""
    exact, index = _stores(data_dir, entries)
    await exact.start()
    await index.start(NAMESPACE, DIM)
    rng = np.random.default_rng(1)
    now = time.time()
    started = time.perf_counter()
    for first in range(0, entries, 10_000):
        rows = _unit_rows(rng, min(10_000, entries - first))
        for at in range(0, len(rows), 64):  # 64 puts in flight: the SQLite thread stays busy
            batch = [_entry(first + at + i, row, now) for i, row in enumerate(rows[at : at + 64])]
            await asyncio.gather(*(exact.put(e) for e in batch))
    write_s = time.perf_counter() - started
    t0 = time.perf_counter()
    await index.restore(exact.entries_with_vectors())
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await index.close()  # saves the graph
    save_s = time.perf_counter() - t0
    await exact.close()
    return {
        "sqlite_write_seconds": round(write_s, 1),
        "graph_build_seconds": round(build_s, 1),
        "save_seconds": round(save_s, 2),
        "index_bytes": sum(p.stat().st_size for p in (Path(data_dir) / "vector-index").iterdir()),
        "sqlite_bytes": sum(p.stat().st_size for p in Path(data_dir).glob("cache.sqlite3*")),
    }


async def child_start(data_dir: str, entries: int, queries: int) -> dict[str, Any]:
    base_rss = _rss_mb()
    exact, index = _stores(data_dir, entries)
    t0 = time.perf_counter()
    await exact.start()
    exact_s = time.perf_counter() - t0
    await index.start(NAMESPACE, DIM)
    t1 = time.perf_counter()
    restored = await index.restore(exact.entries_with_vectors())
    index_s = time.perf_counter() - t1
    ready_s = time.perf_counter() - t0
    rss = _rss_mb()
    # lookups: stored vectors plus noise, the same rows the writer drew (same seed)
    rng = np.random.default_rng(1)
    stored = _unit_rows(rng, min(entries, 10_000))
    picks = np.random.default_rng(2).integers(0, len(stored), queries)
    noise = np.random.default_rng(3).standard_normal((queries, DIM)).astype(np.float32) * 0.02
    lookups: list[float] = []
    found = 0
    for q, pick in enumerate(picks):
        vector = (stored[pick] + noise[q]).tolist()
        s = time.perf_counter()
        neighbours = await index.search(SCOPE, vector, 3)
        entry = await exact.get(neighbours[0].id, PARTITION) if neighbours else None
        lookups.append(time.perf_counter() - s)
        found += entry is not None and entry.id == f"e{pick:08d}"
    stores: list[float] = []
    new_rows = _unit_rows(np.random.default_rng(4), 500)
    now = time.time()
    for i, row in enumerate(new_rows):
        s = time.perf_counter()
        await _put(exact, index, _entry(entries * 2 + i, row, now))
        stores.append(time.perf_counter() - s)
    for i in range(len(new_rows)):  # leave the data as the writer left it (SQLite and graph)
        await exact.delete(f"e{entries * 2 + i:08d}")
    await exact.close()  # the index is not closed: the saved graph stays the writer's
    return {
        "ready_seconds": round(ready_s, 2),
        "exact_load_seconds": round(exact_s, 2),
        "index_restore_seconds": round(index_s, 2),
        "restored": restored._asdict(),
        "rss_mb": round(rss, 1),
        "rss_bytes_per_entry": round((rss - base_rss) * 1024 * 1024 / entries),
        "lookup": latency_stats(lookups),
        "lookup_top1_recall": round(found / queries, 4),
        "store": latency_stats(stores),
    }


def _child(args: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.scale_bench", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-3000:]}")
    return dict(orjson.loads(done.stdout.strip().splitlines()[-1]))


def run_size(entries: int, queries: int, workdir: Path) -> dict[str, Any]:
    data = workdir / f"n{entries}"
    shutil.rmtree(data, ignore_errors=True)
    size = str(entries)
    result: dict[str, Any] = {"entries": entries}
    print(f"{entries:,} entries: writing", flush=True)
    result["write"] = _child(["--child", "write", "--dir", str(data), "--entries", size])
    saved, aside = data / "vector-index", workdir / f"n{entries}-saved-index"
    os.replace(saved, aside)
    print(f"{entries:,} entries: restart, rebuilding the index", flush=True)
    start = ["--child", "start", "--dir", str(data), "--entries", size, "--queries", str(queries)]
    result["rebuild"] = _child(start)
    os.replace(aside, saved)
    print(f"{entries:,} entries: restart, loading the saved index", flush=True)
    result["load"] = _child(start)
    shutil.rmtree(data, ignore_errors=True)
    return result


def summarise(sizes: list[dict[str, Any]]) -> list[SummaryRow]:
    rows: list[SummaryRow] = []
    for r in sizes:
        n, load, rebuild = r["entries"], r["load"], r["rebuild"]
        big = n >= 1_000_000
        ready, lookup = load["ready_seconds"], load["lookup"]
        restore = (
            f"exact store {load['exact_load_seconds']} s, index {load['index_restore_seconds']} s"
        )
        rows += [
            SummaryRow(
                "embedded scale", f"{n:,} entries: ready after restart, saved index", ready, "s",
                rebuild["ready_seconds"], "rebuilding the index",
                "<= 15 s at 1M" if big else "", ready <= 15 if big else None, restore,
            ),
            SummaryRow(
                "embedded scale", f"{n:,} entries: lookup p50 excluding embedding",
                lookup["p50_ms"], "ms", rebuild["lookup"]["p50_ms"], "after a rebuild",
                "<= 2 ms at 1M" if big else "", lookup["p50_ms"] <= 2 if big else None,
                f"p99 {lookup['p99_ms']:.3f} ms, top-1 recall {load['lookup_top1_recall']}",
            ),
            SummaryRow(
                "embedded scale", f"{n:,} entries: RSS per entry", load["rss_bytes_per_entry"],
                "bytes", rebuild["rss_bytes_per_entry"], "after a rebuild", "", None,
                f"RSS {load['rss_mb']} MB; store p50 {load['store']['p50_ms']:.3f} ms",
            ),
        ]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="10k entries only")
    parser.add_argument("--workdir", help="where the data directories go (default: a temp dir)")
    parser.add_argument("--out", help="result file (default benchmarks/results/scale.json)")
    parser.add_argument("--child", choices=["write", "start"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--entries", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":
        print(orjson.dumps(asyncio.run(child_write(args.dir, args.entries))).decode())
        return
    if args.child == "start":
        result = asyncio.run(child_start(args.dir, args.entries, args.queries))
        print(orjson.dumps(result).decode())
        return
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sidecar-scale-"))
    results = []
    for n in sizes:
        results.append(run_size(n, args.queries, workdir))
        r = results[-1]
        for mode in ("rebuild", "load"):
            m = r[mode]
            print(
                f"  {mode:<8} ready {m['ready_seconds']:>7.2f} s (exact {m['exact_load_seconds']}"
                f" s, index {m['index_restore_seconds']} s)  RSS {m['rss_mb']:>8.1f} MB "
                f"({m['rss_bytes_per_entry']} B/entry)  lookup p50 {m['lookup']['p50_ms']:.3f}"
                f" p99 {m['lookup']['p99_ms']:.3f} ms  store p50 {m['store']['p50_ms']:.3f} ms",
                flush=True,
            )
        print(f"  write {r['write']}", flush=True)
    out: dict[str, Any] = {"machine": machine(), "sizes": results}
    out["summary"] = [row.to_json() for row in summarise(results)]
    path = write_result("scale", out, args.out)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
