"""The new-scope guarded miss at 1 connection, this tree against an earlier commit in
alternating rounds (issue 16): a side-by-side figure that holds on a shared, noisy machine.

Run: ``python -m benchmarks.miss_rounds --before COMMIT [--rounds 6] [--seconds 4]
[--concurrency 1]``.
Writes ``benchmarks/results/miss_rounds.json``.

The stack of ``benchmarks/miss_bench.py`` (one Envoy, the fast fake provider, the ``guarded``
sidecar and ``guarded-before`` from ``COMMIT``). Each round measures Envoy direct, then both
sidecars one after the other (the order alternates between rounds), every request a 1 KB
prompt in a partition of its own, while the other sidecar is stopped (SIGSTOP): neither runs
beside the other's deferred embeddings. Per round and sidecar: the added median over that
round's direct median, the rate, and the event-loop thread's CPU per miss (``/proc``: the
thread whose id is the process's). The summary is the median over rounds and the median
per-round ratio. ``--concurrency 32``: the same at 32 connections (the target's sustained rate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.hook_bench import unique_questions
from benchmarks.miss_bench import STATUS, Stack, _post
from benchmarks.proxy_bench import kilobyte_prompts
from benchmarks.report import machine, write_result
from benchmarks.stack import run_loadgen

PAIR = ("guarded", "guarded-before")
#: requests prepared per sidecar and round (more than a round at 1 connection gets through)
PER_ROUND = 1500


def thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread of ``pid``."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    before: str, rounds: int, seconds: float, priority: str = "", concurrency: int = 1
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="miss-rounds-"))
    guarded = {"embedder": {"background_priority": priority}} if priority else None
    stack = Stack(workdir, before, ["new-scope"], guarded)
    tag = uuid.uuid4().hex[:6]
    rows: list[dict[str, Any]] = []
    try:
        stack.start()
        per_round = PER_ROUND * max(1, concurrency // 16)
        n = per_round * len(PAIR) * rounds
        prompts = kilobyte_prompts(unique_questions(n + 8), n + 8)
        direct = [[_post(q)] for q in prompts[:8]]
        fresh = iter(prompts[8:])
        for r in range(rounds):
            row: dict[str, Any] = {"round": r}
            with stack.paused(PAIR):
                spec = {"port": stack.ports["direct"], "warmup": 0.3, "sequences": direct}
                base = run_loadgen(workdir, {**spec, "concurrency": 1, "duration": seconds})
            row["direct_p50_ms"] = statistics.median(base["sequence_latency_s"]) * 1000
            for name in PAIR if r % 2 == 0 else PAIR[::-1]:
                seqs = [
                    [_post(next(fresh), f"rounds-{tag}-{r}-{name}-{i}")] for i in range(per_round)
                ]
                pid = stack.pids[name]
                with stack.paused([other for other in PAIR if other != name]):
                    cpu = thread_cpu_s(pid, pid)
                    got = run_loadgen(
                        workdir,
                        {
                            "port": stack.ports[name],
                            "warmup": 0.0,
                            "sequences": seqs,
                            "concurrency": concurrency,
                            "duration": seconds,
                            "max_sequences": per_round - concurrency,
                            "count": {"miss": f"{STATUS}: miss"},
                        },
                    )
                    cpu = thread_cpu_s(pid, pid) - cpu
                done = max(1, got["sequences"])
                p50 = statistics.median(got["sequence_latency_s"]) * 1000
                row[name] = {
                    "added_p50_ms": round(p50 - row["direct_p50_ms"], 3),
                    "requests": got["sequences"],
                    "rps": round(got["rps"], 1),
                    "misses": got["counts"].get("miss", 0),
                    "loop_cpu_us_per_miss": round(cpu / done * 1e6, 1),
                }
            row["load_average"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(row, flush=True)
    finally:
        stack.stop()
    summary: dict[str, Any] = {}
    for name in PAIR:
        summary[name] = {
            "added_p50_ms": round(statistics.median(r[name]["added_p50_ms"] for r in rows), 3),
            "loop_cpu_us_per_miss": round(
                statistics.median(r[name]["loop_cpu_us_per_miss"] for r in rows), 1
            ),
            "rps": round(statistics.median(r[name]["rps"] for r in rows), 1),
        }
    ratios = [r[PAIR[0]]["added_p50_ms"] / r[PAIR[1]]["added_p50_ms"] for r in rows]
    summary["added_p50_ratio_median"] = round(statistics.median(ratios), 3)
    summary["rounds_lower"] = sum(1 for x in ratios if x < 1)
    rates = [r[PAIR[0]]["rps"] / max(0.1, r[PAIR[1]]["rps"]) for r in rows]
    summary["rps_ratio_median"] = round(statistics.median(rates), 3)
    return {
        "benchmark": "miss_rounds",
        "before": before,
        "seconds": seconds,
        "background_priority": priority or "default",
        "concurrency": concurrency,
        "machine": machine(),
        "rounds": rows,
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0, help="each measurement's length")
    parser.add_argument(
        "--background-priority",
        default="",
        help="embedder.background_priority of this tree's sidecar (default: the default)",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="connections (1 or 32)")
    parser.add_argument("--json", help="result file (default benchmarks/results/miss_rounds.json)")
    args = parser.parse_args(argv)
    result = run(args.before, args.rounds, args.seconds, args.background_priority, args.concurrency)
    path = write_result("miss_rounds", result, args.json)
    print(result["summary"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
