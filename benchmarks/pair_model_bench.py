"""Cost of the pair model (second-stage cross-encoder) beside the embedding of one question.

Run: ``nice -n 10 python -m benchmarks.pair_model_bench``. Writes
``benchmarks/results/pair_model.json`` and prints a table.

What a semantic lookup pays: the new question is embedded once (baseline column: the default
sentence-transformers embedder, one short question); then the candidates that passed the
threshold and the rules are scored by the pair model in one batch. Measured:

* 1 and 3 candidates of short questions (10-20 tokens: typical chat questions);
* 1 and 3 candidates of questions of 64 tokens each (the issue's bound; the pair is capped at
  the manifest's ``max_len`` tokens, so each question is truncated);
* long questions (about 400 tokens each), truncated the same way: measured separately.

Median and p90 over ``--repeats`` runs after a warm-up, on the bundled int8 model with the
threads the sidecar uses (2). The machine is shared: the run records its load average.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.report import SummaryRow, machine, write_result
from embedders.sentence_tf import SentenceTransformerEmbedder
from sidecar.cache.match.pair_model import PairModel, pair_model_for

MAX_MS_3_CANDIDATES = 5.0
SHORT = [
    "How do I roll back a deployment in Kubernetes?",
    "How can I roll back my Kubernetes deployment to the previous version?",
    "Rollback a k8s deployment",
    "What is the command to undo a Kubernetes rollout?",
]
_FILLER = (
    "I am running a small web service behind a load balancer and the health checks pass but "
    "users still see errors after every release, and the logs show connection resets "
)


def _of_tokens(model: PairModel, text: str, tokens: int) -> str:
    """``text`` repeated and cut to ``tokens`` word pieces (without the special tokens)."""
    ids = model.tokenizer.encode((text + " ") * 50, add_special_tokens=False).ids[:tokens]
    decoded: str = model.tokenizer.decode(ids)
    return decoded


def timed(call: Callable[[], object], repeats: int) -> dict[str, float]:
    for _ in range(5):
        call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
    }


def run(repeats: int) -> dict[str, Any]:
    model = pair_model_for("auto")
    assert model is not None
    question, *cands = SHORT
    q64 = _of_tokens(model, _FILLER + question, 64)
    c64 = [_of_tokens(model, _FILLER + c, 64) for c in cands]
    q400 = _of_tokens(model, _FILLER + question, 400)
    c400 = [_of_tokens(model, _FILLER + c, 400) for c in cands]
    cases = {
        "short_1_candidate": (question, cands[:1]),
        "short_3_candidates": (question, cands),
        "64_tokens_1_candidate": (q64, c64[:1]),
        "64_tokens_3_candidates": (q64, c64),
        "long_400_tokens_1_candidate": (q400, c400[:1]),
        "long_400_tokens_3_candidates": (q400, c400),
    }
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "model": model.manifest["model"],
        "file": model.manifest["file"],
        "max_len": model.max_len,
        "threads": 2,
        "repeats": repeats,
    }
    pair: dict[str, Any] = {}
    for name, (q, cs) in cases.items():
        tokens = [len(model.tokenizer.encode(q, c).ids) for c in cs]
        call = functools.partial(model.score, q, cs)
        pair[name] = {"pair_tokens": max(tokens), **timed(call, repeats)}
    result["pair_model"] = pair

    async def embed_one() -> dict[str, float]:
        embedder = SentenceTransformerEmbedder()
        await embedder.start()
        try:
            loop = asyncio.get_running_loop()
            samples = []
            for i in range(repeats + 5):
                started = loop.time()
                await embedder.embed([f"{question} {i}"])
                if i >= 5:
                    samples.append((loop.time() - started) * 1000)
            samples.sort()
            return {
                "p50_ms": round(statistics.median(samples), 3),
                "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
            }
        finally:
            await embedder.close()

    result["embed_one_question"] = asyncio.run(embed_one())
    three = pair["64_tokens_3_candidates"]["p50_ms"]
    result["summary"] = [
        SummaryRow(
            "semantic cache",
            "pair model ms, 3 candidates of 64 tokens (p50)",
            three,
            "ms",
            result["embed_one_question"]["p50_ms"],
            "embedding one question (p50)",
            f"<= {MAX_MS_3_CANDIDATES}",
            three <= MAX_MS_3_CANDIDATES,
            show_ratio=False,
        ).to_json()
    ]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="output path (default benchmarks/results/pair_model.json)")
    args = parser.parse_args(argv)
    result = run(args.repeats)
    path = write_result("pair_model", result, args.json)
    for name, row in result["pair_model"].items():
        print(f"  {name:30} {row['pair_tokens']:4} tokens  p50 {row['p50_ms']:7.3f} ms")
    print(f"  embedding one question        p50 {result['embed_one_question']['p50_ms']:7.3f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
