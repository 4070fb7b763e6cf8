"""The dashboard's figures, read from the sidecar's own Prometheus registry.

Nothing here scans the cache: every figure is a counter or histogram the sidecar keeps anyway
(the same ones ``/metrics`` shows, so the page and ``/metrics`` agree by construction), and
their series are bounded by ``metrics.max_label_values``. Reading them costs the same with
100 entries or 100,000.

Hit rates are hits over all requests the request hook saw (bypasses included), as in the
Grafana dashboard of compose/. Latency percentiles are estimated from the histogram buckets
the way Prometheus's ``histogram_quantile`` does (linear within a bucket), over the life of
the process.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

#: outcome columns of the guardrail table, from the engine's outcome names
OUTCOME_GROUPS = {
    "blocked": "blocked",
    "redacted": "redacted",
    "rewritten": "redacted",
    "restored": "redacted",
    "detected": "detected",
    "error_blocked": "errors",
    "error_allowed": "errors",
}
PATHS = ("hit-exact", "hit-semantic", "miss", "bypass")
TOP_PARTITIONS = 25


@dataclass
class Counters:
    """One reading of the counters the dashboard shows."""

    requests: dict[str, float] = field(default_factory=dict)  # by cache status
    hits: dict[str, float] = field(default_factory=dict)  # by hit type
    tokens_saved: float = 0.0
    cost_saved_usd: float = 0.0
    savings: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (model, layer)
    cost_unknown_hits: float = 0.0
    guardrails: dict[str, dict[str, float]] = field(default_factory=dict)  # rule -> group -> n
    partitions: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> status -> n
    latency_buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=dict)
    latency_count: dict[str, float] = field(default_factory=dict)

    @property
    def total_requests(self) -> float:
        return sum(self.requests.values())


def read_counters(registry: CollectorRegistry) -> Counters:
    out = Counters()
    savings: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    guard: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(_GROUP_NAMES, 0.0))
    parts: dict[str, dict[str, float]] = defaultdict(dict)
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for family in registry.collect():
        name = family.name
        if name not in _READ:
            continue
        for s in family.samples:
            labels = s.labels
            if s.name == "sidecar_requests_total":
                status = labels["cache_status"]
                out.requests[status] = out.requests.get(status, 0.0) + s.value
            elif s.name == "sidecar_cache_hits_total":
                out.hits[labels["hit_type"]] = s.value
            elif s.name == "sidecar_tokens_saved_total":
                out.tokens_saved += s.value
                savings[(labels["model"], labels["layer"])][0] += s.value
            elif s.name == "sidecar_cost_saved_usd_total":
                out.cost_saved_usd += s.value
                savings[(labels["model"], labels["layer"])][1] += s.value
            elif s.name == "sidecar_cost_unknown_hits_total":
                out.cost_unknown_hits += s.value
            elif s.name == "guardrail_decisions_total":
                group = OUTCOME_GROUPS.get(labels["outcome"])
                if group is not None:
                    guard[labels["rule"]][group] += s.value
            elif s.name == "sidecar_partition_requests_total":
                row = parts[labels["partition"]]
                row[labels["cache_status"]] = row.get(labels["cache_status"], 0.0) + s.value
            elif s.name == "sidecar_request_seconds_bucket":
                buckets[labels["cache_status"]].append((float(labels["le"]), s.value))
            elif s.name == "sidecar_request_seconds_sum":
                out.latency_sum[labels["cache_status"]] = s.value
            elif s.name == "sidecar_request_seconds_count":
                out.latency_count[labels["cache_status"]] = s.value
    out.savings = dict(savings)
    out.guardrails = dict(guard)
    out.partitions = dict(parts)
    out.latency_buckets = {k: sorted(v) for k, v in buckets.items()}
    return out


_GROUP_NAMES = ("blocked", "redacted", "detected", "errors")
# family names as prometheus_client reports them (counters without their _total suffix)
_READ = frozenset(
    {
        "sidecar_requests",
        "sidecar_cache_hits",
        "sidecar_tokens_saved",
        "sidecar_cost_saved_usd",
        "sidecar_cost_unknown_hits",
        "guardrail_decisions",
        "sidecar_partition_requests",
        "sidecar_request_seconds",
    }
)


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile (0..1) of a cumulative histogram, ``histogram_quantile``'s way: linear
    interpolation inside the bucket that holds the rank; the highest finite bound when it
    falls in the +Inf bucket. None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _rate(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def summary(c: Counters) -> dict[str, Any]:
    """The figures of the page (JSON-ready)."""
    total = c.total_requests
    exact, semantic = c.hits.get("exact", 0.0), c.hits.get("semantic", 0.0)
    latency = {}
    for path in PATHS:
        buckets = c.latency_buckets.get(path, [])
        entry: dict[str, Any] = {"count": int(c.latency_count.get(path, 0.0))}
        for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            value = bucket_quantile(q, buckets)
            entry[name] = None if value is None else round(value * 1000, 4)
        latency[path] = entry
    partitions = sorted(c.partitions.items(), key=lambda kv: -sum(kv[1].values()))
    return {
        "totals": {
            "requests": int(total),
            "hit_exact": int(exact),
            "hit_semantic": int(semantic),
            "miss": int(c.requests.get("miss", 0.0)),
            "bypass": int(c.requests.get("bypass", 0.0)),
            "hit_rate_exact": round(_rate(exact, total), 4),
            "hit_rate_semantic": round(_rate(semantic, total), 4),
            "tokens_saved": int(c.tokens_saved),
            "cost_saved_usd": c.cost_saved_usd,
            "cost_unknown_hits": int(c.cost_unknown_hits),
            "guardrail_blocks": int(sum(g["blocked"] for g in c.guardrails.values())),
        },
        "latency": latency,
        "savings": [
            {"model": m, "layer": layer, "tokens": int(v[0]), "cost_usd": v[1]}
            for (m, layer), v in sorted(c.savings.items())
        ],
        "guardrails": [
            {"rule": rule, **{k: int(v) for k, v in groups.items()}}
            for rule, groups in sorted(c.guardrails.items())
            if any(groups.values())
        ],
        "partitions": [
            {
                "partition": p,
                "requests": int(sum(row.values())),
                **{status: int(row.get(status, 0.0)) for status in PATHS},
            }
            for p, row in partitions[:TOP_PARTITIONS]
        ],
        "partitions_shown": min(len(partitions), TOP_PARTITIONS),
        "partitions_total": len(partitions),
    }


def series_point(t: float, c: Counters) -> tuple[float, float, float, float, float, float]:
    """What the time series keeps of one reading: time, requests, exact and semantic hits,
    tokens and money saved (cumulative; the page takes differences)."""
    return (
        t,
        c.total_requests,
        c.hits.get("exact", 0.0),
        c.hits.get("semantic", 0.0),
        c.tokens_saved,
        c.cost_saved_usd,
    )


def series_json(points: Iterable[tuple[float, ...]]) -> dict[str, list[float | None]]:
    """Per interval between consecutive samples: requests per second and hit rates; plus the
    cumulative savings at each sample."""
    out: dict[str, list[float | None]] = {
        "t": [],
        "rps": [],
        "hit_rate_exact": [],
        "hit_rate_semantic": [],
        "tokens_saved": [],
        "cost_saved_usd": [],
    }
    previous: tuple[float, ...] | None = None
    for point in points:
        if previous is not None and point[0] > previous[0]:
            t, requests, exact, semantic, tokens, cost = point
            d_req = requests - previous[1]
            out["t"].append(round(t, 3))
            out["rps"].append(round(d_req / (t - previous[0]), 3))
            # no request in the interval: no rate (a gap in the chart), not a rate of 0
            out["hit_rate_exact"].append(
                round((exact - previous[2]) / d_req, 4) if d_req > 0 else None
            )
            out["hit_rate_semantic"].append(
                round((semantic - previous[3]) / d_req, 4) if d_req > 0 else None
            )
            out["tokens_saved"].append(tokens)
            out["cost_saved_usd"].append(cost)
        previous = point
    return out
