"""The guardrail rule model: what a loaded rule file becomes (profiles, rules, the rule set),
and the errors loading reports. Loading and validation live in ``guardrails.rules``."""

from __future__ import annotations

import enum
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardrails.base import Check, PieceKind, Stage

log = logging.getLogger("guardrails.rules")


class ApplyTo(enum.StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    BOTH = "both"


class Action(enum.StrEnum):
    BLOCK = "block"
    REDACT = "redact"
    DETECT_ONLY = "detect_only"


class OnError(enum.StrEnum):
    BLOCK = "block"  # fail closed
    ALLOW = "allow"  # fail open


class Redaction(enum.StrEnum):
    REPLACE = "replace"  # [TYPE]
    MASK = "mask"  # same-length '*'
    HASH = "hash"  # [TYPE:salted-sha256-prefix]


@dataclass(frozen=True, slots=True)
class RuleError:
    file: str
    line: int  # 1-based; 0 when the error concerns the whole file
    column: int
    subject: str  # "rule 'x'", "profile 'y'", "rules[3]" or "" for file-level problems
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return (
            f"{where}: {self.subject}: {self.message}"
            if self.subject
            else f"{where}: {self.message}"
        )


class RuleFileError(ValueError):
    def __init__(self, errors: Sequence[RuleError]) -> None:
        self.errors = list(errors)
        lines = [f"{len(self.errors)} error(s) in guardrail rule files:"]
        lines += [f"  {err}" for err in self.errors]
        super().__init__("\n".join(lines))


class Scan(enum.StrEnum):
    """What text of a request a rule's checks see (the rule's ``scan`` list)."""

    MESSAGES = "messages"  # message text, tool call arguments, tool results; answers on output
    METADATA = "metadata"  # string values in the request's ``metadata``
    USER = "user"  # OpenAI ``user``, Anthropic ``metadata.user_id``
    TOOLS = "tools"  # tool descriptions, including their parameters' descriptions


#: the default ``scan`` of a rule: the conversation only, as before ``scan`` existed
DEFAULT_SCAN: tuple[Scan, ...] = (Scan.MESSAGES,)
_SCAN_KINDS: dict[Scan, frozenset[PieceKind]] = {
    Scan.MESSAGES: frozenset(
        {PieceKind.MESSAGE, PieceKind.TOOL_ARGS, PieceKind.TOOL_RESULT, PieceKind.ANSWER}
    ),
    Scan.METADATA: frozenset({PieceKind.METADATA}),
    Scan.USER: frozenset({PieceKind.USER}),
    Scan.TOOLS: frozenset({PieceKind.TOOL_DESCRIPTION}),
}


def scanned_kinds(scan: Iterable[Scan]) -> frozenset[PieceKind]:
    return frozenset().union(*(_SCAN_KINDS[s] for s in scan))


@functools.lru_cache(maxsize=64)
def _kinds_of(scan: tuple[Scan, ...]) -> frozenset[PieceKind]:
    # Every rule asks once per run: a cached answer spares a frozenset union per rule per
    # request. Bounded: a rule's ``scan`` is a tuple of at most four distinct values.
    return scanned_kinds(scan)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    provider: str
    config: Mapping[str, Any]
    redaction: Redaction
    check: Check
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    when: str
    program: Any  # cel.Program (the extension's class is not usable as an annotation)
    variables: frozenset[str]
    apply_to: ApplyTo
    profiles: tuple[str, ...]
    action: Action
    sampling_rate: float
    timeout_ms: int
    on_error: OnError
    priority: int
    enabled: bool
    description: str
    block_status: int | None  # None: the engine's default (403 unless configured)
    file: str
    line: int
    scan: tuple[Scan, ...] = DEFAULT_SCAN

    @property
    def kinds(self) -> frozenset[PieceKind]:
        """The piece kinds this rule's checks see."""
        return _kinds_of(self.scan)

    def applies_to(self, stage: Stage) -> bool:
        return self.apply_to is ApplyTo.BOTH or self.apply_to.value == stage.value


@dataclass(slots=True)
class RuleSet:
    files: tuple[str, ...]
    profiles: dict[str, Profile]
    rules: tuple[Rule, ...]  # every rule, sorted by (priority, file order)
    checks: dict[str, Check] = field(default_factory=dict)  # build key -> check (for reuse)
    loaded_at: float = field(default_factory=time.time)
    _by_stage: dict[Stage, tuple[Rule, ...]] = field(default_factory=dict)
    _variables: dict[Stage, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for stage in Stage:
            rules = tuple(r for r in self.rules if r.enabled and r.applies_to(stage))
            self._by_stage[stage] = rules
            # Asked on every request: computed once, like the stage's rules.
            self._variables[stage] = frozenset().union(*(r.variables for r in rules))

    @classmethod
    def empty(cls) -> RuleSet:
        return cls(files=(), profiles={}, rules=())

    def rules_for(self, stage: Stage) -> tuple[Rule, ...]:
        """Enabled rules for a stage, lowest priority first."""
        return self._by_stage[stage]

    def variables_for(self, stage: Stage) -> frozenset[str]:
        """CEL variables the stage's conditions read (only these are built per request)."""
        return self._variables[stage]

    async def aclose(self) -> None:
        await close_checks(self.checks.values())


async def close_checks(checks: Iterable[Check]) -> None:
    for check in checks:
        try:
            await check.aclose()
        except Exception as exc:  # noqa: BLE001 - closing must not fail a reload
            log.warning("closing %s check failed: %s", check.provider, type(exc).__name__)
