"""The secret detector: Gitleaks' detection steps over a rule set.

Steps, in Gitleaks' order (``detect/detect.go``):

1. keyword pre-filter: one pass over the lower-cased text (an RE2 set of every keyword, or an
   Aho-Corasick automaton for large keyword sets) picks the rules to run;
2. each picked rule's regex (RE2, so every match is linear time) finds matches;
3. the secret is the rule's ``secretGroup``, else the first non-empty group, else the match;
4. a rule with an ``entropy`` threshold drops secrets whose Shannon entropy is not above it;
5. global and rule allowlists (regexes on secret/match/line, stopwords, paths) drop findings;
6. a ``generic`` finding is dropped when a specific rule found a secret containing it on the
   same line;
7. base64/hex/percent segments are decoded (recursively) and the text rescanned.

Everything runs on UTF-8 bytes, as Gitleaks (Go strings) does, and offsets are converted to
``str`` indices at the end. Findings never carry the secret text: callers that are allowed to
see it slice the scanned text with the finding's span.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ahocorasick

from guardrails.secrets.allowlists import AllowlistSet, new_cache
from guardrails.secrets.config import (
    Allowlist,
    Rule,
    RuleSet,
    SecretsConfigError,
    builtin_ruleset,
    load_gitleaks_config,
)
from guardrails.secrets.decode import PassMap, decode_pass
from guardrails.secrets.patterns import Regex, RuleMatcher, keyword_set

DEFAULT_MAX_DECODE_DEPTH = 5
# Far more regex matches than any real prompt has; past this a scan stops (see ScanReport).
DEFAULT_MAX_MATCHES = 10_000
# Bytes of text around a decoded segment that a rescan looks at.
DECODE_CONTEXT = 2048
ALLOW_COMMENT = b"gitleaks:allow"
_log2 = math.log2


def shannon_entropy(secret: str) -> float:
    """Shannon entropy in bits, computed the way Gitleaks does.

    Gitleaks counts code points but divides by the UTF-8 byte length; for ASCII secrets this
    is the textbook formula, and matching Go keeps thresholds in existing configs meaningful.
    """
    if not secret:
        return 0.0
    chars = len(secret)
    size = chars if secret.isascii() else len(secret.encode("utf-8", "replace"))
    # -sum(c/n * log2(c/n)) == (chars * log2(n) - sum(c * log2(c))) / n
    weighted = sum([c * _log2(c) for c in Counter(secret).values()])
    return (chars * _log2(size) - weighted) / size


@dataclass(frozen=True, slots=True)
class SecretFinding:
    """A secret found in a text. Offsets are ``str`` indices into the scanned text.

    ``[start, end)`` is the secret (or, for a secret inside an encoded segment, the whole
    encoded segment); ``[match_start, match_end)`` is the rule's full match. Path-only rules
    (which fire on a file name) have ``start == end == -1``.
    """

    rule_id: str
    start: int
    end: int
    match_start: int
    match_end: int
    entropy: float
    line: int  # 0-based line of match_start
    encodings: tuple[str, ...] = ()  # e.g. ("base64",) when found inside decoded text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule_id": self.rule_id,
            "start": self.start,
            "end": self.end,
            "entropy": round(self.entropy, 4),
        }
        if self.encodings:
            out["decoded"] = list(self.encodings)
        return out


class _CompiledRule:
    __slots__ = (
        "id",
        "matcher",
        "regex",
        "secret_group",
        "entropy",
        "path",
        "allowlists",
        "generic",
        "skip_report",
        "required",
    )

    def __init__(self, rule: Rule, allowlists: AllowlistSet, source: str) -> None:
        where = f"{source}: rule {rule.id!r}"
        self.id = rule.id
        self.matcher: RuleMatcher | None = None
        self.regex: Regex | None = None
        if rule.regex is not None:
            self.regex = Regex(rule.regex, where)
            self.matcher = RuleMatcher(rule.regex, where)
            if rule.secret_group > self.regex.groups:
                raise SecretsConfigError(
                    f"{where}: secretGroup {rule.secret_group} but the regex has only "
                    f"{self.regex.groups} group(s)"
                )
        self.secret_group = rule.secret_group
        self.entropy = rule.entropy
        self.path = Regex(rule.path, f"{where} path", capture=False) if rule.path else None
        self.allowlists = allowlists
        self.generic = "generic" in rule.id.lower()
        self.skip_report = rule.skip_report
        self.required = rule.required

    def secret_span(self, match_b: bytes, core_at: int) -> tuple[int, int]:
        """Where the secret sits in the match.

        Like Gitleaks, groups come from matching the regex against the match text alone. A
        match anchored where the match (or, after an optional prefix, its core) starts gives
        the same groups as Gitleaks' unanchored search whenever it succeeds, at a fraction of
        the cost; the unanchored search remains the fallback."""
        assert self.regex is not None and self.matcher is not None
        if not self.regex.groups:
            return 0, len(match_b)
        spans = None
        core = self.matcher.core_groups
        if core is not None and 0 <= core_at < len(match_b):
            spans = core.group_spans(match_b, at=core_at)
        if spans is None:
            spans = self.regex.group_spans(match_b, at=0) or self.regex.group_spans(match_b)
        if spans is None:
            return 0, len(match_b)
        if self.secret_group:
            start, end = spans[self.secret_group]
            return (start, end) if start >= 0 else (0, 0)
        for start, end in spans[1:]:
            if end > start >= 0:
                return start, end
        return 0, len(match_b)


@dataclass(slots=True)
class _Hit:
    rule: _CompiledRule
    start: int  # byte offsets into the original text
    end: int
    match_start: int
    match_end: int
    secret: str
    entropy: float
    encodings: tuple[str, ...]
    line: int = 0
    column: int = 0


class SecretScanner:
    """Scans text for secrets with a rule set. Thread-safe after construction."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        max_decode_depth: int = DEFAULT_MAX_DECODE_DEPTH,
        honor_allow_comments: bool = False,
        max_matches: int = DEFAULT_MAX_MATCHES,
    ) -> None:
        if max_decode_depth < 0:
            raise SecretsConfigError("max_decode_depth must be >= 0")
        if max_matches < 1:
            raise SecretsConfigError("max_matches must be >= 1")
        self.ruleset = ruleset
        self.max_decode_depth = max_decode_depth
        self.max_matches = max_matches
        # Off by default: in a guardrail, "gitleaks:allow" in a prompt or a model's answer
        # would let anyone switch redaction off.
        self.honor_allow_comments = honor_allow_comments
        source = ruleset.source
        shared: list[tuple[Allowlist, str]] = []
        targeted: dict[str, list[tuple[Allowlist, str]]] = {}
        for i, allowlist in enumerate(ruleset.allowlists):
            entry = (allowlist, f"{source}: global allowlist #{i + 1}")
            if not allowlist.target_rules:
                shared.append(entry)
            for rule_id in allowlist.target_rules:
                targeted.setdefault(rule_id, []).append(entry)
        cache = new_cache()
        self._rules = []
        for rule in ruleset.rules:
            own = [
                (a, f"{source}: rule {rule.id!r} allowlist #{i + 1}")
                for i, a in enumerate(rule.allowlists)
            ]
            allowlists = AllowlistSet([*shared, *targeted.get(rule.id, ()), *own], cache)
            self._rules.append(_CompiledRule(rule, allowlists, source))
        self._always: list[int] = []
        self._keyword_rules: list[list[int]] = []
        keyword_ids: dict[str, int] = {}
        for index, rule in enumerate(ruleset.rules):
            if not rule.keywords:
                self._always.append(index)
            for keyword in rule.keywords:
                if keyword not in keyword_ids:
                    keyword_ids[keyword] = len(keyword_ids)
                    self._keyword_rules.append([])
                self._keyword_rules[keyword_ids[keyword]].append(index)
        self._has_keywords = bool(keyword_ids)
        # One pre-filter: the RE2 set, or the automaton where the set cannot stand in for it
        self._keyword_set = keyword_set(list(keyword_ids))
        self._automaton: Any = None
        if self._has_keywords and self._keyword_set is None:
            self._automaton = ahocorasick.Automaton()
            for keyword, keyword_id in keyword_ids.items():
                self._automaton.add_word(keyword, keyword_id)
            self._automaton.make_automaton()
        self._has_required = any(r.required for r in self._rules)

    @classmethod
    def builtin(cls, **kwargs: Any) -> SecretScanner:
        return cls(builtin_ruleset(), **kwargs)

    @classmethod
    def from_gitleaks_config(cls, path: str | Path, **kwargs: Any) -> SecretScanner:
        return cls(load_gitleaks_config(path), **kwargs)

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self._rules]

    # ------------------------------------------------------------------------------------

    def _triggered(self, lowered: str) -> list[int]:
        if not self._has_keywords:
            return list(self._always)
        found: Iterable[int]
        if self._keyword_set is not None:
            # Which keywords occur anywhere, in one DFA pass over the UTF-8 bytes (a fifth of
            # the Aho-Corasick iteration's time on 1 KB); the same set (see patterns.keyword_set).
            found = self._keyword_set.Match(lowered.encode("utf-8"))
        else:
            found = set()
            total = len(self._keyword_rules)
            for _, keyword_id in self._automaton.iter(lowered):
                found.add(keyword_id)
                if len(found) == total:
                    break
        picked = set(self._always)
        for keyword_id in found:
            picked.update(self._keyword_rules[keyword_id])
        return sorted(picked)

    def scan(self, text: str, *, path: str | None = None) -> list[SecretFinding]:
        """Find secrets in ``text`` (see ``scan_report``)."""
        return self.scan_report(text, path=path).findings

    def scan_report(self, text: str, *, path: str | None = None) -> ScanReport:
        """Find secrets in ``text``.

        ``path`` is an optional file name for Gitleaks compatibility: with it, rules and
        allowlists that have ``path`` patterns behave as in Gitleaks. Prompts have no path, so
        path-only rules never fire and path restrictions of regex rules are ignored.
        """
        if not text and path is None:
            return ScanReport([])
        text = _without_lone_surrogates(text)
        raw = text.encode("utf-8")
        state = _ScanState(path, self.max_matches)
        if path is not None:
            self._path_only_hits(path, state.hits)
        current = raw
        windows = [(0, len(raw))]
        try:
            for depth in range(self.max_decode_depth + 1):
                for start, end in windows:
                    lowered = (
                        text.lower()
                        if depth == 0
                        else current[start:end].decode("utf-8", "replace").lower()
                    )
                    for index in self._triggered(lowered):
                        rule = self._rules[index]
                        if rule.matcher is None:
                            continue
                        if path is not None and rule.path is not None:
                            if not rule.path.search(path.encode("utf-8")):
                                continue
                        self._run_rule(rule, current, start, end, state)
                if depth == self.max_decode_depth:
                    break
                current, pass_map = decode_pass(current, state.maps[-1] if state.maps else None)
                if not pass_map.segments:
                    break
                state.maps.append(pass_map)
                windows = _windows_around(pass_map, len(current))
        except _LimitReached:
            state.truncated = True
        if not state.hits:
            return ScanReport([], truncated=state.truncated)
        return ScanReport(self._finish(state.hits, raw, text), truncated=state.truncated)

    def _path_only_hits(self, path: str, hits: list[_Hit]) -> None:
        for rule in self._rules:
            if rule.matcher is None and rule.path is not None:
                if rule.path.search(path.encode("utf-8")):
                    hits.append(_Hit(rule, -1, -1, -1, -1, "", 0.0, ()))

    def _run_rule(
        self, rule: _CompiledRule, text: bytes, w_start: int, w_end: int, state: _ScanState
    ) -> None:
        """Run one rule over ``text[w_start:w_end]`` (the whole text on the first pass)."""
        maps = state.maps
        last_map = maps[-1] if maps else None
        assert rule.matcher is not None
        chunk = text if (w_start, w_end) == (0, len(text)) else text[w_start:w_end]
        for rel_start, rel_end, rel_core in rule.matcher.spans(chunk):
            state.matches += 1
            if state.matches > state.max_matches:
                raise _LimitReached
            m_start, m_end = rel_start + w_start, rel_end + w_start
            # Gitleaks trims newlines off both ends of a match before using it
            while m_start < m_end and text[m_start] == 0x0A:
                m_start += 1
            while m_end > m_start and text[m_end - 1] == 0x0A:
                m_end -= 1
            if m_start == m_end:
                continue
            segment = None
            if last_map is not None:
                segment = last_map.overlapping(m_start, m_end)
                if segment is None:
                    continue  # not in freshly decoded text: an earlier pass saw it
            match_b = text[m_start:m_end]

            def line(start: int = m_start, end: int = m_end) -> bytes:
                return text[text.rfind(b"\n", 0, start) + 1 : _line_end(text, end)]

            if self.honor_allow_comments and ALLOW_COMMENT in line():
                continue
            s_off, e_off = rule.secret_span(match_b, rel_core + w_start - m_start)
            if s_off == e_off:
                continue  # the secret group did not take part in the match
            secret_b = match_b[s_off:e_off]
            secret = secret_b.decode("utf-8", "replace")
            entropy = shannon_entropy(secret)
            if rule.entropy and entropy <= rule.entropy:
                continue
            if rule.allowlists.allows(secret, secret_b, match_b, line, state.path_b):
                continue
            span = (m_start + s_off, m_start + e_off)
            match_span = (m_start, m_end)
            for pass_map in reversed(maps):
                span = pass_map.to_previous(*span)
                match_span = pass_map.to_previous(*match_span)
            encodings = segment.encodings if segment is not None else ()
            state.hits.append(_Hit(rule, span[0], span[1], *match_span, secret, entropy, encodings))

    def _finish(self, hits: list[_Hit], raw: bytes, text: str) -> list[SecretFinding]:
        located = [h for h in hits if h.match_start >= 0]
        _set_lines(located, raw)
        hits = _dedupe_generic(hits)
        if self._has_required:
            hits = _apply_required(hits)
        hits = [h for h in hits if not h.rule.skip_report]
        # A secret found in plain text can turn up again in a decoding pass when it touches a
        # decoded segment; keep the first (plainest) sighting.
        seen: set[tuple[str, int, int]] = set()
        unique = []
        for h in hits:
            key = (h.rule.id, h.start, h.end)
            if key not in seen:
                seen.add(key)
                unique.append(h)
        hits = unique
        to_char = _offset_converter(raw, text, hits)
        findings = {
            SecretFinding(
                rule_id=h.rule.id,
                start=to_char(h.start),
                end=to_char(h.end),
                match_start=to_char(h.match_start),
                match_end=to_char(h.match_end),
                entropy=h.entropy,
                line=h.line if h.match_start >= 0 else -1,
                encodings=h.encodings,
            )
            for h in hits
        }
        return sorted(findings, key=lambda f: (f.start, f.end, f.rule_id, f.match_start))


class _LimitReached(Exception):
    """More regex matches than ``max_matches``: the scan stops and reports truncation."""


@dataclass(slots=True)
class _ScanState:
    path: str | None
    max_matches: int
    hits: list[_Hit] = field(default_factory=list)
    maps: list[PassMap] = field(default_factory=list)
    matches: int = 0
    truncated: bool = False
    path_b: bytes | None = None

    def __post_init__(self) -> None:
        self.path_b = self.path.encode("utf-8") if self.path is not None else None


@dataclass(frozen=True, slots=True)
class ScanReport:
    """Findings of one scan. ``truncated`` means the text had more candidate matches than
    the scanner's ``max_matches`` and was not scanned to the end: treat the whole text as
    suspect (the check reports it as a finding without a span)."""

    findings: list[SecretFinding]
    truncated: bool = False


def _windows_around(pass_map: PassMap, size: int) -> list[tuple[int, int]]:
    """Where a rescan after decoding must look: each decoded segment plus a margin of
    context on both sides (assignment names, quotes), merged where they touch."""
    windows: list[tuple[int, int]] = []
    for seg in pass_map.segments:
        start = max(0, seg.dec_start - DECODE_CONTEXT)
        end = min(size, seg.dec_end + DECODE_CONTEXT)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(windows[-1][1], end))
        else:
            windows.append((start, end))
    return windows


def _line_end(text: bytes, end: int) -> int:
    newline = text.find(b"\n", end)
    return len(text) if newline < 0 else newline


def _set_lines(hits: list[_Hit], raw: bytes) -> None:
    """Line and column of each hit's match start, in one pass over the text."""
    line = 0
    line_start = 0
    pos = 0
    for hit in sorted(hits, key=lambda h: h.match_start):
        target = hit.match_start
        newlines = raw.count(b"\n", pos, target)
        if newlines:
            line += newlines
            line_start = raw.rfind(b"\n", pos, target) + 1
        hit.line, hit.column = line, target - line_start
        pos = target


def _dedupe_generic(hits: list[_Hit]) -> list[_Hit]:
    specific: dict[int, list[str]] = {}
    for hit in hits:
        if not hit.rule.generic:
            specific.setdefault(hit.line, []).append(hit.secret)
    if not specific or all(not h.rule.generic for h in hits):
        return hits
    return [
        hit
        for hit in hits
        if not (
            hit.rule.generic and any(hit.secret in secret for secret in specific.get(hit.line, ()))
        )
    ]


def _apply_required(hits: list[_Hit]) -> list[_Hit]:
    by_rule: dict[str, list[_Hit]] = {}
    for hit in hits:
        by_rule.setdefault(hit.rule.id, []).append(hit)

    def near(primary: _Hit, other: _Hit, lines: int | None, columns: int | None) -> bool:
        if other is primary:
            return False
        if lines is not None and abs(other.line - primary.line) > lines:
            return False
        return columns is None or abs(other.column - primary.column) <= columns

    kept = []
    for hit in hits:
        if all(
            any(
                near(hit, other, req.within_lines, req.within_columns)
                for other in by_rule.get(req.rule_id, ())
            )
            for req in hit.rule.required
        ):
            kept.append(hit)
    return kept


def _offset_converter(raw: bytes, text: str, hits: Iterable[_Hit]) -> Callable[[int], int]:
    if len(raw) == len(text):  # ASCII: byte and str offsets coincide
        return lambda offset: offset
    offsets = sorted(
        {o for h in hits for o in (h.start, h.end, h.match_start, h.match_end) if o >= 0}
    )
    table: dict[int, int] = {-1: -1}
    chars = 0
    previous = 0
    for offset in offsets:
        chars += len(raw[previous:offset].decode("utf-8", "replace"))
        table[offset] = chars
        previous = offset
    return table.__getitem__


def _without_lone_surrogates(text: str) -> str:
    """Lone surrogates (possible in JSON input) cannot be UTF-8 encoded; U+FFFD keeps the
    length, so offsets stay valid for the caller's original string."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def non_overlapping(findings: Sequence[SecretFinding]) -> list[SecretFinding]:
    """Merge findings whose spans overlap, for redaction.

    Each group of overlapping spans becomes one finding covering their union, named after the
    group's widest finding (the earliest on ties). Path-only findings are kept as they are.
    """
    spanless = [f for f in findings if f.start < 0]
    spanned = sorted((f for f in findings if f.start >= 0), key=lambda f: (f.start, -f.end))
    merged: list[SecretFinding] = []
    group: list[SecretFinding] = []
    group_end = -1

    def flush() -> None:
        if not group:
            return
        widest = max(group, key=lambda f: f.end - f.start)
        start = min(f.start for f in group)
        merged.append(
            SecretFinding(
                rule_id=widest.rule_id,
                start=start,
                end=group_end,
                match_start=min(f.match_start for f in group),
                match_end=max(f.match_end for f in group),
                entropy=widest.entropy,
                line=widest.line,
                encodings=widest.encodings,
            )
        )

    for finding in spanned:
        if group and finding.start < group_end:
            group.append(finding)
            group_end = max(group_end, finding.end)
            continue
        flush()
        group = [finding]
        group_end = finding.end
    flush()
    return spanless + merged
