"""The dual-layer cache: exact key first, then nearest neighbours within the scope.

Every cache decision and its reason is made here and returned as a ``Lookup``; the pipeline
copies the reason into the request's trace, so "why was this a miss?" has one answer.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from embedders.base import Embedder, EmbedderError
from sidecar.cache.keys import CachePlan
from sidecar.cache.model import CachedAnswer, CacheEntry
from sidecar.cache.single_flight import HeldLock, SingleFlight
from sidecar.cache.stores.base import ExactStore, StoreUnavailable, VectorIndex
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.cache")


class CacheStatus(enum.StrEnum):
    HIT_EXACT = "hit-exact"
    HIT_SEMANTIC = "hit-semantic"
    MISS = "miss"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class Verdict:
    accept: bool
    reason: str = ""


#: the new question's vector and the candidate's stored one
VectorPair = tuple[np.ndarray, np.ndarray]


class MatchVerifier(Protocol):
    """Second opinion on a semantic candidate: may the cached answer serve the new question?"""

    def verify(
        self,
        question: str,
        candidate: str,
        similarity: float,
        vectors: VectorPair | None = None,
    ) -> Verdict: ...


class AcceptAll:
    """The null verifier: the similarity threshold alone decides."""

    def verify(
        self,
        question: str,
        candidate: str,
        similarity: float,
        vectors: VectorPair | None = None,
    ) -> Verdict:
        return Verdict(True)


@dataclass(slots=True)
class Lookup:
    status: CacheStatus
    reason: str
    entry: CacheEntry | None = None
    similarity: float | None = None
    vector: np.ndarray | None = None  # the question's embedding, reused when storing
    refused: list[str] = field(default_factory=list)  # verifier reasons for refused candidates
    # single-flight: the miss lock this request holds until its answer is stored or refused
    lock: HeldLock | None = None

    @property
    def hit(self) -> bool:
        return self.entry is not None


class DualCache:
    def __init__(
        self,
        exact: ExactStore,
        vectors: VectorIndex | None,
        embedder: Embedder | None,
        metrics: Metrics,
        verifier: MatchVerifier | None = None,
        candidates: int = 3,
        clock: Callable[[], float] = time.time,
        single_flight: SingleFlight | None = None,
    ) -> None:
        self.clock = clock
        self.single_flight = single_flight
        self.exact = exact
        self.vectors = vectors
        self.embedder = embedder
        self.metrics = metrics
        self.verifier: MatchVerifier = verifier or AcceptAll()
        self.candidates = candidates
        counter = metrics.unreadable_entries.labels(exact.name)
        exact.report_unreadable = lambda n: counter.inc(n)

    async def start(self) -> None:
        await self.exact.start()
        if self.vectors is not None and self.embedder is not None:
            namespace = f"{self.embedder.model_id}:{self.embedder.dimension}"
            await self.vectors.start(namespace, self.embedder.dimension)
            await self._rebuild_vectors()
        await self._refresh_entries()

    async def _refresh_entries(self) -> None:
        # Only a gauge: a shared backend that is down (even at start) must not fail anything.
        try:
            self.metrics.entries.set(await self.exact.count())
        except StoreUnavailable as exc:
            log.error("cache backend unavailable, entry count not refreshed: %s", exc)

    async def _rebuild_vectors(self) -> None:
        """An embedded index lives in memory: load its saved graphs and reconcile them with
        the persisted entries, SQLite being the source of truth (or rebuild from them)."""
        from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex

        if not (
            isinstance(self.exact, EmbeddedExactStore)
            and isinstance(self.vectors, EmbeddedVectorIndex)
        ):
            return
        await self.vectors.restore(self.exact.entries_with_vectors())

    async def close(self) -> None:
        if self.vectors is not None:
            await self.vectors.close()
        await self.exact.close()

    @property
    def semantic_enabled(self) -> bool:
        return self.vectors is not None and self.embedder is not None

    # ------------------------------------------------------------------ lookup
    async def lookup(self, plan: CachePlan) -> Lookup:
        if plan.bypass_reason is not None:
            return Lookup(CacheStatus.BYPASS, plan.bypass_reason)
        try:
            if plan.use_exact:
                started = time.perf_counter()
                entry = await self.exact.get(plan.exact_key, plan.partition)
                self.metrics.lookup_seconds.labels("exact").observe(time.perf_counter() - started)
                if entry is not None:
                    return Lookup(CacheStatus.HIT_EXACT, "exact key matched", entry, 1.0)
            if not (plan.use_semantic and plan.question and self.semantic_enabled):
                why = "exact miss" if plan.use_exact else "no exact lookup requested"
                if plan.use_semantic and not plan.question:
                    why += "; no semantic layer for this request (not a plain user text turn)"
                return await self._single_flight(plan, Lookup(CacheStatus.MISS, why))
            return await self._single_flight(plan, await self._semantic(plan))
        except StoreUnavailable as exc:
            self.metrics.backend_errors.labels("lookup").inc()
            log.error("cache backend unavailable, request goes uncached: %s", exc)
            return Lookup(CacheStatus.BYPASS, f"cache backend unavailable: {exc}")
        except EmbedderError as exc:
            log.error("embedding failed, semantic lookup skipped: %s", exc)
            return Lookup(CacheStatus.MISS, f"embedding failed: {exc}")

    async def embed_question(self, question: str) -> np.ndarray:
        assert self.embedder is not None
        started = time.perf_counter()
        vector = (await self.embedder.embed([question]))[0]
        self.metrics.embed_seconds.observe(time.perf_counter() - started)
        return vector

    async def _semantic(self, plan: CachePlan) -> Lookup:
        assert self.vectors is not None
        vector = await self.embed_question(plan.question)
        started = time.perf_counter()
        neighbours = await self.vectors.search(plan.scope, vector.tolist(), self.candidates)
        best: float | None = None
        refused: list[str] = []
        for n in neighbours:
            best = n.similarity if best is None else max(best, n.similarity)
            if n.similarity < plan.threshold:
                break  # best first: the rest are further away
            entry = await self.exact.get(n.id, plan.partition)
            if entry is None or entry.scope != plan.scope:
                continue  # expired or evicted since it was indexed
            stored = None if entry.vector is None else np.asarray(entry.vector, dtype=np.float32)
            try:
                verdict = self.verifier.verify(
                    plan.question,
                    entry.question,
                    n.similarity,
                    None if stored is None else (vector, stored),
                )
            except Exception:  # a verifier bug must never serve (or fail) the request
                log.exception("match verifier failed; candidate refused")
                verdict = Verdict(False, "verifier_error: the verifier failed")
            if not verdict.accept:
                refused.append(verdict.reason)
                self.metrics.verifier_refusals.labels(verdict.reason.split(":")[0]).inc()
                continue
            self.metrics.lookup_seconds.labels("semantic").observe(time.perf_counter() - started)
            return Lookup(
                CacheStatus.HIT_SEMANTIC,
                f"similarity {n.similarity:.4f} >= threshold {plan.threshold:.4f}",
                entry,
                n.similarity,
                vector,
                refused,
            )
        self.metrics.lookup_seconds.labels("semantic").observe(time.perf_counter() - started)
        if best is None:
            reason = "no cached question in this scope"
        elif refused:
            reason = "candidates refused by the verifier: " + "; ".join(refused)
        else:
            reason = f"best similarity {best:.4f} < threshold {plan.threshold:.4f}"
        return Lookup(CacheStatus.MISS, reason, vector=vector, similarity=best, refused=refused)

    # ------------------------------------------------------------------ single-flight
    async def _single_flight(self, plan: CachePlan, miss: Lookup) -> Lookup:
        """On a miss, take the key's lock, or wait (bounded) for the request holding it and
        re-check the cache. A request that would not store its answer takes no lock."""
        sf = self.single_flight
        if sf is None or miss.status is not CacheStatus.MISS or not plan.use_exact:
            return miss
        if plan.no_store or not plan.exact_key:
            return miss
        token = await sf.lock.acquire(plan.exact_key, plan.partition, sf.ttl)
        if token is not None:
            # The previous holder may have stored its answer and released the lock after our
            # lookup began (a slow embedding leaves a wide window): look once more, holding it.
            entry = await self.exact.get(plan.exact_key, plan.partition)
            if entry is not None:
                await sf.lock.release(plan.exact_key, plan.partition, token)
                return Lookup(
                    CacheStatus.HIT_EXACT,
                    "exact key matched: an identical request stored it during this lookup",
                    entry,
                    1.0,
                )
            miss.lock = HeldLock(plan.exact_key, plan.partition, token)
            return miss
        started = time.perf_counter()
        released = await sf.lock.wait(plan.exact_key, plan.partition, sf.wait)
        waited = (time.perf_counter() - started) * 1000
        entry = await self.exact.get(plan.exact_key, plan.partition)
        if entry is not None:
            return Lookup(
                CacheStatus.HIT_EXACT,
                f"exact key matched after waiting {waited:.0f} ms for an identical request",
                entry,
                1.0,
            )
        outcome = "its lock ended without a stored answer" if released else "wait limit reached"
        miss.reason += f"; waited {waited:.0f} ms for an identical request ({outcome})"
        return miss

    async def release(self, lookup: Lookup | None) -> None:
        """Free the miss lock a lookup took (the pipeline calls this once the answer is stored
        or found not storable). Idempotent; a failure only means the lock expires on its own."""
        if lookup is None or lookup.lock is None or self.single_flight is None:
            return
        held, lookup.lock = lookup.lock, None
        try:
            await self.single_flight.lock.release(held.key, held.partition, held.token)
        except StoreUnavailable as exc:
            log.error("cache backend unavailable, miss lock left to expire: %s", exc)

    # ------------------------------------------------------------------ store
    async def store(
        self, plan: CachePlan, answer: CachedAnswer, vector: np.ndarray | None
    ) -> CacheEntry | None:
        if plan.bypass_reason is not None or plan.no_store or not plan.exact_key:
            return None
        now = self.clock()
        if vector is None and plan.question and plan.use_semantic and self.semantic_enabled:
            try:
                vector = await self.embed_question(plan.question)
            except EmbedderError as exc:
                log.error("embedding failed, answer stored for exact hits only: %s", exc)
        entry = CacheEntry(
            id=plan.exact_key,
            partition=plan.partition,
            scope=plan.scope,
            question=plan.question,
            answer=answer,
            created_at=now,
            expires_at=now + plan.ttl,
            vector=vector.tolist() if vector is not None and plan.question else None,
        )
        try:
            evicted = await self.exact.put(entry)
        except StoreUnavailable as exc:
            self.metrics.backend_errors.labels("store").inc()
            log.error("cache backend unavailable, answer not stored: %s", exc)
            return None
        try:
            if self.vectors is not None:
                if evicted:
                    await self.vectors.remove(evicted)
                if entry.vector is not None:
                    await self.vectors.add(
                        entry.id, entry.scope, entry.partition, entry.vector, entry.expires_at
                    )
        except StoreUnavailable as exc:
            # The exact store has it (a separate backend): it still serves exact hits.
            self.metrics.backend_errors.labels("store").inc()
            log.error("vector backend unavailable, answer stored for exact hits only: %s", exc)
        self.metrics.stores.inc()
        if evicted:
            self.metrics.evictions.inc(len(evicted))
        await self._refresh_entries()
        return entry

    # ------------------------------------------------------------------ invalidation
    async def delete(self, entry_id: str) -> bool:
        found = await self.exact.delete(entry_id)
        if self.vectors is not None:
            await self.vectors.remove([entry_id])
            if found:
                await self._erase_saved_vectors()
        self.metrics.entries.set(await self.exact.count())
        return found

    async def delete_partition(self, partition: str) -> int:
        ids = await self.exact.delete_partition(partition)
        if self.vectors is not None:
            await self.vectors.remove_partition(partition)
            if ids:
                await self._erase_saved_vectors()
        self.metrics.entries.set(await self.exact.count())
        return len(ids)

    async def _erase_saved_vectors(self) -> None:
        # An embedded index's saved graphs may hold a deleted entry's vector: see erase_saved.
        erase = getattr(self.vectors, "erase_saved", None)
        if erase is not None:
            await erase()

    async def sweep(self) -> None:
        # Vector stores holding an expiry of their own (Qdrant, Weaviate) sweep it themselves.
        vector_sweep = getattr(self.vectors, "sweep", None)
        if vector_sweep is not None:
            await vector_sweep()
        sweep = getattr(self.exact, "sweep", None)
        if sweep is None:
            return
        ids: Sequence[str] = await sweep()
        if ids and self.vectors is not None:
            await self.vectors.remove(ids)
        self.metrics.entries.set(await self.exact.count())

    async def health(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        if (why := await self.exact.health()) is not None:
            problems[f"exact_store:{self.exact.name}"] = why
        if self.vectors is not None and (why := await self.vectors.health()) is not None:
            problems[f"vector_store:{self.vectors.name}"] = why
        return problems
