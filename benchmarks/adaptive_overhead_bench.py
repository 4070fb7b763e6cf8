"""What the adaptive cache (``cache.target_wrong_rate``) adds to a lookup, side by side.

Two sidecars in one process share the real embedding model: one with no target (today's
behaviour), one with a target, exploration off (every eligible candidate is a decision, none
goes upstream) and a partition holding 2,000 observations. The same requests alternate between
them; the figures are the median time of the request hook's pipeline call (parse, lookup,
decision, serving) for semantic hits and for exact hits, and the median of the decision step
alone (``AdaptiveCache.judge``, what a semantic lookup adds). By default each text is embedded
once (``MemoEmbedder``), so the model's time (tens of ms, noisy on a loaded machine) does not
drown a sub-millisecond difference; ``--live-embedding`` embeds every lookup. JSON on stdout.

    python -m benchmarks.adaptive_overhead_bench [--rounds 300] [--live-embedding]
        [--pair-model auto|off]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from typing import Any

import orjson

COUNTRIES = (
    "France Germany Spain Italy Portugal Austria Belgium Denmark Sweden Norway Finland Poland "
    "Greece Ireland Hungary Romania Bulgaria Croatia Slovakia Slovenia Estonia Latvia Lithuania "
    "Japan Canada Brazil Chile Peru Mexico Egypt"
).split()


EXPECTED = {"semantic": "hit-semantic", "exact": "hit-exact"}


class MemoEmbedder:
    """The real model with a memo in front: each text is embedded once, so the timed lookups
    measure the cache machinery (search, verifier, decision) instead of model noise."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self._memo: dict[str, Any] = {}

    async def start(self) -> None:
        await self.inner.start()
        self.model_id, self.dimension = self.inner.model_id, self.inner.dimension

    async def embed(self, texts: Any) -> Any:
        import numpy as np

        todo = [t for t in texts if t not in self._memo]
        if todo:
            for text, row in zip(todo, await self.inner.embed(todo), strict=True):
                self._memo[text] = row
        return np.vstack([self._memo[t] for t in texts])

    async def close(self) -> None:
        await self.inner.close()


def _chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def _answer(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    )


async def _run(rounds: int, memo: bool, pair_model: str) -> dict[str, Any]:
    from embedders import build_embedder
    from sidecar.cache.adaptive import Observation, Ticket
    from sidecar.config import SidecarConfig
    from sidecar.context import HookRequest
    from sidecar.services import Sidecar

    embedder: Any = build_embedder("sentence-transformers", model="all-MiniLM-L6-v2")
    if memo:
        embedder = MemoEmbedder(embedder)
    await embedder.start()
    base = {"data_dir": ":memory:", "default_cache_key": "bench", "pair_model": pair_model}
    static = Sidecar(SidecarConfig.model_validate({"cache": base}), embedder=embedder)
    adaptive = Sidecar(
        SidecarConfig.model_validate(
            {"cache": {**base, "target_wrong_rate": 0.05, "explore_rate": 0.0}}
        ),
        embedder=embedder,
    )
    # An identical copy of ``static``: the A/A pair shows the noise floor of the comparison.
    control = Sidecar(SidecarConfig.model_validate({"cache": base}), embedder=embedder)
    headers = {"content-type": "application/json"}
    for sidecar in (static, adaptive, control):
        await sidecar.start()
        assert sidecar.pipeline is not None
        for country in COUNTRIES:
            hook = HookRequest(
                "POST", "/v1/chat/completions", {}, _chat(f"What is the capital of {country}?")
            )
            ctx, _ = await sidecar.pipeline.on_request(hook, "bench")
            await sidecar.pipeline.on_response(ctx, 200, headers, _answer(f"{country}'s capital."))
    assert adaptive.cache is not None and adaptive.cache.adaptive is not None
    runtime = adaptive.cache.adaptive
    entry = await adaptive.cache.exact.get(
        next(iter(adaptive.cache.exact._rows))  # type: ignore[attr-defined]
    )
    assert entry is not None
    rng = random.Random(18)
    ticket = Ticket("bench", entry.id, entry.created_at, entry.expires_at, 0.9, None, None, 1.0)
    for _ in range(2000):
        sim = rng.uniform(0.7, 1.0)
        await runtime.store.record(
            Ticket("bench", "x", 0.0, 0.0, sim, None, None, 1.0),
            Observation(sim, sim > 0.75 or rng.random() < 0.9),
        )
    del ticket

    timings: dict[str, dict[str, list[float]]] = {
        "semantic": {"static": [], "adaptive": [], "control": []},
        "exact": {"static": [], "adaptive": [], "control": []},
    }
    statuses: dict[str, set[str]] = {"static": set(), "adaptive": set(), "control": set()}
    for i in range(rounds):
        country = COUNTRIES[i % len(COUNTRIES)]
        for kind, text in (
            ("semantic", f"What's the capital city of {country}?"),
            ("exact", f"What is the capital of {country}?"),
        ):
            order = [("static", static), ("adaptive", adaptive), ("control", control)]
            shift = i % 3  # rotate who goes first (warm caches, CPU frequency)
            order = order[shift:] + order[:shift]
            took: dict[str, float] = {}
            seen: dict[str, str] = {}
            for name, sidecar in order:
                assert sidecar.pipeline is not None
                hook = HookRequest(
                    "POST", "/v1/chat/completions", {}, _chat(text), request_id=f"{name}-{i}-{kind}"
                )
                started = time.perf_counter()
                _, outcome = await sidecar.pipeline.on_request(hook, "bench")
                took[name] = (time.perf_counter() - started) * 1000
                seen[name] = outcome.cache.status.value
                statuses[name].add(f"{kind}:{seen[name]}")
            # Only pairs where both took the path measured (a paraphrase the verifier refuses,
            # or a question answered by a neighbour's entry at set-up, is left out).
            if seen["static"] == seen["adaptive"] == seen["control"] == EXPECTED[kind]:
                for name, ms in took.items():
                    timings[kind][name].append(ms)

    # The decision step alone, what a semantic lookup with a target adds.
    policy = runtime.policy("bench")
    assert policy is not None
    judge: list[float] = []
    for i in range(rounds * 4):
        started = time.perf_counter()
        await runtime.judge(policy, "bench", entry, 0.8 + (i % 20) * 0.01, 0.7, None, None)
        judge.append((time.perf_counter() - started) * 1e6)

    for sidecar in (static, adaptive, control):
        await sidecar.close()
    await embedder.close()

    def p50(values: list[float]) -> float:
        return round(statistics.median(values), 4)

    out: dict[str, Any] = {
        "rounds": rounds,
        "memo_embedder": memo,
        "pair_model": pair_model,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "statuses": {k: sorted(v) for k, v in statuses.items()},
        "judge_us_p50": round(statistics.median(judge), 2),
        "judge_us_p99": round(sorted(judge)[int(len(judge) * 0.99)], 2),
    }
    for kind, pair in timings.items():
        out[kind] = {
            "pairs": len(pair["static"]),
            "static_ms_p50": p50(pair["static"]),
            "adaptive_ms_p50": p50(pair["adaptive"]),
            "added_ms_p50": round(p50(pair["adaptive"]) - p50(pair["static"]), 4),
            "ratio_p50": round(p50(pair["adaptive"]) / p50(pair["static"]), 3),
            "paired_diff_ms_p50": p50(
                [a - s for a, s in zip(pair["adaptive"], pair["static"], strict=True)]
            ),
            # A/A: the same configuration twice; a difference this size is noise
            "control_ms_p50": p50(pair["control"]),
            "control_paired_diff_ms_p50": p50(
                [c - s for c, s in zip(pair["control"], pair["static"], strict=True)]
            ),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--live-embedding",
        action="store_true",
        help="embed every lookup (default: each text once, the model's time left out)",
    )
    parser.add_argument("--pair-model", default="auto", help="cache.pair_model of both sidecars")
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args.rounds, not args.live_embedding, args.pair_model))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
