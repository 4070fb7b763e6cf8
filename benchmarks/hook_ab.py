"""Exact-hit throughput of the HTTP hook, this checkout against a baseline checkout, side by
side: both ``sidecar serve`` processes run at once and the load generator alternates short
bursts between them, so whatever else loads a shared machine weighs on both alike.

Run: ``python -m benchmarks.hook_ab --baseline DIR [--rounds 6] [--seconds 3]`` where DIR is
another checkout of the project (e.g. ``git worktree add /tmp/base main`` or a ``git
archive`` of it). Writes ``benchmarks/results/hook_ab.json``. Same load as the ``exact hit``
scenario of ``hook_bench`` (32 connections, the same seeded questions), plus each server's
CPU time per request.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.hook_bench import CONCURRENCY, seed_cache
from benchmarks.report import machine, write_result
from benchmarks.stack import hook_request_envelope, raw_request, run_loadgen, write_sidecar_config
from sidecar.demo.processes import free_port

HERE = Path(__file__).resolve().parent.parent


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``sidecar serve`` from the checkout ``tree`` (its own cwd, so ``-m`` imports it)."""

    def __init__(self, name: str, tree: Path, workdir: Path) -> None:
        self.name, self.port = name, free_port()
        config = write_sidecar_config(
            workdir / f"{name}.yaml", self.port, free_port(), grpc_enabled=False
        )
        log = (workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline_s: float = 300) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling a starting process
        raise RuntimeError(f"{self.name} not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run(baseline: Path, rounds: int, seconds: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="hook-ab-"))
    servers = [Server("baseline", baseline, workdir), Server("this", HERE, workdir)]
    per: dict[str, dict[str, Any]] = {
        s.name: {"rps": [], "cpu_s": 0.0, "requests": 0} for s in servers
    }
    try:
        for s in servers:
            s.wait_ready()
        questions = [seed_cache(s.url)[0] for s in servers][0]
        sequences = [
            [raw_request("POST", "/v1/hooks/request", hook_request_envelope(q))] for q in questions
        ]
        for i in range(rounds):
            order = servers if i % 2 == 0 else servers[::-1]  # who goes first alternates
            for s in order:
                cpu = _cpu_s(s.proc.pid)
                result = run_loadgen(
                    workdir,
                    {
                        "port": s.port,
                        "sequences": sequences,
                        "concurrency": CONCURRENCY,
                        "duration": seconds,
                        "warmup": 0.5,
                        "count": {"hit": '"hit-exact"'},
                    },
                )
                if result["counts"]["hit"] != result["sequences"]:
                    raise RuntimeError(f"{s.name}: not every request was an exact hit: {result}")
                per[s.name]["rps"].append(result["rps"])
                per[s.name]["cpu_s"] += _cpu_s(s.proc.pid) - cpu
                per[s.name]["requests"] += result["sequences_total"]
    finally:
        for s in servers:
            s.stop()
    summary: dict[str, Any] = {}
    for name, p in per.items():
        rps = sorted(p["rps"])
        summary[name] = {
            "rps_rounds": p["rps"],
            "rps_median": rps[len(rps) // 2],
            "rps_mean": round(sum(rps) / len(rps), 1),
            "server_cpu_ms_per_request": round(p["cpu_s"] / p["requests"] * 1000, 4),
        }
    base, this = summary["baseline"], summary["this"]
    return {
        "benchmark": "hook_ab",
        "machine": machine(),
        "baseline": str(baseline),
        "rounds": rounds,
        "seconds_per_burst": seconds,
        "concurrency": CONCURRENCY,
        "servers": summary,
        "ratio_rps_mean": round(this["rps_mean"] / base["rps_mean"], 3),
        "ratio_rps_median": round(this["rps_median"] / base["rps_median"], 3),
        "ratio_cpu_per_request": round(
            this["server_cpu_ms_per_request"] / base["server_cpu_ms_per_request"], 3
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, type=Path, help="baseline checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", help="result file (default benchmarks/results/hook_ab.json)")
    args = parser.parse_args(argv)
    result = run(args.baseline.resolve(), args.rounds, args.seconds)
    path = write_result("hook_ab", result, args.json)
    for name, s in result["servers"].items():
        print(
            f"{name:9} rps mean {s['rps_mean']:>8.1f} median {s['rps_median']:>8.1f}  "
            f"server CPU {s['server_cpu_ms_per_request']} ms/request  rounds {s['rps_rounds']}"
        )
    print(
        f"this / baseline: rps mean {result['ratio_rps_mean']}, median "
        f"{result['ratio_rps_median']}, CPU per request {result['ratio_cpu_per_request']}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
