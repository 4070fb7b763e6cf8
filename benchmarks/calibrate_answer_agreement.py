"""Sets the defaults of ``cache.answer_agree_min`` / ``cache.answer_disagree_max``: the cosine
similarity of two answers' embeddings above which an exploration counts them as agreeing,
and below which as disagreeing (docs/adaptive.md).

Data: GPTCache's mock set (/work/shared/data/semcache/gptcache_mock_pairs.json, 999 pairs of a
statement and its paraphrase). Agreeing pairs: each statement with its paraphrase. Disagreeing
pairs: each statement with the paraphrase of another, shuffled with a fixed seed. The adaptive
simulation benchmark uses QQP-derived classes, so these pairs are disjoint from it.

The thresholds are chosen so that at most ``--error`` of the disagreeing pairs score at or
above ``agree_min`` and at most ``--error`` of the agreeing pairs score at or below
``disagree_max``. Every figure printed is IN-SAMPLE (the thresholds are tuned on these pairs).

    python -m benchmarks.calibrate_answer_agreement [--error 0.01] [--vectors onnx-int8]
        [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/semcache/gptcache_mock_pairs.json")


#: ``--vectors``: which backend embeds the answers (the one the sidecar will run)
VECTORS = {
    "torch": ("sentence-transformers", False),
    "onnx-fp32": ("onnx", False),
    "onnx-int8": ("onnx", True),
}


async def _embed(texts: list[str], vectors: str = "torch") -> np.ndarray:
    from embedders import build_embedder

    backend, quantize = VECTORS[vectors]
    embedder = build_embedder(backend, model="all-MiniLM-L6-v2", onnx_quantize=quantize)
    await embedder.start()
    try:
        rows = [await embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)]
    finally:
        await embedder.close()
    return np.vstack(rows)


def _floor2(x: float) -> float:
    return math.floor(x * 100) / 100


def _ceil2(x: float) -> float:
    return math.ceil(x * 100) / 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--error", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vectors", choices=sorted(VECTORS), default="torch")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} not found", file=sys.stderr)
        return 2
    pairs = json.loads(args.data.read_text(encoding="utf-8"))
    origins = [p["origin"] for p in pairs]
    similars = [p["similar"] for p in pairs]
    rng = random.Random(args.seed)
    shuffled = list(range(len(pairs)))
    while True:  # a derangement: no statement meets its own paraphrase
        rng.shuffle(shuffled)
        if all(i != j for i, j in enumerate(shuffled)):
            break
    a = asyncio.run(_embed(origins, args.vectors))
    b = asyncio.run(_embed(similars, args.vectors))
    agree = np.einsum("ij,ij->i", a, b)
    disagree = np.einsum("ij,ij->i", a, b[shuffled])
    agree_min = _ceil2(float(np.quantile(disagree, 1 - args.error)))
    disagree_max = _floor2(float(np.quantile(agree, args.error)))
    if disagree_max >= agree_min:  # overlapping classes: leave a band of "unknown"
        disagree_max = _floor2(agree_min - 0.05)
    result = {
        "data": str(args.data),
        "pairs": len(pairs),
        "vectors": args.vectors,
        "in_sample": True,
        "error": args.error,
        "answer_agree_min": agree_min,
        "answer_disagree_max": disagree_max,
        "agree_pairs": {
            "agree": float(np.mean(agree >= agree_min)),
            "unknown": float(np.mean((agree > disagree_max) & (agree < agree_min))),
            "disagree": float(np.mean(agree <= disagree_max)),
            "cosine_p01_p50": [float(np.quantile(agree, 0.01)), float(np.median(agree))],
        },
        "disagree_pairs": {
            "agree": float(np.mean(disagree >= agree_min)),
            "unknown": float(np.mean((disagree > disagree_max) & (disagree < agree_min))),
            "disagree": float(np.mean(disagree <= disagree_max)),
            "cosine_p50_p99": [float(np.median(disagree)), float(np.quantile(disagree, 0.99))],
        },
    }
    # The shipped defaults on these vectors: does another backend still meet --error with them?
    from sidecar.config import CacheConfig

    shipped = CacheConfig()
    high, low = shipped.answer_agree_min, shipped.answer_disagree_max
    result["at_shipped_defaults"] = {
        "answer_agree_min": high,
        "answer_disagree_max": low,
        "agree_pairs_disagree": float(np.mean(agree <= low)),
        "disagree_pairs_agree": float(np.mean(disagree >= high)),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
