"""Two pair models side by side on the tuning split, through the verifier as it decides.

Run after ``benchmarks/train_pair_model.py --out DIR`` (which writes the tuning split)::

    nice -n 10 python -m benchmarks.compare_pair_models --other DIR

For each pair of ``benchmarks/results/pair_tuning.jsonl`` (held-out Quora pairs and synthetic
pairs of seed 2; never the QQP benchmark sample, the trap set or the frozen dev set) it runs the
rules and the match head once, as ``AnswerChangeVerifier`` does (near-repeats by spelling
offered below the threshold, the head skipped for them, slips onto real words left to the pair
model), then scores every pair with each model and applies the pair-model stage for a grid of
thresholds, minimums and rescue levels. Prints good hits, wrong hits and precision on the
Quora part and the synthetic part, and the served share per synthetic kind at the defaults.
Writes benchmarks/results/pair_model_comparison.json.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from benchmarks.train_pair_model import RESULTS
from embedders.sentence_tf import SentenceTransformerEmbedder
from sidecar.cache.candidates import NEAR_REPEAT_FLOOR, Candidate
from sidecar.cache.eval_cli import load_pairs, pair_vectors
from sidecar.cache.match.head import head_for
from sidecar.cache.match.pair_model import DEFAULT_PAIR_MODEL, PairModel
from sidecar.cache.match.verify import SLIP_MIN, AnswerChangeVerifier, pair_model_scores
from sidecar.config import CacheConfig
from sidecar.formats import normalise_text

GRID = [
    (t, m, r) for t in (0.7, 0.75, 0.78) for m in (0.05, 0.1, 0.2, 0.3, 0.5) for r in (0.95, 1.01)
]


def _rates(hits: np.ndarray, same: np.ndarray) -> dict[str, float | None]:
    return {
        "good": round(float(hits[same].mean()), 4),
        "wrong": round(float(hits[~same].mean()), 4),
        "precision": round(float(same[hits].mean()), 4) if hits.any() else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(DEFAULT_PAIR_MODEL), help="first model directory")
    parser.add_argument("--other", required=True, help="second model directory")
    args = parser.parse_args(argv)
    pairs = load_pairs(RESULTS / "pair_tuning.jsonl")

    async def embed() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        embedder = SentenceTransformerEmbedder()
        await embedder.start()
        try:
            return await pair_vectors(embedder, pairs)
        finally:
            await embedder.close()

    sims, va, vb = asyncio.run(embed())
    config = CacheConfig()
    head = head_for("auto", "all-MiniLM-L6-v2", va.shape[1])
    verifier = AnswerChangeVerifier(
        config.verifier_strictness, config.verifier_checks, head, config.match_head_min
    )
    questions = [(normalise_text(p.b), normalise_text(p.a)) for p in pairs]
    same = np.array([p.same for p in pairs])
    quora = np.array([p.category == "qqp" for p in pairs])
    kinds = np.array([p.category or "" for p in pairs])
    exact = np.array([q == c for q, c in questions])
    near = np.array(
        [
            s >= NEAR_REPEAT_FLOOR and verifier.near_repeat(q, c)
            for (q, c), s in zip(questions, sims, strict=True)
        ]
    )
    first = [
        verifier._first_stage(q, Candidate(c, float(sims[i]), (vb[i], va[i])))
        for i, (q, c) in enumerate(questions)
    ]
    accepted = np.array([verdict.accept for verdict, _ in first])
    route = np.array([r for _, r in first])
    result: dict[str, Any] = {"pairs": len(pairs), "models": {}}
    for name, location in (("base", args.base), ("other", args.other)):
        model = PairModel.load(location)
        scores = np.concatenate(
            [pair_model_scores(model, questions[i : i + 64]) for i in range(0, len(pairs), 64)]
        )

        def hits(threshold: float, minimum: float, rescue: float, s: np.ndarray = scores) -> Any:
            ok = (accepted & (s >= minimum)) | ((route == "head") & (s >= max(minimum, rescue)))
            ok |= (route == "slip") & (s >= max(minimum, SLIP_MIN))
            return exact | (((sims >= threshold) | near) & ok)

        grid = []
        for threshold, minimum, rescue in GRID:
            h = hits(threshold, minimum, rescue)
            grid.append(
                {
                    "threshold": threshold,
                    "pair_model_min": minimum,
                    "pair_model_rescue": rescue,
                    "qqp": _rates(h[quora], same[quora]),
                    "synthetic": _rates(h[~quora], same[~quora]),
                }
            )
        default = hits(config.threshold, config.pair_model_min, config.pair_model_rescue)
        kinds_served = {
            str(k): round(float(default[kinds == k].mean()), 4)
            for k in sorted(set(kinds) - {"qqp"})
        }
        result["models"][name] = {
            "directory": location,
            "model": model.manifest.get("model"),
            "training": model.manifest.get("training", {}).get("command"),
            "defaults": next(
                g
                for g in grid
                if (g["threshold"], g["pair_model_min"], g["pair_model_rescue"])
                == (config.threshold, config.pair_model_min, config.pair_model_rescue)
            ),
            "served_by_kind_at_defaults": kinds_served,
            "grid": grid,
        }
        print(name, orjson.dumps(result["models"][name]["defaults"]).decode())
        print("  served by kind:", kinds_served)
    path = RESULTS / "pair_model_comparison.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
