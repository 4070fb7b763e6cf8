"""Adapts the guardrail rule engine (``guardrails.engine``) to the pipeline's ``Guardrails``
port: request facts become CEL variables, engine results become pipeline verdicts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from guardrails.audit import AuditLog
from guardrails.base import CheckContext, Stage, TextPiece
from guardrails.engine import GuardrailEngine, Outcome, RuleEnv
from guardrails.local_checks import worker_preload
from guardrails.reload import RuleSetHolder
from guardrails.stream import StreamGuard
from guardrails.workers import DEFAULT_WORKERS, WorkerPool
from sidecar.config import SidecarConfig
from sidecar.context import RequestContext, StageVerdict
from sidecar.streaming import GuardStep, TextGuard


def rule_env(ctx: RequestContext) -> RuleEnv:
    parsed = ctx.parsed
    if parsed is None:
        return RuleEnv(path=ctx.path, headers=ctx.headers)
    return RuleEnv(
        model=parsed.model or "",
        provider=parsed.provider,
        path=parsed.path,
        request_type=parsed.request_type.value,
        headers=ctx.headers,
        params=parsed.params,
        messages=[{"role": m.role, "content": m.text} for m in parsed.messages],
        cache_key=ctx.plan.partition if ctx.plan is not None else "",
    )


def check_context(ctx: RequestContext, stage: Stage) -> CheckContext:
    parsed = ctx.parsed
    return CheckContext(
        stage=stage,
        request_id=ctx.request_id,
        request_type=parsed.request_type.value if parsed is not None else "",
        model=parsed.model if parsed is not None else None,
        headers=ctx.headers,
        # Same dict for both stages: reversible redaction carries its vault across.
        request_state=ctx.guard_state,
        # Input rules count the request's time in the sidecar; output rules the answer's.
        received_at=ctx.started if stage is Stage.INPUT else ctx.answer_received,
    )


class _StreamAdapter:
    def __init__(self, guard: StreamGuard) -> None:
        self._guard = guard

    async def feed(self, text: str) -> GuardStep:
        step = await self._guard.feed(text)
        return _step(step.released, step.blocked)

    async def finish(self) -> GuardStep:
        step = await self._guard.finish()
        out = _step(step.released, step.blocked)
        out.redacted = any(
            d.outcome in (Outcome.REDACTED, Outcome.REWRITTEN) for d in self._guard.decisions
        )
        out.flagged = any(d.finding_counts for d in self._guard.decisions)
        return out


class _PassThrough:
    async def feed(self, text: str) -> GuardStep:
        return GuardStep(text)

    async def finish(self) -> GuardStep:
        return GuardStep("")


def _step(released: str, blocked: object) -> GuardStep:
    if blocked is None:
        return GuardStep(released)
    message = getattr(blocked, "message", "") or "blocked by a guardrail"
    return GuardStep(released, message, getattr(blocked, "rule_id", ""))


class EngineGuardrails:
    """The pipeline's ``Guardrails`` port over a ``GuardrailEngine``."""

    def __init__(self, engine: GuardrailEngine) -> None:
        self.engine = engine

    def active(self, stage: Stage, ctx: RequestContext) -> bool:
        return self.engine.has_rules(stage)

    async def check(
        self, stage: Stage, pieces: Sequence[TextPiece], ctx: RequestContext
    ) -> StageVerdict:
        result = await self.engine.run_stage(
            stage, pieces, rule_env(ctx), check_context(ctx, stage)
        )
        for d in result.decisions:  # the dashboard's recent decisions: rules that acted
            if d.outcome is not Outcome.PASS and d.outcome is not Outcome.SAMPLED_OUT:
                if ctx.fired is None:
                    ctx.fired = []
                ctx.fired.append((d.rule_id, d.outcome.value))
        if ctx.stages is not None:  # the access log and traces: which rules ran, how
            for d in result.decisions:
                if d.outcome is not Outcome.SAMPLED_OUT:
                    ctx.stages.rules.append(
                        {
                            "stage": stage.value,
                            "rule": d.rule_id,
                            "outcome": d.outcome.value,
                            "latency_ms": round(d.latency_ms, 3),
                        }
                    )
        if result.blocked is not None:
            b = result.blocked
            return StageVerdict(blocked=True, status=b.status, message=b.message, code=b.rule_id)
        return StageVerdict(
            rewritten=result.rewritten, redacted=result.redacted, flagged=result.flagged
        )

    def stream_guards(self, ctx: RequestContext) -> Callable[[str], TextGuard] | None:
        if not self.engine.has_rules(Stage.OUTPUT):
            return None
        env = rule_env(ctx)
        check_ctx = check_context(ctx, Stage.OUTPUT)

        def factory(channel: str) -> TextGuard:
            guard = self.engine.open_stream(env, check_ctx)
            return _StreamAdapter(guard) if guard is not None else _PassThrough()

        return factory


def build_guardrails(
    config: SidecarConfig,
    registry: object | None = None,
    rule_label: Callable[[str], str] | None = None,
) -> tuple[EngineGuardrails, RuleSetHolder] | None:
    """The engine for ``guardrails.rules``; None when no rule file is configured.

    Raises ``guardrails.rules.RuleFileError`` listing every error of the start-up files.
    """
    g = config.guardrails
    if not g.rules:
        return None
    from guardrails.remote_metrics import RemoteMetrics

    remote = RemoteMetrics(registry) if registry is not None else None  # type: ignore[arg-type]
    holder = RuleSetHolder(g.rules, poll_interval_s=g.reload_interval or 2.0, remote_metrics=remote)
    audit_path = g.audit_log
    if not audit_path and config.persistent:
        audit_path = str(Path(config.cache.data_dir) / "audit.jsonl")
    audit = None
    if audit_path:
        Path(audit_path).parent.mkdir(parents=True, exist_ok=True)
        audit = AuditLog(audit_path)
    salt = os.environ.get(g.hash_salt_env, "")
    workers = None
    size = DEFAULT_WORKERS if g.workers == "auto" else int(g.workers)
    if size > 0:
        preload = worker_preload(holder.current)
        workers = WorkerPool(
            size,
            max_queue=g.worker_queue,
            preload=preload,
            registry=registry,  # type: ignore[arg-type]
        )
        holder.on_close(workers.aclose)
    engine = GuardrailEngine(
        holder,
        audit,
        registry,  # type: ignore[arg-type]
        hash_salt=salt.encode() if salt else None,
        default_block_status=g.block_status,
        workers=workers,
        inline_max_chars=g.inline_max_chars,
        cpu_budget_ms=g.cpu_budget_ms,
        rule_label=rule_label,
    )
    return EngineGuardrails(engine), holder
