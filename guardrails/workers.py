"""Worker processes for CPU-bound local checks, so that work past its deadline can be stopped.

A Python thread cannot be stopped: a Presidio scan of a 1 MB adversarial prompt keeps burning
CPU long after the rule's timeout has answered the request. A process can be killed. The
engine therefore hands large inputs of local checks (``guardrails.base.LocalCheck``: regex,
secrets, presidio) to this pool; small inputs run inline (see ``GuardrailEngine``).

* Workers are started with the ``forkserver`` method: the sidecar's own process has threads
  (gRPC, the embedder) that make plain ``fork`` unsafe, and the fork server imports the check
  modules once (``preload``), so a replacement worker costs about 0.1 s of CPU instead of
  re-importing Presidio (about 8 s).
* A worker rebuilds each check from its profile's provider and config (``CheckSpec``) and keeps
  it; only the pieces and the stage travel per job, and only picklable analysis comes back.
* One job at a time per worker. Callers wait for a free worker; the wait counts against the
  caller's deadline (the engine runs the whole call under the rule's ``asyncio.timeout``). At
  most ``max_queue`` callers wait; beyond that :class:`WorkersBusyError` is raised at once.
* A job that is cancelled (the rule's timeout), exceeds its CPU limit, or whose worker dies is
  ended by SIGKILL; the worker is replaced in the background. CPU is read from the worker
  process itself (``psutil``), so the limit counts CPU, not wall time on a busy machine.

Written here rather than on ``concurrent.futures.ProcessPoolExecutor`` because that executor
cannot kill one worker whose task overran: it can only shut the whole pool down.

Nothing of the text is logged: errors carry exception class names only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge

from guardrails.base import Stage, TextPiece

log = logging.getLogger(__name__)

#: Default number of workers: one per core, at most two (the sidecar's own loop needs a core).
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))
DEFAULT_MAX_QUEUE = 64


class WorkerError(Exception):
    """A pool job failed; ``kind`` is what the engine reports (``error:<kind>``)."""

    kind = "check_error"


class CpuBudgetExceeded(WorkerError):  # noqa: N818 - reads as the event it reports
    kind = "cpu_budget"

    def __init__(self, used_s: float, limit_s: float) -> None:
        super().__init__(f"used {used_s * 1000:.0f} ms of CPU, limit {limit_s * 1000:.0f} ms")
        self.used_s = used_s
        self.limit_s = limit_s


class WorkersBusyError(WorkerError):
    kind = "workers_busy"


class WorkerCrashedError(WorkerError):
    kind = "worker_crashed"


class RemoteCheckFailed(WorkerError):  # noqa: N818 - the check itself raised in the worker
    """The check raised in the worker; only its class name crosses back."""


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How a worker rebuilds a check: what the rule file says, as ``build_check`` takes it."""

    key: str  # guardrails.rules.check_key of (provider, config, base_dir)
    provider: str
    config: Mapping[str, Any]
    base_dir: str | None


@dataclass(slots=True)
class JobResult:
    analyses: list[Any]
    cpu_s: float  # CPU the worker spent on the job, as the worker measured it


# --------------------------------------------------------------------------- worker side


def _worker_main(conn: Connection, specs: Sequence[CheckSpec]) -> None:
    """A worker's loop: build the known checks, then answer jobs until the pipe closes."""
    # Ctrl-C and SIGTERM reach the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from guardrails.registry import build_check

    checks: dict[str, Any] = {}

    def check_for(spec: CheckSpec) -> Any:
        check = checks.get(spec.key)
        if check is None:
            check = build_check(spec.provider, spec.config, base_dir=spec.base_dir)
            checks[spec.key] = check
        return check

    for spec in specs:
        with contextlib.suppress(Exception):  # a failure surfaces again on the first job
            check_for(spec)
    try:
        conn.send(("ready", None, 0.0))
    except OSError:  # the pool closed before this worker was ready
        return
    while True:
        try:
            jobs, stage = conn.recv()
        except (EOFError, OSError):
            return
        started = time.process_time()
        try:
            out = [check_for(spec).analyze(pieces, stage) for spec, pieces in jobs]
            reply: tuple[str, Any, float] = ("ok", out, time.process_time() - started)
        except Exception as exc:  # noqa: BLE001 - reported by class name, never by message
            reply = ("error", type(exc).__name__, time.process_time() - started)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable analysis
            conn.send(("error", type(exc).__name__, time.process_time() - started))


# --------------------------------------------------------------------------- parent side


@dataclass(eq=False, slots=True)
class _Worker:
    process: Any  # multiprocessing.process.BaseProcess
    conn: Connection
    ps: psutil.Process
    ready: bool = False

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def cpu_s(self) -> float:
        try:
            times = self.ps.cpu_times()
        except psutil.Error:  # gone: nothing more will be spent
            return 0.0
        return float(times.user + times.system)


@dataclass(slots=True)
class PoolStats:
    jobs: int = 0
    kills: dict[str, int] = field(default_factory=dict)  # reason -> count
    killed_pids: list[int] = field(default_factory=list)  # most recent last, bounded


class WorkerPool:
    """A bounded pool of check worker processes (see the module docstring)."""

    def __init__(
        self,
        size: int = DEFAULT_WORKERS,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        preload: Iterable[str] = (),
        specs: Iterable[CheckSpec] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``registry`` None keeps the pool's metrics private (not exported)."""
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.size = size
        self.max_queue = max_queue
        self._preload = sorted({"guardrails.workers", "guardrails.registry", *preload})
        self._specs: dict[str, CheckSpec] = {s.key: s for s in specs}
        self._ctx = multiprocessing.get_context("forkserver")
        self._idle: asyncio.Queue[_Worker] | None = None
        self._workers: set[_Worker] = set()
        self._waiting = 0
        self._closed = False
        self._prestart: threading.Thread | None = None
        self._prestarted: list[_Worker] = []
        self._start_error: Exception | None = None
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = PoolStats()
        registry = registry if registry is not None else CollectorRegistry()
        self._m_jobs = Counter(
            "guardrail_worker_jobs_total",
            "Local-check jobs that guardrail check workers finished",
            registry=registry,
        )
        self._m_kills = Counter(
            "guardrail_worker_kills_total",
            "Guardrail check workers killed, by reason (deadline, cpu_budget, crash)",
            ["reason"],
            registry=registry,
        )
        self._m_busy = Counter(
            "guardrail_worker_busy_total",
            "Jobs refused because every worker was busy and the wait queue was full",
            registry=registry,
        )
        Gauge(
            "guardrail_worker_waiting",
            "Requests waiting for a guardrail check worker",
            registry=registry,
        ).set_function(lambda: self._waiting)

    # -- life cycle ------------------------------------------------------------------------

    def add_specs(self, specs: Iterable[CheckSpec]) -> None:
        """Checks new workers build before taking jobs (the current rule set's)."""
        for spec in specs:
            self._specs.setdefault(spec.key, spec)

    def set_specs(self, specs: Iterable[CheckSpec]) -> None:
        """Replace the checks new workers build (after a rule reload; old ones are dropped)."""
        self._specs = {spec.key: spec for spec in specs}

    def prestart(self) -> None:
        """Start the workers in a background thread now (no event loop needed); ``start``
        or the first job picks them up. Starting the fork server imports the check modules,
        which for Presidio takes seconds."""
        if self._prestart is None and not self._started:
            self._prestart = threading.Thread(
                target=self._spawn_into, args=(self.size,), name="guardrail-workers", daemon=True
            )
            self._prestart.start()

    def _spawn_into(self, count: int) -> None:
        try:
            for _ in range(count):
                self._prestarted.append(self._spawn())
        except Exception as exc:  # noqa: BLE001 - reported by start() in the event loop
            self._start_error = exc

    def _spawn(self) -> _Worker:
        if self._preload:
            self._ctx.set_forkserver_preload(self._preload)
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_end, list(self._specs.values())),
            name="guardrail-check-worker",
            daemon=True,
        )
        process.start()
        child_end.close()  # else the parent never sees EOF when the worker dies
        return _Worker(process, parent_end, psutil.Process(process.pid))

    async def start(self, *, wait_ready: bool = True) -> None:
        """Start the workers (if not yet) and, by default, wait until each has built its checks."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
            self._idle = asyncio.Queue()
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise WorkerError("the worker pool is closed")
            if self._prestart is None:
                self.prestart()
            assert self._prestart is not None
            await asyncio.to_thread(self._prestart.join)
            if self._start_error is not None and not self._prestarted:
                self._prestart = None  # the next call tries again
                error, self._start_error = self._start_error, None
                log.error("guardrail check workers could not start: %s", type(error).__name__)
                raise WorkerCrashedError("guardrail check workers could not start") from error
            assert self._idle is not None
            fresh, self._prestarted = self._prestarted, []
            self._started = True
            for worker in fresh:
                self._workers.add(worker)
                if wait_ready:
                    try:
                        await self._wait_ready(worker)
                    except (WorkerCrashedError, EOFError, OSError):
                        self._retire(worker, "crash")  # and start another
                        continue
                self._idle.put_nowait(worker)

    async def aclose(self) -> None:
        """Stop every worker (SIGKILL; they hold no state worth a graceful stop)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._prestart is not None:
            await asyncio.to_thread(self._prestart.join)
        for worker in [*self._workers, *self._prestarted]:
            self._kill(worker)
        for worker in [*self._workers, *self._prestarted]:
            await asyncio.to_thread(worker.process.join, 5)
        self._workers.clear()
        self._prestarted = []

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def idle(self) -> int:
        return self._idle.qsize() if self._idle is not None else 0

    # -- jobs ------------------------------------------------------------------------------

    async def run(
        self,
        jobs: Sequence[tuple[CheckSpec, Sequence[TextPiece]]],
        stage: Stage,
        *,
        cpu_limit_s: float | None = None,
        charge: Callable[[float], None] | None = None,
    ) -> JobResult:
        """Run ``analyze`` of each job's check in one worker, in order.

        Cancel the caller (its deadline) and the worker is killed. Raises CpuBudgetExceeded
        when the worker spends more than ``cpu_limit_s`` of CPU on the job, WorkersBusyError
        when ``max_queue`` callers already wait, WorkerCrashedError when the worker dies,
        RemoteCheckFailed when the check raised. ``charge`` receives the CPU seconds the job
        used, however it ended (for a killed worker: as read just before the kill).
        """
        if cpu_limit_s is not None and cpu_limit_s <= 0:
            raise CpuBudgetExceeded(0.0, 0.0)
        self.add_specs(spec for spec, _ in jobs)
        worker = await self._acquire()
        reason: str | None = "deadline"  # what killed the worker, if the job does not finish
        base: float | None = None
        used = 0.0
        try:
            if not worker.ready:
                await self._wait_ready(worker)
            base = worker.cpu_s()
            worker.conn.send(([(spec, list(pieces)) for spec, pieces in jobs], stage))
            status, payload, used = await self._reply(worker, base, cpu_limit_s)
            reason = None
        except CpuBudgetExceeded:
            reason = "cpu_budget"
            raise
        except WorkerCrashedError:
            reason = "crash"
            raise
        except (EOFError, OSError):
            reason = "crash"
            raise WorkerCrashedError("a guardrail check worker died") from None
        finally:
            if reason is None:
                assert self._idle is not None
                self._idle.put_nowait(worker)
            else:
                if base is not None:
                    used = max(0.0, worker.cpu_s() - base)
                self._retire(worker, reason)
            if charge is not None:
                charge(used)
        self.stats.jobs += 1
        self._m_jobs.inc()
        if status != "ok":
            raise RemoteCheckFailed(f"check raised {payload}")
        return JobResult(list(payload), float(used))

    async def _acquire(self) -> _Worker:
        if not self._started:
            await self.start(wait_ready=False)
        assert self._idle is not None
        if self._idle.empty() and self._waiting >= self.max_queue:
            self._m_busy.inc()
            raise WorkersBusyError(
                f"all {self.size} guardrail workers busy and {self._waiting} requests waiting"
            )
        self._waiting += 1
        try:
            return await self._idle.get()
        finally:
            self._waiting -= 1

    async def _wait_ready(self, worker: _Worker) -> None:
        await _readable(worker.conn)
        status, _, _ = worker.conn.recv()
        if status != "ready":
            raise WorkerCrashedError("a guardrail check worker did not start")
        worker.ready = True

    async def _reply(
        self, worker: _Worker, base_cpu_s: float, limit_s: float | None
    ) -> tuple[str, Any, float]:
        with _watch_readable(worker.conn) as readable:
            while True:
                timeout = None
                if limit_s is not None:
                    # CPU grows at most as fast as wall time (one thread), so the limit
                    # cannot be crossed before this much wall time has passed.
                    timeout = max(0.005, limit_s - (worker.cpu_s() - base_cpu_s))
                done, _ = await asyncio.wait({readable}, timeout=timeout)
                if done:
                    break
                used = worker.cpu_s() - base_cpu_s
                assert limit_s is not None
                if used >= limit_s:
                    raise CpuBudgetExceeded(used, limit_s)
        reply: tuple[str, Any, float] = worker.conn.recv()
        return reply

    def _retire(self, worker: _Worker, reason: str) -> None:
        """Kill a worker whose job did not finish, and start its replacement."""
        self._kill(worker)
        self._workers.discard(worker)
        self.stats.kills[reason] = self.stats.kills.get(reason, 0) + 1
        self._m_kills.labels(reason).inc()
        self.stats.killed_pids = [*self.stats.killed_pids[-63:], worker.pid]
        log.warning("guardrail check worker %d killed (%s); starting another", worker.pid, reason)
        threading.Thread(target=worker.process.join, args=(10,), daemon=True).start()
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._replace())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        try:
            worker = await asyncio.to_thread(self._spawn)
        except Exception as exc:  # noqa: BLE001 - retried at the next retirement
            log.error("guardrail check worker could not be started: %s", type(exc).__name__)
            return
        if self._closed:
            self._kill(worker)
            return
        self._workers.add(worker)
        assert self._idle is not None
        self._idle.put_nowait(worker)

    @staticmethod
    def _kill(worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.process.kill()
        with contextlib.suppress(Exception):
            worker.conn.close()


@contextlib.contextmanager
def _watch_readable(conn: Connection) -> Iterator[asyncio.Future[None]]:
    """A future that completes when ``conn`` has data (or EOF), watched by the event loop.

    The reader is removed on exit, before the caller may close the connection."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    ready: asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_ready)
    try:
        yield ready
    finally:
        loop.remove_reader(fd)
        # uvloop switches a watched descriptor to non-blocking mode; Connection.send and recv
        # need it blocking (a 1 MB send would fail part-way with BlockingIOError).
        os.set_blocking(fd, True)


async def _readable(conn: Connection) -> None:
    with _watch_readable(conn) as ready:
        await ready


def process_tree_cpu_s(pid: int | None = None, *, exclude: Iterable[int] = ()) -> float:
    """CPU seconds of a process and all its descendants, live or already reaped.

    ``resource.getrusage(RUSAGE_CHILDREN)`` alone misses live children and grandchildren
    (forkserver workers are children of the fork server), so this walks the live tree and
    adds what each process has reaped. ``exclude``: live processes left out (a fresh worker).
    """
    root = psutil.Process(pid)
    skip = set(exclude)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        if proc.pid in skip:
            continue
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total
