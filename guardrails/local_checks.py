"""Running a rule's local checks (regex, secrets, presidio): inline, or in a worker process.

Local checks are CPU work, and a thread cannot be stopped at a deadline. Inputs of at most
``inline_max_chars`` characters run inline, where their cost is bounded by their size (worst
case measured by ``benchmarks/guardrails_cpu_bench.py``, in docs/guardrails.md). Larger inputs
run in one worker process per rule (``guardrails.workers``), which is killed when the rule's
timeout (the engine's ``asyncio.timeout`` around the call) or the request's CPU budget runs
out, so the CPU stops with the answer.

The CPU budget (``cpu_budget_ms``) counts the CPU of a request's worker jobs across both
stages, kept in the request's ``request_state``; once spent, further local checks fail with
``error:cpu_budget``. Inline runs are not charged: each is bounded by its size, and a streamed
answer makes one per step, so charging them would cut long legitimate streams off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from guardrails.base import CheckContext, CheckResult, LocalCheck, TextPiece
from guardrails.registry import PROVIDERS
from guardrails.rules import Profile, RuleSet, check_key
from guardrails.workers import CheckSpec, CpuBudgetExceeded, WorkerPool

if TYPE_CHECKING:
    from guardrails.reload import RuleSetHolder

#: Inputs up to this many characters run local checks inline (no IPC).
DEFAULT_INLINE_MAX_CHARS = 4096
#: CPU a request's local checks may use in workers, across both stages.
DEFAULT_CPU_BUDGET_MS = 1000
#: Where the CPU a request's worker jobs used is kept (its ``request_state``).
CPU_USED_KEY = "guardrails.cpu_used_s"

_LOCAL_CLASSES: dict[type, bool] = {}


def is_local(check: object) -> bool:
    """Whether a check is a ``LocalCheck`` (decided once per class: a protocol isinstance test
    costs about 20 us, which the per-request path should not pay for every profile)."""
    cls = type(check)
    local = _LOCAL_CLASSES.get(cls)
    if local is None:
        local = _LOCAL_CLASSES[cls] = issubclass(cls, LocalCheck)
    return local


def worker_preload(ruleset: RuleSet) -> list[str]:
    """Modules the check workers' fork server imports once: the rule set's local providers."""
    modules = set()
    for profile in ruleset.profiles.values():
        if is_local(profile.check):
            modules.add(PROVIDERS[profile.provider].partition(":")[0])
    return sorted(modules)


def check_spec(profile: Profile) -> CheckSpec:
    """How a worker rebuilds a profile's check (the key matches the loader's reuse key)."""
    base_dir = os.path.dirname(os.path.abspath(profile.file))
    key = check_key(profile.provider, profile.config, base_dir)
    return CheckSpec(key, profile.provider, dict(profile.config), base_dir)


class LocalCheckRunner:
    def __init__(
        self,
        holder: RuleSetHolder,
        workers: WorkerPool,
        inline_max_chars: int = DEFAULT_INLINE_MAX_CHARS,
        cpu_budget_ms: int = DEFAULT_CPU_BUDGET_MS,
    ) -> None:
        """``cpu_budget_ms`` 0: no budget (only the rules' timeouts)."""
        self.holder = holder
        self.workers = workers
        self.inline_max_chars = max(0, inline_max_chars)
        self.cpu_budget_s = cpu_budget_ms / 1000 if cpu_budget_ms > 0 else None
        self._specs_for: RuleSet | None = None  # the rule set whose checks workers prebuild
        self._prebuild(holder.current)

    def inline(
        self, profiles: Sequence[Profile], pieces: Sequence[TextPiece], ctx: CheckContext
    ) -> list[tuple[Profile, CheckResult]] | None:
        """``scan`` without a coroutine when every profile is local and the input is small
        enough to run inline (None otherwise). Inline work never yields to the event loop, so
        a rule's ``asyncio.timeout`` could not interrupt it anyway: the engine skips the timer
        (a timer handle per rule per request, a tenth of a small input's rule cost)."""
        if sum(len(p.text) for p in pieces) > self.inline_max_chars:
            return None
        for p in profiles:
            if not is_local(p.check):
                return None
        if not profiles:
            return []
        self._check_budget(ctx)
        return [
            (p, check.complete(pieces, ctx, check.analyze(pieces, ctx.stage)))
            for p, check in ((p, cast(LocalCheck, p.check)) for p in profiles)
        ]

    def _check_budget(self, ctx: CheckContext) -> float | None:
        if self.cpu_budget_s is not None and CPU_USED_KEY not in ctx.request_state:
            return self.cpu_budget_s  # nothing charged yet (inline runs never are): all left
        left = self.cpu_budget_left(ctx)
        if left is not None and left <= 0:
            raise CpuBudgetExceeded(self.cpu_used(ctx), self.cpu_budget_s or 0.0)
        return left

    async def scan(
        self, profiles: Sequence[Profile], pieces: Sequence[TextPiece], ctx: CheckContext
    ) -> list[tuple[Profile, CheckResult]]:
        """Run local profiles' checks: inline for small inputs, else in one worker process."""
        if not profiles:
            return []
        left = self._check_budget(ctx)
        checks = [cast(LocalCheck, p.check) for p in profiles]
        if sum(len(p.text) for p in pieces) <= self.inline_max_chars:
            analyses = [check.analyze(pieces, ctx.stage) for check in checks]
        else:
            if self._specs_for is not self.holder.current:
                self._prebuild(self.holder.current)
            jobs = [(check_spec(p), pieces) for p in profiles]
            job = await self.workers.run(
                jobs, ctx.stage, cpu_limit_s=left, charge=lambda s: self._charge(ctx, s)
            )
            analyses = job.analyses
        return [
            (p, check.complete(pieces, ctx, analysis))
            for p, check, analysis in zip(profiles, checks, analyses, strict=True)
        ]

    @staticmethod
    def cpu_used(ctx: CheckContext) -> float:
        """CPU seconds the request's worker jobs used so far (both stages)."""
        used = ctx.request_state.get(CPU_USED_KEY, 0.0)
        return float(used) if isinstance(used, int | float) else 0.0

    def cpu_budget_left(self, ctx: CheckContext) -> float | None:
        if self.cpu_budget_s is None:
            return None
        return self.cpu_budget_s - self.cpu_used(ctx)

    def _charge(self, ctx: CheckContext, cpu_s: float) -> None:
        ctx.request_state[CPU_USED_KEY] = self.cpu_used(ctx) + max(0.0, cpu_s)

    def _prebuild(self, ruleset: RuleSet) -> None:
        """Tell the pool which checks a new worker builds before its first job."""
        self._specs_for = ruleset
        profiles = ruleset.profiles.values()
        self.workers.set_specs(check_spec(p) for p in profiles if is_local(p.check))
