"""Embedding benchmark: one request alone vs 32 concurrent, torch vs micro-batched vs ONNX.

Run: ``python -m benchmarks.embedding_bench [--quick]``. Writes
``benchmarks/results/embedding.json`` and prints a table.

* Single-request latency: sequential one-text calls (the batcher must not slow these).
* Throughput at 32 concurrent callers, each sending one text at a time: torch one-at-a-time
  (the plain backend: its calls queue behind one another) against the same model behind the
  micro-batcher, and ONNX Runtime fp32 / int8 behind the batcher. Rounds alternate between
  the variants so load from other processes hits them alike; ratios come from the same rounds.
* Agreement of ONNX with torch on labelled pairs from ``shared/data/semcache``: the pair
  similarities, and the share of pairs whose hit/miss decision is the same at 0.8 and 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.report import (
    SummaryRow,
    latency_stats,
    load_semcache_pairs,
    machine,
    write_result,
)
from embedders.base import Embedder
from embedders.batching import MicroBatcher
from embedders.onnx_embedder import OnnxEmbedder
from embedders.sentence_tf import SentenceTransformerEmbedder

CONCURRENCY = 32
TARGET_BATCH_SPEEDUP = 2.5


async def single_latency(embedder: Embedder, texts: Sequence[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        await embedder.embed([text])
        out.append(time.perf_counter() - started)
    return out


async def concurrent_throughput(
    embedder: Embedder, texts: Sequence[str], requests: int, concurrency: int = CONCURRENCY
) -> dict[str, float]:
    """``concurrency`` closed-loop callers share ``requests`` one-text calls."""
    remaining = iter(range(requests))
    latencies: list[float] = []

    async def caller() -> None:
        for i in remaining:
            started = time.perf_counter()
            await embedder.embed([texts[i % len(texts)]])
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"rps": requests / elapsed, **latency_stats(latencies)}


def _sims(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


def agreement(
    reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    ref_sim = _sims(*reference)
    got_sim = _sims(*other)
    diff = np.abs(ref_sim - got_sim)
    vector_cos = np.concatenate([_sims(reference[0], other[0]), _sims(reference[1], other[1])])
    return {
        "pairs": int(len(ref_sim)),
        "vector_cosine_min": round(float(vector_cos.min()), 4),
        "vector_cosine_mean": round(float(vector_cos.mean()), 5),
        "similarity_abs_diff_mean": round(float(diff.mean()), 5),
        "similarity_abs_diff_max": round(float(diff.max()), 5),
        "pearson": round(float(np.corrcoef(ref_sim, got_sim)[0, 1]), 5),
        "same_decision_at_0.8": round(float(((ref_sim >= 0.8) == (got_sim >= 0.8)).mean()), 4),
        "same_decision_at_0.9": round(float(((ref_sim >= 0.9) == (got_sim >= 0.9)).mean()), 4),
    }


async def run(quick: bool) -> dict[str, Any]:
    pairs, source = load_semcache_pairs(200 if quick else 1000)
    texts = [a for a, _, _ in pairs][:256]
    torch_model = SentenceTransformerEmbedder()
    fp32 = OnnxEmbedder()
    int8 = OnnxEmbedder(quantize=True)
    for model in (torch_model, fp32, int8):
        await model.start()
    variants: dict[str, Embedder] = {
        "torch one-at-a-time": torch_model,
        "torch micro-batched": MicroBatcher(torch_model, window=0.002, max_batch=32),
        "onnx fp32 micro-batched": MicroBatcher(fp32, window=0.002, max_batch=32),
        "onnx int8 micro-batched": MicroBatcher(int8, window=0.002, max_batch=32),
    }
    singles: dict[str, Embedder] = {
        "torch": torch_model,
        "torch micro-batched": variants["torch micro-batched"],
        "onnx fp32": fp32,
        "onnx int8": int8,
    }
    rounds = 2 if quick else 4
    per_round = 96 if quick else 256
    single_n = 20 if quick else 60
    for warm in singles.values():  # warm caches and thread pools
        await single_latency(warm, texts[:5])

    lat: dict[str, list[float]] = {k: [] for k in singles}
    tput: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, single in singles.items():
            lat[name] += await single_latency(single, texts[r * single_n : (r + 1) * single_n])
        for name, variant in variants.items():
            tput[name].append(await concurrent_throughput(variant, texts, per_round))

    single_stats = {k: latency_stats(v) for k, v in lat.items()}
    throughput = {
        k: {
            "rps_median": round(statistics.median(x["rps"] for x in v), 2),
            "rps_rounds": [round(x["rps"], 2) for x in v],
            "latency_p50_ms_median": round(statistics.median(x["p50_ms"] for x in v), 2),
            "latency_p99_ms_median": round(statistics.median(x["p99_ms"] for x in v), 2),
        }
        for k, v in tput.items()
    }
    base = "torch one-at-a-time"
    # Ratio per round (same conditions), then the median over rounds.
    speedups = {
        k: round(
            statistics.median(
                t["rps"] / b["rps"] for t, b in zip(tput[k], tput[base], strict=True)
            ),
            2,
        )
        for k in variants
        if k != base
    }

    lefts = [a for a, _, _ in pairs]
    rights = [b for _, b, _ in pairs]
    reference = (torch_model.encode_sync(lefts), torch_model.encode_sync(rights))
    agree = {
        "onnx fp32": agreement(reference, (fp32.encode_sync(lefts), fp32.encode_sync(rights))),
        "onnx int8": agreement(reference, (int8.encode_sync(lefts), int8.encode_sync(rights))),
    }
    batch_stats = {
        k: {
            "calls": m.stats.calls,
            "model_calls": m.stats.batches,
            "largest": m.stats.largest_batch,
        }
        for k, m in variants.items()
        if isinstance(m, MicroBatcher)
    }
    for model in (torch_model, fp32, int8):
        await model.close()

    summary = _summary(single_stats, throughput, speedups, agree)
    return {
        "benchmark": "embedding",
        "quick": quick,
        "machine": machine(),
        "model": "all-MiniLM-L6-v2",
        "concurrency": CONCURRENCY,
        "pairs_source": source,
        "single_latency": single_stats,
        "throughput_at_32": throughput,
        "speedup_vs_torch_one_at_a_time": speedups,
        "batcher": batch_stats,
        "agreement_with_torch": agree,
        "summary": [row.to_json() for row in summary],
    }


def _summary(
    single: dict[str, dict[str, float]],
    throughput: dict[str, dict[str, Any]],
    speedups: dict[str, float],
    agree: dict[str, dict[str, float]],
) -> list[SummaryRow]:
    g = "embedding"
    base_rps = throughput["torch one-at-a-time"]["rps_median"]
    rows = [
        SummaryRow(
            g,
            "32 concurrent: torch micro-batched throughput",
            throughput["torch micro-batched"]["rps_median"],
            "req/s",
            base_rps,
            "torch one-at-a-time",
            f">= {TARGET_BATCH_SPEEDUP}x",
            speedups["torch micro-batched"] >= TARGET_BATCH_SPEEDUP,
            f"{speedups['torch micro-batched']}x",
        ),
    ]
    for name in ("onnx fp32 micro-batched", "onnx int8 micro-batched"):
        rows.append(
            SummaryRow(
                g,
                f"32 concurrent: {name} throughput",
                throughput[name]["rps_median"],
                "req/s",
                base_rps,
                "torch one-at-a-time",
                note=f"{speedups[name]}x",
            )
        )
    torch_single = single["torch"]["p50_ms"]
    for name in ("torch micro-batched", "onnx fp32", "onnx int8"):
        rows.append(
            SummaryRow(
                g,
                f"single request p50: {name}",
                single[name]["p50_ms"],
                "ms",
                torch_single,
                "torch alone",
                "no slower" if name == "torch micro-batched" else "",
                None,
                f"{single[name]['p50_ms'] / torch_single:.2f}x of torch",
            )
        )
    for name, a in agree.items():
        rows.append(
            SummaryRow(
                g,
                f"{name}: same hit decision as torch at 0.8 ({a['pairs']} pairs)",
                a["same_decision_at_0.8"] * 100,
                "%",
                100.0,
                "torch",
                note=f"mean |d sim| {a['similarity_abs_diff_mean']}, "
                f"max {a['similarity_abs_diff_max']}",
            )
        )
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"embedding benchmark ({result['model']}, pairs: {result['pairs_source']})")
    print(f"{'variant':28} {'single p50 ms':>14} {'32-conc req/s':>14} {'vs torch 1x1':>13}")
    names = {
        "torch one-at-a-time": "torch",
        "torch micro-batched": "torch micro-batched",
        "onnx fp32 micro-batched": "onnx fp32",
        "onnx int8 micro-batched": "onnx int8",
    }
    for variant, single_name in names.items():
        t = result["throughput_at_32"][variant]
        s = result["single_latency"][single_name]
        ratio = result["speedup_vs_torch_one_at_a_time"].get(variant, 1.0)
        print(f"{variant:28} {s['p50_ms']:>14.2f} {t['rps_median']:>14.1f} {ratio:>12.2f}x")
    for name, a in result["agreement_with_torch"].items():
        print(
            f"{name} vs torch on {a['pairs']} pairs: vector cosine min {a['vector_cosine_min']}, "
            f"|d sim| mean {a['similarity_abs_diff_mean']} max {a['similarity_abs_diff_max']}, "
            f"same decision @0.8 {a['same_decision_at_0.8']:.1%} "
            f"@0.9 {a['same_decision_at_0.9']:.1%}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and pairs")
    parser.add_argument("--json", help="result file (default benchmarks/results/embedding.json)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.quick))
    path = write_result("embedding", result, args.json)
    print_table(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
