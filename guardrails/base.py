"""The check interface every guardrail implements.

A *check* looks at the text pieces of one stage (the request's message contents and tool-call
arguments on input, the answer text on output) and reports findings. It never decides what to
do about them: the rule engine (``guardrails.engine``) owns actions (block, redact,
detect_only), sampling, timeouts and the audit trail. This split mirrors Presidio's
analyzer/anonymizer separation: analysis here, operators elsewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class Stage(enum.StrEnum):
    INPUT = "input"
    OUTPUT = "output"


class PieceKind(enum.StrEnum):
    MESSAGE = "message"  # a message's text content (or one text block of it)
    TOOL_ARGS = "tool_args"  # the arguments string of a tool call
    TOOL_RESULT = "tool_result"  # the content of a tool result (documents, for prompt shields)
    ANSWER = "answer"  # answer text on the output stage
    # Request fields a rule sees only when its ``scan`` asks for them (guardrails.ruleset.Scan):
    METADATA = "metadata"  # a string value inside the request's ``metadata`` object
    USER = "user"  # the end-user id: OpenAI ``user``, Anthropic ``metadata.user_id``
    TOOL_DESCRIPTION = "tool_description"  # a tool's description (or its parameters')


@dataclass(frozen=True, slots=True)
class TextPiece:
    """One piece of text a check may scan. ``index`` is stable within a stage."""

    index: int
    text: str
    kind: PieceKind = PieceKind.MESSAGE
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a check found.

    ``type`` is what was found (``secret:github-pat``, ``EMAIL_ADDRESS``, ``regex:ignore-previous``,
    ``content:HATE``); it may appear in audit records and error messages. The matched text itself
    never leaves the check except through ``replacement``. ``start``/``end`` are character offsets
    into the piece's text; a finding about the whole piece (a content-safety verdict) has
    ``start == end == -1``.
    """

    type: str
    piece: int
    start: int = -1
    end: int = -1
    score: float = 1.0
    # Text to put in place of [start, end) when the rule's action is ``redact``. None means the
    # engine uses the rule's default strategy (``[TYPE]``).
    replacement: str | None = None

    @property
    def has_span(self) -> bool:
        return self.start >= 0 and self.end > self.start


@dataclass(slots=True)
class CheckResult:
    findings: list[Finding] = field(default_factory=list)
    # Whole-piece replacements decided by the check itself (e.g. a remote service's masked
    # text). They win over span replacements for the same piece.
    rewritten: dict[int, str] = field(default_factory=dict)
    # Checks that restore values (reversible PII) on the output stage set this.
    restored: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class CheckContext:
    """What a check may know about the request besides the text.

    ``request_state`` lives for one request only (never logged or cached); checks use it to
    carry state from the input stage to the output stage (reversible PII placeholders). Between
    the HTTP hook's two calls it may wait in Redis, pickled and sealed (``sidecar.pending_redis``),
    so what a check keeps there must pickle: plain data or this project's classes.
    """

    stage: Stage
    request_id: str
    request_type: str
    model: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    request_state: dict[str, Any] = field(default_factory=dict)
    #: when the text reached the sidecar (``time.monotonic()``): time it spent queued before
    #: a rule ran counts against the rule's timeout (None: from the rule's start)
    received_at: float | None = None


@runtime_checkable
class Check(Protocol):
    """A guardrail check. Implementations are built once per profile at rule-load time."""

    #: provider name as used in rule files (``regex``, ``secrets``, ``presidio`` ...)
    provider: str

    async def scan(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        """Scan the pieces. Remote checks must be cancellable (the engine enforces timeouts)."""
        ...

    def max_span(self) -> int | None:
        """Longest text a single finding can cover, for incremental scanning of streams.

        The engine holds back this many characters of a streamed answer before releasing it.
        ``None`` means the check needs the whole text (the stream is held to the end).
        """
        ...

    async def aclose(self) -> None:
        """Release clients and pools."""
        ...


@runtime_checkable
class LocalCheck(Protocol):
    """A check whose work is CPU in this process (regex, secrets, presidio).

    The engine splits its scan in two so that the costly part can run in a worker process,
    where it can be stopped at the deadline (``guardrails.workers``): ``analyze`` is a pure
    function of the pieces and the stage, run inline or in a worker that rebuilt the check from
    its profile's provider and config, and returns picklable data; ``complete`` turns that into
    the result in the request's process (it may use ``ctx.request_state``). ``scan`` must equal
    ``complete(pieces, ctx, analyze(pieces, ctx.stage))``.
    """

    def analyze(self, pieces: Sequence[TextPiece], stage: Stage) -> Any: ...

    def complete(
        self, pieces: Sequence[TextPiece], ctx: CheckContext, analysis: Any
    ) -> CheckResult: ...


class CheckConfigError(ValueError):
    """A profile's ``config`` is invalid. The message names the offending field."""


class CheckFactory(Protocol):
    def __call__(self, config: Mapping[str, Any], *, base_dir: str | None = None) -> Check: ...
