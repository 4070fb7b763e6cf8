"""Admission control for the optional work of a request (issue 16, overload).

A cache miss can always be answered without its semantic lookup: the request goes upstream
and its entry is stored for exact hits, its vector computed later. Under overload that
optional work is what is shed, before it is queued, so the work every request must do
(parsing, the exact lookup, forwarding) and exact hits keep their latency:

* **In-flight bound.** At most ``embedder.max_inflight_lookups`` semantic lookups wait for the
  embedder (or for their scope's late vectors) at once. One more skips the semantic layer at
  once: a miss with the reason ``overloaded: semantic lookup skipped``, counted.
* **Event-loop lag.** A probe task measures how late the event loop runs a 10 ms timer. While
  every probe of the last 50 ms was later than ``server.shed_loop_lag_ms``, semantic lookups
  are skipped the same way and the lookups' early embeddings are not started (the store hands
  the vector to the backlog, which computes it when the embedder has room). Every request
  shares the one loop, so lag is what an exact hit waits for; shedding the optional work is
  what gives it back. The same holds for the ext_proc round trip (the sidecar's reply to a
  request's headers until that request's body arrives; ``sidecar_extproc_round_trip_seconds``):
  when the gRPC transport backs up, requests queue where the loop's timers do not see them.
* **Stores, last.** While the lag stays over ``server.shed_store_lag_ms`` (40 ms), misses are
  not stored either (``overloaded: not stored``): the answer then needs no trip back through
  the sidecar (ext_proc ends its stream after the request, unless output guardrails must see
  the answer), which halves a miss's cost on the loop.
* **Streams, past the last mark.** While the lag stays over ``server.refuse_streams_lag_ms``
  (100 ms; failing open, after a single probe that late: one stall is enough), the ext_proc
  server refuses new streams at once (``admit_stream``): a refused stream costs the loop one
  message instead of a request's whole exchange, so the queue in the gRPC transport drains
  before Envoy's message timeout (200 ms) turns its requests into 504s.

* **Streams that queued in the transport.** With Envoy's ``request.time`` attribute on a
  stream's first message, the sidecar knows how long the stream waited in grpc's transport
  before it was taken up (``admit_waited``), a queue no other signal sees: failing open, a
  stream that waited past ``server.refuse_streams_wait_ms`` (50 ms) is refused on its own,
  the streams taken up right after it (queued behind it) before their first message is
  read, and five in a row that late shed like a lagging loop.

All are counted in ``sidecar_overload_shed_total{work, cause}``; the lag is exported as
``sidecar_event_loop_lag_seconds``. Nothing here fails a request: shedding turns optional work
into a counted skip, and a refused stream (fail open) lets Envoy forward the request uncached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator

from sidecar.metrics import Metrics

#: the probe's period: short enough to see a burst, long enough to cost nothing (100/s)
PROBE_INTERVAL_S = 0.01
#: how long an overload keeps the sidecar shedding after the loop is on time again
HOLD_S = 0.5
#: the lag must last this many probes in a row (50 ms): a one-off spike (a collection, one
#: large body) is not an overload, and shedding would not shorten it
SUSTAINED_PROBES = 5
#: a probe this late is a stall, counted by what the loop's thread did meanwhile
STALL_S = 0.05

INFLIGHT = "inflight_limit"
LOOP_LAG = "loop_lag"
#: a stream waited in the gRPC transport, before the sidecar took it up, past the mark
TRANSPORT_WAIT = "transport_wait"


def _open_schedstat() -> int | None:
    """The calling thread's ``/proc/thread-self/schedstat`` (Linux): its time on a core and
    its time ready but waiting for one. None where there is no such file."""
    try:
        return os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return None


def _thread_times(sched: int | None) -> tuple[float, float]:
    """(seconds on a core, seconds waiting for one) of the thread whose schedstat ``sched``
    is, read afresh (1-2 us); without it, the calling thread's CPU time and 0."""
    if sched is not None:
        try:
            fields = os.pread(sched, 128, 0).split()
            return int(fields[0]) / 1e9, int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
    return time.thread_time(), 0.0


class Overloaded(Exception):  # noqa: N818 - reads as the state it reports
    """Optional work refused by admission control; ``cause`` is ``inflight_limit`` or
    ``loop_lag``."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class LoadGovernor:
    def __init__(
        self,
        metrics: Metrics,
        max_inflight_lookups: int,
        shed_loop_lag_ms: float,
        shed_store_lag_ms: float = 0.0,
        use_round_trip: bool = True,
    ) -> None:
        self._metrics = metrics
        self.max_inflight = max_inflight_lookups
        #: 0 disables lag-based shedding
        self.lag_limit = shed_loop_lag_ms / 1000.0
        #: stores are worth more than a semantic lookup (the next identical question is an
        #: exact hit): shed at a higher lag, or never (0)
        self.store_lag_limit = shed_store_lag_ms / 1000.0
        self.use_round_trip = use_round_trip
        self.inflight = 0
        self.lag = 0.0  # the latest probe's lateness, seconds
        #: when the probe last ran (time.monotonic): the sign of a live loop
        self.last_tick = time.monotonic()
        #: called on every probe tick (the liveness listener's heartbeat)
        self.on_tick: Callable[[], None] | None = None
        #: ext_proc streams are refused while the lag stays over this (seconds); 0: never. Set
        #: by the ext_proc server (``refuse_streams_over``): no gRPC server, no refusal.
        self.stream_lag_limit = 0.0
        #: whether one stall past it is enough (failing open) or the lag must last (closed)
        self._refuse_on_stall = False
        #: a stream that waited longer than this in the gRPC transport before the sidecar
        #: took it up is refused (failing open; seconds; 0: never). Set by the ext_proc server.
        self.stream_wait_limit = 0.0
        self.transport_wait = 0.0  # the latest stream's wait, seconds
        self._waits: deque[float] = deque(maxlen=SUSTAINED_PROBES)
        self._shedding_until = 0.0
        self._store_shedding_until = 0.0
        self._refusing_until = 0.0
        #: streams queued behind one that waited past ``stream_wait_limit`` are refused
        #: before their first message until then (failing open; ``admit_waited``)
        self._wait_refusing_until = 0.0
        self._ignore_until = 0.0  # lag readings before this are not counted (settle)
        self._recent: deque[float] = deque(maxlen=SUSTAINED_PROBES)
        self.round_trip = 0.0  # the latest ext_proc round trip, seconds
        self._round_trips: deque[float] = deque(maxlen=SUSTAINED_PROBES)
        self._probe: asyncio.Task[None] | None = None
        self._shed_children: dict[tuple[str, str], object] = {}
        metrics.loop_lag.set_function(lambda: self.lag)
        metrics.inflight_lookups.set_function(lambda: self.inflight)
        metrics.extproc_round_trip.set_function(lambda: self.round_trip)
        metrics.extproc_transport_wait.set_function(lambda: self.transport_wait)

    # -- lag probe
    def start(self) -> None:
        self.last_tick = time.monotonic()
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        sched = _open_schedstat()  # opened here: the loop thread's own figures
        try:
            ran, waited = _thread_times(sched)
            while True:
                planned = loop.time() + PROBE_INTERVAL_S
                await asyncio.sleep(PROBE_INTERVAL_S)
                self.last_tick = time.monotonic()
                if self.on_tick is not None:
                    self.on_tick()
                lag = max(0.0, loop.time() - planned)
                now_ran, now_waited = _thread_times(sched)
                if lag > STALL_S:
                    self._count_stall(
                        PROBE_INTERVAL_S + lag,
                        now_ran - ran,
                        None if sched is None else now_waited - waited,
                    )
                ran, waited = now_ran, now_waited
                self.observe_lag(lag)
        finally:
            if sched is not None:
                os.close(sched)

    def _count_stall(self, wall: float, ran: float, waited_for_core: float | None) -> None:
        """Say what the loop's thread did while the loop ran late: it ran (work on the loop,
        to move or split: ``loop_busy``), it was ready but got no core (``not_scheduled``:
        the host's CPU, or the sidecar's own compute threads, took the cores), or it slept
        (``blocked``: waiting for the GIL another thread held, or a blocking call on the
        loop); ``unknown`` where the kernel does not tell the last two apart."""
        if ran >= wall / 2:
            kind = "loop_busy"
        elif waited_for_core is None:
            kind = "unknown"
        elif waited_for_core >= wall / 2:
            kind = "not_scheduled"
        else:
            kind = "blocked"
        self._metrics.loop_stalls.labels(kind).inc()

    def settle(self, grace_s: float = 1.0) -> None:
        """Start-up is over: forget the lag it caused (model loading, the collector's last full
        pass before ``gc.freeze``) and ignore the probe's readings for ``grace_s`` more, so a
        stall of the start-up never refuses the first streams or sheds the first lookups."""
        self._ignore_until = time.monotonic() + grace_s
        self._recent.clear()
        self._round_trips.clear()
        self._waits.clear()
        self._shedding_until = self._store_shedding_until = self._refusing_until = 0.0
        self._wait_refusing_until = 0.0

    def observe_lag(self, lag: float) -> None:
        """One measurement of how late the loop ran a timer (from the probe)."""
        self.lag = lag
        if time.monotonic() < self._ignore_until:
            return
        self._recent.append(lag)
        if self._refuse_on_stall and lag > self.stream_lag_limit > 0:
            # Failing open, one stall is enough: every stream that arrived during it has waited
            # that long already, and forwarding those uncached costs no request.
            self._refusing_until = time.monotonic() + HOLD_S
        if len(self._recent) < SUSTAINED_PROBES:
            return
        self._marks(min(self._recent))

    def observe_round_trip(self, seconds: float) -> None:
        if self.use_round_trip:
            self._observe_round_trip(seconds)

    def _observe_round_trip(self, seconds: float) -> None:
        """One ext_proc round trip as the sidecar sees it: from its reply to a request's
        headers to the arrival of that request's body (Envoy sends the body once it has the
        reply). Normally well under a millisecond; when the gRPC transport backs up (a queue
        the event loop's timers do not see), it grows like the lag and sheds the same way."""
        self.round_trip = seconds
        self._round_trips.append(seconds)
        if len(self._round_trips) < SUSTAINED_PROBES:
            return
        self._marks(min(self._round_trips))

    def admit_waited(self, waited: float) -> bool:
        """One new ext_proc stream, ``waited`` seconds after Envoy received its request (Envoy's
        ``request.time``): the time it queued in the gRPC transport before the sidecar took
        it up, which neither the loop's lag nor the round trip sees. False (counted): refuse
        it, failing open, when it waited past ``server.refuse_streams_wait_ms``; every stream
        queued behind it has waited about as long, and refusing costs the loop one message
        instead of a request's exchange, so the queue drains before Envoy's message timeout.
        A wait that lasts (five streams in a row) also sheds like a lagging loop."""
        self.transport_wait = waited
        if time.monotonic() < self._ignore_until:
            return True  # queued behind the start-up (settle): not an overload
        self._waits.append(waited)
        if len(self._waits) == SUSTAINED_PROBES:
            self._marks(min(self._waits))
        if self._refuse_on_stall and waited > self.stream_wait_limit > 0:
            self.shed("extproc_stream", TRANSPORT_WAIT)
            # The streams taken up next queued behind this one: those that came in while it
            # was already over the mark have waited past it too. Refuse them before their first
            # message is read (``admit_stream``), for as long as this one's wait exceeded the
            # mark: a refusal then costs no message read, and the queue drains sooner.
            excess = min(waited - self.stream_wait_limit, HOLD_S)
            self._wait_refusing_until = max(self._wait_refusing_until, time.monotonic() + excess)
            return False
        return True

    def _marks(self, sustained: float) -> None:
        """Start (or extend) shedding at every mark a sustained lag is over."""
        now = time.monotonic()
        if sustained > self.lag_limit > 0:
            self._shedding_until = now + HOLD_S
        if sustained > self.store_lag_limit > 0:
            self._store_shedding_until = now + HOLD_S
        if sustained > self.stream_lag_limit > 0:
            self._refusing_until = now + HOLD_S

    @property
    def loop_lagging(self) -> bool:
        return self.lag_limit > 0 and time.monotonic() < self._shedding_until

    def shed_store(self) -> bool:
        """Whether a miss's answer should go unstored (counted): only while the loop lags far
        behind (``server.shed_store_lag_ms``)."""
        if self.store_lag_limit > 0 and time.monotonic() < self._store_shedding_until:
            self.shed("store", LOOP_LAG)
            return True
        return False

    def refuse_streams_over(self, lag_ms: float, on_stall: bool, wait_ms: float = 0.0) -> None:
        """Turn stream refusal on at this lag (milliseconds; 0: never). ``on_stall``: one
        late probe is enough (failing open: a refused request goes on uncached); otherwise
        the lag must last 50 ms (failing closed: a refused request is an error).
        ``wait_ms``: refuse a stream that waited this long in the transport (failing open
        only; 0: never)."""
        self.stream_lag_limit = lag_ms / 1000.0
        self._refuse_on_stall = on_stall
        self.stream_wait_limit = wait_ms / 1000.0

    def admit_stream(self) -> bool:
        """Whether a new ext_proc stream should be served; False (counted) while the loop or
        the transport lags past ``server.refuse_streams_lag_ms``, or (failing open) just after
        a stream that waited past ``server.refuse_streams_wait_ms`` (``admit_waited``).
        Checked once per stream, before its first message is read."""
        now = time.monotonic()
        if self.stream_lag_limit > 0 and now < self._refusing_until:
            self.shed("extproc_stream", LOOP_LAG)
            return False
        if now < self._wait_refusing_until:  # set only failing open (admit_waited)
            self.shed("extproc_stream", TRANSPORT_WAIT)
            return False
        return True

    # -- admission
    def shed(self, work: str, cause: str) -> None:
        """Count one piece of optional work not done."""
        key = (work, cause)
        child = self._shed_children.get(key)
        if child is None:
            child = self._shed_children[key] = self._metrics.overload_shed.labels(work, cause)
        child.inc()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def semantic_lookup(self) -> Iterator[None]:
        """Hold one of the in-flight lookup places for the block, or raise ``Overloaded``
        (counted) at once when none is free or the loop is lagging."""
        if self.loop_lagging:
            self.shed("semantic_lookup", LOOP_LAG)
            raise Overloaded(LOOP_LAG)
        if self.inflight >= self.max_inflight:
            self.shed("semantic_lookup", INFLIGHT)
            raise Overloaded(INFLIGHT)
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    def allow_early_vector(self) -> bool:
        """Whether a skipped lookup may start its vector now (during the provider call).
        While the loop lags, no: the store defers it to the backlog instead."""
        if self.loop_lagging:
            self.shed("early_vector", LOOP_LAG)
            return False
        return True
