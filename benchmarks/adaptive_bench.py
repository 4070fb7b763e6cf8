"""The adaptive semantic cache on a simulated stream (issue 18): does ``cache.target_wrong_rate``
hold its wrong-hit rate, and what does it cost in hits and upstream calls?

Run: ``python -m benchmarks.adaptive_bench [--quick] [--requests N] [--warmup N]``
(or ``sidecar bench --only adaptive``). Writes ``benchmarks/results/adaptive.json`` and, with
matplotlib installed, ``docs/img/adaptive_*.png`` (``--plot-dir``).

Data: the Quora question pairs of the semantic benchmark's sample (``../shared/data``, or
``SIDECAR_BENCH_DATA``; the first 10,000 of the seed-9 shuffle, which neither the match head nor
the pair model was trained or tuned on). Classes are the connected components of duplicate
pairs; traps are non-duplicate pairs whose questions' embeddings are at least
``TRAP_MIN_SIMILARITY`` alike (``benchmarks/adaptive_stream.py``). A seeded stream mixes new
questions, exact repeats, paraphrases of earlier classes and traps.

Every configuration replays the same stream through a real ``sidecar serve`` process's HTTP
hook, one request at a time, with the fake provider ``benchmarks/adaptive_provider.py``
answering misses by class in varied words (``benchmarks/adaptive_sim.py``); configurations run
side by side:
* ``main-defaults``: the code of ``--baseline`` (default ``main``) with its defaults;
* ``defaults``: this checkout, no target (today's behaviour: must decide as ``main-defaults``);
* ``static-T``: this checkout, no target, ``x-bf-cache-threshold: T`` (the hindsight sweep);
* ``target-R``: this checkout, ``cache.target_wrong_rate: R`` with ``cache.explore_rate``.
A simulated user reports ``--report-share`` of the wrong semantic hits it is served.

The embedder's queue budget (``embedder.max_queue_ms``) is raised to its maximum so that no
lookup is skipped for load: decisions then depend on the stream alone, not on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from benchmarks.adaptive_provider import class_answer
from benchmarks.adaptive_sim import Lane, class_map, differences, figures, replay, windows
from benchmarks.adaptive_stream import (
    LabelledPair,
    build_classes,
    generate_stream,
    kind_counts,
    select_traps,
    stream_digest,
)
from benchmarks.report import RESULTS_DIR, SummaryRow, machine, write_result
from benchmarks.stack import SIDECAR_READY_S
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

ROOT = Path(__file__).resolve().parent.parent
SEED = 18
TRAP_MIN_SIMILARITY = 0.75
REQUESTS = 12_000
WARMUP = 2_000
WINDOW = 1_000
TARGETS = (0.05, 0.02, 0.01)
CHECK_TARGET = 0.02
SWEEP = (0.74, 0.78, 0.82, 0.86, 0.9, 0.94, 0.97)
DEFAULT_THRESHOLD = 0.7  # cache.threshold's default: the "defaults" lane is this sweep point
EXPLORE_RATE = 0.05
REPORT_SHARE = 0.3
HIT_RATE_SHARE = 0.9  # of the best static threshold's hit rate, chosen in hindsight
GROUP = "adaptive cache (simulation)"


# ---------------------------------------------------------------------------- data
def load_pairs() -> tuple[list[LabelledPair], str] | None:
    from benchmarks.semcache_bench import QQP_PAIRS, QQP_SAMPLE, QQP_SEED, load_qqp

    if not QQP_PAIRS.is_file():
        return None
    pairs = [LabelledPair(p.a, p.b, p.same) for p in load_qqp(QQP_PAIRS, QQP_SAMPLE)]
    return pairs, f"{QQP_PAIRS} (seed-{QQP_SEED} sample of {QQP_SAMPLE:,} pairs)"


async def _embed(texts: Sequence[str]) -> dict[str, Any]:
    """Each text's vector from the sidecar's default model (as the cache embeds questions)."""
    from embedders.sentence_tf import SentenceTransformerEmbedder
    from sidecar.formats import normalise_text

    embedder = SentenceTransformerEmbedder()
    await embedder.start()
    try:
        unique = sorted({normalise_text(t) for t in texts})
        vectors: dict[str, Any] = {}
        for start in range(0, len(unique), 256):
            part = unique[start : start + 256]
            for text, vector in zip(part, await embedder.embed(part), strict=True):
                vectors[text] = vector
        return {t: vectors[normalise_text(t)] for t in texts}
    finally:
        await embedder.close()


def similarities(pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Cosines of the pairs, cached in the results directory by a digest of the pairs."""
    digest = hashlib.sha256(orjson.dumps(list(pairs))).hexdigest()[:16]
    cache = RESULTS_DIR / f"adaptive_similarity_{digest}.json"
    if cache.is_file():
        cached: list[float] = orjson.loads(cache.read_bytes())
        return cached
    vectors = asyncio.run(_embed([t for pair in pairs for t in pair]))
    out = [round(float(vectors[a] @ vectors[b]), 5) for a, b in pairs]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(orjson.dumps(out))
    return out


def answer_similarity(classes: int = 60) -> dict[str, Any]:
    """How alike the provider's answers are (percentiles of the cosine): two wordings of one
    class's answer, and answers of two classes. What the core's answer comparison sees."""
    import numpy as np

    from benchmarks.adaptive_provider import TEMPLATES

    texts = [class_answer(c, SEED, w) for c in range(classes) for w in range(len(TEMPLATES))]
    vectors = asyncio.run(_embed(texts))
    matrix = np.array([vectors[t] for t in texts])
    sims = matrix @ matrix.T
    per = len(TEMPLATES)
    same, other = [], []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            (same if i // per == j // per else other).append(float(sims[i, j]))
    q = [1, 5, 25, 50, 75, 95, 99]
    return {
        "classes": classes,
        "percentiles": q,
        "same_class": [round(float(x), 3) for x in np.percentile(same, q)],
        "different_class": [round(float(x), 3) for x in np.percentile(other, q)],
    }


# ---------------------------------------------------------------------------- processes
def adaptive_available() -> bool:
    from sidecar.config import CacheConfig

    return "target_wrong_rate" in CacheConfig.model_fields


def _config(path: Path, http_port: int, cache: dict[str, Any]) -> Path:
    config = {
        "server": {
            "http_port": http_port,
            "grpc_port": free_port(),
            "grpc_enabled": False,
            "log_level": "warning",
        },
        "cache": {"data_dir": ":memory:", "default_cache_key": "bench", "ttl": "48h", **cache},
        # No lookup skipped for load: decisions depend on the stream, not on the machine.
        "embedder": {"max_queue_ms": 600_000},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _baseline_tree(workdir: Path, ref: str) -> tuple[Path, str]:
    commit = subprocess.run(
        ["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = workdir / f"baseline-{commit[:10]}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, commit


class Sidecars:
    """The sidecar processes, started together and stopped by their own PIDs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[ManagedProcess] = []
        self.urls: dict[str, str] = {}

    def add(self, name: str, cache: dict[str, Any], tree: Path | None = None) -> None:
        port = free_port()
        command = sidecar_command(_config(self.workdir / f"{name}.yaml", port, cache))
        if tree is not None:  # the baseline's packages first on the path, not this checkout's
            boot = (
                f"import sys, runpy; sys.path.insert(0, {str(tree)!r}); "
                "runpy.run_module('sidecar', run_name='__main__')"
            )
            command = [sys.executable, "-c", boot, *command[3:]]
        self.processes.append(
            ManagedProcess(name, command, self.workdir / f"{name}.log").start()
        )
        self.urls[name] = f"http://127.0.0.1:{port}"

    def wait_ready(self) -> None:
        for proc in self.processes:
            proc.wait_ready(f"{self.urls[proc.name]}/readyz", SIDECAR_READY_S)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


# ---------------------------------------------------------------------------- analysis
def hindsight(static: dict[float, dict[str, Any]], max_wrong: float) -> dict[str, Any] | None:
    """The static threshold with the most hits whose wrong-hit rate is at most ``max_wrong``."""
    eligible = [
        {"threshold": t, **f}
        for t, f in sorted(static.items())
        if (f["wrong_hit_rate"] or 0.0) <= max_wrong
    ]
    return max(eligible, key=lambda f: f["hit_rate"] or 0.0, default=None)


def checks(
    lanes: dict[str, Lane], evaluated: dict[str, dict[str, Any]], explore_rate: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    static = {DEFAULT_THRESHOLD: evaluated["defaults"]} | {
        float(n.removeprefix("static-")): f for n, f in evaluated.items() if n.startswith("static-")
    }
    out["hindsight_sweep"] = {f"{t:.2f}": static[t] for t in sorted(static)}
    if "main-defaults" in lanes:
        same = differences(lanes["main-defaults"], lanes["defaults"])
        out["unset_target_same_as_baseline"] = {**same, "met": same["different"] == 0}
    target = evaluated.get(f"target-{CHECK_TARGET}")
    if target is None:
        out["target"] = "not run: this checkout has no cache.target_wrong_rate"
        return out
    wrong = target["wrong_hit_rate"] or 0.0
    best = hindsight(static, CHECK_TARGET)
    best_same = hindsight(static, wrong)
    out["target_wrong_rate"] = {"target": CHECK_TARGET, "measured": wrong, "met": wrong <= CHECK_TARGET}
    out["best_static_in_hindsight"] = best
    out["best_static_at_measured_wrong_rate"] = best_same
    if best is not None:
        need = HIT_RATE_SHARE * (best["hit_rate"] or 0.0)
        out["hit_rate_vs_best_static"] = {
            "measured": target["hit_rate"],
            "best_static": best["hit_rate"],
            "best_static_threshold": best["threshold"],
            "ratio": round((target["hit_rate"] or 0.0) / (best["hit_rate"] or 1.0), 4),
            "met": (target["hit_rate"] or 0.0) >= need,
        }
    out["explore_share"] = {
        name: {
            "configured": explore_rate,
            "measured": f["explore_share"],
            "explored": f["explored"],
            "would_be_semantic_hits": f["explored"] + f["semantic_hits"],
            "met": (f["explore_share"] or 0.0) <= explore_rate,
        }
        for name, f in evaluated.items()
        if name.startswith("target-")
    }
    return out


# ---------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_pairs()
    if loaded is None:
        return {"skipped": "no Quora pairs in the shared data (set SIDECAR_BENCH_DATA)"}
    pairs, source = loaded
    classes, across = build_classes(pairs)
    sims = similarities(across)
    by_pair = dict(zip(across, sims, strict=True))
    traps = select_traps(across, lambda ps: [by_pair[p] for p in ps], TRAP_MIN_SIMILARITY)
    stream = generate_stream(classes, traps, args.requests, args.seed)
    warmup = min(args.warmup, len(stream))
    print(f"[adaptive] stream {kind_counts(stream)}, {len(traps)} traps", flush=True)
    data = {
        "source": source,
        "classes": len(classes.members),
        "classes_with_paraphrases": len(classes.paraphrase_classes()),
        "trap_pairs": len(traps),
        "trap_min_similarity": TRAP_MIN_SIMILARITY,
        "stream": {
            "requests": len(stream),
            "seed": args.seed,
            "kinds": kind_counts(stream),
            "kinds_after_warmup": kind_counts(stream[warmup:]),
            "digest": stream_digest(stream),
        },
        "answer_similarity": answer_similarity(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="adaptive-bench-"))
    (workdir / "classes.json").write_bytes(orjson.dumps(class_map(stream)))
    provider_port = free_port()
    provider = ManagedProcess(
        "provider",
        [
            sys.executable,
            "-m",
            "benchmarks.adaptive_provider",
            str(provider_port),
            str(workdir / "classes.json"),
            str(SEED),
        ],
        workdir / "provider.log",
    ).start()
    sidecars = Sidecars(workdir)
    lanes: list[Lane] = []
    adaptive = adaptive_available()
    try:
        provider.wait_ready(f"http://127.0.0.1:{provider_port}/healthz", 30)
        baseline_commit = None
        if args.baseline != "none":
            tree, baseline_commit = _baseline_tree(workdir, args.baseline)
            sidecars.add("main", {}, tree)
        sidecars.add("branch", {})
        targets = args.targets if adaptive else []
        for target in targets:
            sidecars.add(
                f"target-{target}",
                {
                    "target_wrong_rate": target,
                    "explore_rate": args.explore_rate,
                    "explore_seed": args.seed,
                },
            )
        sidecars.wait_ready()
        if baseline_commit:
            lanes.append(Lane("main-defaults", sidecars.urls["main"], "sim"))
        lanes.append(Lane("defaults", sidecars.urls["branch"], "sim-defaults"))
        for t in args.sweep:
            lanes.append(
                Lane(
                    f"static-{t:.2f}",
                    sidecars.urls["branch"],
                    f"sim-static-{t:.2f}",
                    {"x-bf-cache-threshold": str(t)},
                )
            )
        lanes += [Lane(f"target-{t}", sidecars.urls[f"target-{t}"], "sim") for t in targets]
        started = time.time()
        provider_url = f"http://127.0.0.1:{provider_port}"

        async def all_lanes() -> None:
            await asyncio.gather(
                *(
                    replay(lane, stream, provider_url, args.report_share, args.seed, args.window)
                    for lane in lanes
                )
            )

        asyncio.run(all_lanes())
        data["replay_seconds"] = round(time.time() - started, 1)
        data["stats"] = _stats(sidecars)
    finally:
        sidecars.stop()
        provider.stop()
    by_name = {lane.name: lane for lane in lanes}
    end = len(stream)
    evaluated = {lane.name: figures(lane, warmup, end) for lane in lanes}
    data |= {
        "adaptive_available": adaptive,
        "baseline": {"ref": args.baseline, "commit": baseline_commit},
        "settings": {
            "warmup": warmup,
            "evaluated_requests": end - warmup,
            "window": args.window,
            "explore_rate": args.explore_rate,
            "report_share": args.report_share,
            "targets": list(targets),
            "sweep": [DEFAULT_THRESHOLD, *args.sweep],
        },
        "lanes": {
            lane.name: {
                "after_warmup": evaluated[lane.name],
                "whole_stream": figures(lane),
                "windows": windows(lane, args.window),
                "seconds": lane.seconds,
                "feedback_status": lane.feedback_status,
                "errors": lane.errors[:20],
                "error_count": len(lane.errors),
            }
            for lane in lanes
        },
    }
    data["checks"] = checks(by_name, evaluated, args.explore_rate)
    return data


def _stats(sidecars: Sidecars) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, url in sidecars.urls.items():
        try:
            reply = httpx.get(f"{url}/v1/cache/stats", timeout=30)
            out[name] = reply.json() if reply.status_code == 200 else reply.status_code
        except (httpx.HTTPError, ValueError) as exc:
            out[name] = repr(exc)
    return out


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    from benchmarks.adaptive_report import summary_rows

    return [row.to_json() for row in summary_rows(data)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="1,500 requests, fewer lanes")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--targets", type=float, nargs="*", default=list(TARGETS))
    parser.add_argument("--sweep", type=float, nargs="*", default=list(SWEEP))
    parser.add_argument("--explore-rate", type=float, default=EXPLORE_RATE)
    parser.add_argument("--report-share", type=float, default=REPORT_SHARE)
    parser.add_argument("--baseline", default="main", help="git ref to compare with, or none")
    parser.add_argument("--plot-dir", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--out", default=None, help="result file (default results/adaptive.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.window = 1_500, 300, 150
        args.sweep = [s for s in args.sweep if s in (0.82, 0.9)]
    data = {"machine": machine(), "command": " ".join(sys.argv), **run(args)}
    if "skipped" not in data:
        data["summary"] = summary(data)
        from benchmarks.adaptive_report import plot

        data["plots"] = plot(data, Path(args.plot_dir))
    path = write_result("adaptive", data, args.out)
    print(orjson.dumps(data.get("checks", data.get("skipped")), option=orjson.OPT_INDENT_2).decode())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
