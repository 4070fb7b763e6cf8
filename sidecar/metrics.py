"""Prometheus metrics, on a registry owned by the running sidecar (no process globals).

Labels never carry request content: only outcome names, rule ids, backend names, model names
and partition hashes. Labels fed from traffic go through ``BoundedLabels`` (sidecar/labels.py):
the first ``metrics.max_label_values`` distinct values keep their label, the rest are ``other``.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sidecar.deferred_metrics import DeferredMetrics
from sidecar.labels import BoundedLabels

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: an embedder queue wait: fine around the default budget (embedder.max_queue_ms, 50 ms) and
#: the overload target's "budget + 5 ms", so waits past either are counted exactly
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.04, 0.05, 0.055, 0.075, 0.1, 0.25, 1.0)


@functools.lru_cache(maxsize=4096)
def partition_hash(partition: str) -> str:
    """What logs, traces and metric labels show of a partition: never the raw key (it may be a
    user or tenant id), but stable, so one partition's figures can be followed."""
    return hashlib.sha256(partition.encode("utf-8")).hexdigest()[:16]


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, max_label_values: int = 100
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # Registered before every metric below: it applies their pending counts first.
        self.deferred = DeferredMetrics(r)
        # One bound per label kind, shared by every metric that carries that label.
        self.partition_label = BoundedLabels(max_label_values)
        self.model_label = BoundedLabels(max_label_values)
        self.rule_label = BoundedLabels(max_label_values)
        self.adaptive_checks = Counter(
            "sidecar_adaptive_checks",
            "Explored or rejected semantic candidates whose fresh answer was compared with the "
            "cached one, by outcome (agree, disagree, unknown)",
            ["outcome"],
            registry=r,
        )
        self.partition_requests = Counter(
            "sidecar_partition_requests",
            "Requests per partition (label: partition hash, bounded) and cache status",
            ["partition", "cache_status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "sidecar_request_seconds",
            "The sidecar's own time in the request hook, by cache status (the latency it adds "
            "before the answer or the upstream call)",
            ["cache_status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_saved = Counter(
            "sidecar_tokens_saved",
            "Provider-reported tokens (prompt + completion) of answers served from the cache",
            ["model", "layer"],
            registry=r,
        )
        self.cost_saved = Counter(
            "sidecar_cost_saved_usd",
            "Price of the answers served from the cache, from the price table (known models)",
            ["model", "layer"],
            registry=r,
        )
        self.cost_unknown_hits = Counter(
            "sidecar_cost_unknown_hits",
            "Hits whose model has no price in the table: tokens counted, cost not guessed",
            ["model"],
            registry=r,
        )
        self.usage_unknown_hits = Counter(
            "sidecar_usage_unknown_hits",
            "Hits on an entry that kept no provider usage (stored before usage was kept, or "
            "the answer reported none)",
            ["layer"],
            registry=r,
        )
        self.requests = Counter(
            "sidecar_requests",
            "Requests seen by the request hook",
            ["transport", "cache_status"],
            registry=r,
        )
        self.hits = Counter("sidecar_cache_hits", "Cache hits by type", ["hit_type"], registry=r)
        self.misses = Counter("sidecar_cache_misses", "Cache misses", registry=r)
        self.bypasses = Counter(
            "sidecar_cache_bypasses", "Requests that bypassed the cache", registry=r
        )
        self.stores = Counter("sidecar_cache_stores", "Answers stored", registry=r)
        self.store_skips = Counter(
            "sidecar_cache_store_skips", "Answers not stored, by reason", ["reason"], registry=r
        )
        self.unreadable_entries = Counter(
            "sidecar_cache_unreadable_entries",
            "Stored entries that could not be read (corrupt or of an unknown schema version): "
            "skipped, their ids logged",
            ["store"],
            registry=r,
        )
        self.evictions = Counter(
            "sidecar_cache_evictions", "Entries evicted by the size bound", registry=r
        )
        self.verifier_refusals = Counter(
            "sidecar_cache_verifier_refusals",
            "Semantic candidates refused by the verifier",
            ["reason"],
            registry=r,
        )
        self.backend_errors = Counter(
            "sidecar_cache_backend_errors", "Cache backend failures", ["backend"], registry=r
        )
        self.entries = Gauge("sidecar_cache_entries", "Entries in the exact store", registry=r)
        self.lookup_seconds = Histogram(
            "sidecar_cache_lookup_seconds",
            "Cache lookup latency (both layers)",
            ["layer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        #: the exact layer's lookup time, observed by the cache and the exact-hit path alike
        self.exact_lookup_timer = self.deferred.histogram(self.lookup_seconds.labels("exact"))
        self.embed_seconds = Histogram(
            "sidecar_embedding_seconds", "Embedding latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.semantic_lookups = Counter(
            "sidecar_cache_semantic_lookups",
            "Semantic lookups by path: embedded, or skipped (empty_scope, overloaded) or"
            " failed (embedding_failed)",
            ["path"],
            registry=r,
        )
        self.embed_queue_wait_max = Gauge(
            "sidecar_embedding_queue_wait_max_seconds",
            "Longest a lookup's text queued for the embedder before its batch began",
            registry=r,
        )
        self.embed_queue_wait = Histogram(
            "sidecar_embedding_queue_wait_seconds",
            "How long each request's text queued for the embedder (until its batch began, or"
            " it was refused over embedder.max_queue_ms)",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.embed_background_held = Gauge(
            "sidecar_embedding_background_held_seconds",
            "Time since start the deferred vectors waited because semantic lookups were being"
            " shed (the model's cores left to requests; sidecar_cache_vector_backlog holds them)",
            registry=r,
        )
        self.overload_shed = Counter(
            "sidecar_overload_shed",
            "Optional work not done under overload (work: semantic_lookup, early_vector, store, "
            "extproc_stream; cause: inflight_limit, loop_lag, transport_wait)",
            ["work", "cause"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "sidecar_event_loop_lag_seconds",
            "How late the event loop last ran a 10 ms timer (what every request waits for)",
            registry=r,
        )
        self.loop_stalls = Counter(
            "sidecar_event_loop_stalls",
            "Event-loop stalls (the lag probe woke over 50 ms late), by what the loop's thread "
            "did meanwhile: loop_busy (it ran: work on the loop), not_scheduled (ready, but no "
            "core was free), blocked (it slept: the GIL held by another thread, or a blocking "
            "call), unknown (no /proc schedstat to tell the last two apart)",
            ["kind"],
            registry=r,
        )
        self.extproc_round_trip = Gauge(
            "sidecar_extproc_round_trip_seconds",
            "The latest ext_proc round trip: the reply to a request's headers until its body "
            "arrived (grows when the gRPC transport backs up)",
            registry=r,
        )
        self.extproc_transport_wait = Gauge(
            "sidecar_extproc_transport_wait_seconds",
            "How long the latest ext_proc stream waited in the gRPC transport before the sidecar "
            "took it up (Envoy's request.time to the stream's first message; needs "
            "request_attributes: [request.time])",
            registry=r,
        )
        self.inflight_lookups = Gauge(
            "sidecar_semantic_lookups_in_flight",
            "Semantic lookups waiting for the embedder or their scope's late vectors",
            registry=r,
        )
        self.vector_backlog = Gauge(
            "sidecar_cache_vector_backlog",
            "Stored entries (and lookups' early embeddings) whose vectors are not computed yet",
            registry=r,
        )
        self.vector_backlog_bytes = Gauge(
            "sidecar_cache_vector_backlog_bytes",
            "Question bytes held by the vector backlog",
            registry=r,
        )
        self.vectors_added_late = Counter(
            "sidecar_cache_vectors_added_late",
            "Vectors computed after their entry was stored, then indexed",
            registry=r,
        )
        self.vector_drops = Counter(
            "sidecar_cache_vector_drops",
            "Stored entries whose vector was not added (they serve exact hits only), by reason",
            ["reason"],
            registry=r,
        )
        self.hook_errors = Counter(
            "sidecar_hook_errors",
            "Requests refused as bad input",
            ["transport", "kind"],
            registry=r,
        )

        # semantic_lookups' children by path, resolved on first use (a fixed set of paths):
        # labels() takes a lock and checks its arguments, once per miss otherwise
        self._semantic_paths: dict[str, Any] = {}

    def semantic_lookup(self, path: str) -> Any:
        """``semantic_lookups``' child for ``path`` (one of the fixed paths in its help)."""
        child = self._semantic_paths.get(path)
        if child is None:
            child = self._semantic_paths[path] = self.semantic_lookups.labels(path)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)
