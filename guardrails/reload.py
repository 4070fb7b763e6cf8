"""The current rule set, and reloading it when rule files change or on SIGHUP.

A reload that fails validation keeps the previous good rule set; the reason is logged and
kept in :meth:`RuleSetHolder.status` for ``/readyz``. Profiles whose provider, config and
directory did not change keep their check instance across reloads (heavy checks load once);
checks that a reload drops are closed after a grace period, since in-flight requests may
still be using them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from guardrails.base import Check
from guardrails.rules import RuleFileError, RuleSet, close_checks, load_rule_files

log = logging.getLogger(__name__)

_FileSignature = tuple[int, int, int] | None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="seconds")


class RuleSetHolder:
    """Holds the current :class:`RuleSet`; an empty path list means no rules at all.

    The constructor loads the files and raises :class:`RuleFileError` when they are invalid
    (a sidecar must not start with broken rules); later reloads never raise.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        poll_interval_s: float = 2.0,
        retire_grace_s: float = 30.0,
        remote_metrics: Any = None,
    ) -> None:
        self.remote_metrics = remote_metrics
        self.paths = tuple(os.fspath(p) for p in paths)
        self.poll_interval_s = poll_interval_s
        self.retire_grace_s = retire_grace_s
        self._lock = threading.Lock()  # reloads run in worker threads; one at a time
        self._signature = self._signatures()
        self._current = load_rule_files(self.paths, remote_metrics=remote_metrics)
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self.last_attempt_at: float | None = None
        self.attempts = 0  # reload attempts, good or bad
        self.generation = 1  # rule sets loaded successfully
        self._retired: list[tuple[float, list[Check]]] = []
        self._task: asyncio.Task[None] | None = None
        self._condition: asyncio.Condition | None = None
        self._sighup_loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Resources that live as long as the rules (the check worker pool), closed by aclose().
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when the holder is closed (after the checks)."""
        self._closers.append(closer)

    @property
    def current(self) -> RuleSet:
        return self._current

    def _signatures(self) -> tuple[_FileSignature, ...]:
        signatures: list[_FileSignature] = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                signatures.append(None)
            else:
                signatures.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signatures)

    def reload(self) -> bool:
        """Load the files again. True when the new set replaced the old one."""
        with self._lock:
            self.attempts += 1
            self.last_attempt_at = time.time()
            signature = self._signatures()
            try:
                new = load_rule_files(
                    self.paths,
                    reuse_checks=self._current.checks,
                    remote_metrics=self.remote_metrics,
                )
            except RuleFileError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - a reload must never take the sidecar down
                error = f"{type(exc).__name__}: {exc}"
            else:
                old, self._current = self._current, new
                self._signature = signature
                self.loaded_at = time.time()
                self.last_error = None
                self.generation += 1
                kept = {id(check) for check in new.checks.values()}
                dropped = [c for c in old.checks.values() if id(c) not in kept]
                if dropped:
                    self._retired.append((time.monotonic(), dropped))
                log.info("guardrail rules reloaded: %d rule(s) from %s", len(new.rules), self.paths)
                return True
            # Remember the failed files' signature so the watcher does not retry in a loop.
            self._signature = signature
            self.last_error = error
            log.error("guardrail rules not reloaded, keeping the previous rule set:\n%s", error)
            return False

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: which files, when loaded, and why the last reload failed if it did."""
        return {
            "files": list(self.paths),
            "rules": len(self._current.rules),
            "loaded_at": _iso(self.loaded_at),
            "generation": self.generation,
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_error": self.last_error,
        }

    # -- async side: watcher, SIGHUP, waiting ----------------------------------------------

    def _cond(self) -> asyncio.Condition:
        if self._condition is None:
            self._condition = asyncio.Condition()
        return self._condition

    async def reload_async(self) -> bool:
        """Reload in a worker thread (check factories may be slow), then wake waiters."""
        ok = await asyncio.to_thread(self.reload)
        cond = self._cond()
        async with cond:
            cond.notify_all()
        return ok

    async def wait_for_attempt(self, after: int) -> int:
        """Wait until more than ``after`` reload attempts finished (via the watcher or SIGHUP)."""
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: self.attempts > after)
        return self.attempts

    def start_watching(self, interval_s: float | None = None) -> None:
        """Poll the files' mtime/size/inode and reload on change (no-op without files)."""
        if interval_s is not None:
            self.poll_interval_s = interval_s
        if self._task is None and self.paths:
            self._cond()
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._watch(), name="guardrail-rules-watcher")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            if self._signatures() != self._signature:
                await self.reload_async()
            await self._close_retired(force=False)

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reload on SIGHUP (Unix, main thread)."""
        loop = loop or asyncio.get_running_loop()
        self._cond()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup, loop)
        self._sighup_loop = loop

    def _on_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        log.info("SIGHUP: reloading guardrail rules")
        task = loop.create_task(self.reload_async())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_retired(self, *, force: bool) -> None:
        now = time.monotonic()
        grace = self.retire_grace_s
        due = [c for t, c in self._retired if force or now - t >= grace]
        self._retired = [(t, c) for t, c in self._retired if not force and now - t < grace]
        for checks in due:
            await close_checks(checks)

    async def stop(self) -> None:
        """Stop watching and SIGHUP handling; close checks dropped by earlier reloads."""
        if self._sighup_loop is not None:
            self._sighup_loop.remove_signal_handler(signal.SIGHUP)
            self._sighup_loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        await self._close_retired(force=True)

    async def aclose(self) -> None:
        """Stop, then close the current rule set's checks."""
        await self.stop()
        await self._current.aclose()
        for closer in self._closers:
            try:
                await closer()
            except Exception as exc:  # noqa: BLE001 - closing must go on
                log.warning("closing guardrail resources failed: %s", type(exc).__name__)
