"""Bounded label values for Prometheus metrics.

A label fed from traffic (partition, rule id, model name) could grow one series per distinct
value without end. ``BoundedLabels`` admits the first ``max_values`` distinct values it sees and
keeps them for the life of the process; every later value is reported as ``other``. So a metric
labelled through it has at most ``max_values + 1`` series per combination of its other labels.

Written here rather than taken from a library: prometheus_client has no cardinality bound, and
the rule ("first N keep their label") is a few lines.
"""

from __future__ import annotations

import threading

OTHER = "other"


class BoundedLabels:
    def __init__(self, max_values: int) -> None:
        if max_values < 0:
            raise ValueError(f"max_values must be >= 0, got {max_values}")
        self.max_values = max_values
        self._admitted: set[str] = set()
        # gRPC handlers may run on threads; the lock is taken only when a value is new.
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._admitted:
            return value
        with self._lock:
            if value in self._admitted:
                return value
            if len(self._admitted) < self.max_values and value != OTHER:
                self._admitted.add(value)
                return value
        return OTHER

    def __len__(self) -> int:
        return len(self._admitted)
