"""The miss path through a real Envoy: misses in a new scope, misses in a populated scope, and
an overload at 4x the sustainable miss rate (issue 16).

Run: ``python -m benchmarks.miss_bench [--quick] [--before COMMIT] [--overload-s S]
[--only overload] [--offered RPS] [--one-message] [--rounds N] [--max-streams N,...]
[--upstream-delay-ms MS]``. The overload scenario itself is in ``benchmarks/miss_overload.py``.
Writes ``benchmarks/results/miss.json``.

One Envoy in front of the fast fake provider (``benchmarks/fast_upstream.py``), listeners:
* ``direct``: no ext_proc (the baseline every added latency is measured against);
* ``guarded``: a sidecar with the default input guardrails and the default embedder;
* ``guarded-before`` (with ``--before``): the same sidecar from an earlier commit of this
  repository (``git archive``), the code before the change, side by side in the same run
  (in the new-scope scenario, each of the two is stopped while the other is measured);
* ``onnx``: a sidecar with the ONNX Runtime int8 embedder and no guardrails, also behind a
  listener with Envoy's default ext_proc message timeout (200 ms) for the overload, which
  sends ``request.time`` (docs/envoy.md) so the sidecar sees how long streams queued (with
  ``--one-message``, in Envoy's one-message-per-request layout: the headers as attributes of
  the body message, docs/envoy.md); that listener fails open (``failure_mode_allow: true``,
  the cache-only recommendation: a timed-out stream goes on uncached, still counted);
* ``onnx-maxN`` (with ``--max-streams N``): another ONNX sidecar of this tree behind the same
  kind of listener, whose Envoy ext_proc cluster admits at most N concurrent streams (its
  circuit breaker; a stream over it goes on uncached at once, counted by Envoy:
  docs/overload.md, "Admission in Envoy"), in the overload's alternating rounds.

Scenarios:
1. guarded miss + store of a 1 KB prompt in a new scope (a fresh partition per request: the
   lookup has nothing to compare with), 1 connection then 32; targets: at most 3 ms added
   median, at least 300 req/s;
2. a miss in a populated scope (ONNX int8): added median at most the sidecar's embedding time
   (mean, same requests) plus 2 ms; its rate at 32 connections is the sustainable miss rate;
3. overload: fresh misses offered open-loop at 4x that rate, with exact hits paced beside them
   on their own connections: exact-hit p99 under 5 ms, no lookup queued past the budget plus
   5 ms (``sidecar_embedding_queue_wait_max_seconds``), no Envoy timeout, and every semantic
   lookup accounted for (embedded or counted as skipped), and every request accounted for
   (the sidecar's misses, hits and refused streams, plus the streams Envoy failed at its
   bound: those never reach the sidecar, Envoy's ``upstream_rq_active_overflow`` counts
   them), with the exact hits that lost their hit. Beside them: Envoy's ext_proc counters of
   that listener and the CPU per request of the sidecar and of Envoy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.hook_bench import SEED_PAIRS, unique_questions
from benchmarks.miss_overload import (
    STATUS,
    delta,
    overload_rounds,
    result_of,
    sidecar_counters,
)
from benchmarks.miss_report import (
    CONCURRENCY,
    LOOKUP_PATHS,
    OVERLOAD_FACTOR,
    label,
    print_table,
    summary,
)
from benchmarks.proxy_bench import RULES, kilobyte_prompts
from benchmarks.report import machine, write_result
from benchmarks.stack import (
    SIDECAR_READY_S,
    chat_body,
    envoy_counter,
    envoy_stats,
    metric_value,
    paced_spec,
    raw_request,
    run_loadgen,
    write_sidecar_config,
)
from sidecar.demo.envoy import (
    ExtProcListener,
    bootstrap,
    cluster_name,
    envoy_binary,
    envoy_command,
    write_bootstrap,
)
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

CHAT = "/v1/chat/completions"
ONNX = {"backend": "onnx", "onnx_quantize": True}
ROOT = Path(__file__).resolve().parent.parent


def _post(question: str, partition: str | None = None) -> str:
    extra = {"x-bf-cache-key": partition} if partition else None
    return raw_request("POST", CHAT, chat_body(question), extra)


def _strip_ext_proc(config: dict[str, Any], listener: str) -> None:
    for spec in config["static_resources"]["listeners"]:
        if spec["name"] == listener:
            for network_filter in spec["filter_chains"][0]["filters"]:
                hcm = network_filter["typed_config"]
                hcm["http_filters"] = [
                    f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"
                ]


def _before_tree(workdir: Path, commit: str) -> Path:
    target = workdir / f"before-{commit[:10]}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


class Stack:
    def __init__(
        self,
        workdir: Path,
        before: str | None,
        only: Sequence[str],
        guarded: dict[str, Any] | None = None,
        one_message: bool = False,
        max_streams: Sequence[int] = (),
        upstream_delay_ms: int = 0,
    ) -> None:
        """``guarded``: more sidecar settings for this tree's guarded sidecar (not before's);
        ``one_message``: the overload's 200 ms listeners send the headers as attributes with
        the body (docs/envoy.md, one message per request) instead of a headers message;
        ``max_streams``: for each bound N, also an ONNX sidecar ``onnx-maxN`` behind a 200 ms
        listener whose ext_proc cluster admits at most N concurrent streams (Envoy's circuit
        breaker, docs/overload.md), measured beside the unbounded one;
        ``upstream_delay_ms``: the fake provider's answer time (a stream stays open for it)."""
        self.one_message = one_message
        self.max_streams = tuple(max_streams)
        self.upstream_delay_ms = upstream_delay_ms
        #: the sidecar behind each overload variant (a variant is a 200 ms listener)
        self.sidecar_of: dict[str, str] = {}
        #: the Envoy cluster of each overload variant (its circuit-breaker counters)
        self.clusters: dict[str, str] = {}
        self.workdir = workdir
        self.guarded = guarded or {}
        self.before = before
        self.only = only
        self.processes: list[ManagedProcess] = []
        self.ports: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self.admin = 0
        self.pids: dict[str, int] = {}

    def _sidecar(self, name: str, tree: Path | None, **options: Any) -> int:
        http_port, grpc_port = free_port(), free_port()
        config = write_sidecar_config(
            self.workdir / f"{name}.yaml", http_port, grpc_port, grpc_enabled=True, **options
        )
        command = sidecar_command(config)
        if tree is not None:
            # The earlier commit's packages first on the path (not this checkout's).
            boot = (
                f"import sys, runpy; sys.path.insert(0, {str(tree)!r}); "
                "runpy.run_module('sidecar', run_name='__main__')"
            )
            command = [sys.executable, "-c", boot, *command[3:]]
        proc = ManagedProcess(name, command, self.workdir / f"{name}.log").start()
        self.processes.append(proc)
        proc.wait_ready(f"http://127.0.0.1:{http_port}/readyz", SIDECAR_READY_S)
        self.urls[name] = f"http://127.0.0.1:{http_port}"
        self.pids[name] = proc.pid
        return grpc_port

    def start(self) -> None:
        upstream_port = free_port()
        upstream = ManagedProcess(
            "fast-upstream",
            [
                sys.executable,
                "-m",
                "benchmarks.fast_upstream",
                str(upstream_port),
                str(self.upstream_delay_ms),
            ],
            self.workdir / "upstream.log",
        ).start()
        self.processes.append(upstream)
        upstream.wait_ready(f"http://127.0.0.1:{upstream_port}/healthz", 30)
        grpc = {
            "guarded": self._sidecar("guarded", None, rules=[str(RULES)], **self.guarded),
            "onnx": self._sidecar("onnx", None, embedder=ONNX),
        }
        if self.before:
            tree = _before_tree(self.workdir, self.before)
            if "new-scope" in self.only:
                grpc["guarded-before"] = self._sidecar("guarded-before", tree, rules=[str(RULES)])
            if "overload" in self.only:
                grpc["onnx-before"] = self._sidecar("onnx-before", tree, embedder=ONNX)
        variants: dict[str, tuple[str, int | None]] = {
            n: (n, None) for n in ("onnx", "onnx-before") if n in grpc
        }
        for bound in self.max_streams:
            # a sidecar of its own (this tree's, like onnx): its lifetime gauges, the longest
            # queue wait among them, and its deferred vectors stay its own
            name = f"onnx-max{bound}"
            grpc[name] = self._sidecar(name, None, embedder=ONNX)
            variants[name] = (name, bound)
        # Envoy's default message timeout: the overload must never reach it.
        overload = {
            variant: ExtProcListener(
                name=f"{variant}-200ms",
                port=free_port(),
                grpc_port=grpc[sidecar],
                message_timeout=0.2,
                request_time=True,
                single_message=self.one_message,
                # every 200 ms listener fails open, as the overload policy requires
                failure_mode_allow=True,
                max_streams=bound,
            )
            for variant, (sidecar, bound) in variants.items()
        }
        self.sidecar_of = {v: sidecar for v, (sidecar, _) in variants.items()}
        self.clusters = {v: cluster_name(spec) for v, spec in overload.items()}
        listeners = [
            ExtProcListener(name="direct", port=free_port(), grpc_port=grpc["guarded"]),
            *overload.values(),
        ] + [ExtProcListener(name=n, port=free_port(), grpc_port=p) for n, p in grpc.items()]
        self.admin = free_port()
        config = bootstrap(self.admin, upstream_port, listeners)
        _strip_ext_proc(config, "direct")
        path = write_bootstrap(self.workdir / "envoy.yaml", config)
        envoy = ManagedProcess("envoy", envoy_command(path), self.workdir / "envoy.log").start()
        self.processes.append(envoy)
        self.pids["envoy"] = envoy.pid
        envoy.wait_ready(f"http://127.0.0.1:{self.admin}/ready", 60)
        self.ports = {spec.name: spec.port for spec in listeners}

    def envoy_counter(self, contains: str) -> int:
        return envoy_counter(self.admin, contains)

    def envoy_stats(self, prefix: str) -> dict[str, int]:
        """Envoy's counters whose names start with ``prefix`` (e.g. one listener's ext_proc)."""
        matched = envoy_stats(self.admin, "^" + prefix.replace(".", "\\."))
        return {name.removeprefix(prefix): value for name, value in matched.items()}

    @contextlib.contextmanager
    def paused(self, names: Sequence[str]) -> Iterator[None]:
        """The named sidecars stopped (SIGSTOP) meanwhile: a sidecar measured after another
        must not share the cores with the other's deferred embeddings (its vector backlog
        keeps the model busy for minutes after its own run)."""
        stopped = [self.pids[n] for n in names if n in self.pids]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def _seed(port: int, questions: list[str]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for q in questions:
            client.post(CHAT, json=chat_body(q)).raise_for_status()


def _backlog_empty(base: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while metric_value(base, "sidecar_cache_vector_backlog") > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}: the vector backlog did not drain in {limit_s:g} s")
        time.sleep(0.2)  # polling another process, not synchronisation


SCENARIOS = ("busy", "new-scope", "overload")


def run(
    quick: bool,
    before: str | None,
    overload_s: float,
    only: Sequence[str] = SCENARIOS,
    profile: Path | None = None,
    offered_rps: float = 0.0,
    one_message: bool = False,
    rounds: int = 1,
    max_streams: Sequence[int] = (),
    upstream_delay_ms: int = 0,
) -> dict[str, Any]:
    serial_s, loaded_s = (3.0, 4.0) if quick else (8.0, 10.0)
    busy_s = 8.0 if quick else 30.0
    workdir = Path(tempfile.mkdtemp(prefix="miss-bench-"))
    stack = Stack(
        workdir,
        before,
        only,
        one_message=one_message,
        max_streams=max_streams,
        upstream_delay_ms=upstream_delay_ms,
    )
    results: dict[str, Any] = {}
    counters: dict[str, Any] = {}
    tag = uuid.uuid4().hex[:6]
    try:
        stack.start()
        ports = stack.ports
        n_big = 2000 if quick else 5000
        prompts = kilobyte_prompts(unique_questions(n_big), n_big + 8)
        big, fresh_big = prompts[:8], prompts[8:]

        def measure(name: str, port: int, sequences: list[list[str]], fresh: bool) -> None:
            half = len(sequences) // 2
            serial_seq, loaded_seq = (
                (sequences[:half], sequences[half:]) if fresh else (sequences, sequences)
            )
            common: dict[str, Any] = {"port": port, "warmup": 0.0 if fresh else 0.5}
            common["count"] = {"miss": f"{STATUS}: miss", "hit": f"{STATUS}: hit"}
            serial = run_loadgen(
                workdir,
                {
                    **common,
                    "sequences": serial_seq,
                    "concurrency": 1,
                    "duration": serial_s,
                    **({"max_sequences": len(serial_seq) - 1} if fresh else {}),
                },
            )
            loaded = run_loadgen(
                workdir,
                {
                    **common,
                    "sequences": loaded_seq,
                    "concurrency": CONCURRENCY,
                    "duration": loaded_s,
                    **({"max_sequences": len(loaded_seq) - CONCURRENCY} if fresh else {}),
                },
            )
            results[name] = {"serial": result_of(serial), "loaded": result_of(loaded)}

        def busy_model() -> None:
            """0. exact hits while the model is busy with deferred vectors (new-scope 1 KB
            misses at a rate the sidecar answers but its torch model cannot embed as fast),
            beside the same exact hits with nothing else running."""
            _backlog_empty(stack.urls["guarded"])
            hits_big = [[_post(q)] for q in big]
            hit_spec = paced_spec(
                ports["guarded"], hits_big, 100.0, busy_s, 4, {"hit": f"{STATUS}: hit-exact"}
            )
            idle = run_loadgen(workdir, hit_spec)
            extra = [[_post(q, f"busy-{tag}-{i}")] for i, q in enumerate(prompts[8:])]
            busy_misses = paced_spec(
                ports["guarded"], extra, 50.0, busy_s, 32, {"miss": f"{STATUS}: miss"}
            )
            for sub in ("bm", "bh"):
                (workdir / sub).mkdir()
            before_counts = sidecar_counters(stack.urls["guarded"])
            with ThreadPoolExecutor(2) as pool:
                busy_future = pool.submit(run_loadgen, workdir / "bm", busy_misses)
                hits_future = pool.submit(run_loadgen, workdir / "bh", hit_spec)
                busy_run, busy_hits = busy_future.result(), hits_future.result()
            counters["guarded: busy model"] = delta(
                sidecar_counters(stack.urls["guarded"]), before_counts
            )
            results["exact hits 1 KB, idle"] = {"loaded": result_of(idle)}
            results["exact hits 1 KB, model busy"] = {"loaded": result_of(busy_hits)}
            results["new-scope misses 1 KB keeping the model busy"] = {
                "loaded": result_of(busy_run)
            }
            try:  # the next scenario starts with the model idle again
                _backlog_empty(stack.urls["guarded"])
            except RuntimeError as exc:
                counters["guarded: busy model"]["note"] = str(exc)

        if "busy" in only:
            busy_model()
        # 1. new scope: every request in a partition of its own.
        if "new-scope" in only:
            measure("direct 1 KB", ports["direct"], [[_post(q)] for q in big], False)
            new_scope = [[_post(q, f"new-{tag}-{i}")] for i, q in enumerate(fresh_big)]
            pair = ("guarded", "guarded-before")
            for name in pair:
                if name not in stack.urls:
                    continue
                before_counts = sidecar_counters(stack.urls[name])
                with stack.paused([n for n in pair if n != name]):
                    measure(f"{name}: miss + store 1 KB, new scope", ports[name], new_scope, True)
                counters[f"{name}: new scope"] = delta(
                    sidecar_counters(stack.urls[name]), before_counts
                )

        if "overload" in only:
            # 2. populated scope, ONNX int8.
            onnx_url = stack.urls["onnx"]
            seeds = [q for q, _ in SEED_PAIRS]
            _seed(ports["onnx"], seeds)
            n_fresh = 1200 if quick else 3000
            fresh = unique_questions(n_fresh + 20000)
            populated, overload_pool = fresh[:n_fresh], fresh[n_fresh:]
            measure("direct", ports["direct"], [[_post(q)] for q in seeds], False)
            before_counts = sidecar_counters(onnx_url)
            # The guarded sidecars' deferred torch vectors (thousands after the new-scope runs)
            # and the other ONNX sidecar must not share the cores with the one measured.
            others = [n for n in stack.urls if n != "onnx"]
            with stack.paused(others):
                measure(
                    "onnx: miss, populated scope",
                    ports["onnx"],
                    [[_post(q)] for q in populated],
                    True,
                )
            counters["onnx: populated scope"] = delta(sidecar_counters(onnx_url), before_counts)

            # 3. overload at 4x the sustainable miss rate, exact hits beside it.
            # The rate at which misses got their full treatment (embedded lookups): the loaded
            # run's rate times the share of its lookups that were not skipped as overloaded.
            pop = counters["onnx: populated scope"]
            lookups = sum(pop.get(f"lookups_{p}", 0.0) for p in LOOKUP_PATHS) or 1.0
            served = results["onnx: miss, populated scope"]["loaded"]["rps"]
            sustainable = round(served * pop.get("lookups_embedded", 0.0) / lookups, 1) or served
            offered = offered_rps or OVERLOAD_FACTOR * sustainable
            n_over = int(offered * (overload_s + 1)) + 64
            over_pool = (overload_pool * (n_over // max(1, len(overload_pool)) + 1))[:n_over]
            exact = [[_post(q)] for q in seeds]
            names = list(stack.sidecar_of)  # the overload's variants (200 ms listeners)
            for sidecar in {stack.sidecar_of[n] for n in names} - {"onnx"}:
                _seed(ports[sidecar], seeds)

            def misses_for(name: str, turn: int) -> list[list[str]]:
                # distinct per run even when the pool repeats: numbers and the name in front
                return [[_post(f"{i} {turn} {name}: {q}")] for i, q in enumerate(over_pool)]

            def others_paused(name: str) -> contextlib.AbstractContextManager[None]:
                return stack.paused([n for n in stack.urls if n != stack.sidecar_of[name]])

            over_results, over_counters = overload_rounds(
                stack, names, misses_for, exact, offered, overload_s, rounds, others_paused,
                profile,
            )  # fmt: skip
            results.update(over_results)
            for name in names:
                counters[label(name, "overload")] = {
                    **over_counters[label(name, "overload")],
                    "offered_rps": round(offered, 1),
                    "sustainable_rps": sustainable,
                }
    finally:
        stack.stop()
    return {
        "benchmark": "miss",
        "quick": quick,
        "before": before,
        "overload_s": overload_s,
        "one_message": one_message,
        "rounds": rounds,
        "max_streams": list(max_streams),
        "upstream_delay_ms": upstream_delay_ms,
        "only": list(only),
        "machine": machine(),
        "envoy": envoy_binary(),
        "scenarios": results,
        "sidecar_counters": counters,
        "summary": [row.to_json() for row in summary(results, counters)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--before", help="also run this commit's sidecar (git archive)")
    parser.add_argument(
        "--overload-s", type=float, default=0.0, help="overload duration (default 60, quick 15)"
    )
    parser.add_argument("--json", help="result file (default benchmarks/results/miss.json)")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios among {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--offered", type=float, default=0.0, help="overload misses/s (default 4x sustainable)"
    )
    parser.add_argument(
        "--one-message",
        action="store_true",
        help="the overload through Envoy's one-message-per-request layout (docs/envoy.md)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="overload runs per sidecar, alternating with --before's (order reversed each round)",
    )
    parser.add_argument(
        "--max-streams",
        default="",
        help="comma-separated bounds N: the overload also on a sidecar behind a listener "
        "whose Envoy ext_proc cluster admits at most N concurrent streams (circuit breaker), "
        "alternating with the unbounded one",
    )
    parser.add_argument(
        "--upstream-delay-ms",
        type=int,
        default=0,
        help="the fake provider's answer time (an ext_proc stream stays open for it)",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy speedscope profiles of the overload, this prefix"
    )
    args = parser.parse_args(argv)
    try:
        envoy_binary()
    except FileNotFoundError as exc:
        print(f"miss benchmark skipped: {exc}")
        write_result("miss", {"benchmark": "miss", "skipped": str(exc), "summary": []}, args.json)
        return 0
    overload_s = args.overload_s or (15.0 if args.quick else 60.0)
    only = [o.strip() for o in args.only.split(",") if o.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    result = run(
        args.quick,
        args.before,
        overload_s,
        only,
        args.profile,
        args.offered,
        args.one_message,
        max(1, args.rounds),
        [int(n) for n in args.max_streams.split(",") if n.strip()],
        args.upstream_delay_ms,
    )
    path = write_result("miss", result, args.json)
    print_table(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
