"""The overload scenario of ``benchmarks/miss_bench.py`` (issue 16), and the sidecar counters
read around every run (split from it: the file had grown past ~600 lines).

Misses offered open-loop at a fixed rate through the listener with Envoy's default 200 ms
message timeout, exact hits paced at 100/s beside them on their own connections; the
sidecar's counters, Envoy's ext_proc counters of that listener, the CPU per request of the
sidecar and of Envoy, and the sidecar's own event-loop lag gauge sampled meanwhile.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from benchmarks.extproc_floor_bench import cpu_seconds
from benchmarks.miss_report import LOOKUP_PATHS, label
from benchmarks.report import latency_stats
from benchmarks.stack import metric_value, paced_spec, run_loadgen, sample_sum

if TYPE_CHECKING:
    from benchmarks.miss_bench import Stack

STATUS = "x-bf-cache-status"
#: Envoy's counters of streams failed at the ext_proc cluster's circuit breaker: over
#: ``max_requests`` (Envoy 1.40; older Envoys counted it as pending overflow) or over
#: ``max_pending_requests`` (waiting for a connection)
OVERFLOW_COUNTERS = ("upstream_rq_active_overflow", "upstream_rq_pending_overflow")


def result_of(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "rps": run["rps"],
        "sequences": run["sequences"],
        "latency": latency_stats(run["sequence_latency_s"]),
        "max_ms": round(max(run["sequence_latency_s"], default=0.0) * 1000, 3),
        "statuses": run["statuses"],
        "counts": run["counts"],
        "errors": run["errors"],
    }


def sidecar_counters(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text  # one read: every figure from it
    out = {
        f"lookups_{p}": sample_sum(text, "sidecar_cache_semantic_lookups_total", f'"{p}"')
        for p in LOOKUP_PATHS
    }
    for name in (
        "sidecar_cache_misses_total",
        "sidecar_cache_hits_total",
        "sidecar_cache_stores_total",
        "sidecar_cache_vectors_added_late_total",
        "sidecar_cache_vector_drops_total",
        "sidecar_cache_vector_backlog",
        "sidecar_embedding_seconds_sum",
        "sidecar_embedding_seconds_count",
        "sidecar_embedding_queue_wait_max_seconds",
    ):
        out[name.removeprefix("sidecar_")] = sample_sum(text, name)
    out["semantic_hits"] = sample_sum(text, "sidecar_cache_hits_total", '"semantic"')
    # queue waits counted in this window (the max above is the process's since start): all,
    # and those within the budget + 5 ms (a bucket bound); absent before the histogram existed
    out["embedding_queue_waits"] = sample_sum(text, "sidecar_embedding_queue_wait_seconds_count")
    out["embedding_queue_waits_within_55ms"] = sample_sum(
        text, "sidecar_embedding_queue_wait_seconds_bucket", 'le="0.055"'
    )
    for work in ("semantic_lookup", "early_vector", "store", "extproc_stream"):
        out[f"shed_{work}"] = sample_sum(text, "sidecar_overload_shed_total", f'"{work}"')
    # of which refused for their own wait in the transport (Envoy's request.time)
    out["shed_extproc_stream_transport_wait"] = sample_sum(
        text, "sidecar_overload_shed_total", 'cause="transport_wait",work="extproc_stream"'
    )
    for kind in ("loop_busy", "not_scheduled", "blocked", "unknown"):
        # what the loop's thread did during its stalls (absent before that counter existed)
        out[f"loop_stalls_{kind}"] = sample_sum(
            text, "sidecar_event_loop_stalls_total", f'kind="{kind}"'
        )
    out["event_loop_lag_seconds"] = sample_sum(text, "sidecar_event_loop_lag_seconds")
    out["extproc_round_trip_seconds"] = sample_sum(text, "sidecar_extproc_round_trip_seconds")
    return out


def settled_counters(base: str, limit_s: float = 15.0) -> dict[str, float]:
    """The counters once requests still in flight in the sidecar have finished."""
    deadline = time.monotonic() + limit_s
    last = sidecar_counters(base)
    while time.monotonic() < deadline:
        time.sleep(0.5)  # polling another process's counters, not synchronisation
        now = sidecar_counters(base)
        if now == last:
            break
        last = now
    return last


#: counters read as gauges (the latest or largest value), not counted up over a run
GAUGES = (
    "cache_vector_backlog",
    "embedding_queue_wait_max_seconds",
    "event_loop_lag_seconds",
    "extproc_round_trip_seconds",
)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v if k in GAUGES else v - before.get(k, 0.0), 6) for k, v in after.items()}


def profiled(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy (when installed) sampling the sidecar for ``seconds``: where its time goes."""
    try:
        return subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "speedscope",
                "--output",
                str(out),
                "--threads",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        print("py-spy is not installed: no profile")
        return None


def overload_run(
    stack: Stack,
    name: str,
    misses: list[list[str]],
    exact: list[list[str]],
    offered: float,
    overload_s: float,
    workdir: Path,
    profile: Path | None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[float]]:
    """Misses offered open-loop at ``offered``/s through the 200 ms listener of variant
    ``name`` (``stack.sidecar_of``: its sidecar; ``stack.clusters``: its Envoy cluster), exact
    hits paced at 100/s beside them on their own connections. Returns the
    misses' and the hits' load-generator runs, the counters and the sampled loop lags."""
    sidecar = stack.sidecar_of[name]
    url, port = stack.urls[sidecar], stack.ports[f"{name}-200ms"]
    # The sidecar was stopped while the others ran: the deferred vectors of its own round
    # before must not run into this one.
    deadline = time.monotonic() + 120
    while metric_value(url, "sidecar_cache_vector_backlog") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # polling another process, not synchronisation
    before_counts = sidecar_counters(url)
    timeouts_before = stack.envoy_counter("timeout")
    ext_proc_prefix = f"http.{name}-200ms.ext_proc."
    ext_proc_before = stack.envoy_stats(ext_proc_prefix)
    # the ext_proc cluster's circuit breaker: streams Envoy failed at the bound (never sent)
    cluster_prefix = f"cluster.{stack.clusters[name]}."
    cluster_before = stack.envoy_stats(cluster_prefix)
    pids = {"sidecar": stack.pids[sidecar], "envoy": stack.pids["envoy"]}
    cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
    miss_spec = paced_spec(port, misses, offered, overload_s, 256, {"miss": f"{STATUS}: miss"})
    hit_spec = paced_spec(port, exact, 100.0, overload_s, 4, {"hit": f"{STATUS}: hit-exact"})
    subs = (workdir / f"{name}-m", workdir / f"{name}-h")
    for sub in subs:
        sub.mkdir(parents=True, exist_ok=True)
    spy = None
    if profile is not None and not profile.with_suffix(f".{name}.json").exists():
        spy = profiled(stack.pids[sidecar], profile.with_suffix(f".{name}.json"), overload_s)
    lags: list[float] = []
    with ThreadPoolExecutor(3) as pool:
        miss_future = pool.submit(run_loadgen, subs[0], miss_spec)
        hit_future = pool.submit(run_loadgen, subs[1], hit_spec)
        while not (miss_future.done() and hit_future.done()):
            # the sidecar's own event-loop lag gauge, sampled (through its /metrics)
            try:
                lags.append(metric_value(url, "sidecar_event_loop_lag_seconds"))
            except httpx.HTTPError:
                lags.append(-1.0)  # /metrics itself did not answer within 10 s
            time.sleep(0.25)  # the sampling period, not synchronisation
        miss_run, hit_run = miss_future.result(), hit_future.result()
    if spy is not None:
        spy.wait(60)
    timeouts = stack.envoy_counter("timeout") - timeouts_before
    over = delta(settled_counters(url), before_counts)
    ext_proc = {
        k: v - ext_proc_before.get(k, 0)
        for k, v in stack.envoy_stats(ext_proc_prefix).items()
        if v - ext_proc_before.get(k, 0)
    }
    cluster = {
        k: v - cluster_before.get(k, 0)
        for k, v in stack.envoy_stats(cluster_prefix).items()
        if k in OVERFLOW_COUNTERS
    }
    requests = miss_run["sequences"] + hit_run["sequences"]
    cpu_us = {
        f"{n}_cpu_us_per_request": round((cpu_seconds(pids[n]) - c) / max(1, requests) * 1e6)
        for n, c in cpu_before.items()
    }
    counted = {
        **over,
        "envoy_timeout_counters": timeouts,
        "envoy_ext_proc": ext_proc,
        # streams over the cluster's bound: failed in Envoy, their requests sent on uncached
        "envoy_streams_overflowed": sum(cluster.values()),
        "requests": requests,
        # exact hits answered by the provider instead (overflowed at Envoy, refused by the
        # sidecar, timed out): a miss passed on uncached has no header of its own to tell
        "hits_lost": hit_run["sequences"] - hit_run["counts"].get("hit", 0),
        **cpu_us,
    }
    return miss_run, hit_run, counted, lags


def _merged_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One load-generator result from several rounds': latencies pooled, counts summed."""
    out = dict(runs[0])
    out["sequences"] = sum(r["sequences"] for r in runs)
    out["seconds"] = sum(r["seconds"] for r in runs)
    out["rps"] = round(out["sequences"] / out["seconds"], 1) if out["seconds"] else 0.0
    out["sequence_latency_s"] = [x for r in runs for x in r["sequence_latency_s"]]
    for key in ("statuses", "counts"):
        summed: dict[str, int] = {}
        for r in runs:
            for k, v in r[key].items():
                summed[k] = summed.get(k, 0) + v
        out[key] = summed
    out["errors"] = [e for r in runs for e in r["errors"]][:5]
    return out


def _merged_counters(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters summed over rounds; gauges their largest value, CPU per request the mean."""
    out: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        if isinstance(values[0], dict):
            out[key] = {k: sum(v.get(k, 0) for v in values) for k in set().union(*values)}
        elif key in GAUGES:
            out[key] = max(values)
        elif key.endswith("_per_request"):
            out[key] = round(sum(values) / len(values))
        else:
            out[key] = round(sum(values), 6)
    return out


def overload_rounds(
    stack: Stack,
    names: Sequence[str],
    misses_for: Callable[[str, int], list[list[str]]],
    exact: list[list[str]],
    offered: float,
    overload_s: float,
    rounds: int,
    paused: Callable[[str], AbstractContextManager[None]],
    profile: Path | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The overload on each sidecar of ``names`` in turn, ``rounds`` times, the order
    reversed every other round (on a shared machine the load of other jobs drifts over
    minutes; alternating puts both sidecars under the same drift). ``misses_for(name,
    round)``: that run's fresh misses; ``paused(name)``: every other sidecar stopped while
    ``name`` runs. Returns the results and counters per sidecar, rounds pooled."""
    runs: dict[str, list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[float]]]]
    runs = {n: [] for n in names}
    for turn in range(rounds):
        for name in names if turn % 2 == 0 else list(reversed(names)):
            with paused(name):
                runs[name].append(
                    overload_run(
                        stack,
                        name,
                        misses_for(name, turn),
                        exact,
                        offered,
                        overload_s,
                        stack.workdir / f"round{turn}",
                        profile,
                    )
                )
    results: dict[str, Any] = {}
    counters: dict[str, Any] = {}
    for name, done in runs.items():
        results[label(name, "overload: misses")] = {
            "loaded": result_of(_merged_run([d[0] for d in done]))
        }
        results[label(name, "overload: exact hits")] = {
            "loaded": result_of(_merged_run([d[1] for d in done]))
        }
        lags = sorted(x for d in done for x in d[3])
        counters[label(name, "overload")] = {
            **_merged_counters([d[2] for d in done]),
            "rounds": len(done),
            "envoy_timeouts_per_round": [d[2]["envoy_timeout_counters"] for d in done],
            "loop_lag_samples": len(lags),
            "loop_lag_p50_ms": round(lags[len(lags) // 2] * 1000, 1) if lags else None,
            "loop_lag_max_ms": round(lags[-1] * 1000, 1) if lags else None,
        }
    return results, counters
