"""What telemetry adds to an exact hit through the HTTP hook of a real ``sidecar serve``: the
proxy's view (``telemetry_bench`` measures the pipeline in-process).

Run: ``python -m benchmarks.telemetry_proxy_bench [--quick]``. Writes
``benchmarks/results/telemetry_proxy.json``.

Three ``sidecar serve`` processes run at once, each from its own tree:
* baseline: the tree of the commit before the observability work (``telemetry_bench.
  BASE_COMMIT``, ``git archive`` into a temporary directory);
* off: this tree, telemetry off (the default; the /ui dashboard's recent decisions on, as by
  default);
* off_no_ui: the same with the dashboard off (``ui.enabled: false``: no recent-decisions ring);
* otlp: this tree, ``telemetry.otlp_endpoint`` set to an OTLP/HTTP sink in this process,
  sampling 100%.
Each stores the same questions, then the load generator (its own process) sends request
hooks for them, one connection at a time, in short bursts that alternate between the three
servers round after round, so machine load weighs on all alike. Reported per server: the
median round-trip of the hook (what a proxy waits for), and the server's CPU time per request
(span building runs after the answer, on the same event loop).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.report import SummaryRow, machine, write_result
from benchmarks.stack import (
    SIDECAR_READY_S,
    hook_request_envelope,
    hook_response_envelope,
    raw_request,
    run_loadgen,
)
from benchmarks.telemetry_bench import BASE_COMMIT, TARGET_ADDED_MS, _sink
from sidecar.demo.processes import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = tuple(f"What is the capital of country number {i}?" for i in range(8))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(name: str, tree: Path, workdir: Path, endpoint: str) -> tuple[ManagedProcess, int]:
    port = free_port()
    config: dict[str, Any] = {
        "server": {"http_port": port, "grpc_enabled": False, "log_level": "warning"},
        "cache": {
            "data_dir": ":memory:",
            "default_cache_key": "bench",
            "ttl": "1h",
            "vector_store": "",
        },
    }
    if name == "otlp":
        config["telemetry"] = {"otlp_endpoint": endpoint, "sample_ratio": 1.0}
    if name == "off_no_ui":
        config["ui"] = {"enabled": False}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "sidecar", "serve", "--config", str(path)]
    # each tree imports its own package: PYTHONPATH first, and its own working directory
    env = {"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    proc = ManagedProcess(name, command, workdir / f"{name}.log", env)
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        proc.start()
    finally:
        os.chdir(cwd)
    try:
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz", SIDECAR_READY_S)
    except Exception:
        proc.stop()
        raise
    return proc, port


def _seed(port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for i, question in enumerate(QUESTIONS):
            rid = f"seed-{i}"
            reply = client.post("/v1/hooks/request", json=hook_request_envelope(question, rid))
            reply.raise_for_status()
            secret = reply.json()["request_secret"]
            envelope = hook_response_envelope(rid, f"answer {i}", secret)
            client.post("/v1/hooks/response", json=envelope).raise_for_status()


def run(quick: bool) -> dict[str, Any]:
    rounds, seconds = (3, 2.0) if quick else (8, 4.0)
    sink = _sink()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    load_before = os.getloadavg()[0]
    sequences = [
        [raw_request("POST", "/v1/hooks/request", hook_request_envelope(q))] for q in QUESTIONS
    ]
    with tempfile.TemporaryDirectory(prefix="telemetry-proxy-") as tmp:
        workdir = Path(tmp)
        base = workdir / "baseline-tree"
        base.mkdir()
        archive = subprocess.run(
            ["git", "archive", BASE_COMMIT], cwd=ROOT, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        trees = {"baseline": base, "off": ROOT, "off_no_ui": ROOT, "otlp": ROOT}
        servers: dict[str, tuple[ManagedProcess, int]] = {}
        try:
            for name, tree in trees.items():
                servers[name] = _start(name, tree, workdir, endpoint)
                _seed(servers[name][1])
            medians: dict[str, list[float]] = {n: [] for n in trees}
            cpu: dict[str, float] = dict.fromkeys(trees, 0.0)
            done: dict[str, int] = dict.fromkeys(trees, 0)
            for r in range(rounds):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for name in order:
                    proc, port = servers[name]
                    before = _cpu_s(proc.pid)
                    result = run_loadgen(
                        workdir,
                        {
                            "port": port,
                            "sequences": sequences,
                            "concurrency": 1,
                            "duration": seconds,
                            "warmup": 0.3,
                            "count": {"hit": '"hit-exact"'},
                        },
                    )
                    if result["counts"]["hit"] != result["sequences"]:
                        raise RuntimeError(f"{name}: not every request was an exact hit")
                    cpu[name] += _cpu_s(proc.pid) - before
                    done[name] += result["sequences_total"]
                    medians[name].append(statistics.median(result["step_latency_s"][0]) * 1000)
        finally:
            for proc, _ in servers.values():
                proc.stop()
            sink.shutdown()
    load_after = os.getloadavg()[0]
    p50 = {n: statistics.median(ms) for n, ms in medians.items()}
    variants: dict[str, dict[str, Any]] = {
        n: {
            "p50_ms": round(statistics.median(ms), 4),
            "round_medians_ms": [round(m, 4) for m in ms],
            "server_cpu_ms_per_request": round(cpu[n] / done[n] * 1000, 4),
            "requests": done[n],
        }
        for n, ms in medians.items()
    }
    base_p50 = p50["baseline"]
    added = {n: round(p50[n] - base_p50, 4) for n in ("off", "off_no_ui", "otlp")}
    spread = max(medians["baseline"]) - min(medians["baseline"])
    added_otlp_vs_off = round(p50["otlp"] - p50["off"], 4)
    rows = [
        SummaryRow(
            "telemetry (HTTP hook)",
            "exact hit round trip p50, telemetry off (added vs baseline)",
            added["off"],
            "ms",
            base_p50,
            "baseline tree p50",
            f"within noise (baseline round spread {spread:.4f} ms)",
            abs(added["off"]) <= max(spread, 0.005),
            show_ratio=False,
        ),
        SummaryRow(
            "telemetry (HTTP hook)",
            "exact hit round trip p50, OTLP on 100% (added vs telemetry off)",
            added_otlp_vs_off,
            "ms",
            p50["off"],
            "telemetry off p50",
            f"<= {TARGET_ADDED_MS} ms",
            added_otlp_vs_off <= TARGET_ADDED_MS,
            note=f"server CPU per request: off {variants['off']['server_cpu_ms_per_request']} "
            f"ms, OTLP {variants['otlp']['server_cpu_ms_per_request']} ms",
            show_ratio=False,
        ),
    ]
    return {
        "benchmark": "telemetry_proxy",
        "quick": quick,
        "machine": machine(),
        "load_average_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "what": "HTTP hook exact hits against real sidecar serve processes, 1 connection, "
        "alternating bursts",
        "baseline_commit": BASE_COMMIT,
        "rounds": rounds,
        "seconds_per_burst": seconds,
        "added_p50_ms": {**added, "otlp_vs_off": added_otlp_vs_off},
        "variants": variants,
        "summary": [row.to_json() for row in rows],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s")
    parser.add_argument("--json", help="result file (default: results/telemetry_proxy.json)")
    args = parser.parse_args(argv)
    result = run(args.quick)
    path = write_result("telemetry_proxy", result, args.json)
    for name, v in result["variants"].items():
        print(
            f"{name:>9}: p50 {v['p50_ms']:.4f} ms  cpu/req {v['server_cpu_ms_per_request']} ms  "
            f"rounds {v['round_medians_ms']}"
        )
    print(f"added p50 {result['added_p50_ms']}; load {result['load_average_1m']}; {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
