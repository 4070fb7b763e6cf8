"""Per-request stage timings, recorded only when something reads them (the access log or
OpenTelemetry traces). With both off no recorder exists, and every hook below is a contextvar
read and a ``None`` check: the hot path creates no objects.

The cache layer marks its own stages (exact lookup, embedding, semantic search, verification)
with ``stage_start`` / ``stage_end`` pairs, one line each, so the recorder reaches it without
being passed through every call. The pipeline sets the current request's recorder around the
work it does for that request.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StageTiming:
    name: str
    start_ns: int  # perf_counter_ns
    end_ns: int
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(slots=True)
class StageLog:
    """The stages of one request, and the anchor that turns their monotonic times into wall
    clock times (for trace spans)."""

    wall_ns: int = field(default_factory=time.time_ns)
    perf_ns: int = field(default_factory=time.perf_counter_ns)
    stages: list[StageTiming] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)  # rule decisions that fired
    end_ns: int = 0

    def add(self, name: str, start_ns: int, end_ns: int | None = None, **attrs: Any) -> None:
        self.stages.append(
            StageTiming(name, start_ns, time.perf_counter_ns() if end_ns is None else end_ns, attrs)
        )

    def wall(self, perf_ns: int) -> int:
        return self.wall_ns + (perf_ns - self.perf_ns)


CURRENT: ContextVar[StageLog | None] = ContextVar("sidecar_stage_log", default=None)


def stage_start() -> int:
    """A start mark: 0 when no one records (then ``stage_end`` does nothing)."""
    return time.perf_counter_ns() if CURRENT.get() is not None else 0


def stage_end(start_ns: int, name: str, **attrs: Any) -> None:
    if start_ns:
        log = CURRENT.get()
        if log is not None:
            log.add(name, start_ns, **attrs)
