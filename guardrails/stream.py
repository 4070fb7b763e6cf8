"""Output rules on streamed answers: incremental scanning with a bounded hold-back.

The guard keeps the not-yet-released tail of the answer. Each ``feed`` may release a prefix
of it, in two phases:

1. *Plan*: every selected rule's checks scan the whole held text (raw). A block rule with a
   finding stops the stream now. Otherwise the release point is ``len(held) - hold``, where
   ``hold`` is the largest ``max_span()`` of the checks involved (no match that could still
   grow with text not yet received can start before it), moved back to just after a nearby
   whitespace (so word boundaries at the cut are real ones) and moved back again to the start
   of any finding that straddles it.
2. *Release*: the prefix is run through the same rule pipeline as a non-streamed answer
   (redactions, restores, later rules seeing earlier rewrites), and its result is released.

When any check's ``max_span()`` is None, nothing is released until :meth:`finish`, which runs
the rules over the whole answer. Decisions are summarised per rule for the whole stream and
recorded once (audit, metrics) when the stream finishes, is blocked, or is closed.

Checks that rewrite or restore text (``CheckResult.rewritten``/``restored``) must also report
a span finding for each region they change, so the plan phase never cuts through one; and a
check's scan must not consume per-request state, because held text is scanned more than once.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guardrails.base import CheckContext, PieceKind, Stage, TextPiece
from guardrails.engine import BlockDecision, ErrorKind, Outcome, RuleDecision, outcome_rank
from guardrails.rules import Action, Rule, RuleSet

if TYPE_CHECKING:
    from guardrails.engine import GuardrailEngine

# How far back from the release point to look for whitespace to cut at.
_WHITESPACE_LOOKBACK = 64


@dataclass(frozen=True, slots=True)
class StreamStep:
    released: str = ""  # text the client may receive now (already redacted/restored)
    blocked: BlockDecision | None = None  # set once: the stream must end with an error event


@dataclass(slots=True)
class _Summary:
    outcome: Outcome = Outcome.PASS
    counts: Tally[str] = field(default_factory=Tally)
    latency_ms: float = 0.0
    error: ErrorKind | None = None
    runs: int = 0


def stream_hold(ruleset: RuleSet, rules: Sequence[Rule]) -> int | None:
    """Characters to hold back: the longest span any involved check can match (None: all)."""
    hold = 0
    for rule in rules:
        for name in rule.profiles:
            span = ruleset.profiles[name].check.max_span()
            if span is None:
                return None
            hold = max(hold, span)
    return hold


class StreamGuard:
    def __init__(
        self,
        engine: GuardrailEngine,
        ruleset: RuleSet,
        rules: Sequence[Rule],
        ctx: CheckContext,
        decisions: Sequence[RuleDecision],
        blocked: BlockDecision | None,
    ) -> None:
        self._engine = engine
        self._ruleset = ruleset
        self._rules = list(rules)
        self._ctx = ctx
        self._early = list(decisions)  # sampled-out rules, condition errors
        self._summary = {rule.id: _Summary() for rule in self._rules}
        self._blocked = blocked
        self._pending = ""
        self._done = False
        self._decisions: list[RuleDecision] | None = None
        self.hold = stream_hold(ruleset, self._rules)
        if blocked is not None:
            self._flush()

    @property
    def blocked(self) -> BlockDecision | None:
        return self._blocked

    @property
    def held(self) -> int:
        """Characters received but not yet released."""
        return len(self._pending)

    @property
    def decisions(self) -> list[RuleDecision]:
        """Per-rule summary for the whole stream (empty until finished, blocked or closed)."""
        return list(self._decisions or [])

    async def feed(self, text: str) -> StreamStep:
        if self._blocked is not None or self._done:
            return StreamStep("", self._blocked)
        self._pending += text
        if self.hold is None:
            return StreamStep()
        limit = len(self._pending) - self.hold
        if limit < self._engine.stream_min_release:
            return StreamStep()
        blocked, cut = await self._plan(limit)
        if blocked is not None:
            return self._stop(blocked)
        if cut <= 0:
            return StreamStep()
        return await self._release(cut)

    async def finish(self) -> StreamStep:
        """Release (or block) everything still held; records the stream's decisions."""
        if self._blocked is not None or self._done:
            self._flush()
            return StreamStep("", self._blocked)
        step = await self._release(len(self._pending)) if self._pending else StreamStep()
        self._done = True
        self._flush()
        return step

    def close(self) -> None:
        """For an abandoned stream (client gone): record what was decided so far."""
        self._done = True
        self._pending = ""
        self._flush()

    async def _plan(self, limit: int) -> tuple[BlockDecision | None, int]:
        piece = [TextPiece(0, self._pending, PieceKind.ANSWER)]
        spans: list[tuple[int, int]] = []
        for rule in self._rules:
            start = time.perf_counter()
            try:
                results = await self._engine.scan(rule, self._ruleset, piece, self._ctx)
            except Exception:  # noqa: BLE001 - errors count when the text is released
                continue
            findings = [f for _, r in results for f in r.findings if f.piece == 0]
            if rule.action is Action.BLOCK and findings:
                counts = dict(Tally(f.type for f in findings))
                latency = (time.perf_counter() - start) * 1000
                self._add(
                    RuleDecision(
                        rule.id, rule.profiles, rule.action, Outcome.BLOCKED, counts, latency
                    )
                )
                return self._engine.block_decision(rule, Stage.OUTPUT, list(counts)), 0
            spans.extend((f.start, f.end) for f in findings if f.has_span)
        cut = limit
        low = max(0, cut - _WHITESPACE_LOOKBACK)
        space = max(self._pending.rfind(ch, low, cut) for ch in " \n\t")
        if space >= 0:
            cut = space + 1
        moved = True
        while moved:  # never cut through a finding
            moved = False
            for s, e in spans:
                if s < cut < e:
                    cut, moved = s, True
        return None, cut

    async def _release(self, cut: int) -> StreamStep:
        segment, self._pending = self._pending[:cut], self._pending[cut:]
        blocked, decisions, rewritten = await self._engine.run_rules(
            self._ruleset,
            self._rules,
            [TextPiece(0, segment, PieceKind.ANSWER)],
            self._ctx,
            Stage.OUTPUT,
        )
        for decision in decisions:
            self._add(decision)
        if blocked is not None:
            return self._stop(blocked)
        return StreamStep(rewritten.get(0, segment), None)

    def _stop(self, blocked: BlockDecision) -> StreamStep:
        self._blocked = blocked
        self._pending = ""
        self._flush()
        return StreamStep("", blocked)

    def _add(self, decision: RuleDecision) -> None:
        summary = self._summary[decision.rule_id]
        if outcome_rank(decision.outcome) > outcome_rank(summary.outcome):
            summary.outcome = decision.outcome
        summary.counts.update(decision.finding_counts)
        summary.latency_ms += decision.latency_ms
        summary.error = summary.error or decision.error
        summary.runs += 1

    def _flush(self) -> None:
        if self._decisions is not None:
            return
        decisions = list(self._early)
        for rule in self._rules:
            s = self._summary[rule.id]
            if s.runs == 0:  # never reached (stream empty, or stopped before this rule)
                continue
            decisions.append(
                RuleDecision(
                    rule.id,
                    rule.profiles,
                    rule.action,
                    s.outcome,
                    dict(s.counts),
                    s.latency_ms,
                    s.error,
                )
            )
        self._decisions = decisions
        self._engine.record(decisions, Stage.OUTPUT, self._ctx.request_id)
