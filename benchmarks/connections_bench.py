"""Liveness under slow connections: ``GET /healthz`` latency on a real ``sidecar serve`` while
hundreds of clients hold connections open without finishing their request headers.

Run: ``python -m benchmarks.connections_bench [--quick]``. Writes
``benchmarks/results/connections.json``.

Each probe opens a fresh connection, as a kubelet or load balancer does. Scenarios: no other
connections (the baseline), then N connections stuck in their headers (each sent a request
line and one header, then nothing). The target is the issue's: the probe's worst latency under
100 ms. The sidecar runs the exact layer only; the slow clients cost it sockets, not CPU.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import SummaryRow, latency_stats, machine, write_result
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

TARGET_MS = 100.0


def _start(workdir: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    config = {
        "server": {"http_port": port, "grpc_enabled": False, "log_level": "warning"},
        "cache": {"data_dir": ":memory:", "default_cache_key": "b", "vector_store": ""},
    }
    path = workdir / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = ManagedProcess("sidecar", sidecar_command(path), workdir / "sidecar.log").start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz", 120)
    except Exception:
        proc.stop()
        raise
    return proc, port


def _probe(port: int, probes: int) -> list[float]:
    """Probe latencies: connect, send the request, read the whole answer (raw sockets, so
    the figure is the server's, not an HTTP client library's set-up time)."""
    out = []
    request = b"GET /healthz HTTP/1.1\r\nhost: sidecar\r\nconnection: close\r\n\r\n"
    for _ in range(probes):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        out.append(time.perf_counter() - started)
        if not reply.startswith(b"HTTP/1.1 200") or not reply.rstrip().endswith(b'{"status":"ok"}'):
            raise RuntimeError(f"unexpected /healthz answer: {reply[:200]!r}")
        time.sleep(0.01)  # probe spacing (a benchmark pace, not synchronisation)
    return out


def run(quick: bool) -> dict[str, Any]:
    probes = 50 if quick else 200
    workdir = Path(tempfile.mkdtemp(prefix="connections-bench-"))
    proc, port = _start(workdir)
    scenarios: dict[str, Any] = {}
    try:
        for slow in (0, 250, 1000):
            held: list[socket.socket] = []
            try:
                for _ in range(slow):
                    sock = socket.create_connection(("127.0.0.1", port))
                    sock.sendall(b"POST /v1/hooks/request HTTP/1.1\r\nhost: sidecar\r\n")
                    held.append(sock)
                latencies = _probe(port, probes)
            finally:
                for sock in held:
                    sock.close()
            stats = latency_stats(latencies)
            stats["max_ms"] = round(max(latencies) * 1000, 3)
            scenarios[f"{slow} slow connections"] = {"slow": slow, "probes": probes, **stats}
    finally:
        proc.stop()
    base = scenarios["0 slow connections"]
    summary = [
        SummaryRow(
            "liveness",
            f"/healthz worst latency, {s['slow']} slow connections",
            s["max_ms"],
            "ms",
            base["max_ms"],
            "no other connections",
            f"< {TARGET_MS:g} ms",
            s["max_ms"] < TARGET_MS,
            f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms over {s['probes']} probes",
            show_ratio=False,
        ).to_json()
        for s in scenarios.values()
    ]
    return {
        "benchmark": "connections",
        "quick": quick,
        "machine": machine(),
        "scenarios": scenarios,
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer probes")
    parser.add_argument("--json", help="result file (default benchmarks/results/connections.json)")
    args = parser.parse_args(argv)
    result = run(args.quick)
    path = write_result("connections", result, args.json)
    for name, s in result["scenarios"].items():
        print(
            f"{name:24} p50 {s['p50_ms']:>8.2f} ms  p99 {s['p99_ms']:>8.2f} ms  "
            f"max {s['max_ms']} ms"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
