"""Prometheus metrics for remote guardrail services (Bedrock, Azure Content Safety).

One :class:`RemoteMetrics` is created per Prometheus registry and shared by every remote check
that reports into it (Prometheus refuses to register the same metric name twice in a registry).
Labels are the provider and the profile name only: never text, keys or request identifiers.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Remote content-safety calls typically take 50-500 ms; the buckets resolve that range and the
# timeouts operators usually configure (up to a few seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RemoteMetrics:
    """Counters, latency histogram and gauges for remote guardrail calls.

    ``registry`` is where the metrics are registered. ``None`` gives the instance a private
    registry of its own, so nothing is ever added to the process-wide default registry by
    accident; pass the sidecar's registry to have the metrics exported.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ("provider", "profile")
        self.calls = Counter(
            "guardrail_remote_calls",
            "Logical calls to a remote guardrail service (retries not counted).",
            labels,
            registry=self.registry,
        )
        self.attempts = Counter(
            "guardrail_remote_attempts",
            "HTTP attempts made to a remote guardrail service, retries included.",
            labels,
            registry=self.registry,
        )
        self.errors = Counter(
            "guardrail_remote_errors",
            "Failed attempts or rejected calls, by kind (timeout, throttled, server, client, "
            "transport, circuit_open, saturated).",
            (*labels, "kind"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "guardrail_remote_latency_seconds",
            "Latency of each attempt to a remote guardrail service.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "guardrail_remote_breaker_state",
            "Circuit breaker state per profile: 0 closed, 1 open, 2 half-open.",
            labels,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "guardrail_remote_in_flight",
            "Calls currently holding a concurrency slot.",
            labels,
            registry=self.registry,
        )

    def bind(self, provider: str, profile: str) -> BoundRemoteMetrics:
        return BoundRemoteMetrics(self, provider, profile)


class BoundRemoteMetrics:
    """The metrics of one profile, with the label values already applied."""

    def __init__(self, metrics: RemoteMetrics, provider: str, profile: str) -> None:
        self._metrics = metrics
        self._labels = (provider, profile)
        self.calls = metrics.calls.labels(*self._labels)
        self.attempts = metrics.attempts.labels(*self._labels)
        self.latency = metrics.latency.labels(*self._labels)
        self.in_flight = metrics.in_flight.labels(*self._labels)
        self._breaker = metrics.breaker_state.labels(*self._labels)
        self._error_kinds: set[str] = set()

    def error(self, kind: str) -> None:
        self._error_kinds.add(kind)
        self._metrics.errors.labels(*self._labels, kind).inc()

    def track_breaker(self, state: Callable[[], float]) -> None:
        """Report the breaker state by reading it at scrape time.

        The open -> half-open transition happens when the cool-down has passed, without any
        call; reading at scrape time shows it even on a quiet profile.
        """
        self._breaker.set_function(state)

    def unbind(self) -> None:
        """Drop this profile's series (the check was closed, e.g. on a rule reload)."""
        for metric in (
            self._metrics.calls,
            self._metrics.attempts,
            self._metrics.latency,
            self._metrics.in_flight,
            self._metrics.breaker_state,
        ):
            try:
                metric.remove(*self._labels)
            except KeyError:
                pass
        for kind in self._error_kinds:
            try:
                self._metrics.errors.remove(*self._labels, kind)
            except KeyError:
                pass
