"""What observability adds to an exact hit, measured on the transport-free core.

Run: ``python -m benchmarks.telemetry_bench [--quick]``. Writes
``benchmarks/results/telemetry.json``.

Each variant runs in its own worker process, one after another and repeated in rounds so
machine drift spreads over all of them; each worker times ``Pipeline.on_request`` for an exact
hit (a stored question, in-memory exact store, no rules) many times and reports the median:
* baseline: the tree of the commit before observability (``git archive`` of BASE_COMMIT into a
  temporary directory), telemetry off;
* off: this tree, telemetry and access log off (the default);
* otlp: this tree, ``telemetry.otlp_endpoint`` set, sampling 100%, exporting over OTLP/HTTP to
  a sink in the driver process (so export work is measured where it runs: the SDK's thread);
* access_log: this tree, ``server.access_log`` writing to a temporary file.
Transports are unchanged by telemetry, so the pipeline's added time is the hook's added time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from benchmarks.report import SummaryRow, machine, write_result

ROOT = Path(__file__).resolve().parent.parent
#: the last commit without the observability work (issue 19)
BASE_COMMIT = "6d72578"
TARGET_ADDED_MS = 0.2
QUESTION = "What is the capital of France?"


def _body() -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": QUESTION}]}


async def _worker(
    variant: str, n: int, endpoint: str, tmp: str, deferred_ms: list[float]
) -> list[float]:
    from sidecar.config import SidecarConfig
    from sidecar.context import HookRequest
    from sidecar.services import Sidecar

    data: dict[str, Any] = {
        "cache": {"data_dir": ":memory:", "default_cache_key": "b", "vector_store": ""},
    }
    if variant == "otlp":
        data["telemetry"] = {"otlp_endpoint": endpoint, "sample_ratio": 1.0}
    if variant == "access_log":
        data["server"] = {"access_log": str(Path(tmp) / "access.jsonl")}
    sidecar = Sidecar(SidecarConfig.model_validate(data))
    await sidecar.start()
    pipeline = sidecar.pipeline
    assert pipeline is not None
    answer = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
    )
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

    def request() -> HookRequest:
        return HookRequest("POST", "/v1/chat/completions", dict(headers), _body())

    ctx, outcome = await pipeline.on_request(request(), "http")
    await pipeline.on_response(ctx, 200, {"content-type": "application/json"}, answer)
    times: list[float] = []
    for i in range(n + n // 5):
        req = request()
        started = time.perf_counter()
        ctx, outcome = await pipeline.on_request(req, "http")
        elapsed = time.perf_counter() - started
        # As in a server between requests: the loop runs its ready callbacks (the deferred
        # span building), outside the timed request path.
        await asyncio.sleep(0)
        assert outcome.cache.status.value == "hit-exact"
        if i >= n // 5:  # the first fifth warms up
            times.append(elapsed)
    build = [o for o in getattr(sidecar, "observers", []) if hasattr(o, "build_seconds")]
    await sidecar.close()
    if build and build[0].built:
        deferred_ms.append(build[0].build_seconds / build[0].built * 1000)
    return times


def _sink() -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _run_worker(tree: Path, variant: str, n: int, endpoint: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.telemetry_bench",
                "--worker",
                variant,
                "--n",
                str(n),
                "--endpoint",
                endpoint,
                "--tmp",
                tmp,
            ],
            cwd=str(tree),
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            check=False,
            timeout=600,
        )
    if out.returncode != 0:
        raise RuntimeError(f"{variant} worker failed: {out.stderr.decode()[-2000:]}")
    return dict(orjson.loads(out.stdout.splitlines()[-1]))


def run(quick: bool) -> dict[str, Any]:
    n, rounds = (3000, 2) if quick else (10000, 4)
    sink = _sink()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as base_dir:
        base = Path(base_dir)
        archive = subprocess.run(
            ["git", "archive", BASE_COMMIT], cwd=ROOT, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        # the baseline tree runs this file's worker against its own sidecar package
        (base / "benchmarks" / "telemetry_bench.py").write_bytes(Path(__file__).read_bytes())
        trees = {"baseline": base, "off": ROOT, "otlp": ROOT, "access_log": ROOT}
        samples: dict[str, list[float]] = {v: [] for v in trees}
        medians: dict[str, list[float]] = {v: [] for v in trees}
        deferred: dict[str, list[float]] = {v: [] for v in trees}
        for _ in range(rounds):
            for variant, tree in trees.items():
                worker_variant = "off" if variant == "baseline" else variant
                got = _run_worker(tree, worker_variant, n, endpoint)
                times = got["times"]
                deferred[variant].extend(got["deferred_ms"])
                samples[variant].extend(times)
                medians[variant].append(statistics.median(times) * 1000)
    sink.shutdown()
    results: dict[str, Any] = {}
    for variant, times in samples.items():
        ms = sorted(t * 1000 for t in times)
        results[variant] = {
            "requests": len(ms),
            "p50_ms": round(statistics.median(ms), 4),
            "p90_ms": round(ms[int(len(ms) * 0.9)], 4),
            "p99_ms": round(ms[int(len(ms) * 0.99)], 4),
            "round_medians_ms": [round(m, 4) for m in medians[variant]],
        }
        if deferred[variant]:
            results[variant]["deferred_span_build_mean_ms"] = round(
                statistics.mean(deferred[variant]), 4
            )
    base_p50 = results["baseline"]["p50_ms"]
    added = {v: round(results[v]["p50_ms"] - base_p50, 4) for v in ("off", "otlp", "access_log")}
    spread = max(medians["baseline"]) - min(medians["baseline"])
    summary = [
        SummaryRow(
            "telemetry",
            "exact hit p50, telemetry off (added vs baseline)",
            added["off"],
            "ms",
            base_p50,
            "baseline tree p50",
            f"within noise (baseline round spread {spread:.4f} ms)",
            abs(added["off"]) <= max(spread, 0.005),
            show_ratio=False,
        ),
        SummaryRow(
            "telemetry",
            "exact hit p50, OTLP on 100% (added vs baseline)",
            added["otlp"],
            "ms",
            base_p50,
            "baseline tree p50",
            f"<= {TARGET_ADDED_MS} ms",
            added["otlp"] <= TARGET_ADDED_MS,
            show_ratio=False,
        ),
        SummaryRow(
            "telemetry",
            "exact hit p50, access log on (added vs baseline)",
            added["access_log"],
            "ms",
            base_p50,
            "baseline tree p50",
            show_ratio=False,
        ),
    ]
    return {
        "benchmark": "telemetry",
        "quick": quick,
        "machine": machine(),
        "what": "Pipeline.on_request for an exact hit, in-process, per variant worker process",
        "baseline_commit": BASE_COMMIT,
        "added_p50_ms": added,
        "variants": results,
        "summary": [row.to_json() for row in summary],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--json", help="result file (default benchmarks/results/telemetry.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        deferred: list[float] = []
        times = asyncio.run(_worker(args.worker, args.n, args.endpoint, args.tmp, deferred))
        sys.stdout.buffer.write(orjson.dumps({"times": times, "deferred_ms": deferred}) + b"\n")
        return 0
    result = run(args.quick)
    path = write_result("telemetry", result, args.json)
    print(orjson.dumps(result["added_p50_ms"]).decode())
    for variant, r in result["variants"].items():
        print(
            f"{variant:>11}: p50 {r['p50_ms']:.4f} ms  p90 {r['p90_ms']:.4f}  "
            f"rounds {r['round_medians_ms']}"
        )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
