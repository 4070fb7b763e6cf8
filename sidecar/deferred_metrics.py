"""Counts the exact-hit path makes in plain Python numbers, applied to their Prometheus
children whenever the registry is read.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` each check the metric, take a
lock and (for a histogram) walk the buckets in Python: an exact hit made five increments and
two observations, a fifth of the sidecar's own work for the hit. Here a hit adds one to a
plain int (``PendingCounts``) and appends its times to a list (``DeferredHistogram``).
``DeferredMetrics`` is a collector registered on the registry before every metric it defers
to: the registry collects in registration order, so it applies what is pending first, and
every reader (``/metrics``, the dashboard, ``get_sample_value``) sees the values the
direct calls would have given. Nothing else changes: the same metric objects, names, labels,
children and ``_created`` times.

Values stay exact: ``PendingCounts`` counts how many times its integral amounts were added
(a sum of integral floats does not depend on its order below 2**53: the children it counts
only ever get integral amounts). A counter whose amounts are not integral (a hit's cost) is
a ``DeferredCounter``, and a histogram a ``DeferredHistogram``: their amounts are replayed
in order, the same float additions ``inc`` and ``observe`` make, as long as every increment
of that child goes through its one deferred object (``DeferredMetrics.counter`` and
``.histogram`` hand out one per child).

Bounded: a histogram applies its observations once ``MAX_PENDING`` wait; ``PendingCounts``
objects with pending counts are listed once each, and the whole list is applied once it
holds ``MAX_PENDING``. Counting and collecting happen on the event loop's thread (every
reader of the registry runs there): the increments take no lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

#: pending observations of one histogram, or counts objects with pending counts, before they
#: are applied without waiting for a read
MAX_PENDING = 1024


class DeferredMetrics:
    """The collector that applies pending counts before the registry yields any metric."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: list[PendingCounts] = []
        self._histograms: dict[Any, DeferredHistogram] = {}
        self._counters: dict[Any, DeferredCounter] = {}
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # no metric of its own (and ``register`` must not call ``collect``)

    def collect(self) -> Iterable[Metric]:
        self.flush()
        return ()

    def flush(self) -> None:
        counts, self._counts = self._counts, []
        for pending in counts:
            pending.apply()
        for counter in self._counters.values():
            counter.apply()
        for histogram in self._histograms.values():
            histogram.apply()

    def histogram(self, child: Any) -> DeferredHistogram:
        """The one ``DeferredHistogram`` of a histogram child (``Histogram.labels()``)."""
        deferred = self._histograms.get(child)
        if deferred is None:
            deferred = self._histograms[child] = DeferredHistogram(child)
        return deferred

    def counter(self, child: Any) -> DeferredCounter:
        """The one ``DeferredCounter`` of a counter child (``Counter.labels()``)."""
        deferred = self._counters.get(child)
        if deferred is None:
            deferred = self._counters[child] = DeferredCounter(child)
        return deferred

    def counts(self, pairs: Iterable[tuple[Any, float]]) -> PendingCounts:
        """Increments made together, per ``add``: ``(child, amount)`` pairs, a counter child
        with an integral amount or a ``DeferredCounter`` with any."""
        return PendingCounts(self, tuple((child, float(amount)) for child, amount in pairs))

    def _pending(self, counts: PendingCounts) -> None:
        self._counts.append(counts)
        if len(self._counts) >= MAX_PENDING:
            self.flush()


class PendingCounts:
    """``add()`` makes each pair's increment once: integral amounts of counter children
    counted here until the registry is read, ``DeferredCounter`` amounts handed to it."""

    __slots__ = ("_owner", "_counted", "_ordered", "_n")

    def __init__(self, owner: DeferredMetrics, pairs: tuple[tuple[Any, float], ...]) -> None:
        for child, amount in pairs:
            if not (isinstance(child, DeferredCounter) or amount.is_integer()):
                raise ValueError("a counter child given a fraction must be a DeferredCounter")
        self._owner = owner
        self._counted = tuple(p for p in pairs if not isinstance(p[0], DeferredCounter))
        self._ordered = tuple(p for p in pairs if isinstance(p[0], DeferredCounter))
        self._n = 0

    def add(self) -> None:
        self._n += 1
        if self._n == 1:  # listed once until applied (counted first: listing may apply it)
            self._owner._pending(self)
        for counter, amount in self._ordered:
            counter.inc(amount)

    def apply(self) -> None:
        n, self._n = self._n, 0
        if n:
            for child, amount in self._counted:
                child.inc(amount * n)


class DeferredCounter:
    """A counter child's ``inc``, replayed in order when the registry is read."""

    __slots__ = ("child", "_pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self._pending: list[float] = []

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:  # as ``Counter.inc``: raised at the call, not when applied
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        pending = self._pending
        pending.append(amount)
        if len(pending) >= MAX_PENDING:
            self.apply()

    def apply(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        value = self.child._value
        total = value.get()
        for amount in pending:
            total += amount
        value.set(total)


class DeferredHistogram:
    """A histogram child's ``observe``, replayed when the registry is read."""

    __slots__ = ("child", "_bounds", "_pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._pending: list[float] = []

    def observe(self, amount: float) -> None:
        pending = self._pending
        pending.append(amount)
        if len(pending) >= MAX_PENDING:
            self.apply()

    def apply(self) -> None:
        """What ``Histogram.observe`` does for each pending amount, in order: its sum grows by
        each amount in turn, and the first bucket whose bound is at least the amount counts it
        (none for NaN)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        child, bounds = self.child, self._bounds
        added = [0] * len(bounds)
        total = child._sum.get()
        last = len(bounds)
        for amount in pending:
            total += amount
            i = bisect_left(bounds, amount)
            if i < last and amount <= bounds[i]:
                added[i] += 1
        child._sum.set(total)
        buckets = child._buckets
        for i, n in enumerate(added):
            if n:
                buckets[i].inc(n)
