"""The dashboard's time series: the counters sampled every ``ui.sample_interval`` into a ring
of ``ui.history_points`` fixed-size points (six floats each), so its memory is bounded by the
count alone. Points are cumulative counter values; the page's rates are differences between
neighbours (``figures.series_json``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from sidecar.ui.figures import read_counters, series_point

log = logging.getLogger("sidecar.ui")

Point = tuple[float, float, float, float, float, float]


class History:
    def __init__(
        self,
        registry: CollectorRegistry,
        interval_s: float,
        max_points: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.points: deque[Point] = deque(maxlen=max_points)
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> Point:
        point = series_point(self.clock(), read_counters(self.registry))
        self.points.append(point)
        return point

    def start(self) -> None:
        self.sample()  # a first point at start-up: the page has an interval at once
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:  # a failed sample must not end the series
                log.exception("dashboard sample failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
