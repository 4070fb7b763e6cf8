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
from typing import TYPE_CHECKING

import numpy as np

from embedders.base import Embedder, EmbedderError, EmbedderOverloaded
from sidecar.cache.adaptive import Ticket
from sidecar.cache.candidates import (
    APPROXIMATE_SLACK,
    NEAR_REPEAT_FLOOR,
    AcceptAll,
    Candidate,
    MatchVerifier,
    Verdict,
    cosine,
)
from sidecar.cache.keys import CachePlan
from sidecar.cache.model import CachedAnswer, CacheEntry
from sidecar.cache.single_flight import HeldLock, SingleFlight
from sidecar.cache.stores.base import ExactStore, StoreUnavailable, VectorIndex
from sidecar.cache.vector_backlog import PendingVector, VectorBacklog
from sidecar.metrics import Metrics
from sidecar.overload import LOOP_LAG, LoadGovernor, Overloaded
from sidecar.stages import stage_end, stage_start

if TYPE_CHECKING:
    from sidecar.cache.adaptive_runtime import AdaptiveCache

log = logging.getLogger("sidecar.cache")

EMPTY_SCOPE = "no cached question in this scope (embedding skipped)"
#: entry.meta flag: stored before its vector, which is still to be attached
VECTOR_PENDING = "vector_pending"
OVERLOADED = "overloaded: semantic lookup skipped"
#: the reason of an exact hit
EXACT_MATCHED = "exact key matched"
#: why a miss's answer was not stored while the event loop was far behind
STORE_SHED = "overloaded: not stored"
#: how long a lookup waits for its scope's late vectors when no queue budget applies
_SETTLE_S = 5.0


class CacheStatus(enum.StrEnum):
    HIT_EXACT = "hit-exact"
    HIT_SEMANTIC = "hit-semantic"
    MISS = "miss"
    BYPASS = "bypass"


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
    # a skipped embedding already started in the background, for the store to pick up
    pending: PendingVector | None = None
    # adaptive (cache.target_wrong_rate): the eligible candidate, when its answer is to be
    # compared with the fresh one (explored or rejected) or may be reported (served)
    ticket: Ticket | None = None
    explored: bool = False  # a would-be semantic hit sent upstream to check it
    #: the load governor shed this miss's store (counted): its answer is not to be stored
    store_shed: bool = False

    @property
    def hit(self) -> bool:
        return self.entry is not None

    @property
    def holds(self) -> bool:
        """Something ``DualCache.release`` frees: a miss lock or an early embedding."""
        return self.lock is not None or self.pending is not None


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
        max_queue_ms: float | None = None,
        backlog_items: int = 10_000,
        backlog_bytes: int = 16 * 1024 * 1024,
        drain_s: float = 10.0,
        adaptive: AdaptiveCache | None = None,
        governor: LoadGovernor | None = None,
    ) -> None:
        self.clock = clock
        #: learned per-entry thresholds (cache.target_wrong_rate); None: static threshold only
        self.adaptive = adaptive
        self.single_flight = single_flight
        self.exact = exact
        self.vectors = vectors
        self.embedder = embedder
        self.metrics = metrics
        self.verifier: MatchVerifier = verifier or AcceptAll()
        self.candidates = candidates
        # Deferred (sidecar/deferred_metrics.py): shared with the exact-hit path, so every
        # observation of the child goes through it in order
        self._exact_timer = metrics.exact_lookup_timer
        counter = metrics.unreadable_entries.labels(exact.name)
        exact.report_unreadable = lambda n: counter.inc(n)
        #: the embedder queue budget of a lookup, seconds (None: no budget)
        self.max_queue = None if max_queue_ms is None else max_queue_ms / 1000.0
        self.drain_s = drain_s
        #: admission control of the optional work (None: none, as for tools and tests)
        self.governor = governor
        self.backlog: VectorBacklog | None = None
        if vectors is not None and embedder is not None:
            self.backlog = VectorBacklog(
                self._embed_background,
                self._attach_vector,
                metrics,
                backlog_items,
                backlog_bytes,
            )
            stats = getattr(embedder, "stats", None)
            if stats is not None and hasattr(stats, "max_wait_s"):
                metrics.embed_queue_wait_max.set_function(lambda: stats.max_wait_s)
            if hasattr(embedder, "on_wait"):
                embedder.on_wait = metrics.embed_queue_wait.observe
            hold = getattr(embedder, "hold_background_while", None)
            if governor is not None and hold is not None and stats is not None:
                # While lookups are shed, a deferred vector (worth less) waits too: under
                # overload the model's cores go to the requests (docs/overload.md).
                hold(lambda: governor.loop_lagging)
                metrics.embed_background_held.set_function(lambda: stats.background_held_s)

    async def start(self) -> None:
        await self.exact.start()
        if self.vectors is not None and self.embedder is not None:
            namespace = f"{self.embedder.model_id}:{self.embedder.dimension}"
            await self.vectors.start(namespace, self.embedder.dimension)
            await self._rebuild_vectors()
        if self.adaptive is not None:
            await self.adaptive.start()  # after the exact store: SQLite evidence joins its rows
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
        await self.vectors.restore_from(self.exact)
        # Acknowledged entries whose vectors were still in the backlog when the process
        # stopped (killed, or the shutdown drain ran out of time): computed again now.
        assert self.backlog is not None
        for entry in await self.exact.entries_missing_vectors():
            self.backlog.defer(entry, None)

    async def close(self) -> None:
        if self.backlog is not None:
            await self.backlog.drain(self.drain_s)
        if self.vectors is not None:
            await self.vectors.close()
        if self.adaptive is not None:
            await self.adaptive.close()
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
                mark = stage_start()
                entry = await self.exact.get(plan.exact_key, plan.partition)
                stage_end(mark, "exact_lookup", hit=entry is not None)
                self._exact_timer.observe(time.perf_counter() - started)
                if entry is not None:
                    return Lookup(CacheStatus.HIT_EXACT, EXACT_MATCHED, entry, 1.0)
            # Far behind (the load governor): the answer is not stored either, so no miss lock.
            store_shed = self._shed_store(plan)
            if not (plan.use_semantic and plan.question and self.semantic_enabled):
                why = "exact miss" if plan.use_exact else "no exact lookup requested"
                if plan.use_semantic and not plan.question:
                    why += "; no semantic layer for this request (not a plain user text turn)"
                miss = Lookup(CacheStatus.MISS, why, store_shed=store_shed)
                return miss if store_shed else await self._single_flight(plan, miss)
            if store_shed:
                self.metrics.semantic_lookup("skipped_overloaded").inc()
                assert self.governor is not None
                self.governor.shed("semantic_lookup", LOOP_LAG)
                return Lookup(CacheStatus.MISS, OVERLOADED, store_shed=True)
            return await self._single_flight(plan, await self._semantic_unless_skipped(plan))
        except StoreUnavailable as exc:
            self.metrics.backend_errors.labels("lookup").inc()
            log.error("cache backend unavailable, request goes uncached: %s", exc)
            return Lookup(CacheStatus.BYPASS, f"cache backend unavailable: {exc}")
        except EmbedderError as exc:
            self.metrics.semantic_lookup("embedding_failed").inc()
            log.error("embedding failed, semantic lookup skipped: %s", exc)
            return Lookup(CacheStatus.MISS, f"embedding failed: {exc}")

    def _shed_store(self, plan: CachePlan) -> bool:
        if self.governor is None or plan.no_store or not plan.exact_key:
            return False
        return self.governor.shed_store()

    async def _semantic_unless_skipped(self, plan: CachePlan) -> Lookup:
        """The semantic layer, unless its embedding cannot help (nothing to compare with) or
        would wait past the queue budget. A skipped embedding starts in the background, for
        the store (the request goes upstream at once)."""
        if await self._scope_is_empty(plan):
            self.metrics.semantic_lookup("skipped_empty_scope").inc()
            return Lookup(CacheStatus.MISS, EMPTY_SCOPE, pending=self._begin_vector(plan))
        try:
            if self.governor is None:
                return await self._semantic(plan)
            with self.governor.semantic_lookup():
                return await self._semantic(plan)
        except (EmbedderOverloaded, Overloaded) as exc:
            self.metrics.semantic_lookup("skipped_overloaded").inc()
            log.debug("semantic lookup skipped: %s", exc)
            return Lookup(CacheStatus.MISS, OVERLOADED, pending=self._begin_vector(plan))

    async def _scope_is_empty(self, plan: CachePlan) -> bool:
        """True only when known: an index without ``scope_is_empty`` (Qdrant, Weaviate)
        answers "maybe not", and the lookup embeds as before."""
        if self.backlog is not None and self.backlog.pending_in(plan.scope):
            return False  # entries stored moments ago: their vectors are on the way
        check = getattr(self.vectors, "scope_is_empty", None)
        if check is None:
            return False
        empty: bool = await check(plan.scope)
        return empty

    def _begin_vector(self, plan: CachePlan) -> PendingVector | None:
        if self.backlog is None or plan.no_store or not plan.exact_key:
            return None
        if self.governor is not None and not self.governor.allow_early_vector():
            return None  # the store defers it to the backlog: computed when there is room
        return self.backlog.begin(plan.question)

    async def _lookup_vector(self, plan: CachePlan) -> np.ndarray:
        """The question's vector within the queue budget (``EmbedderOverloaded`` past it),
        once the scope's late vectors are indexed (read-your-writes; bounded the same)."""
        assert self.embedder is not None
        started = time.perf_counter()
        within = getattr(self.embedder, "embed_within", None)
        budget = None if within is None else self.max_queue
        if within is None or budget is None:
            vector = await self.embed_question(plan.question)
        else:
            vector = (await within([plan.question], budget))[0]
            self.metrics.embed_seconds.observe(time.perf_counter() - started)
        self.metrics.semantic_lookup("embedded").inc()
        if self.backlog is not None and self.backlog.pending_in(plan.scope):
            limit = _SETTLE_S if budget is None else budget
            await self.backlog.settle_scope(plan.scope, limit - (time.perf_counter() - started))
        return vector

    async def _embed_background(self, question: str) -> np.ndarray:
        assert self.embedder is not None
        background = getattr(self.embedder, "embed_background", None)
        if background is None:
            return (await self.embedder.embed([question]))[0]
        matrix: np.ndarray = await background([question])
        return matrix[0]

    async def _attach_vector(self, entry: CacheEntry, vector: np.ndarray) -> bool:
        """A late vector: onto the stored entry (persisted with it) and into the index."""
        current = await self.exact.get(entry.id, entry.partition)
        if current is None or current.created_at != entry.created_at:
            return False  # deleted, expired or replaced since it was stored
        values = vector.tolist()
        set_vector = getattr(self.exact, "set_vector", None)
        if set_vector is not None:
            evicted: list[str] = await set_vector(entry.id, values)
            if evicted and self.vectors is not None:
                await self.vectors.remove(evicted)
                self.metrics.evictions.inc(len(evicted))
                if entry.id in evicted:
                    return False
        assert self.vectors is not None
        await self.vectors.add(entry.id, entry.scope, entry.partition, values, entry.expires_at)
        return True

    async def embed_question(self, question: str) -> np.ndarray:
        assert self.embedder is not None
        started = time.perf_counter()
        mark = stage_start()
        vector = (await self.embedder.embed([question]))[0]
        stage_end(mark, "embedding")
        self.metrics.embed_seconds.observe(time.perf_counter() - started)
        return vector

    async def _semantic(self, plan: CachePlan) -> Lookup:
        assert self.vectors is not None
        vector = await self._lookup_vector(plan)
        started = time.perf_counter()
        mark = stage_start()
        neighbours = await self.vectors.search(plan.scope, vector.tolist(), self.candidates)
        stage_end(mark, "semantic_search", candidates=len(neighbours))
        best: float | None = None
        refused: list[str] = []
        offered: list[tuple[CacheEntry, float]] = []
        accept_all = isinstance(self.verifier, AcceptAll)
        for n in neighbours:
            # An approximate similarity (a quantised graph) may be off by a few thousandths:
            # such a neighbour is fetched if it might reach the bar, and judged on its stored
            # vector, so decisions never rest on the approximation.
            reach = n.similarity if n.exact else n.similarity + APPROXIMATE_SLACK
            if reach < plan.threshold and (reach < NEAR_REPEAT_FLOOR or accept_all):
                best = n.similarity if best is None else max(best, n.similarity)
                break  # best first: the rest are further away
            entry = await self.exact.get(n.id, plan.partition)
            similarity = n.similarity
            if not n.exact and entry is not None and entry.vector is not None:
                similarity = cosine(vector, entry.vector)
            best = similarity if best is None else max(best, similarity)
            if entry is None or entry.scope != plan.scope:
                continue  # expired or evicted since it was indexed
            below = similarity < plan.threshold
            if below and (similarity < NEAR_REPEAT_FLOOR or accept_all):
                continue  # re-scored below what could be offered
            if below and not self.verifier.near_repeat(plan.question, entry.question):
                continue  # below the threshold only a typo'd repeat is offered
            offered.append((entry, similarity))
        offered.sort(key=lambda pair: -pair[1])  # re-scoring may change the order (stable)
        candidates = [
            Candidate(
                entry.question,
                similarity,
                None
                if entry.vector is None
                else (vector, np.asarray(entry.vector, dtype=np.float32)),
            )
            for entry, similarity in offered
        ]
        try:
            mark = stage_start()
            verdicts = self.verifier.verify_batch(plan.question, candidates) if offered else []
            accepted = any(v.accept for v in verdicts)
            stage_end(mark, "verification", candidates=len(offered), accept=accepted)
        except Exception:  # a verifier bug must never serve (or fail) the request
            log.exception("match verifier failed; candidates refused")
            verdicts = [Verdict(False, "verifier_error: the verifier failed") for _ in offered]
        for (entry, similarity), verdict in zip(offered, verdicts, strict=True):
            if not verdict.accept:
                refused.append(verdict.reason)
                self.metrics.verifier_refusals.labels(verdict.reason.split(":")[0]).inc()
                continue
            if self.adaptive is not None:
                policy = self.adaptive.policy(plan.partition)
                if policy is not None:
                    # With a target, adaptive.py decides whether this eligible candidate serves.
                    decision, ticket = await self.adaptive.judge(
                        policy,
                        plan.partition,
                        entry,
                        similarity,
                        plan.threshold,
                        verdict.head_score,
                        verdict.pair_score,
                    )
                    self.metrics.lookup_seconds.labels("semantic").observe(
                        time.perf_counter() - started
                    )
                    if decision.serve:
                        hit = Lookup(
                            CacheStatus.HIT_SEMANTIC,
                            decision.reason,
                            entry,
                            similarity,
                            vector,
                            refused,
                        )
                        hit.ticket = ticket
                        return hit
                    miss = Lookup(
                        CacheStatus.MISS,
                        decision.reason,
                        vector=vector,
                        similarity=similarity,
                        refused=refused,
                    )
                    miss.ticket = ticket if decision.observe else None
                    miss.explored = decision.explored
                    return miss
            self.metrics.lookup_seconds.labels("semantic").observe(time.perf_counter() - started)
            why = f"similarity {similarity:.4f} >= threshold {plan.threshold:.4f}"
            if similarity < plan.threshold:
                why = (
                    f"near-repeat by spelling, similarity {similarity:.4f} < threshold "
                    f"{plan.threshold:.4f}"
                )
            return Lookup(
                CacheStatus.HIT_SEMANTIC,
                why,
                entry,
                similarity,
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

    def detach_vector(self, lookup: Lookup | None) -> None:
        """The request's context leaves this process (a shared pending store): the early
        embedding running here cannot follow it, so it is given up; the store on whichever
        replica completes the request computes the vector off its path."""
        if lookup is not None and self.backlog is not None:
            self.backlog.discard(lookup.pending)
            lookup.pending = None

    async def release(self, lookup: Lookup | None) -> None:
        """Free the miss lock a lookup took (the pipeline calls this once the answer is stored
        or found not storable). Idempotent; a failure only means the lock expires on its own."""
        if lookup is not None and self.backlog is not None:
            self.backlog.discard(lookup.pending)  # not stored: its early embedding is moot
            lookup.pending = None
        if lookup is None or lookup.lock is None or self.single_flight is None:
            return
        held, lookup.lock = lookup.lock, None
        try:
            await self.single_flight.lock.release(held.key, held.partition, held.token)
        except StoreUnavailable as exc:
            log.error("cache backend unavailable, miss lock left to expire: %s", exc)

    # ------------------------------------------------------------------ store
    async def store(
        self,
        plan: CachePlan,
        answer: CachedAnswer,
        vector: np.ndarray | None,
        pending: PendingVector | None = None,
    ) -> CacheEntry | None:
        """Write the entry at once (what the returned entry acknowledges). Without a vector
        (the lookup skipped its embedding) the vector is computed off the request path and
        attached later (``VectorBacklog``); one already computed in the background is used."""
        if plan.bypass_reason is not None or plan.no_store or not plan.exact_key:
            return None
        now = self.clock()
        wants_vector = bool(plan.question and plan.use_semantic and self.semantic_enabled)
        if vector is None and wants_vector and pending is not None:
            vector = pending.ready()
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
        if entry.vector is None and wants_vector:
            # Persisted with the entry: a restart before the vector lands queues it again
            # (entries stored for the exact layer only, x-bf-cache-type: direct, stay so).
            entry.meta[VECTOR_PENDING] = True
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
        if entry.vector is None and wants_vector and self.backlog is not None:
            self.backlog.defer(entry, pending)
        self.metrics.stores.inc()
        if evicted:
            self.metrics.evictions.inc(len(evicted))
            if self.adaptive is not None:
                await self.adaptive.store.forget(evicted, None)
        await self._refresh_entries()
        return entry

    # ------------------------------------------------------------------ invalidation
    async def delete(self, entry_id: str) -> bool:
        if self.adaptive is not None:
            gone = await self.exact.get(entry_id)
            if gone is not None:
                await self.adaptive.store.forget([entry_id], gone.partition)
        found = await self.exact.delete(entry_id)
        if self.vectors is not None:
            await self.vectors.remove([entry_id])
            if found:
                await self._erase_saved_vectors()
        self.metrics.entries.set(await self.exact.count())
        return found

    async def delete_partition(self, partition: str) -> int:
        ids = await self.exact.delete_partition(partition)
        if self.adaptive is not None:
            await self.adaptive.store.forget(ids, partition)
            await self.adaptive.store.forget_partition(partition)
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
        if self.adaptive is not None and ids:
            await self.adaptive.store.forget(ids, None)
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
