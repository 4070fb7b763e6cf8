"""Everything a running sidecar owns, built from config and started once.

Transports receive a ``Sidecar`` explicitly; there are no module-level singletons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from embedders import Embedder, build_embedder
from guardrails.engine import GuardrailEngine
from guardrails.reload import RuleSetHolder
from sidecar.cache.adaptive_runtime import build_adaptive
from sidecar.cache.candidates import MatchVerifier
from sidecar.cache.layer import DualCache
from sidecar.cache.match.verify import build_verifier
from sidecar.cache.stores.backends import build_exact_store, build_single_flight, build_vector_index
from sidecar.config import ConfigError, EmbedderConfig, SidecarConfig
from sidecar.context import Guardrails, RequestContext
from sidecar.guard import build_guardrails
from sidecar.metrics import Metrics
from sidecar.overload import LoadGovernor
from sidecar.pending import build_pending
from sidecar.pipeline import Pipeline
from sidecar.pricing import load_prices

if TYPE_CHECKING:
    from sidecar.ui.dashboard import Dashboard

log = logging.getLogger("sidecar")


def embedder_from_config(cfg: EmbedderConfig) -> Embedder:
    """The embedder ``embedder:`` describes, not started (the sidecar's and the benchmarks')."""
    return build_embedder(
        cfg.backend,
        model=cfg.model,
        model_path=cfg.model_path,
        base_url=cfg.base_url,
        api_key_env=cfg.api_key_env,
        dimension=cfg.dimension,
        timeout=cfg.timeout,
        onnx_quantize=cfg.onnx_quantize,
        onnx_cache_dir=cfg.onnx_cache_dir,
        # concurrent requests share model calls (embedders/batching.py)
        batch_window_ms=cfg.batch_window_ms,
        max_batch=cfg.max_batch,
        background_priority=cfg.background_priority,
        background_threads=cfg.background_threads,
    )


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
        # First: a Redis pending store without its key fails before any model or rule loads.
        self.pending = build_pending(config, self._release_miss_lock, detach=self._detach_local)
        self.metrics = Metrics(max_label_values=config.metrics.max_label_values)
        self.governor = LoadGovernor(
            self.metrics,
            config.embedder.max_inflight_lookups,
            config.server.shed_loop_lag_ms,
            config.server.shed_store_lag_ms,
            config.server.shed_on_extproc_round_trip,
        )
        self.embedder: Embedder | None = embedder
        # A shared embedder (tests, eval tools) outlives this sidecar; only close our own.
        self._owns_embedder = embedder is None
        self.clock = clock
        self._verifier = verifier
        self._guardrails = guardrails
        # Rule files load here, not in start(): a broken file fails fast with every error, and
        # transports (the LiteLLM endpoint) can be built against the engine before start().
        self.rules: RuleSetHolder | None = None
        self.engine: GuardrailEngine | None = None
        if guardrails is None:
            built = build_guardrails(config, self.metrics.registry, self.metrics.rule_label)
            if built is not None:
                adapter, self.rules = built
                self._guardrails, self.engine = adapter, adapter.engine
        self.cache: DualCache | None = None
        self.pipeline: Pipeline | None = None
        self.ready = False
        self.start_error: str | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.extra_status: dict[str, Any] = {"pending_store": self.pending.store.name}
        # A broken pricing.file fails here, at start-up, naming the file and the problem.
        self.prices = load_prices(config.pricing.file)
        self.observers: list[Any] = []
        # The dashboard (/ui): its recent decisions see every request that is over.
        self.dashboard: Dashboard | None = None
        if config.ui.enabled:
            from sidecar.ui.dashboard import Dashboard

            self.dashboard = Dashboard(config.ui, self.metrics.registry)

    async def start(self) -> None:
        cfg = self.config
        self.governor.start()
        if cfg.cache.enabled:
            vectors = build_vector_index(cfg.cache, self.clock)
            # No semantic layer (vector_store none or empty): no embedder, no verifier models;
            # nothing of sentence-transformers, torch or ONNX Runtime is imported.
            semantic = vectors is not None
            if self.embedder is None and semantic:
                self.embedder = embedder_from_config(cfg.embedder)
            # An embedder passed in by the caller is already started (and shared).
            if self.embedder is not None and self._owns_embedder:
                await self.embedder.start()
            self.extra_status["embedder"] = (
                f"{cfg.embedder.backend} {self.embedder.model_id}"
                if self.embedder is not None and semantic
                else "off (no semantic layer: cache.vector_store is none)"
            )
            exact = build_exact_store(cfg.cache, self.clock)
            verifier = self._verifier
            if verifier is None and semantic:
                verifier = build_verifier(
                    cfg.cache, cfg.embedder, self.embedder.dimension if self.embedder else 0
                )
            head = getattr(verifier, "head", None)
            self.extra_status["match_head"] = (
                "off" if head is None else f"{head.model} (min {cfg.cache.match_head_min})"
            )
            pair_model = getattr(verifier, "pair_model", None)
            self.extra_status["pair_model"] = (
                "off"
                if pair_model is None
                else f"{pair_model.name} (min {cfg.cache.pair_model_min}, "
                f"rescue {cfg.cache.pair_model_rescue})"
            )
            self.cache = DualCache(
                exact,
                vectors,
                self.embedder,
                self.metrics,
                verifier,
                cfg.cache.candidates,
                clock=self.clock,
                single_flight=build_single_flight(cfg.cache, exact),
                max_queue_ms=cfg.embedder.max_queue_ms,
                backlog_items=cfg.cache.vector_backlog,
                backlog_bytes=cfg.cache.vector_backlog_bytes,
                drain_s=cfg.cache.vector_drain_s,
                adaptive=build_adaptive(cfg.cache, exact, self.embedder, self.metrics),
                governor=self.governor,
            )
            await self.cache.start()
            self._sweeper = asyncio.create_task(self._sweep_loop())
        if self.dashboard is not None:
            self.observers.append(self.dashboard.decisions)
            self.dashboard.start()
        if cfg.server.access_log:
            from sidecar.access_log import AccessLog

            self.observers.append(AccessLog(cfg.server.access_log))
        if cfg.telemetry.otlp_endpoint:
            # Imported only when on: with telemetry off, no OpenTelemetry code is loaded.
            try:
                from sidecar.telemetry import Tracing
            except ImportError as exc:
                # Seen: xds-protos ships its own opentelemetry/proto files and, installed after
                # opentelemetry-proto, replaces them with ones the exporter cannot import.
                raise ConfigError(
                    [
                        "telemetry.otlp_endpoint is set but the OpenTelemetry exporter does not "
                        f"import ({exc}); if xds-protos overwrote opentelemetry-proto's files, "
                        "run pip install --force-reinstall --no-deps opentelemetry-proto"
                    ]
                ) from None

            self.observers.append(Tracing(cfg.telemetry))
        self.pipeline = Pipeline(
            cfg, self.cache, self.metrics, self._guardrails, self.prices, self.observers
        )
        if self.rules is not None and cfg.guardrails.reload_interval > 0:
            self.rules.start_watching(cfg.guardrails.reload_interval)
        self.ready = True

    def _detach_local(self, ctx: RequestContext) -> None:
        if self.cache is not None:
            self.cache.detach_vector(ctx.lookup)

    async def _release_miss_lock(self, ctx: RequestContext) -> None:
        if self.pipeline is not None:
            await self.pipeline.release_miss_lock(ctx)

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
        await self.governor.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.cache is not None:
            await self.cache.close()
        if self.embedder is not None and self._owns_embedder:
            await self.embedder.close()
        if self.rules is not None:
            await self.rules.aclose()
        if self.engine is not None and self.engine.audit is not None:
            self.engine.audit.close()
        await self.pending.close()
        if self.dashboard is not None:
            await self.dashboard.aclose()
        for observer in self.observers:
            observer.close()
        self.observers.clear()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {"ready": self.ready}
        if self.start_error:
            detail["error"] = self.start_error
        ok = self.ready
        if self.cache is not None:
            if self.cache.backlog is not None:
                # entries stored whose vectors are still to come (other replicas see them as
                # semantic candidates once they land)
                detail["vector_backlog"] = self.cache.backlog.items
            problems = await self.cache.health()
            if problems:
                detail["unhealthy"] = problems
                ok = False
        if self.rules is not None:
            detail["rules"] = self.rules.status()
        detail.update(self.extra_status)
        return ok, detail
