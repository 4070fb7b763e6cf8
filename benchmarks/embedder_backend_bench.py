"""Which embedder backend should be the default: torch, ONNX fp32 or ONNX int8 (issue 16).

Run: ``python -m benchmarks.embedder_backend_bench [--backends torch,onnx-int8] [--qqp 10000]
[--heads auto,off] [--json PATH]``. Writes ``benchmarks/results/embedder_backends.json``.

Same model (all-MiniLM-L6-v2 from the package), same code, same default settings; only
``embedder.backend`` / ``embedder.onnx_quantize`` differ:

* the frozen development set and the trap set through the production path (``sidecar cache
  eval``'s code: a real Sidecar on a fresh in-memory cache), per category, with the match head
  as configured (``auto``) and with ``match_head: off`` (to tell the head's share from the
  vectors');
* the QQP sample (fixed seed, never used for training or tuning) through the same decision
  path in batch (``semcache_bench.Scored``: rules, near-repeats by spelling, match head, pair
  model), at the default threshold;
* how many decisions change against the first backend, pair by pair;
* the cost of one query (one text per call), the backends taking turns text by text, as wall
  time and process CPU time.

The ONNX files are exported into ``embedder.onnx_cache_dir`` (the default cache) the first
time; the export time is reported when it happened in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.report import machine, write_result
from benchmarks.semcache_bench import DEV_PAIRS, QQP_PAIRS, TRAP_PAIRS, Embedded, Scored, load_qqp
from embedders import Embedder
from sidecar.cache.eval_cli import Pair, evaluate_with_hits, load_pairs
from sidecar.config import SidecarConfig
from sidecar.services import embedder_from_config

#: name -> (embedder.backend, embedder.onnx_quantize)
BACKENDS: dict[str, tuple[str, bool]] = {
    "torch": ("sentence-transformers", False),
    "onnx-fp32": ("onnx", False),
    "onnx-int8": ("onnx", True),
}


def config_for(name: str, match_head: str = "auto") -> SidecarConfig:
    """The default configuration with only the backend (and the head setting) changed."""
    config = SidecarConfig()
    backend, quantize = BACKENDS[name]
    config.embedder.backend = backend  # type: ignore[assignment]
    config.embedder.onnx_quantize = quantize
    config.cache.match_head = match_head
    return config


def embedder_for(config: SidecarConfig) -> Embedder:
    return embedder_from_config(config.embedder)


async def production(
    config: SidecarConfig, pairs: Sequence[Pair], embedder: Embedder
) -> tuple[dict[str, Any], list[bool]]:
    """``sidecar cache eval`` on ``pairs`` (its code), and each pair's hit."""
    return await evaluate_with_hits(config, pairs, embedder)


def changed(pairs: Sequence[Pair], base: Sequence[bool], other: Sequence[bool]) -> dict[str, int]:
    """Decisions that differ from the baseline's, by direction and kind of pair."""
    out = {"changed": 0, "good_gained": 0, "good_lost": 0, "wrong_gained": 0, "wrong_lost": 0}
    for pair, x, y in zip(pairs, base, other, strict=True):
        if x == y:
            continue
        out["changed"] += 1
        kind = "good" if pair.same else "wrong"
        out[f"{kind}_{'gained' if y else 'lost'}"] += 1
    return out


async def query_cost(embedders: dict[str, Embedder], texts: Sequence[str]) -> dict[str, Any]:
    """One text per call, the backends taking turns text by text (load hits them alike)."""
    wall: dict[str, list[float]] = {name: [] for name in embedders}
    cpu: dict[str, list[float]] = {name: [] for name in embedders}
    for text in texts:
        for name, embedder in embedders.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            await embedder.embed([text])
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    out: dict[str, Any] = {"texts": len(texts)}
    for name in embedders:
        out[name] = {
            "p50_ms": round(statistics.median(wall[name]) * 1000, 2),
            "p90_ms": round(sorted(wall[name])[int(0.9 * (len(texts) - 1))] * 1000, 2),
            "cpu_p50_ms": round(statistics.median(cpu[name]) * 1000, 2),
            "cpu_mean_ms": round(statistics.fmean(cpu[name]) * 1000, 2),
        }
    return out


def vector_agreement(base: Embedded, other: Embedded, threshold: float) -> dict[str, float]:
    """Cosine between the two backends' vectors of the same text, and the pairs whose
    similarity falls on the other side of the threshold."""
    own = np.concatenate([(base.a * other.a).sum(axis=1), (base.b * other.b).sum(axis=1)])
    crossed = (base.sims >= threshold) != (other.sims >= threshold)
    return {
        "vector_cosine_mean": round(float(own.mean()), 5),
        "vector_cosine_min": round(float(own.min()), 5),
        "similarity_abs_diff_mean": round(float(np.abs(base.sims - other.sims).mean()), 5),
        "pairs_crossing_threshold": int(crossed.sum()),
    }


async def start_timed(embedder: Embedder) -> float:
    started = time.perf_counter()
    await embedder.start()
    return round(time.perf_counter() - started, 1)


async def run(
    names: Sequence[str], heads: Sequence[str], qqp_size: int, set_names: Sequence[str]
) -> dict[str, Any]:
    files = {"dev_set": DEV_PAIRS, "trap_set": TRAP_PAIRS}
    sets = {name: load_pairs(files[name]) for name in set_names}
    qqp = load_qqp(QQP_PAIRS, qqp_size) if qqp_size and QQP_PAIRS.is_file() else []
    result: dict[str, Any] = {"machine": machine(), "model": "all-MiniLM-L6-v2", "backends": {}}
    embedders: dict[str, Embedder] = {}
    hits: dict[tuple[str, str, str], list[bool]] = {}
    vectors: dict[tuple[str, str], Embedded] = {}
    try:
        for name in names:
            config = config_for(name)
            embedder = embedders[name] = embedder_for(config)
            block: dict[str, Any] = {
                "embedder": {"backend": config.embedder.backend, "onnx": BACKENDS[name][1]},
                "start_s": await start_timed(embedder),
            }
            for set_name, pairs in sets.items():
                for head in heads:
                    cfg = config_for(name, head)
                    out, pair_hits = await production(cfg, pairs, embedder)
                    block[f"{set_name}/match_head={head}"] = out
                    hits[(name, set_name, head)] = pair_hits
                    print(
                        f"{name:10} {set_name:9} head={head:4} good {out['good_hit_rate']:.4f} "
                        f"wrong {out['wrong_hit_rate']:.4f} precision {out['precision']}",
                        flush=True,
                    )
                vectors[(name, set_name)] = await Embedded.of(embedder, pairs)
            if qqp:
                started = time.process_time()
                embedded = vectors[(name, "qqp")] = await Embedded.of(embedder, qqp)
                scored = Scored(qqp, embedded, config)
                point = scored.point(config.cache.threshold, verified=True)
                hits[(name, "qqp", "auto")] = [
                    bool(h) for h in scored.hits(point["threshold"], True)
                ]
                refused = [r.split(":")[0] for r in scored.reasons if r]
                block["qqp/match_head=auto"] = {
                    "pairs": len(qqp),
                    **point,
                    "best_precision_at_good_0.45": scored.best_precision(0.45, verified=True),
                    "refusals_by_check": {c: refused.count(c) for c in sorted(set(refused))},
                    "cpu_s": round(time.process_time() - started, 1),
                }
                print(f"{name:10} qqp       head=auto {point}", flush=True)
            result["backends"][name] = block
            write_result("embedder_backends.partial", result)  # a later failure keeps these
        base = names[0]
        result["changed_vs_" + base] = {
            f"{name}/{set_name}/match_head={head}": changed(
                sets.get(set_name, qqp), hits[(base, set_name, head)], hits[key]
            )
            for key in hits
            for (name, set_name, head) in [key]
            if name != base
        }
        result["vectors_vs_" + base] = {
            f"{name}/{set_name}": vector_agreement(
                vectors[(base, set_name)],
                vectors[(name, set_name)],
                SidecarConfig().cache.threshold,
            )
            for (name, set_name) in vectors
            if name != base
        }
        texts = [p.b for p in load_pairs(DEV_PAIRS)][:200]
        result["query_cost"] = await query_cost(embedders, texts)
    finally:
        for embedder in embedders.values():
            await embedder.close()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,onnx-fp32,onnx-int8")
    parser.add_argument("--heads", default="auto,off", help="match_head settings to run")
    parser.add_argument("--qqp", type=int, default=10_000, help="QQP pairs (0: none)")
    parser.add_argument(
        "--sets", default="dev_set,trap_set", help="labelled sets through the production path"
    )
    parser.add_argument("--json", help="output (default benchmarks/results/embedder_backends.json)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}: choose from {list(BACKENDS)}")
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    set_names = [n.strip() for n in args.sets.split(",") if n.strip()]
    if any(n not in ("dev_set", "trap_set") for n in set_names):
        parser.error("--sets takes dev_set and/or trap_set")
    result = asyncio.run(run(names, heads, args.qqp, set_names))
    path = write_result("embedder_backends", result, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
