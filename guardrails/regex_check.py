"""The built-in ``regex`` check: named RE2 patterns.

Patterns are compiled with RE2 (google-re2), whose matching time is linear in the text, so a
rule file cannot introduce catastrophic backtracking. Each match is reported as a finding of
type ``regex:<name>``.

Profile config::

    patterns:
      - {name: ignore-previous, pattern: '(?i)ignore (all )?previous instructions'}
      - {name: ticket, pattern: 'TCK-[0-9]+', flags: i}   # flags: any of i, m, s
    max_match_chars: 512    # optional; see max_span()

Streaming bound (``max_span``): a pattern whose longest match is fixed (no ``*``, ``+`` or
open ``{n,}``) contributes that exact length. A pattern with no upper bound (``\\d+``) is
assumed to match at most ``max_match_chars`` characters (default 512) in a streamed answer, so
the stream keeps flowing with a bounded hold-back; a longer match is still found, but may be
reported as two adjacent findings. Set ``max_match_chars: null`` to hold streamed answers to
the end instead whenever a pattern is unbounded (exact, but nothing is released early).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import re2

from guardrails.base import (
    CheckConfigError,
    CheckContext,
    CheckResult,
    Finding,
    Stage,
    TextPiece,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FLAGS = frozenset("ims")
_CONFIG_KEYS = frozenset({"patterns", "max_match_chars"})
_PATTERN_KEYS = frozenset({"name", "pattern", "flags"})
DEFAULT_MAX_MATCH_CHARS = 512
# Python's parser reports "no upper bound" as a huge width (MAXREPEAT or more).
_UNBOUNDED_WIDTH = 2**31


@dataclass(frozen=True, slots=True)
class NamedPattern:
    name: str
    regex: Any  # re2._Regexp (untyped extension module)
    max_width: int | None  # None: no fixed upper bound


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # errors are reported through CheckConfigError, not stderr
    options.never_capture = True  # spans only; capture groups cost time and are never read
    return options


def _pattern_width(pattern: str) -> int | None:
    """Longest match a pattern can produce, via Python's regex parser.

    RE2 syntax is almost a subset of Python's; for the few RE2-only constructs (``\\pL``) the
    parser fails and the pattern is treated as unbounded, which is the safe direction.
    """
    try:
        from re import _parser  # type: ignore[attr-defined]

        _lo, hi = _parser.parse(pattern).getwidth()
    except Exception:  # noqa: BLE001 - any parse failure means "unknown width"
        return None
    return None if hi >= _UNBOUNDED_WIDTH else int(hi)


def _parse_pattern(index: int, entry: Any, seen: set[str]) -> NamedPattern:
    where = f"patterns[{index}]"
    if not isinstance(entry, Mapping):
        raise CheckConfigError(f"{where}: expected a mapping with name and pattern")
    unknown = sorted(set(entry) - _PATTERN_KEYS)
    if unknown:
        raise CheckConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CheckConfigError(
            f"{where}: 'name' must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    where = f"pattern {name!r}"
    if name in seen:
        raise CheckConfigError(f"{where}: duplicate pattern name")
    seen.add(name)
    pattern = entry.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise CheckConfigError(f"{where}: 'pattern' must be a non-empty string")
    flags = entry.get("flags", "")
    if not isinstance(flags, str) or not set(flags) <= _FLAGS:
        raise CheckConfigError(f"{where}: 'flags' must be a combination of i, m, s")
    source = f"(?{''.join(sorted(set(flags)))}){pattern}" if flags else pattern
    try:
        compiled = re2.compile(source, _options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise CheckConfigError(f"{where}: invalid regular expression: {detail}") from None
    return NamedPattern(name=name, regex=compiled, max_width=_pattern_width(source))


def _char_spans(data: bytes, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte spans (non-overlapping, ascending) of UTF-8 ``data`` -> character spans."""
    out: list[tuple[int, int]] = []
    byte_pos = char_pos = 0
    for start, end in spans:
        char_pos += len(data[byte_pos:start].decode("utf-8", "surrogatepass"))
        char_start = char_pos
        char_pos += len(data[start:end].decode("utf-8", "surrogatepass"))
        byte_pos = end
        out.append((char_start, char_pos))
    return out


class RegexCheck:
    provider = "regex"

    def __init__(self, patterns: Sequence[NamedPattern], max_match_chars: int | None) -> None:
        self._patterns = tuple(patterns)
        self._max_match_chars = max_match_chars

    @property
    def pattern_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self._patterns)

    async def scan(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        return self.complete(pieces, ctx, self.analyze(pieces, ctx.stage))

    def complete(
        self, pieces: Sequence[TextPiece], ctx: CheckContext, analysis: list[Finding]
    ) -> CheckResult:
        return CheckResult(findings=list(analysis))

    def analyze(self, pieces: Sequence[TextPiece], stage: Stage) -> list[Finding]:
        findings: list[Finding] = []
        for piece in pieces:
            if not piece.text:
                continue
            # Matching str objects makes the re2 wrapper re-derive character offsets for every
            # match (quadratic on long texts with many matches), so match the UTF-8 bytes once
            # and convert offsets in a single forward pass.
            data = piece.text.encode("utf-8", "surrogatepass")
            ascii_only = len(data) == len(piece.text)
            for pat in self._patterns:
                spans = [m.span() for m in pat.regex.finditer(data)]
                if not ascii_only:
                    spans = _char_spans(data, spans)
                for start, end in spans:
                    if end > start:  # an empty match covers nothing worth reporting
                        findings.append(Finding(f"regex:{pat.name}", piece.index, start, end))
        return findings

    def max_span(self) -> int | None:
        widths: list[int] = []
        for pat in self._patterns:
            if pat.max_width is not None:
                widths.append(pat.max_width)
            elif self._max_match_chars is None:
                return None
            else:
                widths.append(self._max_match_chars)
        return max(widths, default=0)

    async def aclose(self) -> None:
        return None


def build(config: Mapping[str, Any], *, base_dir: str | None = None) -> RegexCheck:
    if not isinstance(config, Mapping):
        raise CheckConfigError("regex config must be a mapping with a 'patterns' list")
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise CheckConfigError(f"unknown key(s) {', '.join(map(str, unknown))}")
    entries = config.get("patterns")
    if not isinstance(entries, list) or not entries:
        raise CheckConfigError("'patterns' must be a non-empty list")
    max_chars = config.get("max_match_chars", DEFAULT_MAX_MATCH_CHARS)
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise CheckConfigError("'max_match_chars' must be a positive integer or null")
    seen: set[str] = set()
    patterns = [_parse_pattern(i, entry, seen) for i, entry in enumerate(entries)]
    return RegexCheck(patterns, max_chars)
