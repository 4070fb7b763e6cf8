"""Prometheus metrics, on a registry owned by the running sidecar (no process globals).

Labels never carry request content: only outcome names, rule ids and backend names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
