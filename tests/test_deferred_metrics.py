"""Counts the exact-hit path defers (``sidecar/deferred_metrics.py``) are in every read of the
registry, with the values direct prometheus_client calls give.

End to end: exact hits through the real Envoy and ``sidecar serve``, /metrics read after each
one: every counter and histogram of a hit has moved by exactly that hit, the cost by the very
float addition a direct ``inc`` makes. Then the replay itself against prometheus_client on
its own registry: the same exposition for the same calls (bucket edges, NaN, fractions), and
the bound on what waits.
"""

from __future__ import annotations

import math
import re

import httpx
import pytest
from envoy_harness import EnvoyStack
from extproc_scenarios import chat
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar.deferred_metrics import MAX_PENDING, DeferredMetrics
from sidecar.metrics import partition_hash
from sidecar.pricing import load_prices

_SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")


def _samples(text: str) -> dict[tuple[str, frozenset[str]], float]:
    out = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            out[(name, frozenset((labels or "").split(",")))] = float(value)
    return out


def _value(samples: dict[tuple[str, frozenset[str]], float], name: str, *labels: str) -> float:
    for (sample, have), value in samples.items():
        if sample == name and set(labels) <= have:
            return value
    return 0.0


def test_each_exact_hit_is_in_the_next_metrics_read(stack: EnvoyStack) -> None:
    sidecar = stack.sidecars["main"]
    partition = "deferred-metrics"
    body = chat("How many moons does Mars have?")
    price = load_prices("").price("gpt-4o-mini")
    assert price is not None
    cost = 5 * price.input_per_token + 5 * price.output_per_token  # the fake's usage: 5 + 5

    def scrape() -> dict[tuple[str, frozenset[str]], float]:
        reply = httpx.get(f"{sidecar.http_url}/metrics", headers=sidecar.headers, timeout=10)
        return _samples(reply.raise_for_status().text)

    hit = 'cache_status="hit-exact"'
    model = ('model="gpt-4o-mini"', 'layer="exact"')
    counted = {
        "requests": ("sidecar_requests_total", 'transport="extproc"', hit),
        "partition": (
            "sidecar_partition_requests_total",
            f'partition="{partition_hash(partition)}"',
            hit,
        ),
        "hits": ("sidecar_cache_hits_total", 'hit_type="exact"'),
        "hook_times": ("sidecar_request_seconds_count", hit),
        "hook_times_inf": ("sidecar_request_seconds_bucket", hit, 'le="+Inf"'),
        "lookup_times": ("sidecar_cache_lookup_seconds_count", 'layer="exact"'),
    }
    headers = {"x-bf-cache-key": partition}
    with httpx.Client(base_url=stack.url("main"), headers=headers, timeout=30) as client:
        # a miss that stores, then a hit the slow path serves and the memo remembers
        for _ in range(2):
            client.post("/v1/chat/completions", json=body).raise_for_status()
        before = scrape()
        for _ in range(5):
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.headers["x-bf-cache-status"] == "hit-exact"
            after = scrape()
            for name, (metric, *labels) in counted.items():
                assert _value(after, metric, *labels) == _value(before, metric, *labels) + 1, name
            tokens = ("sidecar_tokens_saved_total", *model)
            assert _value(after, *tokens) == _value(before, *tokens) + 10
            saved = ("sidecar_cost_saved_usd_total", *model)
            assert _value(after, *saved) == _value(before, *saved) + cost  # bit for bit
            took = ("sidecar_request_seconds_sum", hit)
            assert _value(after, *took) > _value(before, *took)
            before = after


def _twin_registries() -> tuple[CollectorRegistry, CollectorRegistry, DeferredMetrics]:
    """(direct, deferred): the same metrics, the second with a DeferredMetrics first."""
    direct, deferred_registry = CollectorRegistry(), CollectorRegistry()
    deferred = DeferredMetrics(deferred_registry)
    return direct, deferred_registry, deferred


def _exposition(registry: CollectorRegistry) -> list[str]:
    # _created is when each child was made: the one line allowed to differ
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_replayed_counts_expose_what_direct_calls_expose() -> None:
    direct, deferred_registry, deferred = _twin_registries()
    metrics = []
    for registry in (direct, deferred_registry):
        metrics.append(
            (
                Counter("c", "counts", ["kind"], registry=registry),
                Counter("f", "fractions", ["kind"], registry=registry),
                Histogram("h", "times", ["kind"], buckets=(0.001, 0.01, 1.0), registry=registry),
            )
        )
    (c, f, h), (dc, df, dh) = metrics
    together = deferred.counts([(dc.labels("a"), 1.0)])
    fractions = deferred.counter(df.labels("a"))
    assert deferred.counter(df.labels("a")) is fractions  # one per child: one order
    both = deferred.counts([(dc.labels("b"), 3.0), (fractions, 0.1)])
    times = deferred.histogram(dh.labels("a"))
    amounts = [0.0005, 0.001, 0.0010000001, 0.01, 5.0, -1.0, math.nan, 0.3, 0.7, 1e-9]
    for i, amount in enumerate(amounts):
        c.labels("a").inc(1.0)
        together.add()
        c.labels("b").inc(3.0)
        f.labels("a").inc(0.1)
        both.add()
        f.labels("a").inc(i / 7)
        fractions.inc(i / 7)
        h.labels("a").observe(amount)
        times.observe(amount)
    assert _exposition(deferred_registry) == _exposition(direct)
    assert "nan" in " ".join(_exposition(direct)).lower()  # the NaN reached both sums


def test_what_waits_is_bounded() -> None:
    _, registry, deferred = _twin_registries()
    histogram = Histogram("h", "times", registry=registry)
    counter = Counter("c", "counts", ["kind"], registry=registry)
    times = deferred.histogram(histogram)
    for _ in range(MAX_PENDING):
        times.observe(0.5)
    # applied at the bound without a read of the registry (the metric's own collect)
    counted = [s.value for s in histogram.collect()[0].samples if s.name == "h_count"]
    assert counted == [MAX_PENDING]
    pending = [deferred.counts([(counter.labels(str(i)), 1.0)]) for i in range(MAX_PENDING)]
    for counts in pending:
        counts.add()
    assert all(s.value == 1.0 for s in counter.collect()[0].samples if s.name == "c_total")


def test_a_fraction_needs_a_deferred_counter() -> None:
    _, registry, deferred = _twin_registries()
    counter = Counter("c", "counts", registry=registry)
    # counted as a multiplication, a fraction's sum would depend on the order of the hits
    with pytest.raises(ValueError, match="DeferredCounter"):
        deferred.counts([(counter, 0.5)])
