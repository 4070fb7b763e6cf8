"""The overload scenario's traffic against the cheapest possible ext_proc server: what any
Python grpc.aio processor behind this Envoy pays at that load, before the sidecar's own work.

``benchmarks/miss_overload.py`` offers misses open-loop at 4x the sustainable miss rate with
exact hits at 100/s beside them, and asks the hits to keep p99 under 5 ms. This runs the same
mix through the same listener layout (Envoy's 200 ms message timeout, failing open, the
request's ``request.time`` attribute sent) against ``benchmarks/null_extproc.py``'s ``split``
style: a hit's body is answered at once, a miss's body gets CONTINUE and its stream ends (the
shed miss's gRPC work), so the provider answers it. Nothing is looked up, guarded or stored.
If the hits' p99 here is already over the target, no work the sidecar does on its own event
loop can bring its p99 under it on this machine: the floor is the transport's.

Run: ``python -m benchmarks.overload_floor --offered 1351 --seconds 60 [--one-message]`` (the
``offered`` figure of the ``miss_bench`` overload run to compare with, and its layout); writes
``benchmarks/results/overload_floor.json``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from benchmarks.extproc_floor_bench import cpu_seconds
from benchmarks.hook_bench import SEED_PAIRS, unique_questions
from benchmarks.miss_overload import result_of
from benchmarks.null_extproc import HIT_MARK
from benchmarks.report import machine, write_result
from benchmarks.stack import (
    chat_body,
    envoy_counter,
    envoy_stats,
    paced_spec,
    raw_request,
    run_loadgen,
)
from sidecar.demo.envoy import (
    ExtProcListener,
    bootstrap,
    envoy_binary,
    envoy_command,
    write_bootstrap,
)
from sidecar.demo.processes import ManagedProcess, free_port

CHAT = "/v1/chat/completions"
#: what the null server's immediate answer holds: counts the hits it answered
FLOOR_ANSWER = "chatcmpl-floor"


def _post(question: str) -> str:
    return raw_request("POST", CHAT, chat_body(question), None)


def wait_listening(port: int, limit_s: float = 30.0) -> None:
    """Until the null server accepts connections (it has no HTTP endpoint to ask): streams
    Envoy opens before would fail and pass on uncached, and count as lost hits."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the null ext_proc server is not listening on {port}") from exc
            time.sleep(0.05)  # polling another process's port, not synchronisation


def run(offered: float, seconds: float, workdir: Path, one_message: bool = False) -> dict[str, Any]:
    """``one_message``: Envoy's one-message layout (the headers as attributes of the body
    message, docs/envoy.md), as ``miss_bench --one-message``."""
    processes: list[ManagedProcess] = []
    try:
        upstream_port, grpc_port, port, admin = (free_port() for _ in range(4))
        upstream = ManagedProcess(
            "fast-upstream",
            [sys.executable, "-m", "benchmarks.fast_upstream", str(upstream_port), "0"],
            workdir / "upstream.log",
        ).start()
        processes.append(upstream)
        upstream.wait_ready(f"http://127.0.0.1:{upstream_port}/healthz", 30)
        null = ManagedProcess(
            "null-extproc",
            [sys.executable, "-m", "benchmarks.null_extproc", str(grpc_port), "split"],
            workdir / "null.log",
        ).start()
        processes.append(null)
        wait_listening(grpc_port)
        listener = ExtProcListener(
            name="floor-200ms",
            port=port,
            grpc_port=grpc_port,
            message_timeout=0.2,
            request_time=True,
            single_message=one_message,
            failure_mode_allow=True,
        )
        config = bootstrap(admin, upstream_port, [listener])
        envoy = ManagedProcess(
            "envoy",
            envoy_command(write_bootstrap(workdir / "envoy.yaml", config)),
            workdir / "envoy.log",
        ).start()
        processes.append(envoy)
        # Envoy is ready once its ext_proc cluster's health check reached the null server
        envoy.wait_ready(f"http://127.0.0.1:{admin}/ready", 60)

        n = int(offered * (seconds + 1)) + 64
        pool = unique_questions(20000)
        misses = [[_post(f"{i} floor: {pool[i % len(pool)]}")] for i in range(n)]
        mark = HIT_MARK.decode()
        hits = [[_post(f"{mark} {q}")] for q, _ in SEED_PAIRS]
        miss_spec = paced_spec(port, misses, offered, seconds, 256, {"hit": FLOOR_ANSWER})
        hit_spec = paced_spec(port, hits, 100.0, seconds, 4, {"hit": FLOOR_ANSWER})
        for sub in ("m", "h"):
            (workdir / sub).mkdir()
        pids = {"null_server": null.pid, "envoy": envoy.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        timeouts_before = envoy_counter(admin, "timeout")
        ext_proc_before = envoy_stats(admin, "ext_proc")
        with ThreadPoolExecutor(2) as threads:
            miss_future = threads.submit(run_loadgen, workdir / "m", miss_spec)
            hit_future = threads.submit(run_loadgen, workdir / "h", hit_spec)
            miss_run, hit_run = miss_future.result(), hit_future.result()
        requests = miss_run["sequences"] + hit_run["sequences"]
        cpu = {
            f"{name}_cpu_us_per_request": round(
                (cpu_seconds(pid) - cpu_before[name]) / max(1, requests) * 1e6
            )
            for name, pid in pids.items()
        }
        return {
            "misses": result_of(miss_run),
            "exact hits": result_of(hit_run),
            "envoy_timeouts": envoy_counter(admin, "timeout") - timeouts_before,
            "envoy_ext_proc": {
                k: v - ext_proc_before.get(k, 0)
                for k, v in envoy_stats(admin, "ext_proc").items()
                if v - ext_proc_before.get(k, 0)
            },
            # a hit the null server did not answer (timed out, passed on to the provider)
            "hits_lost": hit_run["sequences"] - hit_run["counts"].get("hit", 0),
            "misses_answered_by_null": miss_run["counts"].get("hit", 0),
            **cpu,
        }
    finally:
        for proc in reversed(processes):
            proc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offered", type=float, default=1000.0, help="misses per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--json", help="result file (default benchmarks/results/overload_floor.json)"
    )
    parser.add_argument(
        "--one-message",
        action="store_true",
        help="Envoy's one-message-per-request layout (docs/envoy.md), as miss_bench's",
    )
    args = parser.parse_args(argv)
    try:
        envoy_binary()
    except FileNotFoundError as exc:
        print(f"overload floor benchmark skipped: {exc}")
        return 0
    with tempfile.TemporaryDirectory(prefix="overload-floor-") as tmp:
        figures = run(args.offered, args.seconds, Path(tmp), args.one_message)
    result = {
        "benchmark": "overload_floor",
        "machine": machine(),
        "offered_misses_per_s": args.offered,
        "hits_per_s": 100.0,
        "seconds": args.seconds,
        "one_message": args.one_message,
        **figures,
    }
    path = write_result("overload_floor", result, args.json)
    hits, misses = figures["exact hits"]["latency"], figures["misses"]["latency"]
    print(
        f"floor at {args.offered:g} misses/s + 100 hits/s for {args.seconds:g} s: "
        f"hit p50 {hits['p50_ms']} ms, p99 {hits['p99_ms']} ms; "
        f"miss p50 {misses['p50_ms']} ms, p99 {misses['p99_ms']} ms; "
        f"Envoy timeouts {figures['envoy_timeouts']}, hits lost {figures['hits_lost']}; "
        f"CPU per request: null server {figures['null_server_cpu_us_per_request']} us, "
        f"Envoy {figures['envoy_cpu_us_per_request']} us"
    )
    print(orjson.dumps(figures["envoy_ext_proc"]).decode())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
