"""Shared-backend benchmark: what the Redis backends add over the embedded stores.

Run: ``python -m benchmarks.backends_bench [--quick]``. Writes
``benchmarks/results/backends.json`` and prints a table.

* Exact hit: ``DualCache.lookup`` of a stored key (the request path's exact-hit cost), the
  embedded store against the Redis exact store on the shared Redis at 127.0.0.1:6379 (a private
  Redis when that one is not there). Rounds alternate between the two.
* Semantic lookup at 100,000 entries, excluding embedding time: what the cache layer does after
  embedding the question (k-NN search of the scope for 3 candidates, then fetching the best one
  from the exact store), over random unit vectors (384 dimensions, one scope: the worst case),
  the embedded index (usearch HNSW) against Valkey + RediSearch started from PyPI packages.
  Each query is a stored vector plus noise; top-1 recall against that vector is reported.

Targets (issue 8): exact hit adds <= 1 ms median; semantic lookup <= 3 ms median at 100k.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import numpy as np

from benchmarks.report import SummaryRow, latency_stats, machine, write_result
from sidecar.cache.keys import CachePlan
from sidecar.cache.layer import CacheStatus, DualCache
from sidecar.cache.model import CachedAnswer, CacheEntry
from sidecar.cache.stores.backends import build_exact_store, build_vector_index
from sidecar.cache.stores.base import ExactStore, VectorIndex
from sidecar.config import CacheConfig
from sidecar.metrics import Metrics
from tests.backend_servers import (
    ServerProcess,
    delete_prefix,
    plain_redis,
    redis_reachable,
    valkey_with_search,
)

DIM = 384
SCOPE = "bench-scope"
PARTITION = "bench"
ANSWER = CachedAnswer(
    200, {"content-type": "application/json"}, b'{"answer": "' + b"x" * 600 + b'"}'
)


def _entry(entry_id: str, expires_at: float) -> CacheEntry:
    return CacheEntry(
        entry_id, PARTITION, SCOPE, f"question {entry_id}", ANSWER, time.time(), expires_at
    )


async def _exact_hit_rounds(
    stores: dict[str, ExactStore], rounds: int, per_round: int
) -> dict[str, list[float]]:
    caches = {name: DualCache(store, None, None, Metrics()) for name, store in stores.items()}
    plan = CachePlan(partition=PARTITION, exact_key="bench-hit", use_semantic=False)
    for store in stores.values():
        await store.put(_entry("bench-hit", time.time() + 3600))
    samples: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(rounds):  # alternate, so load from other processes hits both alike
        for name, cache in caches.items():
            for _ in range(per_round):
                started = time.perf_counter()
                found = await cache.lookup(plan)
                samples[name].append(time.perf_counter() - started)
                assert found.status is CacheStatus.HIT_EXACT
    return samples


async def _load_vectors(index: VectorIndex, rows: np.ndarray, expires_at: float) -> float:
    started = time.perf_counter()
    batch = 32  # below the pool size: a burst beyond it waits for connections, then fails
    for lo in range(0, len(rows), batch):
        await asyncio.gather(
            *(
                index.add(f"v{i}", SCOPE, PARTITION, rows[i].tolist(), expires_at)
                for i in range(lo, min(lo + batch, len(rows)))
            )
        )
    return time.perf_counter() - started


async def _semantic_rounds(
    pairs: dict[str, tuple[VectorIndex, ExactStore]],
    queries: np.ndarray,
    targets: list[int],
    rounds: int,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in pairs}
    correct = dict.fromkeys(pairs, 0)
    per_round = max(1, len(queries) // rounds)
    for r in range(rounds):
        chunk = range(r * per_round, min(len(queries), (r + 1) * per_round))
        for name, (index, exact) in pairs.items():
            for q in chunk:
                vector = queries[q].tolist()
                started = time.perf_counter()
                found = await index.search(SCOPE, vector, 3)
                entry = await exact.get(found[0].id, PARTITION) if found else None
                samples[name].append(time.perf_counter() - started)
                correct[name] += int(entry is not None and entry.id == f"v{targets[q]}")
    total = {name: len(v) for name, v in samples.items()}
    return samples, {name: correct[name] / max(1, total[name]) for name in pairs}


async def run(entries: int, n_queries: int, exact_iterations: int) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    servers: list[ServerProcess] = []
    redis_url = "redis://127.0.0.1:6379"
    if redis_reachable() is not None:
        private = plain_redis().start()
        servers.append(private)
        redis_url = private.url
    search = valkey_with_search().start()
    servers.append(search)
    result: dict[str, Any] = {"machine": machine(), "entries": entries, "dimension": DIM}
    try:
        # -- exact hit
        embedded_exact = build_exact_store(CacheConfig(exact_store="embedded", data_dir=":memory:"))
        redis_exact = build_exact_store(CacheConfig(exact_store=redis_url, namespace=prefix))
        await redis_exact.start()
        rounds = 10
        exact = await _exact_hit_rounds(
            {"embedded": embedded_exact, "redis": redis_exact}, rounds, exact_iterations // rounds
        )
        result["exact_hit"] = {name: latency_stats(v) for name, v in exact.items()}
        result["exact_hit"]["redis_url"] = redis_url.split("@")[-1]

        # -- semantic lookup at `entries` vectors
        rng = np.random.default_rng(42)
        rows = rng.normal(size=(entries, DIM)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        targets = rng.integers(0, entries, size=n_queries).tolist()
        noise = rng.normal(scale=0.02, size=(n_queries, DIM)).astype(np.float32)
        queries = rows[targets] + noise
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        later = time.time() + 24 * 3600
        pairs: dict[str, tuple[VectorIndex, ExactStore]] = {}
        load_seconds: dict[str, float] = {}
        for name, vector_url, exact_url in (
            ("embedded", "embedded", "embedded"),
            # Loading 100k vectors keeps the server busy inserting into the graph for minutes;
            # a generous timeout keeps a slow insert from failing the load (lookups are timed).
            ("valkey+redisearch", f"{search.url}?socket_timeout=30", search.url),
        ):
            config = CacheConfig(
                vector_store=vector_url,
                exact_store=exact_url,
                namespace=prefix,
                data_dir=":memory:",
            )
            index = build_vector_index(config)
            assert index is not None
            store = build_exact_store(config)
            await store.start()
            await index.start(f"bench-model:{DIM}", DIM)
            load_seconds[name] = round(await _load_vectors(index, rows, later), 1)
            # The exact entries the candidates resolve to (their count does not change a GET).
            await asyncio.gather(*(store.put(_entry(f"v{t}", later)) for t in set(targets)))
            pairs[name] = (index, store)
        semantic, recall = await _semantic_rounds(pairs, queries, targets, rounds=10)
        result["semantic_lookup"] = {
            name: {**latency_stats(v), "top1_recall": round(recall[name], 4)}
            for name, v in semantic.items()
        }
        result["load_seconds"] = load_seconds
        for index, store in pairs.values():
            await index.close()
            await store.close()
        await redis_exact.close()
        await embedded_exact.close()
    finally:
        if redis_url == "redis://127.0.0.1:6379":
            delete_prefix(redis_url, prefix)
        for server in servers:
            server.cleanup()
    return result


def summarise(result: dict[str, Any]) -> list[SummaryRow]:
    exact_e = result["exact_hit"]["embedded"]["p50_ms"]
    exact_r = result["exact_hit"]["redis"]["p50_ms"]
    added = exact_r - exact_e
    sem_e = result["semantic_lookup"]["embedded"]["p50_ms"]
    sem_r = result["semantic_lookup"]["valkey+redisearch"]["p50_ms"]
    n = result["entries"]
    return [
        SummaryRow(
            "shared backends", "exact hit, Redis exact store (added median)", added, "ms",
            exact_e, "embedded exact-hit median", "<= 1 ms added", added <= 1.0,
            f"Redis median {exact_r:.3f} ms",
        ),
        SummaryRow(
            "shared backends", f"semantic lookup at {n:,} entries, Valkey+RediSearch (median)",
            sem_r, "ms", sem_e, "embedded (usearch) median", "<= 3 ms", sem_r <= 3.0,
            "excluding embedding; search k=3 + fetch of the best candidate",
        ),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-iterations", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="10k entries, fewer iterations")
    parser.add_argument("--out", help="result file (default benchmarks/results/backends.json)")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.queries, args.exact_iterations = 10_000, 300, 1000
    result = asyncio.run(run(args.entries, args.queries, args.exact_iterations))
    rows = summarise(result)
    result["summary"] = [r.to_json() for r in rows]
    path = write_result("backends", result, args.out)
    print(f"{'measurement':<44} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'recall':>7}")
    for name, stats in result["exact_hit"].items():
        if isinstance(stats, dict):
            print(
                f"{'exact hit, ' + name:<44} {stats['p50_ms']:>8.3f} {stats['p90_ms']:>8.3f} "
                f"{stats['p99_ms']:>8.3f} {'':>7}"
            )
    for name, stats in result["semantic_lookup"].items():
        label = f"semantic @{result['entries']:,}, {name}"
        print(
            f"{label:<44} {stats['p50_ms']:>8.3f} {stats['p90_ms']:>8.3f} "
            f"{stats['p99_ms']:>8.3f} {stats['top1_recall']:>7.3f}"
        )
    for row in rows:
        verdict = "met" if row.met else "NOT met"
        print(f"{row.metric}: {row.value:.3f} {row.unit} (target {row.target}: {verdict})")
    print(f"load time (s): {result['load_seconds']}; written to {path}")


if __name__ == "__main__":
    main()
