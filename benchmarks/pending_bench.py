"""What holding a request context for its response hook costs: the in-process store (the
baseline) beside the Redis store (serialised, sealed with AES-256-GCM, one script to hold and
one ``GETDEL`` script to take), for a small and a large request, with a Redis ``PING`` as the
round-trip floor.

Run: ``python -m benchmarks.pending_bench [--quick]``. Needs a Redis on 127.0.0.1:6379 (keys
under a unique prefix, deleted afterwards). Writes ``benchmarks/results/pending.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from benchmarks.report import SummaryRow, latency_stats, machine, write_result
from sidecar.config import SidecarConfig
from sidecar.context import HookRequest, RequestContext
from sidecar.metrics import Metrics
from sidecar.pending import build_pending, context_bytes
from sidecar.pending_redis import ContextSeal
from sidecar.pipeline import Pipeline

REDIS_URL = "redis://127.0.0.1:6379"
SIZES_KB = (1, 100)


async def _contexts(config: SidecarConfig, n: int, kb: int) -> list[RequestContext]:
    pipeline = Pipeline(config, None, Metrics())
    text = "word " * (kb * 1024 // 5)
    out = []
    for i in range(n):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{i} {text}"}]}
        ctx, _ = await pipeline.on_request(
            HookRequest("POST", "/v1/chat/completions", {}, body), "http"
        )
        out.append(ctx)
    return out


async def _hold_take(config: SidecarConfig, contexts: list[RequestContext]) -> dict[str, Any]:
    pending = build_pending(config, environ={"SIDECAR_PENDING_KEY": _KEY})
    hold: list[float] = []
    take: list[float] = []
    try:
        for ctx in contexts:
            started = time.perf_counter()
            secret = await pending.hold(ctx)
            held = time.perf_counter()
            await pending.take(ctx.request_id, secret)
            hold.append(held - started)
            take.append(time.perf_counter() - held)
    finally:
        await pending.close()
    both = [h + t for h, t in zip(hold, take, strict=True)]
    return {"hold": latency_stats(hold), "take": latency_stats(take), "both": latency_stats(both)}


_KEY = base64.b64encode(os.urandom(32)).decode()


async def _ping(n: int) -> dict[str, float]:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            await client.ping()
            times.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return latency_stats(times)


def _seal(contexts: list[RequestContext]) -> dict[str, Any]:
    seal = ContextSeal([os.urandom(32)])
    times, sizes = [], []
    for ctx in contexts:
        started = time.perf_counter()
        blob = seal.seal(ctx, "secret")
        seal.open(ctx.request_id, blob)
        times.append(time.perf_counter() - started)
        sizes.append(len(blob))
    return {
        "seal_open": latency_stats(times),
        "sealed_bytes": sizes[0],
        "estimated_bytes": context_bytes(contexts[0]),
    }


async def run(quick: bool) -> dict[str, Any]:
    n = 200 if quick else 1000
    namespace = f"pendbench-{uuid.uuid4().hex[:8]}"
    base = {"cache": {"data_dir": ":memory:", "default_cache_key": "bench"}}
    memory = SidecarConfig.model_validate({**base, "server": {"pending_store": "memory"}})
    shared = SidecarConfig.model_validate(
        {**base, "server": {"pending_store": REDIS_URL}, "cache": {"namespace": namespace}}
    )
    results: dict[str, Any] = {"ping": await _ping(n)}
    try:
        for kb in SIZES_KB:
            contexts = await _contexts(memory, n, kb)
            results[f"{kb} KB"] = {
                "memory": await _hold_take(memory, contexts),
                "redis": await _hold_take(shared, contexts),
                **_seal(contexts),
            }
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{namespace}:*"):
            client.delete(key)
        client.close()
    return {
        "benchmark": "pending",
        "quick": quick,
        "machine": machine(),
        "contexts_per_size": n,
        "results": results,
        "summary": [row.to_json() for row in _summary(results)],
    }


def _summary(results: dict[str, Any]) -> list[SummaryRow]:
    rows = []
    for kb in SIZES_KB:
        r = results[f"{kb} KB"]
        rows.append(
            SummaryRow(
                "pending contexts (HTTP hook)",
                f"hold + take, Redis sealed, {kb} KB request: p50",
                r["redis"]["both"]["p50_ms"],
                "ms",
                baseline=r["memory"]["both"]["p50_ms"],
                baseline_label="in-process store",
                note=(
                    f"Redis PING p50 {results['ping']['p50_ms']} ms; seal+open p50 "
                    f"{r['seal_open']['p50_ms']} ms; {r['sealed_bytes']} bytes sealed"
                ),
                show_ratio=False,
            )
        )
    return rows


def print_table(result: dict[str, Any]) -> None:
    res = result["results"]
    print(f"Redis PING p50 {res['ping']['p50_ms']} ms  p99 {res['ping']['p99_ms']} ms")
    print(f"{'size':8} {'store':7} {'hold p50':>9} {'take p50':>9} {'both p50':>9} {'p99':>8}")
    for kb in SIZES_KB:
        r = res[f"{kb} KB"]
        for store in ("memory", "redis"):
            s = r[store]
            print(
                f"{kb:>5} KB {store:7} {s['hold']['p50_ms']:>9.3f} {s['take']['p50_ms']:>9.3f} "
                f"{s['both']['p50_ms']:>9.3f} {s['both']['p99_ms']:>8.3f}"
            )
        print(
            f"         seal+open p50 {r['seal_open']['p50_ms']} ms, sealed {r['sealed_bytes']} "
            f"bytes, estimated {r['estimated_bytes']} bytes"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer contexts")
    parser.add_argument("--json", help="result file (default benchmarks/results/pending.json)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.quick))
    path = write_result("pending", result, args.json)
    print_table(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
