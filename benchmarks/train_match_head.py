"""Train the bundled match head (sidecar/cache/match/head.py) for the default embedder.

Run: ``python -m benchmarks.train_match_head [--vectors torch|onnx-int8] [--hidden 128]
[--alpha 0.01]``. Needs
``../shared/data/semcache/qqp_pairs.json.gz`` and scikit-learn (training only; the sidecar runs
the head with numpy). Takes about 15 minutes on 2 cores, most of it embedding.

Data: the Quora question pairs in the shared file, shuffled with the semantic benchmark's seed.
The first 10,000 (the benchmark's sample, benchmarks/semcache_bench.py) are never used here.
The rest are split 80/20: the head learns from the 80% whose cosine is at least 0.7 (pairs
below any sensible threshold teach it nothing useful); the 20% pick the operating point
(threshold and minimum score) with the best precision at a good-hit rate of at least 0.47,
with the default verifier in front, as the cache will run it.

``--vectors`` picks the backend that embeds the pairs, the one the head will run behind:
``torch`` writes ``sidecar/cache/match/data/duplicate_head_all-MiniLM-L6-v2.npz``,
``onnx-int8`` ``duplicate_head_all-MiniLM-L6-v2.onnx-int8.npz`` (``head.bundled_head``). It
prints the operating point and the figures at the shipped ``match_head_min``; ``--score FILE``
prints them for an existing head without training (embedding only the held-out 20%).
Embeddings are cached in benchmarks/results/ so a rerun with other settings is quick.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.semcache_bench import QQP_PAIRS, QQP_SAMPLE, QQP_SEED, load_qqp
from embedders import build_embedder
from sidecar.cache.eval_cli import Pair, pair_vectors
from sidecar.cache.match import verify
from sidecar.cache.match.head import DuplicateHead, VectorKind, batch_features, bundled_head
from sidecar.config import SidecarConfig
from sidecar.formats import normalise_text

RESULTS = Path(__file__).resolve().parent / "results"
MIN_TRAIN_SIMILARITY = 0.7
MIN_GOOD = 0.47  # a margin over the 0.45 for the held-out -> benchmark shift
THRESHOLDS = (0.78, 0.8, 0.82, 0.84, 0.86, 0.88)
CUTS = tuple(round(c, 2) for c in np.arange(0.3, 0.95, 0.02))
MODEL = "all-MiniLM-L6-v2"


#: ``--vectors``: the backend whose vectors the head learns from (the one it will run behind)
VECTORS: dict[VectorKind, tuple[str, bool]] = {
    "torch": ("sentence-transformers", False),
    "onnx-fp32": ("onnx", False),
    "onnx-int8": ("onnx", True),
}


def embed_pairs(
    pairs: Sequence[Pair], cache_file: Path, vectors: VectorKind = "torch"
) -> tuple[np.ndarray, np.ndarray]:
    if cache_file.exists():
        with np.load(cache_file) as data:
            if len(data["a"]) == len(pairs):
                return data["a"], data["b"]

    async def embed() -> tuple[np.ndarray, np.ndarray]:
        backend, quantize = VECTORS[vectors]
        embedder = build_embedder(backend, model=MODEL, onnx_quantize=quantize)
        await embedder.start()
        try:
            _, a, b = await pair_vectors(embedder, pairs)  # what calibration embeds
        finally:
            await embedder.close()
        return a, b

    a, b = asyncio.run(embed())
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, a=a, b=b)
    return a, b


def operating_point(
    same: np.ndarray,
    sims: np.ndarray,
    exact: np.ndarray,
    accepted: np.ndarray,
    scores: np.ndarray,
) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for threshold in THRESHOLDS:
        for cut in CUTS:
            hits = exact | ((sims >= threshold) & accepted & (scores >= cut))
            good = float(hits[same].mean())
            precision = float(same[hits].mean()) if hits.any() else 0.0
            if good >= MIN_GOOD and precision > best.get("precision", -1.0):
                best = {
                    "threshold": threshold,
                    "match_head_min": float(cut),
                    "precision": round(precision, 4),
                    "good_hit_rate": round(good, 4),
                    "wrong_hit_rate": round(float(hits[~same].mean()), 4),
                }
    return best


def prepare(
    pairs: Sequence[Pair], cache_file: Path, vectors: VectorKind
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pair: the features of the head's input, the cosine, the label, exact repeats, the
    default verifier's verdict without a head (at the grid's lowest threshold or above)."""
    started = time.perf_counter()
    a, b = embed_pairs(pairs, cache_file, vectors)
    print(f"{len(pairs)} pairs embedded ({vectors}) in {time.perf_counter() - started:.0f} s")
    sims = (a * b).sum(axis=1)
    same = np.array([p.same for p in pairs])
    questions = [(normalise_text(p.b), normalise_text(p.a)) for p in pairs]
    exact = np.array([x == y for x, y in questions])
    verifier = verify.build_verifier(SidecarConfig().cache)
    assert verifier is not None
    accepted = np.array(
        [
            s >= min(THRESHOLDS) and verifier.verify(x, y, float(s)).accept
            for (x, y), s in zip(questions, sims, strict=True)
        ]
    )
    started = time.perf_counter()
    text = np.array([verify.pair_text_features(x, y) for x, y in questions], dtype=np.float32)
    print(f"text features in {time.perf_counter() - started:.0f} s")
    return batch_features(a, b, sims, text), sims, same, exact, accepted, a


def held_out_figures(
    head: DuplicateHead,
    x: np.ndarray,
    sims: np.ndarray,
    same: np.ndarray,
    exact: np.ndarray,
    accepted: np.ndarray,
) -> dict[str, Any]:
    """The operating point the script chooses, and the figures at the shipped minimum (the
    lowest threshold of the grid), so two heads compare at one setting too."""
    scores = head.score_batch(x)
    minimum = SidecarConfig().cache.match_head_min
    hits = exact | ((sims >= min(THRESHOLDS)) & accepted & (scores >= minimum))
    fixed = {
        "threshold": min(THRESHOLDS),
        "match_head_min": minimum,
        "precision": round(float(same[hits].mean()), 4) if hits.any() else None,
        "good_hit_rate": round(float(hits[same].mean()), 4),
        "wrong_hit_rate": round(float(hits[~same].mean()), 4),
    }
    return {
        "operating_point": operating_point(same, sims, exact, accepted, scores),
        "at_shipped_min": fixed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=None, help="default: the bundled file")
    parser.add_argument(
        "--vectors",
        choices=sorted(VECTORS),
        default="torch",
        help="the embedder backend whose vectors the head learns from (default torch)",
    )
    parser.add_argument(
        "--score",
        type=Path,
        default=None,
        help="no training: the held-out figures of this head file on --vectors' vectors",
    )
    args = parser.parse_args(argv)

    everything = load_qqp(QQP_PAIRS, size=10**9, seed=QQP_SEED)
    pairs = everything[QQP_SAMPLE:]  # never the benchmark's sample
    order = np.random.RandomState(0).permutation(len(pairs))
    split = int(0.8 * len(pairs))
    suffix = "" if args.vectors == "torch" else f"_{args.vectors}"
    if args.score is not None:
        # Only the held-out 20% is needed: sliced from a training run's vectors when there
        # are some, else embedded alone.
        held_pairs = [pairs[i] for i in order[split:]]
        cache_file = RESULTS / f"qqp_heldout_vectors{suffix}.npz"
        full = RESULTS / f"qqp_train_vectors{suffix}.npz"
        if full.exists() and not cache_file.exists():
            with np.load(full) as data:
                if len(data["a"]) == len(pairs):
                    held = order[split:]
                    np.savez(cache_file, a=data["a"][held], b=data["b"][held])
        x, sims, same, exact, accepted, _ = prepare(held_pairs, cache_file, args.vectors)
        head = DuplicateHead.load(args.score)
        figures = held_out_figures(head, x, sims, same, exact, accepted)
        print(f"{args.score} on {args.vectors} vectors, held out: {figures}")
        return 0

    from sklearn.neural_network import MLPClassifier  # training only

    cache_file = RESULTS / f"qqp_train_vectors{suffix}.npz"
    x, sims, same, exact, accepted, a = prepare(pairs, cache_file, args.vectors)
    train, held = order[:split], order[split:]
    train = train[(sims[train] >= MIN_TRAIN_SIMILARITY) & ~exact[train]]
    started = time.perf_counter()
    model = MLPClassifier(
        hidden_layer_sizes=(args.hidden,),
        alpha=args.alpha,
        max_iter=200,
        early_stopping=True,
        random_state=0,
    ).fit(x[train], same[train])
    print(f"trained on {len(train)} pairs in {time.perf_counter() - started:.0f} s")
    head = DuplicateHead(
        model=MODEL,
        dimension=a.shape[1],
        text_features=x.shape[1] - 2 * a.shape[1] - 1,
        w1=model.coefs_[0],
        b1=model.intercepts_[0],
        w2=model.coefs_[1].reshape(-1),
        b2=float(model.intercepts_[1][0]),
        info={},
    )
    figures = held_out_figures(head, x[held], sims[held], same[held], exact[held], accepted[held])
    info = {
        "trained_on": "Quora question pairs (../shared/data/semcache/qqp_pairs.json.gz), "
        f"shuffle seed {QQP_SEED}, excluding the first {QQP_SAMPLE} (the benchmark sample)",
        "vectors": args.vectors,
        "training_pairs": int(len(train)),
        "held_out_pairs": int(len(held)),
        "hidden": args.hidden,
        "alpha": args.alpha,
        "held_out_operating_point": figures["operating_point"],
        "held_out_at_shipped_min": figures["at_shipped_min"],
    }
    head = dataclasses.replace(head, info=info)
    out = args.out or bundled_head(args.vectors)
    head.save(out)
    print(f"wrote {out}")
    print(f"held-out figures: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
