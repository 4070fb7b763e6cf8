"""The fault and load suite: real processes on loopback, a fixed request budget per scenario.

Run: ``python -m benchmarks.faults_bench [--quick]`` (or ``sidecar bench --only faults``).

Scenarios:
- ``kill9-embedded`` / ``kill9-redis``: ``kill -9`` of the sidecar mid-load, 5 rounds, then a
  restart and every question asked again;
- ``redis-restart``: the Redis under the cache killed and restarted mid-load;
- ``envoy-sidecar-killed``: Envoy with the sidecar killed, one listener failing open and one
  failing closed;
- ``slow-provider``: a provider that takes a second per answer, 32 clients through Envoy;
- ``pending-flood``: request hooks with 1 MB of ``metadata`` that never complete.

Counted for each: answers served wrong (a hit whose answer belongs to another question),
acknowledged entries lost (the response hook returned ``stored_entry_id`` and the entry is gone
after the restart), corrupt entries (a hit whose answer cannot be read), requests that failed
where the failure mode said they should pass (or passed where it said fail), peak RSS over the
RSS at ready, and the worst latency of the liveness probe (``/healthz``) while the sidecar ran.
The Redis runs with ``appendonly yes`` and ``appendfsync always``.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from benchmarks.faults_harness import (
    CHAT,
    HookClient,
    Ledger,
    LivenessProbe,
    RssSampler,
    audit,
    chat_body,
    durable_redis,
    redis_server,
)
from benchmarks.report import SummaryRow, machine, write_result
from sidecar.demo.envoy import ExtProcListener, bootstrap, envoy_command, write_bootstrap
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

READY_S = 240.0
LIVENESS_MS = 100.0
RSS_SLACK_MB = 300.0
PENDING_CAP = 64 * 2**20  # server.max_pending_bytes in the flood scenario
BODY_CAP = 2 * 2**20  # server.max_body_bytes in the flood scenario
PENDING_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


class Sidecar:
    """A ``sidecar serve`` process that a scenario may kill and start again on the same ports
    and data directory."""

    def __init__(self, workdir: Path, name: str, settings: Mapping[str, Any]) -> None:
        self.workdir = workdir
        self.name = name
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.health_port = free_port()
        server = {
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "health_port": self.health_port,
            "log_level": "warning",
            **settings.get("server", {}),
        }
        cache = {"default_cache_key": "faults", "ttl": "1h", **settings.get("cache", {})}
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(
            yaml.safe_dump({"server": server, "cache": cache}, sort_keys=False), encoding="utf-8"
        )
        self.proc: ManagedProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def health_url(self) -> str:
        """The liveness listener on its own thread and port (``server.health_port``)."""
        return f"http://127.0.0.1:{self.health_port}"

    def start(self) -> None:
        self.starts += 1
        log = self.workdir / f"{self.name}-{self.starts}.log"
        # In Redis modes the HTTP hook's pending contexts live in Redis too, sealed with this key
        # (a kill -9 then loses no request waiting for its answer).
        env = {"SIDECAR_PENDING_KEY": PENDING_KEY}
        self.proc = ManagedProcess(self.name, sidecar_command(self.config), log, env).start()
        self.proc.wait_ready(f"{self.url}/readyz", READY_S)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the sidecar was not started"
        return self.proc.pid

    def kill9(self) -> None:
        if self.proc is not None and self.proc.running():
            os.kill(self.proc.pid, signal.SIGKILL)  # our own child, by its PID

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def metric(self, fragment: str) -> float:
        """Sum of every sample whose name contains ``fragment`` (0 when none)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            name = line.partition("{")[0].split(" ")[0]
            # prometheus_client adds a *_created sample (a timestamp) beside each counter
            if not line.startswith("#") and fragment in name and not name.endswith("_created"):
                total += float(line.rpartition(" ")[2])
        return total


def _question(tag: str, n: int) -> str:
    return f"fault suite {tag} question number {n}: which colour is item {n}?"


def _answer(question: str) -> str:
    return f"the answer to <{question}>"


def run_load(
    base_url: str,
    tag: str,
    budget: int,
    ledger: Ledger,
    threads: int = 8,
    on_ack: Callable[[int], None] | None = None,
) -> None:
    """``budget`` store round trips over ``threads`` clients; stops early once the sidecar is
    gone. ``on_ack(n)`` runs after the n-th acknowledgement (a scenario's trigger)."""
    counter = iter(range(budget))
    lock = threading.Lock()

    def worker() -> None:
        client = HookClient(base_url)
        try:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                question = _question(tag, n)
                try:
                    client.store(question, _answer(question), ledger)
                except httpx.TransportError:
                    ledger.error("connection")
                    continue
                if on_ack is not None:
                    on_ack(len(ledger.acknowledged))
        finally:
            client.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def once(action: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()

    def fire() -> None:
        if not done.is_set():
            done.set()
            action()

    return fire


def scenario_kill9(workdir: Path, mode: str, rounds: int, budget: int) -> dict[str, Any]:
    cache: dict[str, Any] = {"data_dir": str(workdir / "data")}
    redis_ctx = durable_redis(workdir) if mode == "redis" else None
    redis = redis_ctx.__enter__() if redis_ctx is not None else None
    if redis is not None:
        cache.update(exact_store=redis.url, vector_store="none", namespace="faults")
    sidecar = Sidecar(
        workdir, f"sidecar-{mode}", {"cache": cache, "server": {"grpc_enabled": False}}
    )
    ledger = Ledger()
    totals = {"acknowledged_lost": 0, "served_wrong": 0, "corrupt": 0, "checked": 0}
    worst = 0.0
    health_worst: float | None = None
    percentiles: dict[str, Any] = {}
    peak = 0.0
    try:
        sidecar.start()
        with LivenessProbe(sidecar.url, sidecar.health_url) as probe:
            for r in range(rounds):
                before = len(ledger.acknowledged)
                kill = once(sidecar.kill9)
                half = before + budget // 2

                def trigger(n: int, kill: Callable[[], None] = kill, half: int = half) -> None:
                    if n >= half:
                        kill()

                with RssSampler(sidecar.proc.pid if sidecar.proc else 0) as rss:
                    run_load(sidecar.url, f"{mode}-r{r}", budget, ledger, on_ack=trigger)
                kill()
                peak = max(peak, (rss.peak - rss.ready) / 2**20)
                sidecar.stop()
                sidecar.start()
                check = audit(sidecar.url, dict(ledger.acknowledged))
                totals["acknowledged_lost"] += check.lost
                totals["served_wrong"] += check.wrong
                totals["corrupt"] += check.corrupt
                totals["checked"] += check.checked
            totals["unreadable_metric"] = int(sidecar.metric("unreadable"))
            worst = probe.worst_ms
            health_worst = probe.health_worst_ms
            percentiles = probe.percentiles()
    finally:
        sidecar.stop()
        if redis_ctx is not None:
            redis_ctx.__exit__(None, None, None)
    return {
        "rounds": rounds,
        "requests_sent": ledger.sent,
        "acknowledged": len(ledger.acknowledged),
        **totals,
        "failed_should_pass": 0,
        "errors": ledger.errors,
        "peak_over_ready_mb": round(peak, 1),
        "liveness_worst_ms": round(worst, 2),
        "health_port_worst_ms": health_worst,
        "liveness_percentiles": percentiles,
    }


def scenario_redis_restart(workdir: Path, budget: int) -> dict[str, Any]:
    ledger = Ledger()
    with durable_redis(workdir) as redis:
        cache = {"exact_store": redis.url, "vector_store": "none", "namespace": "faults-rr"}
        sidecar = Sidecar(
            workdir, "sidecar-rr", {"cache": cache, "server": {"grpc_enabled": False}}
        )
        try:
            sidecar.start()
            outage = Ledger()
            with (
                LivenessProbe(sidecar.url, sidecar.health_url) as probe,
                RssSampler(sidecar.pid) as rss,
            ):
                run_load(sidecar.url, "rr-before", budget // 2, ledger)
                redis.stop()  # SIGTERM: Redis fsyncs and exits; appendfsync always already did
                run_load(sidecar.url, "rr-outage", budget // 4, outage)
                redis.start()
                _wait_ready(sidecar.url)
                run_load(sidecar.url, "rr-after", budget // 4, ledger)
                check = audit(sidecar.url, dict(ledger.acknowledged))
        finally:
            sidecar.stop()
    failed = sum(outage.errors.values())
    return {
        "requests_sent": ledger.sent + outage.sent,
        "acknowledged": len(ledger.acknowledged),
        **check.to_json(),
        "acknowledged_during_outage": len(outage.acknowledged),
        "failed_should_pass": failed,
        "errors": {**ledger.errors, **{f"outage {k}": v for k, v in outage.errors.items()}},
        **rss.to_json(),
        "liveness_worst_ms": probe.to_json()["worst_ms"],
        "health_port_worst_ms": probe.health_worst_ms,
        "liveness_percentiles": probe.percentiles(),
    }


def _wait_ready(url: str, deadline_s: float = 30.0) -> None:
    """Until ``/readyz`` is 200 again (the sidecar re-checks its backends by itself)."""
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if client.get(f"{url}/readyz").status_code == 200:
                return
            time.sleep(0.1)  # polling interval, not a synchronisation point
    raise RuntimeError(f"sidecar at {url} not ready again after {deadline_s}s")


def _upstream(workdir: Path, delay_ms: int = 0) -> tuple[ManagedProcess, int]:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.fast_upstream", str(port), str(delay_ms)]
    proc = ManagedProcess("upstream", command, workdir / "upstream.log").start()
    proc.wait_ready(f"http://127.0.0.1:{port}/healthz", 30)
    return proc, port


def _envoy(workdir: Path, upstream_port: int, listeners: list[ExtProcListener]) -> ManagedProcess:
    admin = free_port()
    path = write_bootstrap(workdir / "envoy.yaml", bootstrap(admin, upstream_port, listeners))
    envoy = ManagedProcess("envoy", envoy_command(path), workdir / "envoy.log").start()
    envoy.wait_ready(f"http://127.0.0.1:{admin}/ready", 60)
    return envoy


def _through_envoy(port: int, questions: list[str], threads: int) -> dict[str, int]:
    """POSTs each question through an Envoy listener; counts outcomes. The fake provider's
    answer names the question, so an answer for another question is a wrong answer."""
    counts = {"ok": 0, "failed": 0, "wrong": 0}
    lock = threading.Lock()
    queue = iter(questions)

    def worker() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while True:
                with lock:
                    q = next(queue, None)
                if q is None:
                    return
                try:
                    reply = client.post(CHAT, content=orjson.dumps(chat_body(q)))
                except httpx.HTTPError:
                    outcome = "failed"
                else:
                    outcome = _judge(reply, q)
                with lock:
                    counts[outcome] += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return counts


def _judge(reply: httpx.Response, question: str) -> str:
    if reply.status_code != 200:
        return "failed"
    try:
        text = reply.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "wrong"
    return "ok" if str(text).endswith(question[:200]) else "wrong"


def scenario_envoy_killed(workdir: Path, budget: int) -> dict[str, Any]:
    upstream, upstream_port = _upstream(workdir)
    sidecar = Sidecar(
        workdir,
        "sidecar-envoy",
        {"cache": {"data_dir": ":memory:"}, "server": {"grpc_enabled": True}},
    )
    processes: list[ManagedProcess] = [upstream]
    phases: dict[str, dict[str, dict[str, int]]] = {}
    try:
        sidecar.start()
        listeners = [
            ExtProcListener("open", free_port(), sidecar.grpc_port, failure_mode_allow=True),
            ExtProcListener("closed", free_port(), sidecar.grpc_port, failure_mode_allow=False),
        ]
        envoy = _envoy(workdir, upstream_port, listeners)
        processes.append(envoy)
        per = max(4, budget // 6)
        with LivenessProbe(sidecar.url, sidecar.health_url) as probe:
            for phase in ("alive", "killed", "restarted"):
                if phase == "killed":
                    sidecar.kill9()
                    sidecar.stop()
                elif phase == "restarted":
                    sidecar.start()
                    _wait_grpc_healthy(listeners[1].port)
                phases[phase] = {
                    spec.name: _through_envoy(
                        spec.port, [_question(f"{phase}-{spec.name}", n) for n in range(per)], 8
                    )
                    for spec in listeners
                }
    finally:
        sidecar.stop()
        for proc in reversed(processes):
            proc.stop()
    # Open: every request must pass in every phase. Closed: pass while the sidecar runs, fail
    # while it is down.
    should_pass_failed = sum(p["open"]["failed"] for p in phases.values()) + sum(
        phases[ph]["closed"]["failed"] for ph in ("alive", "restarted")
    )
    should_fail_passed = phases["killed"]["closed"]["ok"] + phases["killed"]["closed"]["wrong"]
    wrong = sum(c["wrong"] for p in phases.values() for c in p.values())
    return {
        "phases": phases,
        "served_wrong": wrong,
        "failed_should_pass": should_pass_failed,
        "passed_should_fail": should_fail_passed,
        "acknowledged_lost": 0,
        "corrupt": 0,
        "liveness_worst_ms": probe.to_json()["worst_ms"],
        "health_port_worst_ms": probe.health_worst_ms,
        "liveness_percentiles": probe.percentiles(),
    }


def _wait_grpc_healthy(port: int, deadline_s: float = 30.0) -> None:
    """Until a fail-closed listener passes a request again: Envoy reconnects to the restarted
    ext_proc server by itself (its health check runs every 5 s)."""
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                body = orjson.dumps(chat_body("warm-up after restart"))
                reply = client.post(f"http://127.0.0.1:{port}{CHAT}", content=body)
                if reply.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling interval, not a synchronisation point
    raise RuntimeError("Envoy did not reach the restarted sidecar")


def scenario_slow_provider(workdir: Path, budget: int) -> dict[str, Any]:
    upstream, upstream_port = _upstream(workdir, delay_ms=1000)
    sidecar = Sidecar(
        workdir,
        "sidecar-slow",
        {"cache": {"data_dir": ":memory:"}, "server": {"grpc_enabled": True}},
    )
    processes = [upstream]
    try:
        sidecar.start()
        spec = ExtProcListener("slow", free_port(), sidecar.grpc_port, failure_mode_allow=False)
        processes.append(_envoy(workdir, upstream_port, [spec]))
        with (
            LivenessProbe(sidecar.url, sidecar.health_url) as probe,
            RssSampler(sidecar.pid) as rss,
        ):
            counts = _through_envoy(spec.port, [_question("slow", n) for n in range(budget)], 32)
    finally:
        sidecar.stop()
        for proc in reversed(processes):
            proc.stop()
    return {
        "requests": budget,
        **counts,
        "served_wrong": counts["wrong"],
        "failed_should_pass": counts["failed"],
        "acknowledged_lost": 0,
        "corrupt": 0,
        **rss.to_json(),
        "liveness_worst_ms": probe.to_json()["worst_ms"],
        "health_port_worst_ms": probe.health_worst_ms,
        "liveness_percentiles": probe.percentiles(),
    }


def scenario_pending_flood(workdir: Path, budget: int) -> dict[str, Any]:
    sidecar = Sidecar(
        workdir,
        "sidecar-flood",
        {
            "cache": {"data_dir": ":memory:"},
            "server": {
                "grpc_enabled": False,
                "max_pending_bytes": PENDING_CAP,
                "max_body_bytes": BODY_CAP,
            },
        },
    )
    blob = "x" * (1 * 2**20)
    statuses: dict[str, int] = {}
    first: dict[str, Any] | None = None
    lock = threading.Lock()
    try:
        sidecar.start()
        with (
            LivenessProbe(sidecar.url, sidecar.health_url) as probe,
            RssSampler(sidecar.pid) as rss,
        ):
            queue = iter(range(budget))

            def worker() -> None:
                nonlocal first
                client = HookClient(sidecar.url)
                try:
                    while (n := next(queue, None)) is not None:
                        reply = client.request(_question("flood", n), metadata={"blob": blob})
                        with lock:
                            key = str(reply.status_code)
                            statuses[key] = statuses.get(key, 0) + 1
                            if first is None and reply.status_code == 200:
                                first = reply.json()
                finally:
                    client.close()

            pool = [threading.Thread(target=worker) for _ in range(8)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            # The earliest pending request must still complete: nothing was evicted.
            completed = False
            if first is not None:
                client = HookClient(sidecar.url)
                completed = client.respond(first, "late answer").status_code == 200
                client.close()
    finally:
        sidecar.stop()
    allowed_mb = (PENDING_CAP + 8 * BODY_CAP) / 2**20 + RSS_SLACK_MB
    return {
        "requests": budget,
        "statuses": statuses,
        "earliest_pending_completed": completed,
        "failed_should_pass": 0 if completed else 1,
        "served_wrong": 0,
        "acknowledged_lost": 0,
        "corrupt": 0,
        **rss.to_json(),
        "rss_allowed_over_ready_mb": round(allowed_mb, 1),
        "liveness_worst_ms": probe.to_json()["worst_ms"],
        "health_port_worst_ms": probe.health_worst_ms,
        "liveness_percentiles": probe.percentiles(),
    }


SCENARIOS = (
    "kill9-embedded",
    "kill9-redis",
    "redis-restart",
    "envoy-sidecar-killed",
    "slow-provider",
    "pending-flood",
)


def run(quick: bool, only: Sequence[str] = SCENARIOS) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    budget = 60 if quick else 200
    rounds = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="sidecar-faults-") as tmp:
        root = Path(tmp)

        def attempt(name: str, fn: Callable[[Path], dict[str, Any]]) -> None:
            if name not in only:
                return
            where = root / name
            where.mkdir()
            print(f"[faults] {name}", flush=True)
            try:
                scenarios[name] = fn(where)
            except Exception as exc:  # a scenario that cannot run is reported, not hidden
                scenarios[name] = {"error": f"{type(exc).__name__}: {exc}"}

        attempt("kill9-embedded", lambda d: scenario_kill9(d, "embedded", rounds, budget))
        if redis_server() is None:
            for name in ("kill9-redis", "redis-restart"):
                if name in only:
                    scenarios[name] = {"error": "redis-server not installed"}
        else:
            attempt("kill9-redis", lambda d: scenario_kill9(d, "redis", rounds, budget))
            attempt("redis-restart", lambda d: scenario_redis_restart(d, budget * 2))
        attempt("envoy-sidecar-killed", lambda d: scenario_envoy_killed(d, budget))
        attempt("slow-provider", lambda d: scenario_slow_provider(d, budget))
        attempt("pending-flood", lambda d: scenario_pending_flood(d, 40 if quick else 200))
    return {"name": "faults", "machine": machine(), "quick": quick, "scenarios": scenarios}


COLUMNS = (
    ("served_wrong", "wrong"),
    ("acknowledged_lost", "ack lost"),
    ("corrupt", "corrupt"),
    ("failed_should_pass", "failed/should pass"),
    ("passed_should_fail", "passed/should fail"),
    ("peak_over_ready_mb", "peak RSS +MB"),
    ("liveness_worst_ms", "liveness worst ms"),
    ("health_port_worst_ms", "health_port worst ms"),
)


def table(result: dict[str, Any]) -> str:
    lines = [
        "| scenario | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name, row in result["scenarios"].items():
        if "error" in row:
            lines.append(f"| {name} | not run: {row['error']} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = [str(row.get(key, "-")) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    rows: list[SummaryRow] = []
    for name, row in result["scenarios"].items():
        if "error" in row:
            continue
        bad = row["served_wrong"] + row["acknowledged_lost"] + row["corrupt"]
        rows.append(
            SummaryRow(
                "faults",
                f"{name}: wrong + lost + corrupt",
                bad,
                "count",
                target="0",
                met=bad == 0
                and row["failed_should_pass"] == 0
                and row.get("passed_should_fail", 0) == 0,
                show_ratio=False,
            )
        )
        rows.append(
            SummaryRow(
                "faults",
                f"{name}: liveness worst",
                row["liveness_worst_ms"],
                "ms",
                target="< 100 ms",
                met=row["liveness_worst_ms"] < LIVENESS_MS,
                note="GET /healthz on the hook port (answered by the event loop)",
                show_ratio=False,
            )
        )
        if row.get("health_port_worst_ms") is not None:
            rows.append(
                SummaryRow(
                    "faults",
                    f"{name}: liveness worst (server.health_port)",
                    row["health_port_worst_ms"],
                    "ms",
                    target="< 100 ms",
                    met=row["health_port_worst_ms"] < LIVENESS_MS,
                    note="GET /healthz on the liveness listener's own thread and port",
                    show_ratio=False,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, smaller budgets")
    parser.add_argument("--out", default=None, help="JSON result path")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios among {', '.join(SCENARIOS)} (default: all)",
    )
    args = parser.parse_args(argv)
    only = [o.strip() for o in args.only.split(",") if o.strip()]
    if set(only) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(set(only) - set(SCENARIOS)))}")
    result = run(args.quick, only)
    result["summary"] = [row.to_json() for row in summary(result)]
    result["table"] = table(result)
    print(result["table"])
    path = write_result("faults", result, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
