"""Micro-batching: concurrent ``embed`` calls share one model call.

A transformer on the CPU embeds 32 short texts in a fraction of 32 single calls' time, so
under concurrency the requests that queue while the model is busy are embedded together.

Policy (no added latency when idle):
- An idle batcher starts a request at once (after one event-loop turn, so requests arriving
  in the same turn join it).
- While a batch runs, new requests queue. When it ends, the queued requests go next; if they
  hold fewer than ``max_batch`` texts, the batcher first waits up to ``window`` seconds for
  more (callers just served tend to come straight back under load), waking early once full.
- A batch holds at most ``max_batch`` texts, except a single call larger than that, which
  runs on its own. A failed model call fails every caller in that batch with the same error.

Two lanes. ``embed`` and ``embed_within`` are urgent (a request waits for them);
``embed_background`` (vectors of entries already stored) runs only while no urgent text
waits, in batches the recent cost model expects to finish within ``background_slice``
seconds, so an urgent text queues behind at most one short background batch. A backend with
an ``embed_idle`` method (sentence-transformers: a thread of its own, computing with one
torch thread by default, or at a lower priority: ``embedder.background_priority``) runs the
background batches there, so they leave cores to the requests.

Overload: ``embed_within(texts, budget)`` predicts the queue wait from the work ahead (the
running batch's remaining time plus the queued urgent texts, in estimated tokens, times the
recent cost per token) and refuses at once with ``EmbedderOverloaded`` when it is over the
budget; a text still queued when the budget runs out is withdrawn and refused the same way
(a batch already running is not interrupted: that is compute, not queueing).

Held background: ``hold_background_while(predicate)`` keeps background batches queued while
the predicate says so (the sidecar passes its load governor's shedding: while semantic lookups
are being shed, which are worth more than a deferred vector, the model's cores go to the
requests). Urgent texts still run; the held vectors run once the hold is over (checked again
every ``HOLD_RECHECK_S``, and whenever an urgent batch ends). The queue stays bounded by its
owner (the sidecar's vector backlog counts what waits, and what it cannot take).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedders.base import Embedder, EmbedderError, EmbedderOverloaded

#: the cost model's memory: each batch moves the estimate this share of the way
_COST_WEIGHT = 0.3
#: a token estimate per text: the model truncates long texts (sentence-transformers: 256)
_MAX_UNITS = 258
#: how often a held background lane looks again whether its hold is over (the governor's
#: shedding is a deadline, not an event): seconds
HOLD_RECHECK_S = 0.05


def text_units(text: str) -> int:
    """Characters / 4 approximates word pieces; the 2 stands for [CLS] and [SEP]."""
    return min(len(text) // 4 + 2, _MAX_UNITS)


@dataclass(slots=True)
class _Job:
    texts: Sequence[str]
    future: asyncio.Future[np.ndarray]
    units: int = 0
    enqueued: float = 0.0
    started: bool = False  # taken into a batch: no longer queueing
    deadline: float = 0.0  # embed_within: never started after this (perf_counter seconds)
    urgent: bool = True


@dataclass(slots=True)
class BatchStats:
    """Counters for benchmarks and status pages."""

    calls: int = 0  # embed() calls
    batches: int = 0  # model calls
    texts: int = 0
    largest_batch: int = 0  # texts in the largest model call
    background_calls: int = 0  # embed_background() calls
    overloaded: int = 0  # embed_within() refusals (predicted or at the deadline)
    background_held_s: float = 0.0  # time background work waited out a hold, seconds
    max_wait_s: float = 0.0  # longest an urgent call queued (until its batch began or refused)


class MicroBatcher:
    """Wraps any ``Embedder``; is one itself (model id and dimension are the inner one's)."""

    def __init__(
        self,
        inner: Embedder,
        window: float = 0.002,
        max_batch: int = 32,
        split_by_length: bool = True,
        background_slice: float = 0.025,
    ) -> None:
        if max_batch < 1:
            raise EmbedderError(f"embedder.max_batch must be at least 1, got {max_batch}")
        if window < 0:
            raise EmbedderError(f"embedder.batch_window_ms must not be negative, got {window}")
        self.inner = inner
        self.window = window
        self.max_batch = max_batch
        #: run a batch as groups of similar length (local models: padding costs real work)
        self.split_by_length = split_by_length
        self.background_slice = background_slice
        self.stats = BatchStats()
        self._queue: deque[_Job] = deque()  # urgent
        self._background: deque[_Job] = deque()
        self._queued_texts = 0  # urgent texts queued
        self._queued_units = 0  # urgent estimated tokens queued
        self._unit_cost: float | None = None  # seconds per estimated token, recent batches
        # ... of background batches run on the backend's idle lane (embed_idle), learnt apart:
        # on busy cores they wait for the CPU, which an urgent batch does not
        self._idle_unit_cost: float | None = None
        self._running_units = 0
        self._running_idle = False  # the running batch is on the idle lane
        self._running_since = 0.0
        self._drainer: asyncio.Task[None] | None = None
        self._full: asyncio.Future[None] | None = None  # set when the queue reaches max_batch
        #: background batches wait while this returns True (``hold_background_while``)
        self._hold: Callable[[], bool] | None = None
        self._unheld: asyncio.Future[None] | None = None  # set when urgent work arrives
        #: told each urgent call's queue wait (until its batch began, or it was refused)
        self.on_wait: Callable[[float], None] | None = None

    # The protocol's attributes mirror the wrapped embedder (it learns them in start()).
    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @model_id.setter
    def model_id(self, value: str) -> None:
        self.inner.model_id = value

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @dimension.setter
    def dimension(self, value: int) -> None:
        self.inner.dimension = value

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def _waited(self, seconds: float) -> None:
        self.stats.max_wait_s = max(self.stats.max_wait_s, seconds)
        if self.on_wait is not None:
            self.on_wait(seconds)

    def hold_background_while(self, held: Callable[[], bool]) -> None:
        """Keep background batches queued while ``held()`` is True (urgent texts still run)."""
        self._hold = held

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return await self.inner.embed(texts)
        return await self._enqueue(texts, urgent=True).future

    async def embed_background(self, texts: Sequence[str]) -> np.ndarray:
        """Low priority: runs only while no urgent text is queued."""
        if not texts:
            return await self.inner.embed(texts)
        self.stats.background_calls += 1
        job = self._enqueue(texts, urgent=False)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.future.cancel()  # withdrawn: _take_batch skips it
            raise

    def predicted_wait(self) -> float:
        """Seconds a new urgent text would queue: the running batch's remaining time plus the
        queued urgent work, at the recent cost per token (0 until a batch has been timed)."""
        # A background batch on the idle lane runs at its own (slower on busy cores) cost;
        # either estimate stands in for the other until that one has been timed.
        cost = self._unit_cost or self._idle_unit_cost
        running_cost = (self._idle_unit_cost or cost) if self._running_idle else cost
        if cost is None or running_cost is None:
            return 0.0
        remaining = 0.0
        if self._running_units:
            elapsed = time.perf_counter() - self._running_since
            remaining = max(0.0, self._running_units * running_cost - elapsed)
        return remaining + self._queued_units * cost

    async def embed_within(self, texts: Sequence[str], budget: float) -> np.ndarray:
        """``embed``, unless the text would queue longer than ``budget`` seconds: then
        ``EmbedderOverloaded`` (predicted before queueing, enforced at the deadline)."""
        predicted = self.predicted_wait()
        if predicted > budget:
            self.stats.overloaded += 1
            raise EmbedderOverloaded(
                f"embedder queue ~{predicted * 1000:.0f} ms, over the {budget * 1000:g} ms budget"
            )
        if not texts:
            return await self.inner.embed(texts)
        job = self._enqueue(texts, urgent=True)
        job.deadline = job.enqueued + budget
        try:
            await asyncio.wait((job.future,), timeout=budget)
        except asyncio.CancelledError:
            job.future.cancel()
            raise
        if not job.future.done() and not job.started:
            job.future.cancel()  # withdrawn from the queue: _take_batch skips it
            self.stats.overloaded += 1
            waited = time.perf_counter() - job.enqueued
            self._waited(waited)
            raise EmbedderOverloaded(
                f"still queued for the embedder after the {budget * 1000:g} ms budget"
            )
        return await job.future

    def _enqueue(self, texts: Sequence[str], urgent: bool) -> _Job:
        loop = asyncio.get_running_loop()
        drainer = self._drainer
        if drainer is not None and drainer.get_loop() is not loop:
            # A previous event loop ended (tests, tools calling asyncio.run twice): its queued
            # callers are gone with it, and its futures cannot be resolved any more.
            self._queue.clear()
            self._background.clear()
            self._queued_texts = self._queued_units = self._running_units = 0
            self._drainer = drainer = None
            self._unheld = None
        job = _Job(
            texts,
            loop.create_future(),
            sum(text_units(t) for t in texts),
            time.perf_counter(),
            urgent=urgent,
        )
        if urgent:
            self._queue.append(job)
            self._queued_texts += len(texts)
            self._queued_units += job.units
            self.stats.calls += 1
            if self._unheld is not None and not self._unheld.done():
                self._unheld.set_result(None)  # a drainer waiting out a hold: urgent work
        else:
            self._background.append(job)
        if drainer is None or drainer.done():
            # The reference also keeps the task alive (the loop holds tasks weakly).
            self._drainer = loop.create_task(self._drain())
        elif self._queued_texts >= self.max_batch and self._full is not None:
            if not self._full.done():
                self._full.set_result(None)
        return job

    def _take_batch(self) -> list[_Job]:
        if not self._queue:
            return self._take_background()
        batch: list[_Job] = []
        size = 0
        now = time.perf_counter()
        while self._queue:
            job = self._queue[0]
            if batch and size + len(job.texts) > self.max_batch:
                break
            self._queue.popleft()
            self._queued_texts -= len(job.texts)
            self._queued_units -= job.units
            if job.future.done():  # the caller was cancelled (or gave up) while queued
                continue
            if job.deadline and now > job.deadline:
                # Its caller's timer has not fired yet (a busy loop): refuse it here rather
                # than spend the model on an answer that comes too late.
                self.stats.overloaded += 1
                self._waited(now - job.enqueued)
                job.future.set_exception(
                    EmbedderOverloaded("still queued for the embedder at its deadline")
                )
                continue
            job.started = True
            self._waited(now - job.enqueued)
            batch.append(job)
            size += len(job.texts)
        return batch

    def _take_background(self) -> list[_Job]:
        """Background work sized so an urgent text arriving meanwhile waits one short batch."""
        batch: list[_Job] = []
        size = units = 0
        idle_cost = self._idle_unit_cost if self._background_lane() is not None else None
        cost = idle_cost or self._unit_cost
        while self._background:
            job = self._background[0]
            over_time = cost is not None and (units + job.units) * cost > self.background_slice
            if batch and (size + len(job.texts) > self.max_batch or over_time):
                break
            self._background.popleft()
            if job.future.done():
                continue
            job.started = True
            batch.append(job)
            size += len(job.texts)
            units += job.units
        return batch

    async def _collect(self) -> None:
        """Wait up to the window for the queue to fill (called only under load)."""
        if self.window <= 0 or self._queued_texts >= self.max_batch:
            return
        self._full = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((self._full,), timeout=self.window)
        finally:
            self._full = None

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let requests of the same event-loop turn join
            under_load = False
            while self._queue or self._background:
                if not self._queue and self._hold is not None and self._hold():
                    await self._wait_out_hold()
                    continue
                if under_load and self._queue:
                    await self._collect()
                batch = self._take_batch()
                if batch:
                    await self._run(batch)
                under_load = True
        except BaseException as exc:  # cancelled with the loop: nobody may wait forever
            self._fail_all(exc)
            raise

    async def _wait_out_hold(self) -> None:
        """Only held background work is queued: wait until urgent work arrives or the hold
        may be over (``HOLD_RECHECK_S``)."""
        self._unheld = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        try:
            await asyncio.wait((self._unheld,), timeout=HOLD_RECHECK_S)
        finally:
            self._unheld = None
            self.stats.background_held_s += time.perf_counter() - started

    async def _run(self, batch: list[_Job]) -> None:
        texts = [t for job in batch for t in job.texts]
        self.stats.batches += 1
        self.stats.texts += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        units = sum(job.units for job in batch)
        embed: Callable[[Sequence[str]], Awaitable[np.ndarray]] = self.inner.embed
        idle = None if any(job.urgent for job in batch) else self._background_lane()
        if idle is not None:
            # A background batch on the backend's idle-priority lane: nobody waits for it, so
            # it takes only cores nothing else wants.
            embed = idle
        self._running_units, self._running_since = units, time.perf_counter()
        self._running_idle = idle is not None
        owner = [j for j, job in enumerate(batch) for _ in job.texts]
        first_row = [0] * len(batch)
        for j in range(1, len(batch)):
            first_row[j] = first_row[j - 1] + len(batch[j - 1].texts)
        out: np.ndarray | None = None
        missing = [len(job.texts) for job in batch]
        try:
            for group in self._groups(texts):
                matrix = await embed([texts[i] for i in group])
                if matrix.shape[0] != len(group):
                    raise EmbedderError(
                        f"embedder returned {matrix.shape[0]} vectors for {len(group)} texts"
                    )
                if out is None:
                    out = np.empty((len(texts), matrix.shape[1]), dtype=matrix.dtype)
                out[group] = matrix
                for i in group:
                    j = owner[i]
                    missing[j] -= 1
                    # A caller whose texts are all done is answered before later groups run.
                    if missing[j] == 0 and not batch[j].future.done():
                        start = first_row[j]
                        batch[j].future.set_result(out[start : start + len(batch[j].texts)])
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else EmbedderError("embedding was cancelled")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        else:
            if units:
                per_unit = (time.perf_counter() - self._running_since) / units
                old = self._idle_unit_cost if idle is not None else self._unit_cost
                new = per_unit if old is None else old + _COST_WEIGHT * (per_unit - old)
                if idle is not None:
                    self._idle_unit_cost = new
                else:
                    self._unit_cost = new
        finally:
            self._running_units = 0
            self._running_idle = False

    def _background_lane(self) -> Callable[[Sequence[str]], Awaitable[np.ndarray]] | None:
        """The backend's idle-priority ``embed_idle``, when it has one."""
        lane: Callable[[Sequence[str]], Awaitable[np.ndarray]] | None
        lane = getattr(self.inner, "embed_idle", None)
        return lane

    def _groups(self, texts: list[str]) -> list[list[int]]:
        if not self.split_by_length or len(texts) < 2:
            return [list(range(len(texts)))]
        return group_by_length([text_units(t) for t in texts])

    def _fail_all(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, Exception) else EmbedderError("embedding was cancelled")
        for queue in (self._queue, self._background):
            while queue:
                job = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(error)
        self._queued_texts = self._queued_units = 0


def group_by_length(lengths: Sequence[int], max_padding: float = 0.3) -> list[list[int]]:
    """Indices grouped so that padding each group to its longest member adds at most
    ``max_padding`` (a share of the real tokens); groups are in ascending length order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        n = max(1, lengths[i])
        # Sorted ascending: the newcomer is the longest, so the group pads to its length.
        if current and n * (len(current) + 1) > (1 + max_padding) * (real + n):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        groups.append(current)
    return groups


def with_batching(
    inner: Embedder, window_ms: float, max_batch: int, split_by_length: bool = True
) -> Embedder:
    """``inner`` behind a ``MicroBatcher``, or unchanged when ``max_batch`` is 1."""
    if max_batch <= 1:
        return inner
    return MicroBatcher(
        inner, window=window_ms / 1000.0, max_batch=max_batch, split_by_length=split_by_length
    )
