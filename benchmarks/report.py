"""Shared pieces of the benchmark modules: statistics, machine description, result files.

Every benchmark writes ``benchmarks/results/<name>.json``. Besides its own detail, it may
carry a ``summary`` list of rows (``SummaryRow.to_json``): one measured figure beside the
baseline or peer it is compared with, measured in the same run, with the target if the issue
sets one. ``python -m benchmarks`` collects these rows into one table.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

#: where results are written: ``benchmarks/results`` in the checkout, or ``SIDECAR_BENCH_RESULTS``
RESULTS_DIR = Path(
    os.environ.get("SIDECAR_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)
#: the labelled data some benchmarks read: ``../shared/data`` next to the checkout, or the
#: directory in ``SIDECAR_BENCH_DATA`` (README "Benchmarks")
SHARED_DATA = Path(
    os.environ.get("SIDECAR_BENCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def latency_stats(seconds: list[float]) -> dict[str, float]:
    """Median, p90 and p99 in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(statistics.median(ms), 3) if ms else float("nan"),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "n": len(ms),
    }


def pin_one_core() -> int | None:
    """Pin this process to the highest-numbered core, so CPU-time figures are not spread
    across cores; returns the core, or None where affinity cannot be set."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def machine() -> dict[str, Any]:
    """What the figures were measured on (``lscpu`` summary, Python, cores)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    wanted = ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "L3 cache")
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in wanted:
            info[key.strip()] = value.strip()
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


@dataclass(slots=True)
class SummaryRow:
    """One figure beside the figure it is compared with."""

    group: str  # e.g. "embedding", "proxy (Envoy)"
    metric: str  # what was measured
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""  # e.g. "<= 1.5 ms", ">= 2.5x"
    met: bool | None = None
    note: str = ""
    #: False when value / baseline means nothing (an added latency beside the base latency)
    show_ratio: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "metric": self.metric,
            "value": round(self.value, 4),
            "unit": self.unit,
            "baseline": None if self.baseline is None else round(self.baseline, 4),
            "baseline_label": self.baseline_label,
            "target": self.target,
            "met": self.met,
            "note": self.note,
            "show_ratio": self.show_ratio,
        }


def write_result(name: str, payload: dict[str, Any], path: str | None = None) -> Path:
    target = Path(path) if path else RESULTS_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
    return target


def load_semcache_pairs(limit: int) -> tuple[list[tuple[str, str, int]], str]:
    """Labelled question pairs (QQP, then GPTCache's mock set); built-in ones when absent."""
    import gzip

    pairs: list[tuple[str, str, int]] = []
    qqp = SHARED_DATA / "semcache" / "qqp_pairs.json.gz"
    mock = SHARED_DATA / "semcache" / "gptcache_mock_pairs.json"
    sources = []
    if qqp.is_file():
        with gzip.open(qqp, "rb") as fh:
            rows = orjson.loads(fh.read())
        pairs += [(r["text_a"], r["text_b"], int(r["label"])) for r in rows[: limit // 2]]
        sources.append(f"QQP ({min(len(rows), limit // 2)})")
    if mock.is_file():
        rows = orjson.loads(mock.read_bytes())
        take = limit - len(pairs)
        pairs += [(r["origin"], r["similar"], 1) for r in rows[:take]]
        sources.append(f"GPTCache mock ({min(len(rows), take)})")
    if pairs:
        return pairs, " + ".join(sources)
    return list(BUILTIN_PAIRS), "built-in pairs"


BUILTIN_PAIRS: tuple[tuple[str, str, int], ...] = (
    ("What is the capital of France?", "What's the capital city of France?", 1),
    ("How do I reset my password?", "How can I change my forgotten password?", 1),
    ("Is the museum open on Sunday?", "Is the museum closed on Sunday?", 0),
    ("Book 2 tickets to Paris", "Book 4 tickets to Paris", 0),
    ("How do I export contacts from Salesforce?", "How do I export contacts from HubSpot?", 0),
    ("What are the benefits of microservices?", "Why should I use a microservices pattern?", 1),
    ("How do I bake sourdough bread?", "What is a good sourdough bread recipe?", 1),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?", 1),
    ("How far is the Moon from Earth?", "What is the distance between Earth and the Moon?", 1),
    ("Is Python faster than Java?", "Is Java faster than Python?", 0),
    ("How many calories are in an apple?", "How many calories are in a banana?", 0),
    ("What time does the store open?", "When does the shop open?", 1),
)
