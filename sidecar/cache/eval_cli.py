"""``sidecar cache eval`` and ``sidecar cache calibrate``: semantic-cache quality on labelled pairs.

A pairs file holds JSON lines ``{"a": str, "b": str, "same": bool[, "category": str]}``:
``same`` says whether the answer cached for ``a`` is right for ``b``.

``eval`` measures the production path itself: a real ``Sidecar`` built from the configuration
(same embedder, threshold and verifier) on a fresh in-memory cache. For every pair, ``a`` goes
through ``Pipeline.on_request``/``on_response`` with a placeholder answer in a partition of its
own, then ``b`` through ``Pipeline.on_request``; a hit is an answer served from the cache.

``calibrate`` embeds every question once with the production embedder, asks the verifier about
every pair, sweeps thresholds for each verifier setting, picks the point with the most good hits
under the wrong-hit target, and then re-measures that point through the production path.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from embedders.base import Embedder
from sidecar.cache.calibrate_report import render_table, sample_support
from sidecar.cache.layer import CacheStatus
from sidecar.cache.match.head import head_for
from sidecar.cache.match.pair_model import pair_model_for
from sidecar.cache.match.verify import (
    AnswerChangeVerifier,
    embedder_identity,
    embedder_vectors,
    pair_model_scores,
    pair_text_features,
)
from sidecar.config import ConfigError, SidecarConfig, VerifierStrictness, load_config
from sidecar.context import HookRequest
from sidecar.formats import normalise_text
from sidecar.services import Sidecar

TRANSPORT = "eval"
_CHAT_PATH = "/v1/chat/completions"
_MODEL = "cache-eval"
_PLACEHOLDER = orjson.dumps(
    {
        "id": "chatcmpl-eval",
        "object": "chat.completion",
        "created": 0,
        "model": _MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "placeholder answer"},
                "finish_reason": "stop",
            }
        ],
    }
)
_HITS = (CacheStatus.HIT_EXACT, CacheStatus.HIT_SEMANTIC)
# Thresholds tried by calibrate; a coarse grid keeps the chosen point away from single pairs.
# Never below 0.70: labelled pairs are near-misses and paraphrases, almost never unrelated
# questions, which a lower threshold would start to serve.
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.7 + 0.005 * i, 3) for i in range(60))


class PairsError(ValueError):
    """A pairs file that cannot be used; the message names the file, line and problem."""


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    same: bool
    category: str | None = None


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a JSON-lines pairs file. Raises PairsError naming the first bad line."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PairsError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PairsError(f"{source}: not UTF-8 text: {exc}") from exc
    pairs: list[Pair] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise PairsError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise PairsError(f"{where}: expected an object with 'a', 'b' and 'same'")
        for name in ("a", "b"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise PairsError(f"{where}: {name!r} must be a non-empty string")
        if not isinstance(row.get("same"), bool):
            raise PairsError(f"{where}: 'same' must be true or false")
        category = row.get("category")
        if category is not None and not isinstance(category, str):
            raise PairsError(f"{where}: 'category' must be a string")
        pairs.append(Pair(row["a"], row["b"], row["same"], category))
    if not pairs:
        raise PairsError(f"{source}: no pairs")
    return pairs


# -------------------------------------------------------------------- production path
@dataclass(slots=True)
class Outcome:
    """What the cache did with ``b`` after ``a`` was stored."""

    status: str
    similarity: float | None = None
    refused: list[str] = field(default_factory=list)

    @property
    def hit(self) -> bool:
        return self.status in (s.value for s in _HITS)


def eval_config(config: SidecarConfig) -> SidecarConfig:
    """The configuration on a fresh in-memory cache: nothing read from or left on disk."""
    cfg = config.model_copy(deep=True)
    cfg.cache.enabled = True
    cfg.cache.data_dir = ":memory:"
    cfg.cache.exact_store = "embedded"
    cfg.cache.vector_store = "embedded"
    # Quality, not latency: ``b`` must find ``a`` even when the vector of ``a`` was computed
    # after its store and 32 pairs queue for the model (the budget would skip lookups).
    cfg.embedder.max_queue_ms = 600_000
    # Nor may overload shedding skip lookups or stores: the pairs run 32 at a time on one
    # event loop, which lags behind its timers on a busy machine, and a shed lookup is a miss
    # that says nothing about quality (on a loaded 2-core machine it cut the development
    # set's good hits from 66% to 31%).
    cfg.embedder.max_inflight_lookups = 100_000
    cfg.server.shed_loop_lag_ms = 0.0
    cfg.server.shed_store_lag_ms = 0.0
    cfg.server.shed_on_extproc_round_trip = False
    return cfg


def _chat(question: str, partition: str, request_id: str) -> HookRequest:
    return HookRequest(
        method="POST",
        path=_CHAT_PATH,
        headers={"content-type": "application/json", "x-bf-cache-key": partition},
        body={"model": _MODEL, "messages": [{"role": "user", "content": question}]},
        request_id=request_id,
    )


async def _one_pair(sidecar: Sidecar, index: int, pair: Pair) -> Outcome:
    pipeline = sidecar.pipeline
    assert pipeline is not None
    partition = f"cache-eval-pair-{index}"
    ctx, outcome = await pipeline.on_request(_chat(pair.a, partition, f"a{index}"), TRANSPORT)
    if outcome.action == "continue":
        await pipeline.on_response(ctx, 200, {"content-type": "application/json"}, _PLACEHOLDER)
    ctx, outcome = await pipeline.on_request(_chat(pair.b, partition, f"b{index}"), TRANSPORT)
    lookup = ctx.lookup
    return Outcome(
        outcome.cache.status.value,
        lookup.similarity if lookup is not None else None,
        list(lookup.refused) if lookup is not None else [],
    )


async def run_pairs(
    sidecar: Sidecar, pairs: Sequence[Pair], concurrency: int = 32
) -> list[Outcome]:
    """Every pair through the started sidecar's pipeline. Pairs run concurrently (each in its
    own partition), so the embedder's micro-batcher groups their model calls."""
    gate = asyncio.Semaphore(concurrency)

    async def guarded(index: int, pair: Pair) -> Outcome:
        async with gate:
            return await _one_pair(sidecar, index, pair)

    return list(await asyncio.gather(*(guarded(i, p) for i, p in enumerate(pairs))))


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def summarise(pairs: Sequence[Pair], hits: Sequence[bool]) -> dict[str, Any]:
    """good_hit_rate: share of same-answer pairs served; wrong_hit_rate: share of the others."""
    same = sum(bool(p.same) for p in pairs)
    good = sum(bool(h) and p.same for p, h in zip(pairs, hits, strict=True))
    wrong = sum(bool(h) and not p.same for p, h in zip(pairs, hits, strict=True))
    out: dict[str, Any] = {
        "pairs": len(pairs),
        "good_hit_rate": _rate(good, same),
        "wrong_hit_rate": _rate(wrong, len(pairs) - same),
        "precision": _rate(good, good + wrong),
        "good_hits": good,
        "wrong_hits": wrong,
    }
    return out


def _categories(
    pairs: Sequence[Pair], hits: Sequence[bool], outcomes: Sequence[Outcome] = ()
) -> dict[str, Any]:
    """Per category: its hit rates and, when ``outcomes`` are given, which check refused how
    many of its pairs (the first refusal of each pair)."""
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        if pair.category is not None:
            groups.setdefault(pair.category, []).append(i)
    out: dict[str, Any] = {}
    for name, members in sorted(groups.items()):
        sub = summarise([pairs[i] for i in members], [hits[i] for i in members])
        out[name] = {
            "pairs": sub["pairs"],
            "hit_rate": _rate(sum(hits[i] for i in members), len(members)),
            "good_hit_rate": sub["good_hit_rate"],
            "wrong_hit_rate": sub["wrong_hit_rate"],
        }
        if outcomes:
            checks = [outcomes[i].refused[0].split(":")[0] for i in members if outcomes[i].refused]
            out[name]["refused_by"] = {c: checks.count(c) for c in sorted(set(checks))}
    return out


def describe(config: SidecarConfig) -> dict[str, Any]:
    cache = config.cache
    return {
        "threshold": cache.threshold,
        "verifier": cache.verifier,
        "verifier_strictness": cache.verifier_strictness,
        "verifier_checks": list(cache.verifier_checks),
        "match_head": cache.match_head,
        "match_head_min": cache.match_head_min,
        "pair_model": cache.pair_model,
        "pair_model_min": cache.pair_model_min,
    }


async def evaluate(
    config: SidecarConfig, pairs: Sequence[Pair], embedder: Embedder | None = None
) -> dict[str, Any]:
    """Hit rates of the configured cache on ``pairs``, measured through the production path."""
    result, _ = await evaluate_with_hits(config, pairs, embedder)
    return result


async def evaluate_with_hits(
    config: SidecarConfig, pairs: Sequence[Pair], embedder: Embedder | None = None
) -> tuple[dict[str, Any], list[bool]]:
    """``evaluate``'s figures and each pair's hit (for comparing configurations pair by pair)."""
    sidecar = Sidecar(eval_config(config), embedder=embedder)
    await sidecar.start()
    try:
        outcomes = await run_pairs(sidecar, pairs)
    finally:
        await sidecar.close()
    hits = [o.hit for o in outcomes]
    result = {**summarise(pairs, hits), **describe(config)}
    result["refused_by_verifier"] = sum(bool(o.refused) for o in outcomes)
    categories = _categories(pairs, hits, outcomes)
    if categories:
        result["categories"] = categories
    return result, hits


# -------------------------------------------------------------------- calibration
async def pair_vectors(
    embedder: Embedder, pairs: Sequence[Pair], chunk: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair's normalised questions embedded (what the cache embeds, each text once):
    the cosines, the ``a`` vectors and the ``b`` vectors."""
    texts = sorted({normalise_text(t) for p in pairs for t in (p.a, p.b)})
    rows: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        for text, vector in zip(part, await embedder.embed(part), strict=True):
            rows[text] = np.asarray(vector, dtype=np.float32)
    a = np.array([rows[normalise_text(p.a)] for p in pairs], dtype=np.float32)
    b = np.array([rows[normalise_text(p.b)] for p in pairs], dtype=np.float32)
    return (a * b).sum(axis=1), a, b


#: match-head minimums calibration tries beside the configured one
HEAD_MIN_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True, slots=True)
class Setting:
    """One verifier configuration calibration tries."""

    verifier: str
    verifier_strictness: VerifierStrictness
    match_head_min: float | None = None  # None: no match head in play


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    verifier: str
    verifier_strictness: VerifierStrictness
    match_head_min: float | None
    threshold: float
    good_hit_rate: float
    wrong_hit_rate: float
    precision: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "verifier": self.verifier,
            "verifier_strictness": self.verifier_strictness,
            "match_head_min": self.match_head_min,
            "good_hit_rate": round(self.good_hit_rate, 4),
            "wrong_hit_rate": round(self.wrong_hit_rate, 4),
            "precision": None if self.precision is None else round(self.precision, 4),
        }


def sweep(
    same: np.ndarray,
    sims: np.ndarray,
    exact: np.ndarray,
    accepted: np.ndarray,
    target: float,
    setting: Setting,
) -> OperatingPoint | None:
    """The lowest grid threshold (most hits) whose wrong-hit rate is at most ``target``."""
    n_same, n_diff = int(same.sum()), int((~same).sum())
    for threshold in THRESHOLD_GRID:
        hits = exact | ((sims >= threshold) & accepted)
        good, wrong = int((hits & same).sum()), int((hits & ~same).sum())
        wrong_rate = wrong / n_diff if n_diff else 0.0
        if wrong_rate <= target:
            return OperatingPoint(
                setting.verifier,
                setting.verifier_strictness,
                setting.match_head_min,
                threshold,
                good / n_same if n_same else 0.0,
                wrong_rate,
                good / (good + wrong) if good + wrong else None,
            )
    return None


def _apply(config: SidecarConfig, point: OperatingPoint) -> SidecarConfig:
    cfg = config.model_copy(deep=True)
    cfg.cache.threshold = point.threshold
    cfg.cache.verifier = "traps" if point.verifier == "traps" else "off"
    cfg.cache.verifier_strictness = point.verifier_strictness
    if point.match_head_min is not None:
        cfg.cache.match_head_min = point.match_head_min
    return cfg


async def calibrate(
    config: SidecarConfig, pairs: Sequence[Pair], target: float, embedder: Embedder | None = None
) -> dict[str, Any]:
    """Find the verifier setting and threshold meeting ``target`` with the most good hits."""
    same = np.array([p.same for p in pairs])
    if same.all() or not same.any():
        raise PairsError("calibration needs both same-answer and different-answer pairs")
    # This sidecar only lends its embedder (the production one) to the steps below.
    sidecar = Sidecar(eval_config(config), embedder=embedder)
    await sidecar.start()
    try:
        assert sidecar.embedder is not None
        return await _calibrate(config, pairs, target, sidecar.embedder, same)
    finally:
        await sidecar.close()


async def _calibrate(
    config: SidecarConfig,
    pairs: Sequence[Pair],
    target: float,
    embedder: Embedder,
    same: np.ndarray,
) -> dict[str, Any]:
    sims, vectors_a, vectors_b = await pair_vectors(embedder, pairs)
    questions = [(normalise_text(p.b), normalise_text(p.a)) for p in pairs]
    exact = np.array([b == a for b, a in questions])
    # The match head as configured (None when off, or not made for this embedder). Its score
    # does not depend on the rules' strictness: computed once per pair, then cut at each
    # minimum of the grid.
    head = head_for(
        config.cache.match_head,
        embedder_identity(config.embedder),
        embedder.dimension,
        embedder_vectors(config.embedder),
    )
    scores = np.ones(len(pairs))
    if head is not None:
        scores = np.array(
            [
                1.0
                if b == a
                else head.score(vectors_b[i], vectors_a[i], float(s), pair_text_features(b, a))
                for i, ((b, a), s) in enumerate(zip(questions, sims, strict=True))
            ]
        )
    mins: list[float | None] = [None]
    if head is not None:
        mins = [*sorted({config.cache.match_head_min, *HEAD_MIN_GRID})]
    # The pair model as configured, at its configured minimum: scored once per pair (it
    # reads text only), it gates every verifier setting as it does in production.
    passed_pair = np.ones(len(pairs), dtype=bool)
    rescued = np.zeros(len(pairs), dtype=bool)
    pair_model = pair_model_for(config.cache.pair_model) if config.cache.verifier != "off" else None
    if pair_model is not None:
        scores_pair = np.concatenate(
            [pair_model_scores(pair_model, questions[i : i + 64]) for i in range(0, len(pairs), 64)]
        )
        passed_pair = exact | (scores_pair >= config.cache.pair_model_min)
        rescued = scores_pair >= config.cache.pair_model_rescue  # overrides the head
    everything = np.ones(len(pairs), dtype=bool)
    points = [sweep(same, sims, exact, everything, target, Setting("off", "balanced"))]
    levels: tuple[VerifierStrictness, ...] = ("lenient", "balanced", "strict")
    for strictness in levels:
        rules = AnswerChangeVerifier(strictness, config.cache.verifier_checks)  # no head
        passed = np.array(
            [rules.verify(b, a, float(s)).accept for (b, a), s in zip(questions, sims, strict=True)]
        )
        for minimum in mins:
            accepted = passed & passed_pair
            if minimum is not None:
                accepted &= (scores >= minimum) | rescued
            setting = Setting("traps", strictness, minimum)
            points.append(sweep(same, sims, exact, accepted, target, setting))
    candidates = [p for p in points if p is not None]
    result: dict[str, Any] = {"target_wrong_rate": target, "pairs": len(pairs)}
    result["alternatives"] = [c.to_json() for c in candidates]
    if not candidates:
        result["met"] = False
        result["reason"] = "no threshold on the grid meets the target (exact repeats alone?)"
        return result
    best = max(candidates, key=lambda c: (c.good_hit_rate, -c.wrong_hit_rate))
    chosen = _apply(config, best)
    validated = await evaluate(chosen, pairs, embedder)
    result["operating_point"] = best.to_json()
    result["validated"] = validated
    result["met"] = (validated["wrong_hit_rate"] or 0.0) <= target
    result["sample"] = sample_support(validated, int(same.sum()), target)
    result["config"] = {
        "cache": {
            "threshold": best.threshold,
            "verifier": chosen.cache.verifier,
            "verifier_strictness": best.verifier_strictness,
            **({"match_head_min": best.match_head_min} if best.match_head_min is not None else {}),
        }
    }
    return result


# -------------------------------------------------------------------- command line
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cache eval``, ``cache calibrate`` and ``cache stats`` to the sidecar's sub-commands."""
    cache = subparsers.add_parser("cache", help="semantic-cache quality tools")
    actions = cache.add_subparsers(dest="cache_command", required=True)
    ev = actions.add_parser("eval", help="hit rates on labelled pairs through the real path")
    ev.add_argument("--pairs", required=True, help='JSON lines {"a","b","same"[,"category"]}')
    ev.add_argument("--config", help="YAML configuration file (default: built-in defaults)")
    cal = actions.add_parser(
        "calibrate", help="threshold and verifier settings meeting a wrong-hit target"
    )
    cal.add_argument("--pairs", required=True, help='JSON lines {"a","b","same"[,"category"]}')
    cal.add_argument("--config", help="YAML configuration file (default: built-in defaults)")
    cal.add_argument(
        "--json", action="store_true", help="print the result as JSON (default: a table)"
    )
    cal.add_argument(
        "--target-wrong-rate",
        type=float,
        required=True,
        help="highest acceptable share of different-answer pairs served from the cache",
    )
    stats = actions.add_parser(
        "stats", help="the adaptive cache's figures per partition, from a running sidecar"
    )
    from sidecar.cache.stats_cli import add_arguments

    add_arguments(stats)
    cache.set_defaults(func=run)
    parser: argparse.ArgumentParser = cache
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 done (calibrate: target met), 1 calibrate target not met, 2 bad input."""
    if args.cache_command == "stats":
        from sidecar.cache.stats_cli import run_stats

        return run_stats(args)
    try:
        config = load_config(args.config)
        pairs = load_pairs(args.pairs)
    except (ConfigError, PairsError) as exc:
        print(f"sidecar cache {args.cache_command}: {exc}", file=sys.stderr)
        return 2
    if args.cache_command == "eval":
        result = asyncio.run(evaluate(config, pairs))
        print(orjson.dumps(result).decode())
        return 0
    target = args.target_wrong_rate
    if not 0.0 <= target < 1.0:
        print(
            f"sidecar cache calibrate: --target-wrong-rate must be in [0, 1), got {target}",
            file=sys.stderr,
        )
        return 2
    try:
        result = asyncio.run(calibrate(config, pairs, target))
    except PairsError as exc:
        print(f"sidecar cache calibrate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(render_table(result))
    if "warning" in result.get("sample", {}):
        print(f"sidecar cache calibrate: warning: {result['sample']['warning']}", file=sys.stderr)
    return 0 if result["met"] else 1
