"""The transport-free core: one request context flows through
``input guardrails -> cache lookup -> (upstream) -> output guardrails -> cache store``.

Transports (HTTP hook, ext_proc, LiteLLM endpoint) only translate to and from ``HookRequest``,
``RequestOutcome`` and ``ResponseOutcome``. Every decision is appended to ``ctx.trace`` with
its reason; the cache's own reasons come from ``sidecar.cache.layer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from guardrails.base import Stage
from sidecar.cache.keys import plan_request
from sidecar.cache.layer import STORE_SHED, CacheStatus, DualCache
from sidecar.cache.model import REPLAYED_HEADERS, CachedAnswer, Usage, replayed_headers
from sidecar.config import SidecarConfig
from sidecar.context import (
    REQUEST_ID_HEADER,
    CacheInfo,
    Guardrails,
    HookError,
    HookRequest,
    HttpAnswer,
    RequestContext,
    RequestObserver,
    RequestOutcome,
    ResponseOutcome,
    header_safe_id,
    new_request_id,
)
from sidecar.deferred_metrics import PendingCounts
from sidecar.formats import (
    ApiFormat,
    BadRequest,
    answer_pieces,
    error_body,
    parse_request,
    rewrite_body,
)
from sidecar.hit_path import ExactHitPath, MemoKey
from sidecar.json_body import json_body
from sidecar.metrics import Metrics
from sidecar.pricing import PriceTable, load_prices
from sidecar.request_counts import RequestCounts
from sidecar.sse import parse_events, stream_is_complete
from sidecar.stages import CURRENT, StageLog, stage_end, stage_start
from sidecar.storable import answer_refusal
from sidecar.streaming import StreamProcessor
from sidecar.usage import usage_of

log = logging.getLogger("sidecar.pipeline")
_HIT_EXACT = CacheStatus.HIT_EXACT.value


class Pipeline:
    def __init__(
        self,
        config: SidecarConfig,
        cache: DualCache | None,
        metrics: Metrics,
        guardrails: Guardrails | None = None,
        prices: PriceTable | None = None,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        self.config = config
        self.cache = cache
        self.metrics = metrics
        self.guardrails = guardrails
        self.prices = prices if prices is not None else load_prices(config.pricing.file)
        self.observers = tuple(observers)
        self._record_stages = any(o.needs_stages for o in self.observers)
        self.counts = RequestCounts(metrics, self.prices)
        self._hit_timer = self.counts.request_timer(CacheStatus.HIT_EXACT)
        # Exact hits of requests seen before skip parsing and planning (sidecar/hit_path.py);
        # not while an observer needs stage timings, which that path does not record.
        self.hit_path: ExactHitPath | None = None
        if cache is not None and config.cache.hit_memo_bytes > 0 and not self._record_stages:
            self.hit_path = ExactHitPath(
                config.cache,
                cache,
                metrics,
                guardrails,
                config.cache.hit_memo_bytes,
                self.counts.exact_hit_counts,
            )

    def _finish(self, ctx: RequestContext) -> None:
        if not self.observers:
            return
        log_ = ctx.stages
        if log_ is not None:
            log_.end_ns = time.perf_counter_ns()
        for observer in self.observers:
            if log_ is None and observer.needs_stages:
                continue  # a context from a replica that recorded no stages
            try:
                observer.finish(ctx)
            except Exception:  # an observer's failure never fails the request
                log.exception("request observer %s failed", type(observer).__name__)

    # ------------------------------------------------------------------ request
    async def on_request(
        self, req: HookRequest, transport: str
    ) -> tuple[RequestContext, RequestOutcome]:
        memo_key = None
        hit_path = self.hit_path
        if hit_path is not None and req.method.upper() == "POST":
            memo_key = hit_path.key(req)
            if memo_key is not None:
                fast = await hit_path.serve(memo_key, req, transport)
                if fast is not None:
                    return self._exact_hit_served(*fast)
        ctx, outcome = await self._slow_request(req, transport, memo_key)
        self._identify(ctx, outcome)
        adaptive = self.cache.adaptive if self.cache is not None else None
        if adaptive is not None and ctx.plan is not None and ctx.plan.partition:
            lookup = ctx.lookup
            adaptive.count(
                ctx.plan.partition,
                outcome.cache.status.value,
                lookup is not None and lookup.explored,
            )
            if (
                lookup is not None
                and lookup.ticket is not None
                and outcome.cache.status is CacheStatus.HIT_SEMANTIC
            ):
                await adaptive.remember_served(ctx.request_id, lookup.ticket)
        status = outcome.cache.status
        counts = self.counts
        counts.request_counter(transport, status).inc()
        ctx.hook_seconds = elapsed = time.monotonic() - ctx.started
        counts.request_timer(status).observe(elapsed)
        entry = ctx.lookup.entry if ctx.lookup is not None else None
        counts.count(
            outcome.cache, ctx.plan, entry.answer.usage if entry else None, entry is not None
        )
        if self.observers and outcome.action == "respond":
            self._finish(ctx)
        return ctx, outcome

    @staticmethod
    def _identify(ctx: RequestContext, outcome: RequestOutcome) -> None:
        outcome.cache.request_id = request_id = header_safe_id(ctx.request_id)
        if outcome.response is not None and request_id is not None:
            outcome.response.headers[REQUEST_ID_HEADER] = request_id
        ctx.cache = outcome.cache

    def _exact_hit_served(
        self, ctx: RequestContext, outcome: RequestOutcome, hit_counts: PendingCounts
    ) -> tuple[RequestContext, RequestOutcome]:
        """``on_request``'s accounting of an exact hit served by the hit path: the same counts
        as the slow path's (``tests/test_hit_path.py``), with the request's, the partition's,
        the hit's and the savings' children resolved when the hit path remembered the entry."""
        self._identify(ctx, outcome)
        plan = ctx.plan
        assert plan is not None
        adaptive = self.cache.adaptive if self.cache is not None else None
        if adaptive is not None and plan.partition:
            adaptive.count(plan.partition, _HIT_EXACT, False)
        hit_counts.add()
        ctx.hook_seconds = elapsed = time.monotonic() - ctx.started
        self._hit_timer.observe(elapsed)
        if self.observers:
            self._finish(ctx)
        return ctx, outcome

    async def _slow_request(
        self, req: HookRequest, transport: str, memo_key: MemoKey | None
    ) -> tuple[RequestContext, RequestOutcome]:
        ctx = RequestContext(
            request_id=req.request_id or new_request_id(),
            transport=transport,
            method=req.method.upper(),
            path=req.path,
            headers=req.headers,
        )
        if req.received_at is not None:
            ctx.started = req.received_at
        token = None
        if self._record_stages:
            ctx.stages = StageLog()
            token = CURRENT.set(ctx.stages)
        try:
            return ctx, await self._request(ctx, req, memo_key)
        finally:
            if token is not None:
                CURRENT.reset(token)

    async def _request(
        self, ctx: RequestContext, req: HookRequest, memo_key: MemoKey | None = None
    ) -> RequestOutcome:
        if ctx.method != "POST":
            ctx.note(f"bypass: method {ctx.method} is not cached")
            return RequestOutcome("continue", CacheInfo(CacheStatus.BYPASS, ctx.trace[-1]))
        mark = stage_start()
        body = await json_body(req.body, self.config.server.max_body_bytes)
        try:
            parsed = parse_request(req.path, body, req.headers)
            if parsed is None:
                ctx.note(f"bypass: {req.path} is not an LLM API the sidecar handles")
                return RequestOutcome("continue", CacheInfo(CacheStatus.BYPASS, ctx.trace[-1]))
            ctx.parsed = parsed
            # Header errors are reported before any guardrail or cache work.
            plan = plan_request(parsed, req.headers, self.config.cache)
        except BadRequest as exc:
            raise HookError(400, "bad_request", str(exc)) from None
        stage_end(mark, "parse")
        ctx.plan = plan  # rule conditions may read the partition (cache_key)

        rewritten: dict[str, Any] | None = None
        input_rules = self.guardrails is not None and self.guardrails.active(Stage.INPUT, ctx)
        if input_rules:
            assert self.guardrails is not None
            mark = stage_start()
            verdict = await self.guardrails.check(Stage.INPUT, parsed.pieces, ctx)
            stage_end(mark, "input_rules", blocked=verdict.blocked, redacted=verdict.redacted)
            if verdict.blocked:
                ctx.blocked = True
                ctx.note(f"blocked on input: {verdict.message}")
                info = CacheInfo(CacheStatus.BYPASS, "blocked by an input guardrail")
                return RequestOutcome(
                    "respond",
                    info,
                    response=self._error(
                        parsed.api, verdict.status, verdict.message, verdict.code, info
                    ),
                )
            if verdict.rewritten:
                ctx.input_redacted = verdict.redacted
                rewritten = rewrite_body(parsed.body, parsed.slots, verdict.rewritten)
                # The cache must key on what the provider will see, never on the raw text.
                reparsed = parse_request(req.path, rewritten, req.headers)
                assert reparsed is not None
                ctx.parsed = parsed = reparsed
                plan = plan_request(parsed, req.headers, self.config.cache)
                ctx.note("input rewritten by guardrails")
        ctx.plan = plan

        if self.cache is None:
            ctx.note("bypass: cache not configured")
            return RequestOutcome(
                "continue", CacheInfo(CacheStatus.BYPASS, ctx.trace[-1]), body=rewritten
            )
        mark = stage_start()
        lookup = await self.cache.lookup(plan)
        stage_end(mark, "cache_lookup", status=lookup.status.value)
        ctx.lookup = lookup
        ctx.note(f"cache {lookup.status.value}: {lookup.reason}")
        if lookup.entry is None:
            info = CacheInfo(lookup.status, lookup.reason)
            if lookup.store_shed:
                info.not_stored = STORE_SHED
            # Not stored and no output rule to apply: the transport may skip the answer.
            needed = not lookup.store_shed or (
                self.guardrails is not None and self.guardrails.active(Stage.OUTPUT, ctx)
            )
            return RequestOutcome("continue", info, body=rewritten, answer_needed=needed)

        info = CacheInfo(
            lookup.status,
            lookup.reason,
            hit_type="exact" if lookup.status is CacheStatus.HIT_EXACT else "semantic",
            similarity=lookup.similarity,
            entry_id=lookup.entry.id,
        )
        answer = await self._serve_cached(ctx, lookup.entry.answer, info)
        if memo_key is not None and not input_rules and lookup.status is CacheStatus.HIT_EXACT:
            assert self.hit_path is not None  # the plan is the request's as received
            self.hit_path.remember(memo_key, parsed, plan)
        return RequestOutcome("respond", info, response=answer)

    def _error(
        self, api: ApiFormat, status: int, message: str, code: str, info: CacheInfo
    ) -> HttpAnswer:
        return HttpAnswer(
            status,
            {"content-type": "application/json", **info.headers()},
            error_body(api, status, message, code),
        )

    async def _serve_cached(
        self, ctx: RequestContext, answer: CachedAnswer, info: CacheInfo
    ) -> HttpAnswer:
        """A cached answer goes through the output stage like a fresh one (restores, blocks)."""
        headers = replayed_headers(answer)
        headers.update(info.headers())
        mark = stage_start() if self.guardrails is not None else 0  # no rules: no stage
        result = await self._output(ctx, answer.status, answer.body, answer.streamed)
        stage_end(mark, "output_rules", blocked=result.response is not None)
        if result.response is not None:
            result.response.headers.update(info.headers())
            return result.response
        return HttpAnswer(
            answer.status, headers, result.body if result.body is not None else answer.body
        )

    # ------------------------------------------------------------------ response
    def holds_miss_lock(self, ctx: RequestContext) -> bool:
        """Whether ``release_miss_lock`` has anything to free for ``ctx`` (a hit holds none)."""
        return self.cache is not None and ctx.lookup is not None and ctx.lookup.holds

    async def release_miss_lock(self, ctx: RequestContext) -> None:
        """Single-flight: free the miss lock this request's lookup took, so identical requests
        waiting for its answer re-check the cache now. Called once the answer is stored or
        refused; transports call it too when a request ends without an answer."""
        if self.cache is not None:
            await self.cache.release(ctx.lookup)

    async def on_response(
        self, ctx: RequestContext, status: int, headers: Mapping[str, str], body: bytes
    ) -> ResponseOutcome:
        """A whole answer (JSON, or the full SSE text of a stream)."""
        ctx.answer_received = time.monotonic()
        token = CURRENT.set(ctx.stages) if ctx.stages is not None else None
        try:
            return await self._on_response(ctx, status, headers, body)
        finally:
            if token is not None:
                CURRENT.reset(token)
            await self.release_miss_lock(ctx)  # single-flight: after the store, never before
            self._finish(ctx)

    async def _on_response(
        self, ctx: RequestContext, status: int, headers: Mapping[str, str], body: bytes
    ) -> ResponseOutcome:
        if len(body) > self.config.server.max_body_bytes:
            self._not_stored(ctx, "too_large", "answer over max_body_bytes")
            return ResponseOutcome("continue", ctx.cache.headers())
        streamed = _is_event_stream(headers) or (
            ctx.parsed is not None
            and ctx.parsed.stream
            and body.lstrip().startswith((b"data:", b"event:"))
        )
        mark = stage_start() if self.guardrails is not None else 0  # no rules: no stage
        result = await self._output(ctx, status, body, streamed)
        stage_end(mark, "output_rules", blocked=result.response is not None)
        if result.response is None:
            result.stored_entry_id = await self._store(ctx, status, headers, body, streamed)
        await self._observe(ctx, status, body, streamed)
        return result

    async def _observe(self, ctx: RequestContext, status: int, body: bytes, streamed: bool) -> None:
        """Adaptive cache: an explored (or rejected) candidate's answer against the fresh one.
        Never fails the answer: a failed check is only not counted."""
        lookup, parsed = ctx.lookup, ctx.parsed
        if (
            self.cache is None
            or self.cache.adaptive is None
            or lookup is None
            or lookup.ticket is None
            or lookup.status is not CacheStatus.MISS
            or parsed is None
            or ctx.blocked
            or not 200 <= status < 300
        ):
            return
        ticket, lookup.ticket = lookup.ticket, None
        try:
            entry = await self.cache.exact.get(ticket.entry_id, ticket.partition)
            outcome = await self.cache.adaptive.observe(
                ticket, entry, parsed.api, parsed.request_type, body, streamed
            )
            ctx.note(f"adaptive check of {ticket.entry_id}: {outcome}")
        except Exception:
            log.exception("adaptive answer check failed; not counted")

    async def _output(
        self, ctx: RequestContext, status: int, body: bytes, streamed: bool
    ) -> ResponseOutcome:
        out_headers = ctx.cache.headers()
        parsed = ctx.parsed
        if (
            parsed is None
            or self.guardrails is None
            or not 200 <= status < 300
            or not self.guardrails.active(Stage.OUTPUT, ctx)
        ):
            return ResponseOutcome("continue", out_headers)
        if streamed:
            processor = StreamProcessor(parsed.api, self.guardrails.stream_guards(ctx))
            new_body = await processor.feed(body) + await processor.finish()
            if processor.blocked is not None:
                ctx.blocked = True
                ctx.note(f"blocked on output (stream): {processor.blocked}")
            if processor.redacted:
                ctx.note("output redacted by guardrails (stream)")
                ctx.guard_state["output_redacted"] = True
            if processor.flagged:
                ctx.guard_state["output_flagged"] = True
            return ResponseOutcome(
                "continue", out_headers, body=new_body if new_body != body else None
            )
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            ctx.note("output guardrails skipped: answer is not JSON")
            return ResponseOutcome("continue", out_headers)
        pieces, slots = answer_pieces(parsed.api, parsed.request_type, answer)
        verdict = await self.guardrails.check(Stage.OUTPUT, pieces, ctx)
        if verdict.blocked:
            ctx.blocked = True
            ctx.note(f"blocked on output: {verdict.message}")
            return ResponseOutcome(
                "respond",
                out_headers,
                response=self._error(
                    parsed.api, verdict.status, verdict.message, verdict.code, ctx.cache
                ),
            )
        if verdict.redacted:
            ctx.note("output redacted by guardrails")
            ctx.guard_state["output_redacted"] = True
        if verdict.flagged:
            ctx.guard_state["output_flagged"] = True
        if verdict.rewritten:
            new = rewrite_body(answer, slots, verdict.rewritten)
            return ResponseOutcome("continue", out_headers, body=orjson.dumps(new))
        return ResponseOutcome("continue", out_headers)

    async def _store(
        self,
        ctx: RequestContext,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        streamed: bool,
    ) -> str | None:
        reason = self._store_refusal(ctx, status)
        if reason is not None:
            self._not_stored(ctx, reason.split(" ")[0].split(":")[0], reason)
            return None
        assert ctx.parsed is not None
        events = parse_events(body) if streamed else []
        if streamed:
            complete, why = stream_is_complete(ctx.parsed.api, events)
            if not complete:
                self._not_stored(ctx, "stream", why)
                return None
        refusal = answer_refusal(
            ctx.parsed.api,
            ctx.parsed.request_type,
            body,
            streamed,
            self.config.cache.storable_finish_reasons,
            events,
        )
        if refusal is not None:
            self._not_stored(ctx, refusal.code, refusal.reason)
            return None
        usage = usage_of(ctx.parsed.api, body, streamed, events, ctx.parsed.model)
        return await self._put(ctx, status, headers, body, streamed, usage)

    def _not_stored(self, ctx: RequestContext, code: str, reason: str) -> None:
        """Record why an answer was not stored: trace, metric, and the response's cache info.
        ``reason`` is a fixed phrase (or a status number), never text from the answer."""
        ctx.note(f"not stored: {reason}")
        ctx.cache.not_stored = reason
        self.metrics.store_skips.labels(code).inc()

    def _store_refusal(self, ctx: RequestContext, status: int) -> str | None:
        if self.cache is None or ctx.plan is None or ctx.plan.bypass:
            return "bypass"
        if ctx.blocked:
            return "blocked by a guardrail"
        if ctx.guard_state.get("output_redacted"):
            return "redacted by an output guardrail"
        if ctx.guard_state.get("output_flagged") and not self.config.cache.store_flagged_answers:
            return "flagged by an output guardrail (cache.store_flagged_answers is off)"
        if not 200 <= status < 300:
            return f"status {status} is not 2xx"
        if ctx.plan.no_store:
            return "no-store requested"
        if ctx.lookup is not None and ctx.lookup.store_shed:
            return STORE_SHED
        if ctx.cache.status in (CacheStatus.HIT_EXACT, CacheStatus.HIT_SEMANTIC):
            return "answered from cache"
        return None

    async def _put(
        self,
        ctx: RequestContext,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        streamed: bool,
        usage: Usage | None = None,
    ) -> str | None:
        assert self.cache is not None and ctx.plan is not None
        kept = {k.lower(): v for k, v in headers.items() if k.lower() in REPLAYED_HEADERS}
        kept.setdefault("content-type", "text/event-stream" if streamed else "application/json")
        answer = CachedAnswer(status, kept, bytes(body), streamed, usage)
        lookup = ctx.lookup
        vector, pending = (None, None) if lookup is None else (lookup.vector, lookup.pending)
        # Only the exact entry is written here; a missing vector is computed off this path.
        mark = stage_start()
        entry = await self.cache.store(ctx.plan, answer, vector, pending)
        stage_end(mark, "store", stored=entry is not None)
        if entry is None:
            return None
        ctx.note(f"stored as {entry.id}")
        return entry.id

    def open_stream(self, ctx: RequestContext) -> StreamProcessor:
        """For transports that see a streamed answer chunk by chunk (ext_proc)."""
        assert ctx.parsed is not None
        guards = None
        if self.guardrails is not None and self.guardrails.active(Stage.OUTPUT, ctx):
            guards = self.guardrails.stream_guards(ctx)
        return StreamProcessor(ctx.parsed.api, guards, self.config.server.max_body_bytes)

    async def finish_stream(
        self,
        ctx: RequestContext,
        status: int,
        headers: Mapping[str, str],
        processor: StreamProcessor,
    ) -> str | None:
        """Store a stream fed through ``open_stream`` once it has ended."""
        token = CURRENT.set(ctx.stages) if ctx.stages is not None else None
        try:
            return await self._finish_stream(ctx, status, headers, processor)
        finally:
            if token is not None:
                CURRENT.reset(token)
            await self.release_miss_lock(ctx)  # single-flight: after the store, never before
            self._finish(ctx)

    async def _finish_stream(
        self,
        ctx: RequestContext,
        status: int,
        headers: Mapping[str, str],
        processor: StreamProcessor,
    ) -> str | None:
        if processor.blocked is not None:
            ctx.blocked = True
        if processor.redacted:
            ctx.guard_state["output_redacted"] = True
        if processor.flagged:
            ctx.guard_state["output_flagged"] = True
        if processor.oversize:
            self._not_stored(ctx, "too_large", "stream over max_body_bytes")
            return None
        body = b"".join(e.raw for e in processor.events)
        stored = await self._store(ctx, status, headers, body, True)
        await self._observe(ctx, status, body, True)
        return stored


def _is_event_stream(headers: Mapping[str, str]) -> bool:
    for k, v in headers.items():
        if k.lower() == "content-type" and "text/event-stream" in v.lower():
            return True
    return False
