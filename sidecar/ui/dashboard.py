"""What a running sidecar keeps for its dashboard: recent decisions, the sampled time series
and the login sessions; and the JSON the page reads."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.config import UiConfig
from sidecar.ui.decisions import RecentDecisions
from sidecar.ui.figures import read_counters, series_json, series_point, summary
from sidecar.ui.history import History
from sidecar.ui.sessions import SessionStore

#: most decisions one summary returns (the buffer holds ``ui.recent_decisions``)
MAX_DECISIONS_PER_READ = 1000


class Dashboard:
    def __init__(self, config: UiConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self.decisions = RecentDecisions(config.recent_decisions, config.recent_decisions_bytes)
        self.history = History(registry, config.sample_interval, config.history_points)
        self.sessions = SessionStore(config.session_ttl, config.max_sessions)
        self.started = time.time()

    def start(self) -> None:
        self.history.start()

    async def aclose(self) -> None:
        await self.history.aclose()

    def summary(self, decisions: int) -> dict[str, Any]:
        """Every figure of the page. Reads counters (bounded series) and the newest
        ``decisions`` rows; never the cache store."""
        now = time.time()
        counters = read_counters(self.registry)
        live = series_point(now, counters)  # the interval up to now, not kept
        out = summary(counters)
        out["time"] = round(now, 3)
        out["uptime_s"] = round(now - self.started, 1)
        out["sample_interval_s"] = self.config.sample_interval
        out["series"] = series_json([*self.history.points, live])
        out["decisions"] = [d.to_json() for d in self.decisions.latest(decisions)]
        out["decisions_held"] = len(self.decisions)
        out["decisions_bytes"] = self.decisions.bytes
        return out
