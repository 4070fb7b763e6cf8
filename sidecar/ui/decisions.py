"""The dashboard's table of recent decisions: a ring buffer bounded in count and in bytes.

Each request that is over (answered from the cache, blocked, or its upstream answer handled)
leaves one row: wall time, transport, the partition's hash (``sidecar.metrics.
partition_hash``, never the raw key), cache status, the reason phrase, the sidecar's own time
for the request hook, and the rules that did something (rule id and outcome). Reason phrases
are the sidecar's fixed texts; the one that quotes the request (a bypass naming a path the
sidecar does not handle) loses the path, and any phrase is cut at a query string and capped
in length, so no user text is kept.

It is a ``RequestObserver`` that needs no stage timings: the pipeline calls ``finish`` for it
without creating a per-request stage recorder, so keeping it on costs an append per request.
A ``collections.deque`` with ``maxlen`` would bound the count only; the byte bound is why the
buffer evicts by hand.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from sidecar.cache.layer import CacheStatus
from sidecar.context import RequestContext
from sidecar.metrics import partition_hash

#: longest reason phrase kept (the sidecar's own phrases are shorter)
MAX_REASON_CHARS = 200
# what a row costs besides its strings: the tuple, its floats and the deque slot
_ROW_OVERHEAD = 160
#: distinct reason phrases whose cleaned form is kept (then the cache starts over)
_REASONS_KEPT = 1024


def _shown(kept: dict[str, str], value: str, show: Callable[[str], str]) -> str:
    """``show(value)``, kept in ``kept`` for the next request with the same value: the
    sidecar's few fixed reason phrases (a regular expression each otherwise) and partition
    keys (a SHA-256 each). Bounded: short values only, at most ``_REASONS_KEPT`` of them, as
    some phrases quote numbers or a path and partition keys are a caller's choice."""
    shown = kept.get(value)
    if shown is None:
        shown = show(value)
        if len(value) <= MAX_REASON_CHARS:
            if len(kept) >= _REASONS_KEPT:
                kept.clear()
            kept[value] = shown
    return shown


class Decision(NamedTuple):
    time: float  # seconds since the epoch
    transport: str
    partition: str  # hash, or "" when the request had none
    status: str
    reason: str
    latency_ms: float  # the sidecar's own time in the request hook
    blocked: bool
    rules: tuple[tuple[str, str], ...]  # (rule id, outcome) of rules that did something

    def to_json(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 3),
            "transport": self.transport,
            "partition": self.partition,
            "status": self.status,
            "reason": self.reason,
            "latency_ms": round(self.latency_ms, 3),
            "blocked": self.blocked,
            "rules": [{"rule": r, "outcome": o} for r, o in self.rules],
        }


def _size(row: Decision) -> int:
    size = _ROW_OVERHEAD + len(row.transport) + len(row.partition) + len(row.status)
    size += len(row.reason)
    if row.rules:
        size += _rules_size(row.rules)
    return size


def _rules_size(rules: tuple[tuple[str, str], ...]) -> int:
    return sum(56 + len(r) + len(o) for r, o in rules)


#: a row's fields as shown, but its time, latency, blocked flag and rules, and its size
#: without rules: (transport, partition hash, status, reason, size)
_Shown = tuple[str, str, str, str, int]
_STATUS = {status: status.value for status in CacheStatus}  # ``value`` is a Python property
_new_row = tuple.__new__


_PATH_BYPASS = re.compile(r"^bypass: .* is not an LLM API the sidecar handles$", re.S)


def safe_reason(reason: str) -> str:
    """The reason phrase as the dashboard shows it: without the request path a bypass quotes,
    no query string, at most ``MAX_REASON_CHARS`` characters."""
    if _PATH_BYPASS.match(reason):  # a path's segments may carry ids or names
        return "bypass: the path is not an LLM API the sidecar handles"
    if "?" in reason:  # a path quoted in a bypass reason: its query string may carry anything
        head, _, _ = reason.partition("?")
        reason = head + "?..."
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


class RecentDecisions:
    """The last ``max_items`` decisions, fewer when they would exceed ``max_bytes``."""

    needs_stages = False  # the pipeline need not record stage timings for this observer

    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("RecentDecisions needs max_items >= 1 and max_bytes >= 1")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._rows: deque[tuple[Decision, int]] = deque()
        self._bytes = 0
        # gRPC handlers may finish requests on their own threads
        self._lock = threading.Lock()
        self.recorded = 0  # every row ever added, evicted ones included
        # Reason phrases and partition hashes as shown, each computed once (``_shown``)
        self._reasons: dict[str, str] = {}
        self._partitions: dict[str, str] = {}
        # What rows of one transport, partition, status and reason show (all but an exact
        # hit's time and latency are the same from one hit to the next): the two memos above
        # and the size in one lookup. Bounded like them.
        self._shown_rows: dict[tuple[str, str | None, CacheStatus, str], _Shown] = {}

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def bytes(self) -> int:
        return self._bytes

    def finish(self, ctx: RequestContext) -> None:
        plan = ctx.plan
        cache = ctx.cache
        key = (ctx.transport, None if plan is None else plan.partition, cache.status, cache.reason)
        shown = self._shown_rows.get(key)
        if shown is None:
            shown = self._show(key)
        transport, partition, status, reason, size = shown
        fired = ctx.fired
        rules = tuple(fired) if fired else ()
        if rules:
            size += _rules_size(rules)
        # tuple.__new__: the same row as Decision(...), without its Python-level __new__
        row = _new_row(
            Decision,
            (
                time.time(),
                transport,
                partition,
                status,
                reason,
                ctx.hook_seconds * 1000,
                ctx.blocked,
                rules,
            ),
        )
        self._append(row, size)

    def _show(self, key: tuple[str, str | None, CacheStatus, str]) -> _Shown:
        transport, partition, status, reason = key
        shown_partition = (
            "" if partition is None else _shown(self._partitions, partition, partition_hash)
        )
        shown_reason = _shown(self._reasons, reason, safe_reason)
        value = _STATUS[status]
        size = _ROW_OVERHEAD + len(transport) + len(shown_partition) + len(value)
        shown = (transport, shown_partition, value, shown_reason, size + len(shown_reason))
        if len(reason) <= MAX_REASON_CHARS and (partition is None or len(partition) <= 200):
            if len(self._shown_rows) >= _REASONS_KEPT:
                self._shown_rows.clear()
            self._shown_rows[key] = shown
        return shown

    def add(self, row: Decision) -> None:
        self._append(row, _size(row))

    def _append(self, row: Decision, size: int) -> None:
        with self._lock:
            self._rows.append((row, size))
            self._bytes += size
            self.recorded += 1
            while len(self._rows) > self.max_items or (
                self._bytes > self.max_bytes and len(self._rows) > 1
            ):
                _, old = self._rows.popleft()
                self._bytes -= old

    def latest(self, limit: int) -> list[Decision]:
        """The newest ``limit`` rows, newest first."""
        with self._lock:
            count = min(limit, len(self._rows))
            return [self._rows[-1 - i][0] for i in range(count)]

    def close(self) -> None:
        """Nothing to release (an observer's ``close``)."""
