"""Scale benchmark: the embedded cache at 10k, 100k and 1M entries.

Run: ``python -m benchmarks.scale_bench [--quick] [--sizes 10000,100000,1000000]
[--rebuild-max 100000] [--expansion-add 128] [--workdir DIR --keep]``. Writes
``benchmarks/results/scale.json`` and prints a table. The default is 10k and 100k.

Vectors are synthetic: random unit vectors of 384 dimensions (the default model's), one
scope, so the scope is one HNSW graph: the worst case, both for the graph's build (random
high-dimensional vectors have no structure to help it) and for its search. Embedding 1M
questions with the real model would take days on this machine, and what is measured here
(loading, searching and adding to a graph, reading SQLite) does not depend on where the
vectors came from. Answers are OpenAI-style JSON bodies of 0.5 to 3.7 KB (mean ~2.2 KB); ids
are 64 hex digits like the sidecar's.

Per size, in the work directory (``--keep`` keeps it; a later run reuses what it finds):

* ``write``: the entries into SQLite through the store (``put_many``, 10,000 per
  transaction), once; ``written.json`` marks it done. About 0.13 ms of CPU per entry (2 to 3
  minutes of CPU at 1M, 5.4 GB); the 37 minutes it once took at 1M were waiting for a core.
* Sizes up to ``--rebuild-max``: a restart with no saved index, so the sidecar rebuilds its
  graph from SQLite (``EmbeddedVectorIndex.restore``: batches of 50,000 vectors, one usearch
  call each, spread over every core; ``expansion_add`` 128), then saves it once ready, as
  ``close`` would (not timed in "ready"). The next restart loads that graph: the figures are
  those of a graph the sidecar built.
* Larger sizes: the graph is built apart (``graph``: the same batched build with the
  sidecar's settings from ``embedded_snapshot.new_graph``, ``--expansion-add`` 128 unless
  lowered), once, and saved as ``close`` saves it (``manifest``). Every 50,000 vectors the
  build appends to ``graph-N-eaE.progress.jsonl`` its wall and CPU time and a probe of the
  graph so far (search CPU p50/p99 and top-1 recall), so a build stopped early still shows how
  they grow. The build is what is slow, not the way vectors are fed: with ``expansion_add``
  128 an insertion takes about 1.2 ms of CPU at 20k vectors and 3 ms at 50-60k on this
  2-core machine under load, so a 1M graph needs an hour or more of CPU (more than a
  restart may ever spend: hence the saved index), and many hours on a shared machine.
  ``expansion_add`` 8 is about 13 times cheaper and gives a graph of the same size and
  load cost but poor recall (0.07 at 1M): lookup figures on such a graph are no evidence
  for a sidecar-built one.

Each restart is a new process on the same data directory and reports: ready time (exact
store start + vector index restore, as ``DualCache.start`` does; wall clock, and the CPU time
of the process: on a machine shared by other jobs the wall clock is mostly waiting for a
core), the process RSS when ready, RSS per entry (over the RSS of the process before the
stores opened), lookup p50/p99 excluding embedding (k-NN search for 3 candidates + fetch of
the best from the exact store, i.e. from SQLite unless recently used; queries are stored
vectors plus noise; wall clock and the thread's CPU time, and the search's CPU alone), top-1
recall of those lookups, and store p50 (put + add of 500 new entries, one at a time), with
the load average.

Targets (issue 16): 1M entries ready <= 15 s after restart, lookup p50 <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from sidecar.cache.stores.embedded_snapshot import GRAPH_DTYPE

DIM = 384
SCOPE = "bench-scope"
PARTITION = "bench"
NAMESPACE = f"bench-model:{DIM}"
TTL = 30 * 24 * 3600.0
_BATCH = 10_000  # vectors generated and added per step
_PROBE_EVERY = 50_000  # graph build: search probe every so many vectors


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _entry_id(n: int) -> str:
    """An id of the length of the sidecar's (a SHA-256 hex digest), for honest RSS figures."""
    return hashlib.sha256(b"bench-%d" % n).hexdigest()


def _entry(n: int, vector: np.ndarray, now: float) -> Any:
    """A chat-completion answer of realistic size: 400 to 3,600 bytes of text (mean ~2 KB,
    about 500 tokens) in an OpenAI-style JSON body."""
    from sidecar.cache.model import CachedAnswer, CacheEntry

    text = _ANSWER_TEXT[: 400 + (n * 7919) % 3200]
    body = orjson.dumps(
        {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "model": "bench-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 24, "completion_tokens": len(text) // 4},
        }
    )
    answer = CachedAnswer(200, {"content-type": "application/json"}, body)
    question = f"question number {n}: how do I configure the cache for my deployment?"
    return CacheEntry(
        _entry_id(n), PARTITION, SCOPE, question, answer, now, now + TTL, vector.tolist()
    )


_ANSWER_TEXT = ("The cache answers repeated questions from memory. " * 80)[:3600]


def _stores(data_dir: str, entries: int) -> tuple[Any, Any]:
    from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex

    exact = EmbeddedExactStore(data_dir, entries * 2, 1 << 40)
    return exact, EmbeddedVectorIndex(data_dir=data_dir)


async def _put(exact: Any, index: Any, entry: Any) -> None:
    await exact.put(entry)
    await index.add(entry.id, entry.scope, entry.partition, entry.vector, entry.expires_at)


def child_graph(path: str, entries: int, expansion_add: int) -> dict[str, Any]:
    """The HNSW graph of the entries' vectors (labels 0..n-1 in write order), built with
    ``EmbeddedVectorIndex``'s usearch settings (``embedded_snapshot.new_graph``) the way its
    rebuild does, in batches that usearch spreads over every core, and saved to ``path``, once
    per size. With ``expansion_add`` below the sidecar's 128 the build is several times faster
    and the graph less precise; its file, memory and load are the same (same connectivity)."""
    from sidecar.cache.stores import embedded_snapshot as snapshot

    graph = snapshot.new_graph(DIM, expansion_add)
    rng = np.random.default_rng(1)
    progress = Path(path + ".progress.jsonl")  # survives a build stopped before the end
    progress.unlink(missing_ok=True)
    first_rows = np.zeros((0, DIM), dtype=np.float32)
    started, cpu0 = time.perf_counter(), time.process_time()
    for first in range(0, entries, _BATCH):
        rows = _unit_rows(rng, min(_BATCH, entries - first))
        first_rows = first_rows if len(first_rows) else rows
        graph.add(np.arange(first, first + len(rows), dtype=np.uint64), rows, threads=0)
        done = first + len(rows)
        step = {
            "vectors": done,
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1),
            "load_average": os.getloadavg()[0],
        }
        if done % _PROBE_EVERY == 0 or done == entries:
            step |= _probe(graph, first_rows)
        with progress.open("ab") as f:
            f.write(orjson.dumps(step) + b"\n")
        print(f"graph {step}", file=sys.stderr, flush=True)
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu0
    graph.save(path + ".tmp")
    os.replace(path + ".tmp", path)
    return {
        "entries": entries,
        "graph_build_seconds": round(build_s, 1),
        "graph_build_cpu_seconds": round(build_cpu_s, 1),
        "expansion_add": expansion_add,
        "connectivity": graph.connectivity,
        "dtype": snapshot.dtype_of(graph),
        "load_average": os.getloadavg(),
    }


def _probe(graph: Any, stored: np.ndarray, queries: int = 500) -> dict[str, Any]:
    """Search alone (usearch, k=3, one query at a time as the sidecar does) on the graph as
    built so far: per-query CPU time and top-1 recall of stored vectors plus noise. Lets a
    build stopped before its end still say how search cost and recall grow with the size."""
    picks = np.random.default_rng(2).integers(0, len(stored), queries)
    noise = np.random.default_rng(3).standard_normal((queries, DIM)).astype(np.float32) * 0.02
    times, hits = [], 0
    for q, pick in enumerate(picks):
        vector = stored[pick] + noise[q]
        vector /= np.linalg.norm(vector)
        c = time.thread_time()
        found = graph.search(vector, 3)
        times.append(time.thread_time() - c)
        hits += len(found.keys) > 0 and int(found.keys[0]) == int(pick)
    return {
        "search_cpu_p50_ms": round(float(np.percentile(times, 50)) * 1000, 3),
        "search_cpu_p99_ms": round(float(np.percentile(times, 99)) * 1000, 3),
        "top1_recall": round(hits / queries, 4),
    }


async def child_write(data_dir: str, entries: int) -> dict[str, Any]:
    """Entries into SQLite through the store (``put_many``, 10,000 per transaction: one
    ``put`` per entry would take hours at 1M here). Writes ``written.json`` when done, so a
    later run can reuse the directory."""
    exact, _ = _stores(data_dir, entries)
    await exact.start()
    rng = np.random.default_rng(1)
    now = time.time()
    started = time.perf_counter()
    stamps: list[float] = []
    for first in range(0, entries, 10_000):
        rows = _unit_rows(rng, min(10_000, entries - first))
        batch = [_entry(first + i, row, now) for i, row in enumerate(rows)]
        await exact.put_many(batch)
        stamps += [e.expires_at for e in batch]
        if first % 100_000 == 0:
            print(f"written {first + len(rows):,} {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    write_s = time.perf_counter() - started
    await exact.close()
    result = {
        "sqlite_write_seconds": round(write_s, 1),
        "sqlite_bytes": sum(p.stat().st_size for p in Path(data_dir).glob("cache.sqlite3*")),
        "load_average": os.getloadavg(),
        "created_at": now,
    }
    (Path(data_dir) / "written.json").write_bytes(orjson.dumps(result))
    return result


def child_manifest(data_dir: str, entries: int, graph_path: str) -> dict[str, Any]:
    """The saved index as ``EmbeddedVectorIndex.close`` writes it, from the prepared graph
    (same vectors, labels in write order) and the entries ``child_write`` stored."""
    from sidecar.cache.stores import embedded_snapshot as snapshot

    now = orjson.loads((Path(data_dir) / "written.json").read_bytes())["created_at"]
    folder = Path(data_dir) / "vector-index"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ids = [_entry_id(n) for n in range(entries)]
    saved = snapshot.SavedGraph(
        SCOPE,
        folder / "g1-0.usearch",
        ids,
        list(range(entries)),
        [now + TTL] * entries,
        entries,
        snapshot.GRAPH_DTYPE,
    )
    try:
        os.link(graph_path, saved.path)  # the prepared file is never written to again
    except OSError:
        shutil.copyfile(graph_path, saved.path)
    t0 = time.perf_counter()
    snapshot.write_manifest(folder, NAMESPACE, 1, [saved])
    return {
        "manifest_seconds": round(time.perf_counter() - t0, 2),
        "index_bytes": sum(p.stat().st_size for p in folder.iterdir()),
    }


async def child_start(data_dir: str, entries: int, queries: int, save: bool) -> dict[str, Any]:
    """A restart on ``data_dir``: ready time, RSS, lookups and stores. With ``save`` (a restart
    that rebuilt the index) the rebuilt index is saved once ready, as ``close`` would, so the
    next restart loads the sidecar's own graph."""
    base_rss = _rss_mb()
    exact, index = _stores(data_dir, entries)
    t0 = time.perf_counter()
    cpu0 = time.process_time()  # all threads: what the start-up costs, without the waits
    await exact.start()
    exact_s = time.perf_counter() - t0
    await index.start(NAMESPACE, DIM)
    t1 = time.perf_counter()
    restored = await index.restore_from(exact)
    index_s = time.perf_counter() - t1
    ready_s = time.perf_counter() - t0
    ready_cpu_s = time.process_time() - cpu0
    rss = _rss_mb()
    saved_s = None
    if save:
        t2 = time.perf_counter()
        await index.save()
        saved_s = round(time.perf_counter() - t2, 2)
    # lookups: stored vectors plus noise, the same rows the writer drew (same seed)
    rng = np.random.default_rng(1)
    stored = _unit_rows(rng, min(entries, 10_000))
    picks = np.random.default_rng(2).integers(0, len(stored), queries)
    noise = np.random.default_rng(3).standard_normal((queries, DIM)).astype(np.float32) * 0.02
    lookups: list[float] = []
    lookups_cpu: list[float] = []  # CPU time of this thread: the lookup without the waits
    searches_cpu: list[float] = []  # of which the k-NN search alone
    found = 0
    for q, pick in enumerate(picks):
        vector = (stored[pick] + noise[q]).tolist()
        s, c = time.perf_counter(), time.thread_time()
        neighbours = await index.search(SCOPE, vector, 3)
        searches_cpu.append(time.thread_time() - c)
        entry = await exact.get(neighbours[0].id, PARTITION) if neighbours else None
        if entry is not None and entry.vector is not None and not neighbours[0].exact:
            # an i8 graph's similarity is re-scored with the stored vector (layer.py)
            np.dot(np.asarray(vector, dtype=np.float32), np.asarray(entry.vector, np.float32))
        lookups.append(time.perf_counter() - s)
        lookups_cpu.append(time.thread_time() - c)
        found += entry is not None and entry.id == _entry_id(int(pick))
    stores: list[float] = []
    new_rows = _unit_rows(np.random.default_rng(4), 500)
    now = time.time()
    for i, row in enumerate(new_rows):
        s = time.perf_counter()
        await _put(exact, index, _entry(entries * 2 + i, row, now))
        stores.append(time.perf_counter() - s)
    for i in range(len(new_rows)):  # leave the data as the writer left it (SQLite and graph)
        await exact.delete(_entry_id(entries * 2 + i))
    await exact.close()  # the index is not closed: the saved graph stays the writer's
    return {
        "ready_seconds": round(ready_s, 2),
        "ready_cpu_seconds": round(ready_cpu_s, 2),
        "exact_load_seconds": round(exact_s, 2),
        "index_restore_seconds": round(index_s, 2),
        "restored": restored._asdict(),
        "rss_mb": round(rss, 1),
        "rss_bytes_per_entry": round((rss - base_rss) * 1024 * 1024 / entries),
        "lookup": latency_stats(lookups),
        "lookup_cpu": latency_stats(lookups_cpu),
        "search_cpu": latency_stats(searches_cpu),
        "lookup_top1_recall": round(found / queries, 4),
        "store": latency_stats(stores),
        "save_seconds": saved_s,
        "load_average": os.getloadavg(),
    }


def _child(args: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.scale_bench", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-3000:]}")
    return dict(orjson.loads(done.stdout.strip().splitlines()[-1]))


def run_size(
    entries: int, queries: int, workdir: Path, expansion_add: int, rebuild: bool, keep: bool
) -> dict[str, Any]:
    """One size. With ``rebuild`` the first restart rebuilds the index from SQLite (the
    sidecar's own batched build, ``expansion_add`` 128) and saves it, and the second loads it;
    without, a graph is prepared apart (``child_graph``, ``expansion_add`` as given) and saved
    as the index would save it."""
    data = workdir / f"n{entries}"
    size = str(entries)
    result: dict[str, Any] = {"entries": entries}
    written = data / "written.json"
    if written.exists():
        print(f"{entries:,} entries: reusing the entries written in {data}", flush=True)
    else:
        shutil.rmtree(data, ignore_errors=True)
        print(f"{entries:,} entries: writing", flush=True)
        _child(["--child", "write", "--dir", str(data), "--entries", size])
    result["write"] = orjson.loads(written.read_bytes())
    start = ["--child", "start", "--dir", str(data), "--entries", size, "--queries", str(queries)]
    if rebuild:
        shutil.rmtree(data / "vector-index", ignore_errors=True)
        print(f"{entries:,} entries: restart, rebuilding the index", flush=True)
        result["rebuild"] = _child([*start, "--save"])
        result["graph"] = {
            "built_by": "the sidecar's rebuild at start",
            "graph_build_seconds": result["rebuild"]["index_restore_seconds"],
            "expansion_add": 128,
        }
    else:
        graph = workdir / f"graph-{entries}-ea{expansion_add}-{GRAPH_DTYPE}.usearch"
        graph_info = graph.with_suffix(".json")
        if not graph.exists() or not graph_info.exists():
            print(f"{entries:,} entries: building the graph (expansion_add {expansion_add})",
                  flush=True)  # fmt: skip
            built = _child(["--child", "graph", "--dir", str(graph), "--entries", size,
                            "--expansion-add", str(expansion_add)])  # fmt: skip
            graph_info.write_bytes(orjson.dumps(built))
        result["graph"] = orjson.loads(graph_info.read_bytes())
        result["manifest"] = _child(
            ["--child", "manifest", "--dir", str(data), "--entries", size, "--graph", str(graph)]
        )
    print(f"{entries:,} entries: restart, loading the saved index", flush=True)
    result["load"] = _child(start)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return result


def summarise(sizes: list[dict[str, Any]]) -> list[SummaryRow]:
    rows: list[SummaryRow] = []
    for r in sizes:
        n, load, rebuild = r["entries"], r["load"], r.get("rebuild")
        big = n >= 1_000_000
        ready, lookup = load["ready_seconds"], load["lookup"]
        restore = (
            f"CPU {load['ready_cpu_seconds']} s; exact store {load['exact_load_seconds']} s,"
            f" index {load['index_restore_seconds']} s; load average {load['load_average'][0]:.1f}"
        )
        if rebuild is not None:
            base_ready, base_what = rebuild["ready_seconds"], "rebuilding the index"
        else:  # not run: the graph build alone, measured when it was prepared
            base_ready = r["graph"]["graph_build_seconds"]
            base_what = f"graph build alone (expansion_add {r['graph']['expansion_add']})"
        rows += [
            SummaryRow(
                "embedded scale", f"{n:,} entries: ready after restart, saved index", ready, "s",
                base_ready, base_what,
                "<= 15 s at 1M" if big else "", ready <= 15 if big else None, restore,
            ),
            SummaryRow(
                "embedded scale", f"{n:,} entries: lookup p50 excluding embedding",
                lookup["p50_ms"], "ms", rebuild["lookup"]["p50_ms"] if rebuild else None,
                "after a rebuild" if rebuild else "",
                "<= 2 ms at 1M" if big else "", lookup["p50_ms"] <= 2 if big else None,
                f"p99 {lookup['p99_ms']:.3f} ms, CPU p50 {load['lookup_cpu']['p50_ms']:.3f} ms"
                f" (search {load['search_cpu']['p50_ms']:.3f} ms), top-1 recall"
                f" {load['lookup_top1_recall']}, graph expansion_add {r['graph']['expansion_add']}",
            ),
            SummaryRow(
                "embedded scale", f"{n:,} entries: RSS per entry", load["rss_bytes_per_entry"],
                "bytes", rebuild["rss_bytes_per_entry"] if rebuild else None,
                "after a rebuild" if rebuild else "", "", None,
                f"RSS {load['rss_mb']} MB; store p50 {load['store']['p50_ms']:.3f} ms",
            ),
        ]  # fmt: skip
    return rows


def _print_size(r: dict[str, Any]) -> None:
    for mode in ("rebuild", "load"):
        if mode not in r:
            continue
        m = r[mode]
        print(
            f"  {mode:<8} ready {m['ready_seconds']:>7.2f} s (CPU {m['ready_cpu_seconds']} s;"
            f" exact {m['exact_load_seconds']}"
            f" s, index {m['index_restore_seconds']} s)  RSS {m['rss_mb']:>8.1f} MB "
            f"({m['rss_bytes_per_entry']} B/entry)  lookup p50 {m['lookup']['p50_ms']:.3f}"
            f" p99 {m['lookup']['p99_ms']:.3f} ms (CPU p50 {m['lookup_cpu']['p50_ms']:.3f})"
            f"  store p50 {m['store']['p50_ms']:.3f} ms"
            f"  load average {m['load_average']}",
            flush=True,
        )
    print(f"  graph {r['graph']}\n  write {r['write']}\n  saved {r.get('manifest')}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="10k entries only")
    parser.add_argument(
        "--workdir",
        help="where the data directories and prepared graphs go (default: a temp dir); "
        "a prepared graph found there is reused",
    )
    parser.add_argument("--out", help="result file (default benchmarks/results/scale.json)")
    parser.add_argument(
        "--expansion-add",
        default="128",
        help="usearch expansion_add of the prepared graphs, one value or one per size "
        "(128: the sidecar's own, usearch's default)",
    )
    parser.add_argument(
        "--rebuild-max",
        type=int,
        default=100_000,
        help="restart with a rebuilt index only up to this size (a rebuild is the graph build)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument(
        "--child", choices=["graph", "write", "manifest", "start"], help=argparse.SUPPRESS
    )
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--graph", help=argparse.SUPPRESS)
    parser.add_argument("--save", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--entries", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "graph":
        built = child_graph(args.dir, args.entries, int(args.expansion_add))
        print(orjson.dumps(built).decode())
        return
    if args.child == "write":
        print(orjson.dumps(asyncio.run(child_write(args.dir, args.entries))).decode())
        return
    if args.child == "manifest":
        print(orjson.dumps(child_manifest(args.dir, args.entries, args.graph)).decode())
        return
    if args.child == "start":
        result = asyncio.run(child_start(args.dir, args.entries, args.queries, args.save))
        print(orjson.dumps(result).decode())
        return
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    expansions = [int(e) for e in args.expansion_add.split(",")]
    if len(expansions) == 1:
        expansions *= len(sizes)
    if len(expansions) != len(sizes):
        parser.error("--expansion-add: one value, or one per size")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sidecar-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n, expansion in zip(sizes, expansions, strict=True):
        r = run_size(n, args.queries, workdir, expansion, n <= args.rebuild_max, args.keep)
        results.append(r)
        _print_size(r)
    out: dict[str, Any] = {"machine": machine(), "sizes": results}
    out["summary"] = [row.to_json() for row in summarise(results)]
    path = write_result("scale", out, args.out)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
