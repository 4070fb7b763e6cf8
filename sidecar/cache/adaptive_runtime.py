"""The adaptive cache at run time: asks ``adaptive.Adaptive`` for decisions, keeps the evidence
(``adaptive_store``), compares explored answers, takes feedback and reports per partition.

The decisions themselves, and their reasons, are all in sidecar/cache/adaptive.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from embedders.base import Embedder
from sidecar.cache.adaptive import (
    PARTITION_MIN_OBSERVATIONS,
    Adaptive,
    Agreement,
    Decision,
    Observation,
    PartitionEvidence,
    Policy,
    Ticket,
    agreement,
    normalise_answer,
)
from sidecar.cache.adaptive_store import MAX_PARTITIONS, EvidenceStore
from sidecar.cache.model import CacheEntry
from sidecar.config import CacheConfig
from sidecar.formats import ApiFormat, RequestType, answer_pieces, normalise_text
from sidecar.labels import OTHER
from sidecar.metrics import Metrics, partition_hash
from sidecar.sse import iter_text_deltas, parse_events

log = logging.getLogger("sidecar.cache.adaptive")

_COUNTERS = ("lookups", "exact_hits", "semantic_hits", "explored", "reported_correct")


@dataclass(slots=True)
class _Counts:
    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    explored: int = 0
    reported_correct: int = 0


def answer_text(api: ApiFormat, kind: RequestType, body: bytes, streamed: bool) -> str | None:
    """The answer's text (all choices / blocks joined), None when it has none."""
    if streamed:
        parts = [text for ev in parse_events(body) for _, text in iter_text_deltas(api, ev)]
    else:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        pieces, _ = answer_pieces(api, kind, parsed)
        parts = [p.text for p in pieces]
    text = "".join(parts)
    return text if text.strip() else None


class FeedbackNotFound(LookupError):
    """An unknown (or already reported) request id, or an unknown entry id."""


class AdaptiveCache:
    def __init__(
        self,
        config: CacheConfig,
        store: EvidenceStore,
        embedder: Embedder | None,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.decisions = Adaptive(config)
        self.store = store
        self.embedder = embedder
        self.metrics = metrics
        self._counts: dict[str, _Counts] = {}
        self._lock = threading.Lock()
        metrics.registry.register(_StatsCollector(self))

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    def policy(self, partition: str) -> Policy | None:
        return self.decisions.policy(partition)

    # ------------------------------------------------------------------ deciding
    async def judge(
        self,
        policy: Policy,
        partition: str,
        entry: CacheEntry,
        similarity: float,
        floor: float,
        head: float | None,
        pair: float | None,
    ) -> tuple[Decision, Ticket]:
        evidence = await self.store.entry(partition, entry.id, entry.created_at)
        part = await self.store.partition(partition)
        decision = self.decisions.decide(policy, similarity, floor, evidence, part)
        weight = 1.0 / policy.explore_rate if decision.explored else 1.0
        ticket = Ticket(
            partition,
            entry.id,
            entry.created_at,
            entry.expires_at,
            similarity,
            head,
            pair,
            weight,
        )
        return decision, ticket

    def count(self, partition: str, status: str, explored: bool) -> None:
        """Per-process traffic figures of a partition (the first MAX_PARTITIONS seen)."""
        counts = self._counts.get(partition)
        if counts is None:
            with self._lock:
                if len(self._counts) >= MAX_PARTITIONS:
                    return
                counts = self._counts.setdefault(partition, _Counts())
        if status == "bypass":
            return
        counts.lookups += 1
        if status == "hit-exact":
            counts.exact_hits += 1
        elif status == "hit-semantic":
            counts.semantic_hits += 1
        if explored:
            counts.explored += 1

    # ------------------------------------------------------------------ observing
    async def compare(self, fresh: str, cached: str) -> Agreement:
        if normalise_answer(fresh) == normalise_answer(cached):
            return "agree"
        if self.embedder is None:
            return "unknown"
        background = getattr(self.embedder, "embed_background", None)
        texts = [fresh, cached]
        vectors = await (
            background(texts) if background is not None else self.embedder.embed(texts)
        )
        cosine = float(np.dot(vectors[0], vectors[1]))
        return agreement(cosine, self.config.answer_agree_min, self.config.answer_disagree_max)

    async def observe(
        self,
        ticket: Ticket,
        entry: CacheEntry | None,
        api: ApiFormat,
        kind: RequestType,
        body: bytes,
        streamed: bool,
    ) -> Agreement:
        """Compare a fresh answer with the candidate entry's and record the outcome."""
        if entry is None or entry.created_at != ticket.created_at:
            return "unknown"  # the entry changed or went since the lookup: nothing to judge
        fresh = answer_text(api, kind, body, streamed)
        cached = answer_text(api, kind, entry.answer.body, entry.answer.streamed)
        if fresh is None or cached is None:
            return "unknown"
        outcome = await self.compare(fresh, cached)
        self.metrics.adaptive_checks.labels(outcome).inc()
        if outcome != "unknown":
            obs = Observation(
                ticket.similarity, outcome == "agree", ticket.weight, ticket.head, ticket.pair
            )
            await self.store.record(ticket, obs)
        return outcome

    # ------------------------------------------------------------------ feedback
    async def remember_served(self, request_id: str, ticket: Ticket) -> None:
        await self.store.remember_served(request_id, ticket)

    async def take_served(self, request_id: str) -> Ticket | None:
        return await self.store.take_served(request_id)

    async def ticket_for(self, entry: CacheEntry, question: str) -> Ticket:
        """A report naming the entry and the question it was wrong for: their similarity is
        computed as the lookup would have (the normalised question against the entry's)."""
        similarity = 1.0
        if self.embedder is not None:
            vectors = await self.embedder.embed([normalise_text(question), entry.question])
            similarity = float(np.dot(vectors[0], vectors[1]))
        return Ticket(
            entry.partition,
            entry.id,
            entry.created_at,
            entry.expires_at,
            similarity,
            None,
            None,
            1.0,
        )

    async def report(self, ticket: Ticket, correct: bool) -> None:
        if correct:
            counts = self._counts.get(ticket.partition)
            if counts is not None:
                counts.reported_correct += 1
            return  # a confirmation is not a random sample: it never lowers a threshold
        obs = Observation(ticket.similarity, False, 1.0, ticket.head, ticket.pair, "feedback")
        await self.store.record(ticket, obs)

    # ------------------------------------------------------------------ reporting
    def partition_stats(self, partition: str, evidence: PartitionEvidence | None) -> dict[str, Any]:
        counts = self._counts.get(partition, _Counts())
        out: dict[str, Any] = {
            "partition_hash": partition_hash(partition),
            **{name: getattr(counts, name) for name in _COUNTERS},
        }
        would_be = counts.semantic_hits + counts.explored
        out["explore_share"] = counts.explored / would_be if would_be else 0.0
        policy = self.policy(partition)
        observations = list(evidence.observations) if evidence is not None else []
        out["observations"] = len(observations)
        out["observed_wrong"] = sum(1 for o in observations if not o.agreed)
        out["reported_wrong"] = sum(1 for o in observations if o.source == "feedback")
        out["target_wrong_rate"] = None if policy is None else policy.target
        out["explore_rate"] = None if policy is None else policy.explore_rate
        if policy is None or evidence is None:
            out.update(
                estimated_wrong_rate=None,
                wrong_rate_upper_bound=None,
                learned_threshold=None,
                threshold_source="static",
            )
            return out
        learned = evidence.learned(policy.target)
        if learned.threshold is None or len(observations) < PARTITION_MIN_OBSERVATIONS:
            everything = evidence.overall()
            rate, upper = everything.wrong_rate, everything.upper
        else:
            rate, upper = learned.wrong_rate, learned.upper
        threshold: float | None
        if len(observations) < PARTITION_MIN_OBSERVATIONS:
            threshold, source = self.config.threshold, "static"
        else:
            threshold, source = learned.threshold, "partition"
        out.update(
            estimated_wrong_rate=rate if observations else None,
            wrong_rate_upper_bound=upper if observations else None,
            learned_threshold=threshold,
            threshold_source=source,
            confidence="one-sided 95% Clopper-Pearson upper bound",
        )
        return out

    async def stats(self) -> dict[str, dict[str, Any]]:
        names = set(self._counts) | set(self.store.known_partitions())
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            evidence = await self.store.partition(name, refresh=True)
            out[name] = self.partition_stats(name, evidence)
        return out

    def cached_stats(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """From memory only (the metrics scrape is synchronous)."""
        known = dict.fromkeys([*self._counts, *self.store.known_partitions()])
        memory = getattr(self.store, "_partitions", {})
        for name in known:
            yield name, self.partition_stats(name, memory.get(name))


_GAUGES = (
    ("lookups", "Cache lookups of the partition (this process)"),
    ("exact_hits", "Exact hits (this process)"),
    ("semantic_hits", "Semantic hits served (this process)"),
    ("explored", "Would-be semantic hits sent upstream to check them (this process)"),
    ("observed_wrong", "Wrong answers observed among the kept observations"),
    ("estimated_wrong_rate", "Estimated wrong-hit rate at the learned threshold"),
    ("wrong_rate_upper_bound", "One-sided 95% upper bound of the wrong-hit rate"),
    ("learned_threshold", "Similarity a semantic hit needs in the partition"),
)


_SUMMABLE = ("lookups", "exact_hits", "semantic_hits", "explored", "observed_wrong")


class _StatsCollector(Collector):
    """``sidecar_adaptive_*`` gauges per partition (hash label, bounded like every label)."""

    def __init__(self, cache: AdaptiveCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(f"sidecar_adaptive_{name}", doc, labels=["partition"])
            for name, doc in _GAUGES
        }
        sums: dict[tuple[str, str], float] = {}
        for name, stats in self.cache.cached_stats():
            label = self.cache.metrics.partition_label(partition_hash(name))
            for figure, _ in _GAUGES:
                value = stats.get(figure)
                if value is None:
                    continue
                if label == OTHER and figure not in _SUMMABLE:
                    continue  # rates and thresholds of several partitions do not add up
                sums[(figure, label)] = sums.get((figure, label), 0.0) + float(value)
        for (figure, label), value in sums.items():
            families[figure].add_metric([label], value)
        yield from families.values()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def build_adaptive(
    config: CacheConfig, exact: Any, embedder: Embedder | None, metrics: Metrics
) -> AdaptiveCache | None:
    """The adaptive cache when a target is set (globally or for a partition), else None:
    without a target no adaptive code runs at all."""
    targets = [config.target_wrong_rate] + [p.target_wrong_rate for p in config.partitions.values()]
    if all(t is None for t in targets) or not config.vector_store.strip():
        return None
    from sidecar.cache.adaptive_store import MemoryEvidence, RedisEvidence, SqliteEvidence
    from sidecar.cache.stores.embedded import EmbeddedExactStore

    args = (config.max_entries, config.feedback_max_hits, config.feedback_window)
    store: EvidenceStore
    if isinstance(exact, EmbeddedExactStore) and config.data_dir != ":memory:":
        store = SqliteEvidence(config.data_dir, *args)
    elif getattr(exact, "name", "") == "redis":
        store = RedisEvidence(exact, *args)
    else:
        store = MemoryEvidence(*args)
    return AdaptiveCache(config, store, embedder, metrics)
