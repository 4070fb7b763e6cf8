"""Everything a running sidecar owns, built from config and started once.

Transports receive a ``Sidecar`` explicitly; there are no module-level singletons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embedders import Embedder, build_embedder
from sidecar.cache.backends import build_exact_store, build_vector_index
from sidecar.cache.layer import DualCache, MatchVerifier
from sidecar.config import SidecarConfig
from sidecar.metrics import Metrics
from sidecar.pipeline import Guardrails, Pipeline, RequestContext

log = logging.getLogger("sidecar")


@dataclass(slots=True)
class _Pending:
    ctx: RequestContext
    expires: float


class PendingRequests:
    """Request contexts waiting for their response hook (HTTP transport only).

    Bounded in count and time: a proxy that never calls the response hook cannot grow memory.
    """

    def __init__(self, ttl: float, max_items: int) -> None:
        self._ttl = ttl
        self._max = max_items
        self._items: OrderedDict[str, _Pending] = OrderedDict()

    def put(self, ctx: RequestContext) -> None:
        now = time.monotonic()
        self._items.pop(ctx.request_id, None)
        self._items[ctx.request_id] = _Pending(ctx, now + self._ttl)
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        # Expired entries sit at the front (insertion order = expiry order).
        while self._items:
            first = next(iter(self._items.values()))
            if first.expires > now:
                break
            self._items.popitem(last=False)

    def pop(self, request_id: str) -> RequestContext | None:
        item = self._items.pop(request_id, None)
        if item is None or item.expires <= time.monotonic():
            return None
        return item.ctx

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._items

    def __len__(self) -> int:
        return len(self._items)


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        *,
        embedder: Embedder | None = None,
        verifier: MatchVerifier | None = None,
        guardrails: Guardrails | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.embedder: Embedder | None = embedder
        # A shared embedder (tests, eval tools) outlives this sidecar; only close our own.
        self._owns_embedder = embedder is None
        self.clock = clock
        self._verifier = verifier
        self._guardrails = guardrails
        self.cache: DualCache | None = None
        self.pipeline: Pipeline | None = None
        self.pending = PendingRequests(config.server.pending_ttl, config.server.max_pending)
        self.ready = False
        self.start_error: str | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.extra_status: dict[str, Any] = {}

    async def start(self) -> None:
        cfg = self.config
        if cfg.cache.enabled:
            if self.embedder is None and cfg.cache.vector_store:
                self.embedder = build_embedder(
                    cfg.embedder.backend,
                    model=cfg.embedder.model,
                    model_path=cfg.embedder.model_path,
                    base_url=cfg.embedder.base_url,
                    api_key_env=cfg.embedder.api_key_env,
                    dimension=cfg.embedder.dimension,
                    timeout=cfg.embedder.timeout,
                )
            if self.embedder is not None and not self.embedder.dimension:
                await self.embedder.start()
            self.cache = DualCache(
                build_exact_store(cfg.cache, self.clock),
                build_vector_index(cfg.cache),
                self.embedder,
                self.metrics,
                self._verifier,
                cfg.cache.candidates,
                clock=self.clock,
            )
            await self.cache.start()
            self._sweeper = asyncio.create_task(self._sweep_loop())
        self.pipeline = Pipeline(cfg, self.cache, self.metrics, self._guardrails)
        self.ready = True

    async def _sweep_loop(self) -> None:
        assert self.cache is not None
        interval = max(1.0, min(60.0, self.config.cache.ttl / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cache.sweep()
            except Exception:  # a failed sweep must not stop future ones
                log.exception("cache sweep failed")

    async def close(self) -> None:
        self.ready = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.cache is not None:
            await self.cache.close()
        if self.embedder is not None and self._owns_embedder:
            await self.embedder.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {"ready": self.ready}
        if self.start_error:
            detail["error"] = self.start_error
        ok = self.ready
        if self.cache is not None:
            problems = await self.cache.health()
            if problems:
                detail["unhealthy"] = problems
                ok = False
        detail.update(self.extra_status)
        return ok, detail
