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

``--stream clean`` (the default) first drops one question of each pair of different classes
that are near-twins (cosine >= ``TWIN_MIN_COSINE``, or the same words) without being a labelled
trap: QQP labels only the pairs it lists, so such a pair is often one question in two classes,
and a hit between them would count as wrong when it is right. ``--stream qqp`` keeps every
question (the earlier world, where wrong hits occur at every similarity).

Every configuration replays the same stream through a real ``sidecar serve`` process's HTTP
hook, one request at a time, with the fake provider ``benchmarks/adaptive_provider.py``
answering misses by class in varied words (``benchmarks/adaptive_sim.py``); configurations run
side by side:
* ``main-defaults``: the code of ``--baseline`` (default ``main``) with its defaults;
* ``defaults``: this checkout, no target (today's behaviour: must decide as ``main-defaults``);
* ``static-T``: this checkout, no target, ``x-bf-cache-threshold: T`` (the hindsight sweep);
* ``target-R``: this checkout, ``cache.target_wrong_rate: R`` with ``cache.explore_rate``.
A simulated user reports ``--report-share`` of the wrong semantic hits it is served.

The embedder's queue budget (``embedder.max_queue_ms``) is raised to its maximum and the load
governor's shedding is off (``server.shed_*``) so that no lookup is skipped for load: decisions
then depend on the stream alone, not on the machine.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from benchmarks.adaptive_provider import class_answer
from benchmarks.adaptive_sim import (
    Lane,
    class_map,
    differences,
    figures,
    kinds_of_wrong,
    replay,
    similarity_histogram,
    windows,
)
from benchmarks.adaptive_stream import (
    Classes,
    LabelledPair,
    build_classes,
    drop_near_twins,
    generate_stream,
    kind_counts,
    near_twin_pairs,
    same_words_twins,
    select_traps,
    stream_digest,
    trap_world,
)
from benchmarks.report import RESULTS_DIR, machine, write_result
from benchmarks.stack import SIDECAR_READY_S
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

ROOT = Path(__file__).resolve().parent.parent
SEED = 18
TRAP_MIN_SIMILARITY = 0.75
#: the clean stream drops one question of each pair of different classes at least this alike
#: (or with the same words) that is not a labelled trap (``adaptive_stream.drop_near_twins``)
TWIN_MIN_COSINE = 0.9
STREAMS = ("clean", "qqp")
#: share of the requests that are traps (``adaptive_stream.trap_world``): 2% is the world of
#: the evaluation (docs/adaptive_benchmark.md, "The world"); 0.15, the generator's default mix
#: (11% traps among the requests once the share armed is counted), is the harsh world
TRAP_SHARE = 0.02
HARSH_TRAP_SHARE = 0.15
REQUESTS = 12_000
WARMUP = 2_000
WINDOW = 1_000
TARGETS = (0.05, 0.02, 0.01)
CHECK_TARGET = 0.02
SWEEP = (0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98)
DEFAULT_THRESHOLD = 0.7  # cache.threshold's default: the "defaults" lane is this sweep point
EXPLORE_RATE = 0.05
REPORT_SHARE = 0.3
HIT_RATE_SHARE = 0.9  # of the best static threshold's hit rate, chosen in hindsight
#: every sidecar's embedder: the default model through ONNX Runtime fp32, the same vectors as
#: the default sentence-transformers backend (docs/benchmarks.md "embedding": the same hit
#: decision on 1000 pairs, max |d cosine| 0.0) at about a third of the CPU time
EMBEDDER = {"backend": "onnx", "onnx_quantize": False}


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


def near_twins(classes: Classes, min_cosine: float) -> list[tuple[str, str, float]]:
    """Pairs of questions of different classes whose embeddings (the default model, as the cache
    embeds them) have a cosine of at least ``min_cosine``; cached in the results directory."""
    questions = sorted(classes.class_of)
    key = orjson.dumps([questions, [classes.class_of[q] for q in questions], min_cosine])
    cache = RESULTS_DIR / f"adaptive_twins_{hashlib.sha256(key).hexdigest()[:16]}.json"
    if cache.is_file():
        return [(a, b, s) for a, b, s in orjson.loads(cache.read_bytes())]
    vectors = asyncio.run(_embed(questions))
    found = near_twin_pairs(questions, [vectors[q] for q in questions], classes, min_cosine)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(orjson.dumps(found))
    return found


def answer_similarity(classes: int = 60) -> dict[str, Any]:
    """How alike the provider's answers are (percentiles of the cosine): two wordings of one
    class's answer, and answers of two classes. What the core's answer comparison sees."""
    import numpy as np

    from benchmarks.adaptive_provider import TEMPLATES

    texts = [class_answer(c, SEED, w) for c in range(classes) for w in range(len(TEMPLATES))]
    digest = hashlib.sha256(orjson.dumps(texts)).hexdigest()[:16]
    cache = RESULTS_DIR / f"adaptive_answer_similarity_{digest}.json"
    if cache.is_file():
        cached: dict[str, Any] = orjson.loads(cache.read_bytes())
        return cached
    vectors = asyncio.run(_embed(texts))
    matrix = np.array([vectors[t] for t in texts])
    sims = matrix @ matrix.T
    per = len(TEMPLATES)
    same: list[float] = []
    other: list[float] = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            (same if i // per == j // per else other).append(float(sims[i, j]))
    q = [1, 5, 25, 50, 75, 95, 99]
    out = {
        "classes": classes,
        "percentiles": q,
        "same_class": [round(float(x), 3) for x in np.percentile(same, q)],
        "different_class": [round(float(x), 3) for x in np.percentile(other, q)],
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(orjson.dumps(out))
    return out


# ---------------------------------------------------------------------------- processes
def adaptive_available() -> bool:
    from sidecar.config import CacheConfig

    return "target_wrong_rate" in CacheConfig.model_fields


def _config(path: Path, http_port: int, cache: dict[str, Any], tree: Path | None = None) -> Path:
    server: dict[str, Any] = {
        "http_port": http_port,
        "grpc_port": free_port(),
        "grpc_enabled": False,
        "log_level": "warning",
    }
    embedder: dict[str, Any] = {**EMBEDDER, "max_queue_ms": 600_000}
    # No lookup skipped for load: decisions depend on the stream, not on the machine. The load
    # governor (server.shed_*, embedder.max_inflight_lookups) skips lookups while the event
    # loop lags, which ten sidecars on 2 cores make it do; a tree older than it has no keys.
    source = ((tree or ROOT) / "sidecar" / "config.py").read_text(encoding="utf-8")
    if "shed_loop_lag_ms" in source:
        server.update(shed_loop_lag_ms=0, shed_store_lag_ms=0, shed_on_extproc_round_trip=False)
    if "max_inflight_lookups" in source:
        embedder["max_inflight_lookups"] = 100_000
    config = {
        "server": server,
        "cache": {"data_dir": ":memory:", "default_cache_key": "bench", "ttl": "48h", **cache},
        "embedder": embedder,
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
        command = sidecar_command(_config(self.workdir / f"{name}.yaml", port, cache, tree))
        if tree is not None:  # the baseline's packages first on the path, not this checkout's
            boot = (
                f"import sys, runpy; sys.path.insert(0, {str(tree)!r}); "
                "runpy.run_module('sidecar', run_name='__main__')"
            )
            command = [sys.executable, "-c", boot, *command[3:]]
        self.processes.append(ManagedProcess(name, command, self.workdir / f"{name}.log").start())
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


def exact_only(stream: Sequence[Any], start: int, end: int) -> dict[str, Any]:
    """The limit of the static sweep, a threshold no semantic hit passes (the semantic layer
    off): every miss is stored, so a request hits exactly when its text was asked before.
    Computed from the stream, not run: the exact key is the question's text (``normalise_text``
    only strips it, and the stream's texts are already stripped), the same model and body."""
    seen: set[str] = set()
    hits = 0
    for request in stream[:end]:
        if request.index >= start and request.text in seen:
            hits += 1
        seen.add(request.text)
    n = end - start
    return {
        "requests": n,
        "exact_hits": hits,
        "semantic_hits": 0,
        "wrong_semantic_hits": 0,
        "hit_rate": round(hits / n, 5) if n else None,
        "wrong_hit_rate": None,
        "computed": "from the stream (exact hits only), not run",
    }


def checks(
    lanes: dict[str, Any], explore_rate: float, exact_only_point: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    evaluated = {name: lane["after_warmup"] for name, lane in lanes.items()}
    # today's defaults: this checkout without a target (the whole stream; main-defaults may
    # replay a prefix only, and must decide the same), else the baseline's
    default = evaluated.get("defaults") or evaluated.get("main-defaults")
    static = ({DEFAULT_THRESHOLD: default} if default else {}) | {
        float(n.removeprefix("static-")): f for n, f in evaluated.items() if n.startswith("static-")
    }
    if exact_only_point is not None:
        static[1.0] = exact_only_point
    out["hindsight_sweep"] = {f"{t:.2f}": static[t] for t in sorted(static)}
    if "main-defaults" in lanes and "defaults" in lanes:
        same = differences(lanes["main-defaults"]["raw"], lanes["defaults"]["raw"])
        out["unset_target_same_as_baseline"] = {**same, "met": same["different"] == 0}
    target = evaluated.get(f"target-{CHECK_TARGET}")
    if target is None:
        out["target"] = "not run: this checkout has no cache.target_wrong_rate"
        return out
    wrong = target["wrong_hit_rate"] or 0.0
    best = hindsight(static, CHECK_TARGET)
    best_same = hindsight(static, wrong)
    out["target_wrong_rate"] = {
        "target": CHECK_TARGET,
        "measured": wrong,
        "met": wrong <= CHECK_TARGET,
    }
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
    # Extra upstream calls: over the whole stream, which is what the sidecar's budget bounds
    # (explored / would-be hits since the partition's first lookup); after the warm-up too,
    # for information (a window that starts mid-stream may spend budget saved before it).
    out["explore_share"] = {
        name: {
            "configured": explore_rate,
            "measured": whole["explore_share"],
            "over": "whole stream",
            "explored": whole["explored"],
            "would_be_semantic_hits": whole["explored"] + whole["semantic_hits"],
            "met": (whole["explore_share"] or 0.0) <= explore_rate,
            "after_warmup": evaluated[name]["explore_share"],
            "after_warmup_explored": evaluated[name]["explored"],
            "after_warmup_would_be": evaluated[name]["explored"] + evaluated[name]["semantic_hits"],
        }
        for name, whole in ((n, lane["whole_stream"]) for n, lane in lanes.items())
        if name.startswith("target-")
    }
    return out


# ---------------------------------------------------------------------------- run
@dataclass(frozen=True, slots=True)
class LaneSpec:
    name: str
    code: str  # "baseline" or "checkout"
    cache: tuple[tuple[str, Any], ...] = ()  # cache settings of its sidecar
    headers: tuple[tuple[str, str], ...] = ()


def lane_specs(args: argparse.Namespace, adaptive: bool) -> list[LaneSpec]:
    """Every lane of the run. The static sweep runs on the baseline's code when there is one:
    the best static threshold in hindsight is today's behaviour."""
    static_code = "checkout" if args.baseline == "none" else "baseline"
    specs = [LaneSpec("defaults", "checkout")]
    if args.baseline != "none":
        specs.insert(0, LaneSpec("main-defaults", "baseline"))
    specs += [
        LaneSpec(f"static-{t:.2f}", static_code, headers=(("x-bf-cache-threshold", str(t)),))
        for t in args.sweep
    ]
    if adaptive:
        specs += [
            LaneSpec(
                f"target-{t}",
                "checkout",
                cache=(
                    ("target_wrong_rate", t),
                    ("explore_rate", args.explore_rate),
                    ("explore_seed", args.seed),
                ),
            )
            for t in args.targets
        ]
    wanted = set(args.lanes or [s.name for s in specs])
    return [s for s in specs if s.name in wanted]


def _sidecar_groups(specs: Sequence[LaneSpec], per_sidecar: int) -> list[list[LaneSpec]]:
    """Lanes that share code and settings share a sidecar, ``per_sidecar`` at most: one
    sidecar's event loop is the bottleneck of a sequential lane on a busy machine."""
    groups: list[list[LaneSpec]] = []
    for spec in specs:
        for group in groups:
            same = group[0].code == spec.code and group[0].cache == spec.cache
            if same and len(group) < per_sidecar:
                group.append(spec)
                break
        else:
            groups.append([spec])
    return groups


def _previous(path: str | None, stream: Sequence[Any], regenerate: Any) -> dict[str, Any]:
    """Lanes of an earlier run (or checkpoint) of the same stream, to reuse: decisions do not
    depend on timing, a lane's outcome is a function of the stream and the code. A longer
    earlier stream is cut to this one's length (the generator makes prefixes); a lane
    shorter than this stream is not reused."""
    if not path:
        return {}
    data = orjson.loads(Path(path).read_bytes())
    old = data.get("stream", {})
    same = old.get("digest") == stream_digest(stream)
    if not same and old.get("requests", 0) > len(stream) and old.get("seed") is not None:
        same = stream_digest(regenerate(old["requests"], old["seed"])) == old.get("digest")
        same = same and regenerate(old["requests"], old["seed"])[: len(stream)] == list(stream)
    if not same:
        raise SystemExit(f"{path}: another stream (digest differs); cannot reuse its lanes")
    lanes: dict[str, Any] = {}
    for name, lane in data["lanes"].items():
        raw = lane["raw"]
        if len(raw["statuses"]) < len(stream) and name != "main-defaults":
            print(f"[adaptive] {name} in {path}: {len(raw['statuses'])} requests, not reused")
            continue
        cut = {k: v[: len(stream)] for k, v in raw.items()}
        lanes[name] = {k: v for k, v in lane.items() if k in ("raw", "seconds", "ran_in")}
        lanes[name]["raw"] = cut
    return lanes


def _checkpoint(path: Path, stream_info: dict[str, Any], lanes: Sequence[Lane]) -> None:
    """The lanes so far, so that a run stopped early can still be analysed (``--reuse``)."""
    data = {
        "partial": True,
        "stream": stream_info,
        "lanes": {lane.name: {"raw": lane.to_raw(), "seconds": lane.seconds} for lane in lanes},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data))
    tmp.replace(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_pairs()
    if loaded is None:
        return {"skipped": "no Quora pairs in the shared data (set SIDECAR_BENCH_DATA)"}
    pairs, source = loaded
    classes, across = build_classes(pairs)
    sims = similarities(across)
    by_pair = dict(zip(across, sims, strict=True))
    traps = select_traps(across, lambda ps: [by_pair[p] for p in ps], TRAP_MIN_SIMILARITY)
    world: dict[str, Any] = {"stream_variant": args.stream}
    if args.stream == "clean":
        twins = near_twins(classes, TWIN_MIN_COSINE)
        words = same_words_twins(classes)
        cleaned = drop_near_twins(classes, traps, [(a, b) for a, b, _ in twins] + words)
        world |= {
            "twin_min_cosine": TWIN_MIN_COSINE,
            "near_twin_pairs_by_cosine": len(twins),
            "same_words_pairs": len(words),
            "unlabelled_twin_pairs": cleaned.twin_pairs,
            "dropped_questions": len(cleaned.dropped),
            "classes_before": len(classes.members),
            "trap_pairs_before": len(traps),
        }
        classes, traps = cleaned.classes, cleaned.traps
    mix, new_shares = trap_world(args.trap_share)

    def make_stream(length: int, seed: int) -> list[Any]:
        return generate_stream(classes, traps, length, seed, mix, new_class_shares=new_shares)

    stream = make_stream(args.requests, args.seed)
    world |= {
        "trap_share": args.trap_share,
        "mix": {k: round(v, 6) for k, v in mix.items()},
        "new_class_shares": [round(v, 6) for v in new_shares],
    }
    warmup = min(args.warmup, len(stream))
    digest = stream_digest(stream)
    print(f"[adaptive] stream {kind_counts(stream)}, {len(traps)} traps", flush=True)
    data: dict[str, Any] = {
        "source": source,
        **world,
        "classes": len(classes.members),
        "classes_with_paraphrases": len(classes.paraphrase_classes()),
        "trap_pairs": len(traps),
        "trap_min_similarity": TRAP_MIN_SIMILARITY,
        "stream": {
            "requests": len(stream),
            "seed": args.seed,
            "kinds": kind_counts(stream),
            "kinds_after_warmup": kind_counts(stream[warmup:]),
            "digest": digest,
        },
        "answer_similarity": answer_similarity(),
        "embedder": EMBEDDER,
    }
    previous = _previous(
        args.reuse,
        stream,
        make_stream,
    )
    adaptive = adaptive_available()
    specs = [s for s in lane_specs(args, adaptive) if s.name not in previous]
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
    baseline_commit = None
    try:
        provider.wait_ready(f"http://127.0.0.1:{provider_port}/healthz", 30)
        tree = None
        if args.baseline != "none" and any(s.code == "baseline" for s in specs):
            tree, baseline_commit = _baseline_tree(workdir, args.baseline)
        for i, group in enumerate(_sidecar_groups(specs, args.lanes_per_sidecar)):
            name = f"sidecar-{i}-{group[0].code}"
            sidecars.add(name, dict(group[0].cache), tree if group[0].code == "baseline" else None)
            for spec in group:
                lanes.append(
                    Lane(spec.name, sidecars.urls[name], f"sim-{spec.name}", dict(spec.headers))
                )
        sidecars.wait_ready()
        started = time.time()
        provider_url = f"http://127.0.0.1:{provider_port}"

        baseline_stream = stream[: args.baseline_requests]
        checkpoint = Path(args.out or RESULTS_DIR / "adaptive.json").with_suffix(".partial.json")

        async def all_lanes() -> None:
            await asyncio.gather(
                *(
                    replay(
                        lane,
                        baseline_stream if lane.name == "main-defaults" else stream,
                        provider_url,
                        args.report_share,
                        args.seed,
                        args.window,
                        lambda: _checkpoint(checkpoint, data["stream"], lanes),
                    )
                    for lane in lanes
                )
            )

        asyncio.run(all_lanes())
        data["replay_seconds"] = round(time.time() - started, 1)
        data["stats"] = _stats(sidecars)
    finally:
        sidecars.stop()
        provider.stop()
    kinds = [r.kind for r in stream]
    end = len(stream)
    results: dict[str, Any] = {}
    for lane in lanes:
        results[lane.name] = {
            "ran_in": "this run",
            "raw": lane.to_raw(),
            "seconds": lane.seconds,
            "feedback_status": lane.feedback_status,
            "errors": lane.errors[:20],
            "error_count": len(lane.errors),
        }
    for name, old in previous.items():
        results[name] = {
            **old,
            "ran_in": old.get("ran_in", "this run").replace(
                "this run", f"reused from {args.reuse}"
            ),
        }
    for name, result in results.items():
        lane = Lane.from_raw(name, result["raw"], result.get("seconds", 0.0))
        result["after_warmup"] = figures(lane, warmup, end)
        result["whole_stream"] = figures(lane)
        result["windows"] = windows(lane, args.window)
        result["similarity_histogram"] = similarity_histogram(lane, warmup)
        result["wrong_by_kind"] = kinds_of_wrong(lane, kinds, warmup)
    order = [s.name for s in lane_specs(args, adaptive)]
    data |= {
        "adaptive_available": adaptive,
        "baseline": {"ref": args.baseline, "commit": baseline_commit},
        "settings": {
            "warmup": warmup,
            "evaluated_requests": end - warmup,
            "window": args.window,
            "explore_rate": args.explore_rate,
            "report_share": args.report_share,
            "targets": [t for t in args.targets if f"target-{t}" in results],
            "sweep": [DEFAULT_THRESHOLD, *args.sweep],
        },
        "lanes": dict(sorted(results.items(), key=lambda kv: _rank(order, kv[0]))),
    }
    data["exact_only"] = exact_only(stream, warmup, end)
    data["checks"] = checks(data["lanes"], args.explore_rate, data["exact_only"])
    return data


def _rank(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


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
    parser.add_argument(
        "--stream",
        choices=STREAMS,
        default="clean",
        help="clean (default): without unlabelled near-twins across classes, so ground truth "
        "holds; qqp: every question of the sample (the earlier, harsher world)",
    )
    parser.add_argument(
        "--trap-share",
        type=float,
        default=TRAP_SHARE,
        help=f"share of the requests that are traps (default {TRAP_SHARE}; "
        f"{HARSH_TRAP_SHARE}: the harsh world of the first clean run)",
    )
    parser.add_argument("--targets", type=float, nargs="*", default=list(TARGETS))
    parser.add_argument("--sweep", type=float, nargs="*", default=list(SWEEP))
    parser.add_argument("--explore-rate", type=float, default=EXPLORE_RATE)
    parser.add_argument("--report-share", type=float, default=REPORT_SHARE)
    parser.add_argument("--baseline", default="main", help="git ref to compare with, or none")
    parser.add_argument("--plot-dir", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--out", default=None, help="result file (default results/adaptive.json)")
    parser.add_argument("--lanes", nargs="*", help="run only these lanes (default: all)")
    parser.add_argument("--lanes-per-sidecar", type=int, default=2)
    parser.add_argument(
        "--baseline-requests",
        type=int,
        default=None,
        help="replay only the first N requests on main-defaults (the same-decisions check)",
    )
    parser.add_argument(
        "--reuse", help="an earlier result of the same stream: its lanes are not run again"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.window = 1_500, 300, 150
        args.sweep = [s for s in args.sweep if s in (0.9, 0.96)]
    data = {"machine": machine(), "command": " ".join(sys.argv), **run(args)}
    write_result("adaptive", data, args.out)  # the raw lanes first, whatever follows
    if "skipped" not in data:
        data["summary"] = summary(data)
        from benchmarks.adaptive_report import plot

        data["plots"] = plot(data, Path(args.plot_dir))
    path = write_result("adaptive", data, args.out)
    print(
        orjson.dumps(data.get("checks", data.get("skipped")), option=orjson.OPT_INDENT_2).decode()
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
