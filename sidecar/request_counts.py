"""The per-request metrics ``Pipeline.on_request`` keeps: requests by transport and status,
hook time by status, requests by partition, hits, misses, bypasses and what hits saved.

Labelled children are cached: prometheus_client's ``labels()`` takes a lock and checks its
arguments on every call, a measurable share of an exact hit. An exact hit served from the
hit path's memo (``sidecar/hit_path.py``) counts through ``exact_hit_counts``: the same
children and amounts, resolved once per remembered entry instead of per request, and
counted in plain ints until the registry is read (``sidecar/deferred_metrics.py``). Hook
times are observed through deferred histograms for every status.
"""

from __future__ import annotations

from typing import Any

from sidecar.cache.keys import CachePlan
from sidecar.cache.layer import CacheStatus
from sidecar.cache.model import Usage
from sidecar.context import CacheInfo
from sidecar.deferred_metrics import DeferredHistogram, PendingCounts
from sidecar.labels import OTHER
from sidecar.metrics import Metrics, partition_hash
from sidecar.pricing import PriceTable

#: (metric child, amount) pairs: what one request adds
Counts = tuple[tuple[Any, float], ...]
EXACT = "exact"  # the hit type of an exact hit (``CacheInfo.hit_type``)


class RequestCounts:
    def __init__(self, metrics: Metrics, prices: PriceTable) -> None:
        self.metrics = metrics
        self.prices = prices
        self._partition_children: dict[tuple[str, str], Any] = {}
        self._other_children: dict[str, Any] = {}  # status -> the ``other`` partition's child
        self._savings_children: dict[tuple[str, str], Any] = {}
        self._request_timers: dict[CacheStatus, DeferredHistogram] = {}
        self._request_counters: dict[tuple[str, CacheStatus], Any] = {}
        self._hit_counters: dict[str, Any] = {}

    def request_counter(self, transport: str, status: CacheStatus) -> Any:
        counter = self._request_counters.get((transport, status))
        if counter is None:
            counter = self._request_counters[(transport, status)] = self.metrics.requests.labels(
                transport, status.value
            )
        return counter

    def request_timer(self, status: CacheStatus) -> DeferredHistogram:
        timer = self._request_timers.get(status)
        if timer is None:  # four statuses: cached children skip labels()' lock and key
            child = self.metrics.request_seconds.labels(status.value)
            timer = self._request_timers[status] = self.metrics.deferred.histogram(child)
        return timer

    def count(
        self, info: CacheInfo, plan: CachePlan | None, usage: Usage | None, hit_entry: bool
    ) -> None:
        """Partition, status and savings counts of one request (``hit_entry``: a hit with
        its entry at hand, whose stored ``usage`` it saved)."""
        status = info.status
        if plan is not None and plan.partition:
            self._partition_counter(plan.partition, status.value).inc()
        if status is CacheStatus.BYPASS:
            self.metrics.bypasses.inc()
        elif status is CacheStatus.MISS:
            self.metrics.misses.inc()
        elif info.hit_type:
            self._hits(info.hit_type).inc()
            if hit_entry:
                for child, amount in self._savings(usage, info.hit_type):
                    child.inc(amount)

    def exact_hit_counts(
        self, plan: CachePlan, usage: Usage | None, transport: str
    ) -> PendingCounts:
        """What ``on_request`` counts for an exact hit of ``plan`` whose entry holds ``usage``,
        through ``transport``, but its time: the request, and what ``count`` adds. Every
        child is resolved for good: bounded labels never change a value's label once given."""
        counts: list[tuple[Any, float]] = [
            (self.request_counter(transport, CacheStatus.HIT_EXACT), 1.0)
        ]
        if plan.partition:
            counts.append(
                (self._partition_counter(plan.partition, CacheStatus.HIT_EXACT.value), 1.0)
            )
        counts.append((self._hits(EXACT), 1.0))
        counts.extend(self._savings(usage, EXACT))
        return self.metrics.deferred.counts(counts)

    def _hits(self, hit_type: str) -> Any:
        hits = self._hit_counters.get(hit_type)
        if hits is None:
            hits = self._hit_counters[hit_type] = self.metrics.hits.labels(hit_type)
        return hits

    def _partition_counter(self, partition: str, status: str) -> Any:
        # The cache holds at most max_label_values + 1 partitions per status, later
        # partitions share the ``other`` child through the bounded label.
        key = (partition, status)
        child = self._partition_children.get(key)
        if child is None:
            m = self.metrics
            label = m.partition_label(partition_hash(partition))
            if label == OTHER:
                # Past the label bound every new partition (a new scope per request) counts
                # here: one child per status, kept, instead of labels()' lock per request.
                child = self._other_children.get(status)
                if child is None:
                    child = self._other_children[status] = m.partition_requests.labels(
                        OTHER, status
                    )
                return child
            child = m.partition_requests.labels(label, status)
            self._partition_children[key] = child
        return child

    def _savings(self, usage: Usage | None, layer: str) -> Counts:
        """A hit saved the upstream call: its stored usage, priced from the table."""
        m = self.metrics
        if usage is None:
            return ((m.usage_unknown_hits.labels(layer), 1.0),)
        key = (usage.model, layer)
        children = self._savings_children.get(key)
        if children is None:
            model = m.model_label(usage.model or "unknown")
            price = self.prices.price(usage.model)
            children = (
                m.tokens_saved.labels(model, layer),
                # Fractions: deferred in order, for the slow path too (deferred_metrics.py)
                m.deferred.counter(m.cost_saved.labels(model, layer))
                if price is not None
                else None,
                m.cost_unknown_hits.labels(model) if price is None else None,
                price,
            )
            if model != OTHER:  # bounded like the label: at most N + 1 models per layer
                self._savings_children[key] = children
        tokens, cost, unknown, price = children
        if cost is not None and price is not None:
            saved = (
                usage.prompt_tokens * price.input_per_token
                + usage.completion_tokens * price.output_per_token
            )
            return ((tokens, float(usage.total)), (cost, saved))
        # an unpriced model: tokens counted, its cost never guessed
        return ((tokens, float(usage.total)), (unknown, 1.0))
