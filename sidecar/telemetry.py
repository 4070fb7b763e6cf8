"""OpenTelemetry traces over OTLP/HTTP (``telemetry.otlp_endpoint``; off by default).

One span per request (``sidecar.request``) with a child per stage the request went through:
parse, input rules (a child per rule), cache lookup (exact lookup, embedding, semantic search,
verification under it), output rules (a child per rule), store. A W3C ``traceparent`` in the
request's headers (the HTTP hook's ``headers`` field, or Envoy's request headers over ext_proc)
makes the request span a child of the caller's span.

Spans are built from the request's recorded stage timings when the request is over, not while
it runs: the request path only takes timestamps, and nothing here exists when telemetry is off.
Building them is deferred to an event-loop callback (``call_soon``), which runs once the
request's handler has returned its answer, so the span objects are made off the request path;
``build_seconds`` / ``built`` count that deferred work (benchmarks/telemetry_bench.py).
Attributes carry decisions, reasons (fixed phrases), hashes and timings, never prompt, answer
or header text. Export is batched on the SDK's background thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.config import TelemetryConfig
from sidecar.context import RequestContext
from sidecar.metrics import partition_hash

log = logging.getLogger("sidecar.telemetry")
_PREFIX = "sidecar."
_ATTR_TYPES = (str, bool, int, float)


def _attrs(values: dict[str, Any]) -> dict[str, Any]:
    return {_PREFIX + k: v for k, v in values.items() if isinstance(v, _ATTR_TYPES)}


class Tracing:
    needs_stages = True  # spans are built from ctx.stages (per-stage timings)

    def __init__(self, config: TelemetryConfig) -> None:
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        )
        self.tracer = self.provider.get_tracer("llm-cache-sidecar")
        self.propagator = TraceContextTextMapPropagator()
        self.build_seconds = 0.0
        self.built = 0

    def finish(self, ctx: RequestContext) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a thread of the gRPC server): build now
            self._build(ctx)
            return
        loop.call_soon(self._build, ctx)

    def _build(self, ctx: RequestContext) -> None:
        started = time.perf_counter()
        try:
            self._spans(ctx)
        except Exception:  # a tracing bug never reaches a request
            log.exception("building the request's trace spans failed")
        self.build_seconds += time.perf_counter() - started
        self.built += 1

    def _spans(self, ctx: RequestContext) -> None:
        log = ctx.stages
        assert log is not None
        parent = self.propagator.extract(ctx.headers)  # only traceparent/tracestate are read
        info = ctx.cache
        attrs: dict[str, Any] = {
            "request_id": ctx.request_id,
            "transport": ctx.transport,
            "cache.status": info.status.value,
            "cache.reason": info.reason,
            "blocked": ctx.blocked,
            "latency_ms": round((log.end_ns - log.perf_ns) / 1e6, 3),
        }
        if info.similarity is not None:
            attrs["cache.similarity"] = round(info.similarity, 6)
        if info.entry_id is not None:
            attrs["cache.entry_id"] = info.entry_id
        if info.not_stored is not None:
            attrs["cache.not_stored"] = info.not_stored
        if ctx.plan is not None:
            attrs["partition"] = partition_hash(ctx.plan.partition)
        if ctx.parsed is not None:
            attrs["api"] = ctx.parsed.api.value
            if ctx.parsed.model:
                attrs["model"] = ctx.parsed.model
        fired = [r["rule"] for r in log.rules if r["outcome"] != "pass"]
        if fired:
            attrs["rules_fired"] = ",".join(fired)
        root = self.tracer.start_span(
            "sidecar.request",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=log.wall_ns,
            attributes=_attrs(attrs),
        )
        if not root.is_recording():  # sampled out: build nothing more
            root.end(end_time=log.wall(log.end_ns))
            return
        # Stages nest by time: a stage inside another's interval is its child.
        open_spans: list[tuple[int, int, Span]] = []
        created: list[tuple[Span, int]] = []
        rule_parents: dict[str, tuple[int, Span]] = {}
        for stage in sorted(log.stages, key=lambda s: (s.start_ns, -s.end_ns)):
            while open_spans and not (
                open_spans[-1][0] <= stage.start_ns and stage.end_ns <= open_spans[-1][1]
            ):
                open_spans.pop()
            outer = open_spans[-1][2] if open_spans else root
            span = self.tracer.start_span(
                stage.name,
                context=trace.set_span_in_context(outer),
                start_time=log.wall(stage.start_ns),
                attributes={**_attrs(stage.attrs), "sidecar.duration_ms": round(stage.ms, 3)},
            )
            if stage.name in ("input_rules", "output_rules"):
                rule_parents[stage.name.split("_")[0]] = (stage.start_ns, span)
            open_spans.append((stage.start_ns, stage.end_ns, span))
            created.append((span, stage.end_ns))  # ended below, once its rule children exist
        for rule in log.rules:
            found = rule_parents.get(rule["stage"])
            if found is None:
                continue
            start, outer = found
            span = self.tracer.start_span(
                f"rule {rule['rule']}",
                context=trace.set_span_in_context(outer),
                start_time=log.wall(start),
                attributes=_attrs(rule),
            )
            span.end(end_time=log.wall(start + int(rule["latency_ms"] * 1e6)))
        for span, end_ns in created:
            span.end(end_time=log.wall(end_ns))
        root.end(end_time=log.wall(log.end_ns))

    def close(self) -> None:
        self.provider.shutdown()  # flushes the spans still queued
