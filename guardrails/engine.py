"""The guardrail rule engine: which rules run, in what order, and what their findings do.

For a stage (input or output) the engine takes the enabled rules for that stage in ascending
priority, keeps those whose CEL condition holds and that the sampling draw selects, and runs
each rule's profiles concurrently under the rule's timeout. Then:

- ``block``: any finding stops the stage with a :class:`BlockDecision` (rule id and finding
  types only, never the matched text);
- ``redact``: spans are replaced (per-profile strategy, or the finding's own replacement),
  overlapping spans from several checks merge into one replacement, check-supplied whole-piece
  rewrites and reversible restores are applied, and later rules see the rewritten text;
- ``detect_only``: findings are recorded, text is untouched.

A check that raises or overruns the timeout triggers the rule's ``on_error``: ``block`` (fail
closed, finding type ``error:<kind>``) or ``allow``. A condition that fails to evaluate (a
missing map key, say) is treated the same way, with kind ``condition``.

Local checks (``LocalCheck``: regex, secrets, presidio) are CPU work, and a thread cannot be
stopped at a deadline. With a worker pool, ``guardrails.local_checks`` runs them on large
inputs in a worker process that is killed when the rule's timeout or the request's CPU budget
runs out (``error:cpu_budget``), so the CPU stops with the answer.

Streamed answers go through :class:`guardrails.stream.StreamGuard` (see ``open_stream``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cel
from prometheus_client import CollectorRegistry, Counter, Histogram

from guardrails.audit import AuditLog
from guardrails.base import CheckContext, CheckResult, Finding, Stage, TextPiece
from guardrails.local_checks import (
    DEFAULT_CPU_BUDGET_MS,
    DEFAULT_INLINE_MAX_CHARS,
    LocalCheckRunner,
    is_local,
)
from guardrails.redaction import RewriteConflict, apply_redactions
from guardrails.rules import Action, OnError, Profile, Rule, RuleSet
from guardrails.ruleset import DEFAULT_SCAN, scanned_kinds
from guardrails.workers import WorkerError, WorkerPool

# the one bound for traffic-fed labels (a module without dependencies on the sidecar's core)
from sidecar.labels import BoundedLabels

if TYPE_CHECKING:
    from guardrails.reload import RuleSetHolder
    from guardrails.stream import StreamGuard

log = logging.getLogger(__name__)

#: the piece kinds ``text_length`` counts (the conversation), computed once
_CONVERSATION = scanned_kinds(DEFAULT_SCAN)


class Outcome(enum.StrEnum):
    PASS = "pass"  # ran, found nothing
    BLOCKED = "blocked"
    REDACTED = "redacted"
    REWRITTEN = "rewritten"  # a check rewrote the text itself (CheckResult.rewritten)
    RESTORED = "restored"  # only reversible restores changed the text (CheckResult.restored)
    DETECTED = "detected"
    SAMPLED_OUT = "sampled_out"
    ERROR_BLOCKED = "error_blocked"
    ERROR_ALLOWED = "error_allowed"


class ErrorKind(enum.StrEnum):
    TIMEOUT = "timeout"
    CHECK = "check_error"
    CONDITION = "condition"
    REWRITE_CONFLICT = "rewrite_conflict"
    CPU_BUDGET = "cpu_budget"  # the request's CPU budget for local checks is spent
    WORKERS_BUSY = "workers_busy"  # every check worker busy and the wait queue full


@dataclass(slots=True)
class RuleEnv:
    """The request facts CEL conditions can read. ``stage`` comes from the call, not from here.

    ``headers`` are lower-cased by the engine; ``messages`` is a list of ``{role, content}``
    with content as text; ``text_length`` defaults to the total length of the stage's pieces.
    """

    model: str = ""
    provider: str = ""
    path: str = ""
    request_type: str = "chat"
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    messages: Sequence[Mapping[str, Any]] = ()
    text_length: int | None = None
    cache_key: str = ""

    def cel_variables(self, stage: Stage, names: frozenset[str], text_length: int) -> Any:
        """A CEL context holding only the variables the rules read (conversion is not free)."""
        values: dict[str, Any] = {}
        for name in names:
            if name == "stage":
                values[name] = stage.value
            elif name == "headers":
                values[name] = {str(k).lower(): str(v) for k, v in self.headers.items()}
            elif name == "params":
                values[name] = dict(self.params)
            elif name == "messages":
                values[name] = [dict(m) for m in self.messages if isinstance(m, Mapping)]
            elif name == "text_length":
                values[name] = self.text_length if self.text_length is not None else text_length
            else:
                value = getattr(self, name)
                values[name] = "" if value is None else value
        return cel.Context(values)


@dataclass(frozen=True, slots=True)
class BlockDecision:
    rule_id: str
    finding_types: tuple[str, ...]  # sorted, unique
    stage: Stage
    status: int = 403
    message: str = ""


@dataclass(frozen=True, slots=True)
class RuleDecision:
    rule_id: str
    profiles: tuple[str, ...]
    action: Action
    outcome: Outcome
    finding_counts: Mapping[str, int] = field(default_factory=dict)
    latency_ms: float = 0.0
    error: ErrorKind | None = None

    @property
    def sampled_out(self) -> bool:
        return self.outcome is Outcome.SAMPLED_OUT

    @property
    def finding_types(self) -> tuple[str, ...]:
        return tuple(sorted(self.finding_counts))


@dataclass(slots=True)
class StageResult:
    blocked: BlockDecision | None = None
    rewritten: dict[int, str] = field(default_factory=dict)  # piece index -> new text
    decisions: list[RuleDecision] = field(default_factory=list)

    @property
    def redacted(self) -> bool:
        """Some text was redacted or rewritten by a check (not merely restored)."""
        return any(d.outcome in (Outcome.REDACTED, Outcome.REWRITTEN) for d in self.decisions)

    @property
    def flagged(self) -> bool:
        """Some check found something (whatever the rule then did with it)."""
        return any(d.finding_counts for d in self.decisions)


@dataclass(slots=True)
class RuleRun:
    """One rule's execution over a set of pieces."""

    decision: RuleDecision
    blocked: BlockDecision | None = None
    texts: dict[int, str] = field(default_factory=dict)  # pieces this rule rewrote
    findings: list[Finding] = field(default_factory=list)


_OUTCOME_RANK = {
    o: i
    for i, o in enumerate(
        (
            Outcome.SAMPLED_OUT,
            Outcome.PASS,
            Outcome.ERROR_ALLOWED,
            Outcome.DETECTED,
            Outcome.RESTORED,
            Outcome.REWRITTEN,
            Outcome.REDACTED,
            Outcome.ERROR_BLOCKED,
            Outcome.BLOCKED,
        )
    )
}


def outcome_rank(outcome: Outcome) -> int:
    """Severity order used to summarise several runs of a rule (stream steps)."""
    return _OUTCOME_RANK[outcome]


class GuardrailEngine:
    def __init__(
        self,
        holder: RuleSetHolder,
        audit: AuditLog | None = None,
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
        *,
        hash_salt: bytes | None = None,
        stream_min_release: int = 16,
        default_block_status: int = 403,
        workers: WorkerPool | None = None,
        inline_max_chars: int = DEFAULT_INLINE_MAX_CHARS,
        cpu_budget_ms: int = DEFAULT_CPU_BUDGET_MS,
        rule_label: Callable[[str], str] | None = None,
    ) -> None:
        """``registry`` None keeps metrics private (not exported); ``hash_salt`` None draws a
        random per-process salt, so ``hash`` redactions differ across restarts.

        ``rule_label`` bounds the ``rule`` label of the metrics (the sidecar passes its
        ``sidecar.labels.BoundedLabels``, shared with partitions and models): rule files are
        reloaded while the process runs, so their ids are not a fixed set. None: a private
        bound of 100 values.

        ``workers`` None runs every check in this process, as callers of ``scan`` always did:
        a timeout then answers without stopping CPU work, and ``cpu_budget_ms`` (0: none) is
        not enforced."""
        self.holder = holder
        self.workers = workers
        self.local = (
            LocalCheckRunner(holder, workers, inline_max_chars, cpu_budget_ms)
            if workers is not None
            else None
        )
        self.audit = audit
        self._rng = rng or random.Random()
        self._salt = hash_salt if hash_salt is not None else os.urandom(16)
        self.stream_min_release = max(1, stream_min_release)
        self.default_block_status = default_block_status
        self._rule_label = rule_label if rule_label is not None else BoundedLabels(100)
        registry = registry if registry is not None else CollectorRegistry()
        self._decisions_total = Counter(
            "guardrail_decisions_total",
            "Guardrail rule decisions by rule, action and outcome",
            ["rule", "action", "outcome"],
            registry=registry,
        )
        self._latency = Histogram(
            "guardrail_rule_latency_seconds",
            "Time spent running one guardrail rule's checks",
            ["rule"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._audit_errors = Counter(
            "guardrail_audit_write_errors_total",
            "Audit records that could not be written",
            registry=registry,
        )
        # Labelled children per (rule, action, outcome): prometheus_client's labels() takes a
        # lock and checks its arguments on every call, several per request. Only rules whose
        # label is their own id are kept, so the dict is bounded like the label.
        self._children: dict[tuple[str, Action, Outcome], tuple[Any, Any]] = {}

    @property
    def ruleset(self) -> RuleSet:
        return self.holder.current

    @property
    def active(self) -> bool:
        """True when any enabled rule exists (the pipeline skips all guardrail work if not)."""
        ruleset = self.holder.current
        return any(ruleset.rules_for(stage) for stage in Stage)

    def has_rules(self, stage: Stage) -> bool:
        return bool(self.holder.current.rules_for(stage))

    async def run_stage(
        self, stage: Stage, pieces: Sequence[TextPiece], env: RuleEnv, ctx: CheckContext
    ) -> StageResult:
        ruleset = self.holder.current
        if not ruleset.rules_for(stage):
            return StageResult()
        ctx = ctx if ctx.stage is stage else dataclasses.replace(ctx, stage=stage)
        # text_length stays the conversation's length: fields only a rule's ``scan`` opts into
        # (metadata, user, tool descriptions) do not count.
        length = sum(len(p.text) for p in pieces if p.kind in _CONVERSATION)
        selected, decisions, blocked = self.select(ruleset, stage, env, length)
        rewritten: dict[int, str] = {}
        if blocked is None and selected:
            blocked, runs, rewritten = await self.run_rules(ruleset, selected, pieces, ctx, stage)
            decisions.extend(runs)
        self.record(decisions, stage, ctx.request_id)
        return StageResult(blocked, rewritten, decisions)

    def open_stream(self, env: RuleEnv, ctx: CheckContext) -> StreamGuard | None:
        """A guard for a streamed answer, or None when no output rule applies to it."""
        from guardrails.stream import StreamGuard

        ruleset = self.holder.current
        if not ruleset.rules_for(Stage.OUTPUT):
            return None
        ctx = ctx if ctx.stage is Stage.OUTPUT else dataclasses.replace(ctx, stage=Stage.OUTPUT)
        selected, decisions, blocked = self.select(ruleset, Stage.OUTPUT, env, 0)
        if not selected and blocked is None:
            self.record(decisions, Stage.OUTPUT, ctx.request_id)
            return None
        return StreamGuard(self, ruleset, selected, ctx, decisions, blocked)

    # -- selection -------------------------------------------------------------------------

    def select(
        self, ruleset: RuleSet, stage: Stage, env: RuleEnv, text_length: int
    ) -> tuple[list[Rule], list[RuleDecision], BlockDecision | None]:
        """Rules whose condition holds and that sampling keeps, in priority order."""
        try:
            context = env.cel_variables(stage, ruleset.variables_for(stage), text_length)
        except Exception as exc:  # noqa: BLE001 - a value CEL cannot hold: conditions fail
            log.warning("guardrail conditions: request values unusable (%s)", type(exc).__name__)
            context = None
        selected: list[Rule] = []
        decisions: list[RuleDecision] = []
        for rule in ruleset.rules_for(stage):
            try:
                if context is None:
                    raise ValueError("no evaluation context")
                matched = rule.program.execute(context)
            except Exception as exc:  # noqa: BLE001 - evaluation errors are data-dependent
                log.warning("guardrail rule %s: condition failed (%s)", rule.id, type(exc).__name__)
                run = self.error_run(rule, stage, ErrorKind.CONDITION, 0.0)
                decisions.append(run.decision)
                if run.blocked is not None:
                    return selected, decisions, run.blocked
                continue
            if matched is not True:
                continue
            if rule.sampling_rate < 100 and self._rng.random() * 100 >= rule.sampling_rate:
                decisions.append(
                    RuleDecision(rule.id, rule.profiles, rule.action, Outcome.SAMPLED_OUT)
                )
                continue
            selected.append(rule)
        return selected, decisions, None

    # -- execution -------------------------------------------------------------------------

    async def scan(
        self, rule: Rule, ruleset: RuleSet, pieces: Sequence[TextPiece], ctx: CheckContext
    ) -> list[tuple[Profile, CheckResult]]:
        """Run a rule's profiles concurrently under its timeout (TimeoutError when overrun)."""
        profiles = [ruleset.profiles[name] for name in rule.profiles]
        budget = rule.timeout_ms / 1000
        if ctx.received_at is not None:
            # Queueing (behind an overloaded loop, for a worker) counts against the timeout:
            # past it the rule's on_error applies at once, as for a check that overran.
            budget -= max(0.0, time.monotonic() - ctx.received_at)
            if budget <= 0:
                raise TimeoutError
        if self.local is not None:
            inline = self.local.inline(profiles, pieces, ctx)
            if inline is not None:
                return inline  # in the rule's profile order already
        async with asyncio.timeout(budget):
            runner = self.local
            if runner is None:
                local: list[Profile] = []
                others = profiles
            else:
                local = [p for p in profiles if is_local(p.check)]
                others = [p for p in profiles if not is_local(p.check)]
            if runner is not None and not others:
                results = await runner.scan(local, pieces, ctx)
            elif not local and len(others) == 1:
                results = [(others[0], await others[0].check.scan(pieces, ctx))]
            else:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(p.check.scan(pieces, ctx)) for p in others]
                    if runner is not None:
                        local_task = group.create_task(runner.scan(local, pieces, ctx))
                results = [*local_task.result()] if runner is not None else []
                results += [(p, t.result()) for p, t in zip(others, tasks, strict=True)]
        order = {name: i for i, name in enumerate(rule.profiles)}
        return sorted(results, key=lambda pair: order[pair[0].name])

    def error_run(self, rule: Rule, stage: Stage, kind: ErrorKind, latency_ms: float) -> RuleRun:
        if rule.on_error is OnError.BLOCK:
            decision = RuleDecision(
                rule.id, rule.profiles, rule.action, Outcome.ERROR_BLOCKED, {}, latency_ms, kind
            )
            return RuleRun(decision, self.block_decision(rule, stage, (f"error:{kind}",)))
        decision = RuleDecision(
            rule.id, rule.profiles, rule.action, Outcome.ERROR_ALLOWED, {}, latency_ms, kind
        )
        return RuleRun(decision)

    def block_decision(self, rule: Rule, stage: Stage, types: Sequence[str]) -> BlockDecision:
        unique = tuple(sorted(set(types)))
        what = "Request" if stage is Stage.INPUT else "Response"
        message = f"{what} blocked by guardrail rule '{rule.id}' ({', '.join(unique)})"
        status = rule.block_status or self.default_block_status
        return BlockDecision(rule.id, unique, stage, status, message)

    async def run_rule(
        self,
        rule: Rule,
        ruleset: RuleSet,
        texts: Mapping[int, TextPiece],
        ctx: CheckContext,
        stage: Stage,
    ) -> RuleRun:
        # A rule sees only the kinds of text its ``scan`` names (the conversation by default).
        seen = rule.kinds
        texts = {i: p for i, p in texts.items() if p.kind in seen}
        start = time.perf_counter()
        try:
            results = await self.scan(rule, ruleset, list(texts.values()), ctx)
        except TimeoutError:
            latency = (time.perf_counter() - start) * 1000
            log.warning("guardrail rule %s: timed out after %d ms", rule.id, rule.timeout_ms)
            return self.error_run(rule, stage, ErrorKind.TIMEOUT, latency)
        except Exception as exc:  # noqa: BLE001 - a failing check is the rule's on_error case
            latency = (time.perf_counter() - start) * 1000
            kind = _worker_error_kind(exc)
            if kind is not None:
                log.warning("guardrail rule %s: %s", rule.id, kind.value)
                return self.error_run(rule, stage, kind, latency)
            # Class names only: exception messages from remote services may quote the text.
            log.warning("guardrail rule %s: check failed (%s)", rule.id, _exception_names(exc))
            return self.error_run(rule, stage, ErrorKind.CHECK, latency)
        latency = (time.perf_counter() - start) * 1000
        findings = [f for _, r in results for f in r.findings if f.piece in texts]
        counts = _type_counts(findings)
        args = (rule.id, rule.profiles, rule.action)
        if rule.action is Action.BLOCK and findings:
            decision = RuleDecision(*args, Outcome.BLOCKED, counts, latency)
            return RuleRun(decision, self.block_decision(rule, stage, list(counts)), {}, findings)
        if rule.action is not Action.REDACT:
            outcome = Outcome.DETECTED if findings else Outcome.PASS
            return RuleRun(RuleDecision(*args, outcome, counts, latency), None, {}, findings)
        current = {index: piece.text for index, piece in texts.items()}
        try:
            changed, kinds = apply_redactions(results, current, self._salt)
        except RewriteConflict:
            log.warning("guardrail rule %s: checks rewrote the same text differently", rule.id)
            return self.error_run(rule, stage, ErrorKind.REWRITE_CONFLICT, latency)
        if "spans" in kinds or ("rewritten" in kinds and findings):
            outcome = Outcome.REDACTED
        elif "rewritten" in kinds:
            outcome = Outcome.REWRITTEN
        elif "restored" in kinds:
            outcome = Outcome.RESTORED
        else:
            outcome = Outcome.DETECTED if findings else Outcome.PASS
        return RuleRun(RuleDecision(*args, outcome, counts, latency), None, changed, findings)

    async def run_rules(
        self,
        ruleset: RuleSet,
        rules: Sequence[Rule],
        pieces: Sequence[TextPiece],
        ctx: CheckContext,
        stage: Stage,
    ) -> tuple[BlockDecision | None, list[RuleDecision], dict[int, str]]:
        """Run rules in order; each sees the text as the rules before it left it."""
        current = {p.index: p for p in pieces}
        original = {p.index: p.text for p in pieces}
        decisions: list[RuleDecision] = []
        for rule in rules:
            run = await self.run_rule(rule, ruleset, current, ctx, stage)
            decisions.append(run.decision)
            if run.blocked is not None:
                return run.blocked, decisions, {}
            for index, text in run.texts.items():
                current[index] = dataclasses.replace(current[index], text=text)
        rewritten = {i: p.text for i, p in current.items() if p.text != original[i]}
        return None, decisions, rewritten

    # -- recording -------------------------------------------------------------------------

    def record(self, decisions: Sequence[RuleDecision], stage: Stage, request_id: str) -> None:
        """Metrics and audit records for decisions (finding types and counts, never text)."""
        for d in decisions:
            key = (d.rule_id, d.action, d.outcome)
            children = self._children.get(key)
            if children is None:
                rule = self._rule_label(d.rule_id)
                sampled_out = d.outcome is Outcome.SAMPLED_OUT  # no latency series for these
                children = (
                    self._decisions_total.labels(rule, d.action.value, d.outcome.value),
                    None if sampled_out else self._latency.labels(rule),
                )
                if rule == d.rule_id:
                    self._children[key] = children
            children[0].inc()
            if children[1] is not None:
                children[1].observe(d.latency_ms / 1000)
            if self.audit is None:
                continue
            try:
                self.audit.append(
                    {
                        "request_id": request_id,
                        "stage": stage.value,
                        "rule_id": d.rule_id,
                        "profiles": list(d.profiles),
                        "action": d.action.value,
                        "findings": dict(d.finding_counts),
                        "latency_ms": round(d.latency_ms, 3),
                        "outcome": d.outcome.value,
                        "error": d.error.value if d.error else None,
                    }
                )
            except (OSError, ValueError) as exc:
                self._audit_errors.inc()
                log.error("guardrail audit write failed: %s", type(exc).__name__)


def _type_counts(findings: Sequence[Finding]) -> dict[str, int]:
    """Findings per type, in order of first appearance (as ``dict(Counter(...))``, without a
    Counter's construction per rule per request: most runs find nothing)."""
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.type] = counts.get(f.type, 0) + 1
    return counts


def _worker_error_kind(exc: BaseException) -> ErrorKind | None:
    """CPU budget and busy-pool errors keep their own kind, even inside an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        kinds = [_worker_error_kind(e) for e in exc.exceptions]
        return next((k for k in kinds if k is not None), None)
    if isinstance(exc, WorkerError):
        for kind in (ErrorKind.CPU_BUDGET, ErrorKind.WORKERS_BUSY):
            if exc.kind == kind.value:
                return kind
    return None


def _exception_names(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return ", ".join(sorted({_exception_names(e) for e in exc.exceptions}))
    return type(exc).__name__
