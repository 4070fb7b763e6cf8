"""Vectors computed off the critical path, for entries the exact store already holds.

A miss that skipped its lookup's embedding (an empty scope, or an overloaded embedder) is
stored for exact hits at once; its vector is computed in the embedder's background lane and
attached later (``DualCache`` writes it to the exact store, so the embedded index's rebuild at
start sees it, and adds it to the vector index). The work may start during the provider call
(``begin``, from the lookup) and is claimed by the store (``defer``); a claim that finds the
vector already computed uses it inline.

Bounded by count and bytes (the question texts held). Nothing is dropped silently: every vector
that will not be attached is counted in ``sidecar_cache_vector_drops{reason}`` and logged;
``drain`` at shutdown waits (bounded) and reports what it dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedders.base import EmbedderError
from sidecar.cache.model import CacheEntry
from sidecar.cache.stores.base import StoreUnavailable
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.cache")

#: (entry, vector) -> False when the entry is gone (deleted, expired, replaced) meanwhile
Attach = Callable[[CacheEntry, np.ndarray], Awaitable[bool]]
EmbedOne = Callable[[str], Coroutine[Any, Any, np.ndarray]]


@dataclass(eq=False, slots=True)
class PendingVector:
    """One question's vector in the background lane, counted in the backlog until it is
    attached to its entry or given up."""

    question: str
    size: int
    task: asyncio.Task[np.ndarray] | None = None
    claimed: bool = False  # an entry waits for it (the store took it over)
    released: bool = False

    def ready(self) -> np.ndarray | None:
        """The vector, when it is already computed."""
        task = self.task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()


#: a lookup waits for its scope's late vectors only while at most this many are pending: more
#: cannot be computed within a lookup's budget (an overload), and the wait would only hold it
SETTLE_MAX_PENDING = 64


@dataclass(slots=True)
class _Scope:
    attaches: set[asyncio.Task[None]] = field(default_factory=set)
    # resolved when ``attaches`` empties: one future for every waiting lookup (asyncio.wait
    # over the attach tasks themselves cost each waiter O(pending) callbacks, which under an
    # overload with thousands pending took a fifth of the event loop)
    drained: asyncio.Future[None] | None = None


class VectorBacklog:
    def __init__(
        self,
        embed: EmbedOne,
        attach: Attach,
        metrics: Metrics,
        max_items: int,
        max_bytes: int,
    ) -> None:
        self._embed = embed
        self._attach = attach
        self._metrics = metrics
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items = 0
        self.bytes = 0
        self._pending: set[PendingVector] = set()
        self._scopes: dict[str, _Scope] = {}
        metrics.vector_backlog.set_function(lambda: self.items)
        metrics.vector_backlog_bytes.set_function(lambda: self.bytes)

    # -- admission
    def _admit(self, question: str) -> PendingVector | None:
        size = len(question.encode("utf-8"))
        if self.items + 1 > self.max_items or self.bytes + size > self.max_bytes:
            return None
        self.items += 1
        self.bytes += size
        pending = PendingVector(question, size)
        self._pending.add(pending)
        return pending

    def _release(self, pending: PendingVector) -> None:
        if pending.released:
            return
        pending.released = True
        self.items -= 1
        self.bytes -= pending.size
        self._pending.discard(pending)

    def _drop(self, reason: str, entry: CacheEntry, detail: str = "") -> None:
        self._metrics.vector_drops.labels(reason).inc()
        log.error(
            "vector for cached entry %s not added (%s%s): it serves exact hits only",
            entry.id,
            reason,
            f": {detail}" if detail else "",
        )

    # -- work
    def begin(self, question: str) -> PendingVector | None:
        """Start embedding ``question`` in the background (a lookup that skipped it). None when
        the backlog is full: the store then tries again, and counts a drop if still full."""
        pending = self._admit(question)
        if pending is None:
            return None
        pending.task = asyncio.get_running_loop().create_task(self._embed(question))
        pending.task.add_done_callback(lambda _: self._unclaimed_done(pending))
        return pending

    def _unclaimed_done(self, pending: PendingVector) -> None:
        task = pending.task
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: a failure is reported by whoever claims it
        if not pending.claimed:
            self._release(pending)

    def discard(self, pending: PendingVector | None) -> None:
        """The request ended without storing: its early embedding is not needed."""
        if pending is None or pending.claimed:
            return
        if pending.task is not None:
            pending.task.cancel()
        self._release(pending)

    def defer(self, entry: CacheEntry, pending: PendingVector | None) -> bool:
        """``entry`` is stored without its vector: attach it when computed. False (counted as a
        drop) when the backlog is full."""
        if pending is None or pending.released or pending.task is None:
            pending = self._admit(entry.question)
            if pending is None:
                self._drop("backlog_full", entry, f"{self.items} vectors queued")
                return False
        pending.claimed = True
        task = asyncio.get_running_loop().create_task(self._complete(entry, pending))
        scope = self._scopes.setdefault(entry.scope, _Scope())
        scope.attaches.add(task)
        task.add_done_callback(lambda t: self._attach_done(entry.scope, t))
        return True

    async def _complete(self, entry: CacheEntry, pending: PendingVector) -> None:
        try:
            try:
                vector = await (pending.task or self._embed(entry.question))
            except EmbedderError as exc:
                self._drop("embedding_failed", entry, str(exc))
                return
            try:
                attached = await self._attach(entry, vector)
            except StoreUnavailable as exc:
                self._metrics.backend_errors.labels("store").inc()
                self._drop("index_unavailable", entry, str(exc))
                return
            if attached:
                self._metrics.vectors_added_late.inc()
            else:
                self._metrics.vector_drops.labels("entry_gone").inc()
        finally:
            self._release(pending)

    def _attach_done(self, scope: str, task: asyncio.Task[None]) -> None:
        state = self._scopes.get(scope)
        if state is not None:
            state.attaches.discard(task)
            if not state.attaches:
                del self._scopes[scope]
                if state.drained is not None and not state.drained.done():
                    state.drained.set_result(None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._metrics.vector_drops.labels("error").inc()
            log.error("attaching a late vector failed: %r", exc)

    # -- readers
    def pending_in(self, scope: str) -> int:
        """Entries of ``scope`` stored but whose vectors are not indexed yet."""
        state = self._scopes.get(scope)
        return 0 if state is None else len(state.attaches)

    async def settle_scope(self, scope: str, timeout: float | None) -> None:
        """Wait (at most ``timeout`` seconds) for the scope's pending vectors to be indexed.
        Not at all when more are pending than a lookup could wait for (``SETTLE_MAX_PENDING``)."""
        state = self._scopes.get(scope)
        if state is None or not state.attaches or len(state.attaches) > SETTLE_MAX_PENDING:
            return
        if timeout is not None and timeout <= 0:
            return
        if state.drained is None:
            state.drained = asyncio.get_running_loop().create_future()
        # asyncio.wait leaves the future alone on a timeout: the other waiters keep it
        await asyncio.wait((state.drained,), timeout=timeout)

    async def settled(self) -> None:
        """Every vector claimed so far attached or given up (for tests and tools)."""
        tasks = {t for s in self._scopes.values() for t in s.attaches}
        if tasks:
            await asyncio.wait(tasks)

    async def drain(self, timeout: float) -> int:
        """Shutdown: wait up to ``timeout`` seconds for claimed vectors, then give up the rest.
        Returns how many entries were left without their vector (counted and logged)."""
        tasks = {t for s in self._scopes.values() for t in s.attaches}
        done: set[asyncio.Task[None]] = set()
        if tasks:
            done, _ = await asyncio.wait(tasks, timeout=timeout)
        left = [t for t in tasks if t not in done]
        for task in left:
            task.cancel()
        for pending in list(self._pending):
            if not pending.claimed and pending.task is not None:
                pending.task.cancel()  # a request's early embedding: no entry waits for it
        if left:
            await asyncio.wait(left)
            self._metrics.vector_drops.labels("shutdown").inc(len(left))
            log.error(
                "shutdown: %d cached entries left without their vector after %.1f s "
                "(they serve exact hits; restart re-queues them for the embedded store)",
                len(left),
                timeout,
            )
        return len(left)
