"""The secret detector: Gitleaks' detection steps over a rule set.

Steps, in Gitleaks' order (``detect/detect.go``):

1. keyword pre-filter: one Aho-Corasick pass over the lower-cased text picks the rules to run;
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ahocorasick
import re2

from guardrails.secrets.config import (
    Allowlist,
    Rule,
    RuleSet,
    SecretsConfigError,
    builtin_ruleset,
    load_gitleaks_config,
)
from guardrails.secrets.decode import PassMap, decode_pass

DEFAULT_MAX_DECODE_DEPTH = 5
ALLOW_COMMENT = b"gitleaks:allow"
# RE2's default 8 MiB budget makes the DFA give up on some large Gitleaks patterns and fall
# back to the (much slower, still linear) NFA; a larger budget keeps them on the DFA.
_RE2_MAX_MEM = 64 << 20
_SMALL_STOPWORD_LIST = 8
# an optional leading (?flags), then a bracket class repeated {0,N} lazily
_PREFIX_HEAD = re2.compile(r"^(\(\?[A-Za-z]+\))?(\[(?:\\.|[^\]\\])+\])\{0,(\d{1,3})\}\?")


def shannon_entropy(secret: str) -> float:
    """Shannon entropy in bits, computed the way Gitleaks does.

    Gitleaks counts code points but divides by the UTF-8 byte length; for ASCII secrets this
    is the textbook formula, and matching Go keeps thresholds in existing configs meaningful.
    """
    if not secret:
        return 0.0
    length = len(secret) if secret.isascii() else len(secret.encode("utf-8", "replace"))
    inv = 1.0 / length
    entropy = 0.0
    for count in Counter(secret).values():
        freq = count * inv
        entropy -= freq * math.log2(freq)
    return entropy


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


def _compile(pattern: str, where: str, *, capture: bool = True) -> Any:
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    options.never_capture = not capture
    try:
        return re2.compile(pattern.encode("utf-8"), options)
    except re2.error as exc:
        raise SecretsConfigError(f"{where}: invalid regex {pattern!r}: {exc}") from exc


def _lazy_prefix(pattern: str) -> tuple[str, int, str, str] | None:
    """Split ``(?flags)[class]{0,N}?rest`` into ``((?flags)rest, N, (?flags), [class])``.

    Gitleaks' generated rules start with such an optional lazy prefix (``[\\w.-]{0,50}?``).
    It only moves where a match starts, yet it makes RE2's DFA track every possible start
    and run several times slower. Scanning for ``rest`` first and then matching the full
    regex from just before each hit gives the same matches (see ``_CompiledRule.spans``).
    """
    head = _PREFIX_HEAD.match(pattern)
    if head is None:
        return None
    rest = pattern[head.end() :]
    if not rest or rest[0] in "*+?{" or _has_top_level_alternation(rest):
        return None
    flags = head.group(1) or ""
    return flags + rest, int(head.group(3)), flags, head.group(2)


def _has_top_level_alternation(pattern: str) -> bool:
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            if ch == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                i = end + 2 if end >= 0 else i + 1
                continue
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            if pattern.startswith("^", i + 1):
                i += 1
            if pattern.startswith("]", i + 1):
                i += 1  # a leading ']' is a literal
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return True
        i += 1
    return False


def _compile_any(patterns: Sequence[str], where: str) -> Any:
    """One regex matching where any of ``patterns`` matches (one pass instead of many)."""
    for i, pattern in enumerate(patterns):
        _compile(pattern, f"{where} regex #{i + 1}")  # validates and names the culprit
    if len(patterns) == 1:
        return _compile(patterns[0], where)
    return _compile("|".join(f"(?:{p})" for p in patterns), where)


class _CompiledAllowlist:
    __slots__ = ("match_all", "target", "regex", "paths", "has_commits", "_words", "_trie")

    def __init__(self, allowlist: Allowlist, where: str) -> None:
        self.match_all = allowlist.match_all
        self.target = allowlist.regex_target
        self.regex = _compile_any(allowlist.regexes, where) if allowlist.regexes else None
        self.paths = _compile_any(allowlist.paths, f"{where} paths") if allowlist.paths else None
        self.has_commits = bool(allowlist.commits)
        self._words: tuple[str, ...] = ()
        self._trie: Any = None
        if len(allowlist.stopwords) > _SMALL_STOPWORD_LIST:
            self._trie = ahocorasick.Automaton()
            for word in allowlist.stopwords:
                self._trie.add_word(word, word)
            self._trie.make_automaton()
        else:
            self._words = allowlist.stopwords

    @property
    def has_stopwords(self) -> bool:
        return bool(self._words) or self._trie is not None

    def has_stopword(self, secret: str) -> bool:
        lowered = secret.lower()
        if self._trie is not None:
            for _ in self._trie.iter(lowered):
                return True
            return False
        return any(word in lowered for word in self._words)

    def allows(
        self,
        secret: str,
        secret_b: bytes,
        match_b: bytes,
        line: Callable[[], bytes],
        path: str | None,
    ) -> bool:
        def regex_hit() -> bool:
            target = secret_b
            if self.target == "match":
                target = match_b
            elif self.target == "line":
                target = line()
            return self.regex.search(target) is not None

        path_hit = (
            self.paths is not None
            and path is not None
            and self.paths.search(path.encode("utf-8")) is not None
        )
        if not self.match_all:
            return (
                path_hit
                or (self.regex is not None and regex_hit())
                or (self.has_stopwords and self.has_stopword(secret))
            )
        # AND: every criterion the allowlist sets must hold. Scanned texts have no commit.
        if self.has_commits or (self.paths is not None and not path_hit):
            return False
        if self.regex is not None and not regex_hit():
            return False
        return not (self.has_stopwords and not self.has_stopword(secret))


class _CompiledRule:
    __slots__ = (
        "id",
        "regex",
        "locate",
        "core",
        "prefix_max",
        "prefix_run",
        "groups",
        "secret_group",
        "entropy",
        "path",
        "allowlists",
        "generic",
        "skip_report",
        "required",
    )

    def __init__(self, rule: Rule, extra_allowlists: Sequence[Allowlist], source: str) -> None:
        where = f"{source}: rule {rule.id!r}"
        self.id = rule.id
        self.regex = _compile(rule.regex, where) if rule.regex is not None else None
        self.groups = self.regex.groups if self.regex is not None else 0
        # Matches are located without capture groups (cheaper); groups are extracted from
        # the match text afterwards, as Gitleaks does.
        self.locate: Any = None
        self.core: Any = None
        self.prefix_max = 0
        self.prefix_run: Any = None
        if rule.regex is not None:
            split = _lazy_prefix(rule.regex)
            if split is None:
                self.locate = _compile(rule.regex, where, capture=False)
            else:
                core, self.prefix_max, flags, prefix_class = split
                self.core = _compile(core, where, capture=False)
                self.prefix_run = _compile(
                    f"{flags}{prefix_class}{{0,{self.prefix_max}}}\\z", where, capture=False
                )
        if rule.secret_group > self.groups:
            raise SecretsConfigError(
                f"{where}: secretGroup {rule.secret_group} but the regex has only "
                f"{self.groups} group(s)"
            )
        self.secret_group = rule.secret_group
        self.entropy = rule.entropy
        self.path = _compile(rule.path, f"{where} path") if rule.path is not None else None
        self.allowlists = [
            _CompiledAllowlist(a, f"{where} allowlist #{i + 1}")
            for i, a in enumerate((*rule.allowlists, *extra_allowlists))
        ]
        self.generic = "generic" in rule.id.lower()
        self.skip_report = rule.skip_report
        self.required = rule.required

    def spans(self, text: bytes) -> Iterator[tuple[int, int]]:
        """The regex's matches, left to right, exactly as ``finditer`` would give them."""
        if self.core is None:
            for match in self.locate.finditer(text):
                yield match.span()
            return
        # The leftmost full match starts at most prefix_max characters before the leftmost
        # core match, and the lazy prefix stops at that core match (no core match starts
        # earlier), so the full match is the core match extended back over the longest run
        # of prefix characters, limited to prefix_max and to the previous match's end.
        pos = 0
        size = len(text)
        while pos <= size:
            core = self.core.search(text, pos)
            if core is None:
                return
            start, end = core.span()
            window = max(pos, start - 4 * self.prefix_max)  # prefix_max chars, 4 bytes max
            run = self.prefix_run.search(text[window:start])
            if run is not None:
                start = window + run.start()
            yield start, end
            pos = end if end > start else end + 1


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
    ) -> None:
        if max_decode_depth < 0:
            raise SecretsConfigError("max_decode_depth must be >= 0")
        self.ruleset = ruleset
        self.max_decode_depth = max_decode_depth
        # Off by default: in a guardrail, "gitleaks:allow" in a prompt or a model's answer
        # would let anyone switch redaction off.
        self.honor_allow_comments = honor_allow_comments
        targeted: dict[str, list[Allowlist]] = {}
        self._global: list[_CompiledAllowlist] = []
        for i, allowlist in enumerate(ruleset.allowlists):
            if allowlist.target_rules:
                for rule_id in allowlist.target_rules:
                    targeted.setdefault(rule_id, []).append(allowlist)
            else:
                where = f"{ruleset.source}: global allowlist #{i + 1}"
                self._global.append(_CompiledAllowlist(allowlist, where))
        self._rules = [
            _CompiledRule(r, targeted.get(r.id, ()), ruleset.source) for r in ruleset.rules
        ]
        self._always: list[int] = []
        self._keyword_rules: list[list[int]] = []
        self._automaton: Any = ahocorasick.Automaton()
        keyword_ids: dict[str, int] = {}
        for index, rule in enumerate(ruleset.rules):
            if not rule.keywords:
                self._always.append(index)
            for keyword in rule.keywords:
                if keyword not in keyword_ids:
                    keyword_ids[keyword] = len(keyword_ids)
                    self._keyword_rules.append([])
                    self._automaton.add_word(keyword, keyword_ids[keyword])
                self._keyword_rules[keyword_ids[keyword]].append(index)
        self._has_keywords = bool(keyword_ids)
        if self._has_keywords:
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
        found: set[int] = set()
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
        """Find secrets in ``text``.

        ``path`` is an optional file name for Gitleaks compatibility: with it, rules and
        allowlists that have ``path`` patterns behave as in Gitleaks. Prompts have no path, so
        path-only rules never fire and path restrictions of regex rules are ignored.
        """
        if not text and path is None:
            return []
        text = _without_lone_surrogates(text)
        raw = text.encode("utf-8")
        hits: list[_Hit] = []
        if path is not None:
            self._path_only_hits(path, hits)
        current = raw
        maps: list[PassMap] = []
        lowered = text.lower()
        for depth in range(self.max_decode_depth + 1):
            for index in self._triggered(lowered):
                rule = self._rules[index]
                if rule.regex is None:
                    continue
                if path is not None and rule.path is not None:
                    if rule.path.search(path.encode("utf-8")) is None:
                        continue
                self._run_rule(rule, current, maps, path, hits)
            if depth == self.max_decode_depth:
                break
            current, pass_map = decode_pass(current, maps[-1] if maps else None)
            if not pass_map.segments:
                break
            maps.append(pass_map)
            lowered = current.decode("utf-8", "replace").lower()
        if not hits:
            return []
        return self._finish(hits, raw, text)

    def _path_only_hits(self, path: str, hits: list[_Hit]) -> None:
        for rule in self._rules:
            if rule.regex is None and rule.path is not None:
                if rule.path.search(path.encode("utf-8")) is not None:
                    hits.append(_Hit(rule, -1, -1, -1, -1, "", 0.0, ()))

    def _run_rule(
        self,
        rule: _CompiledRule,
        text: bytes,
        maps: list[PassMap],
        path: str | None,
        hits: list[_Hit],
    ) -> None:
        last_map = maps[-1] if maps else None
        for m_start, m_end in rule.spans(text):
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
            s_off, e_off = _secret_span(rule, match_b)
            if s_off == e_off:
                continue  # the secret group did not take part in the match
            secret_b = match_b[s_off:e_off]
            secret = secret_b.decode("utf-8", "replace")
            entropy = shannon_entropy(secret)
            if rule.entropy and entropy <= rule.entropy:
                continue
            if any(a.allows(secret, secret_b, match_b, line, path) for a in self._global):
                continue
            if any(a.allows(secret, secret_b, match_b, line, path) for a in rule.allowlists):
                continue
            span = (m_start + s_off, m_start + e_off)
            match_span = (m_start, m_end)
            for pass_map in reversed(maps):
                span = pass_map.to_previous(*span)
                match_span = pass_map.to_previous(*match_span)
            encodings = segment.encodings if segment is not None else ()
            hits.append(_Hit(rule, span[0], span[1], *match_span, secret, entropy, encodings))

    def _finish(self, hits: list[_Hit], raw: bytes, text: str) -> list[SecretFinding]:
        located = [h for h in hits if h.match_start >= 0]
        _set_lines(located, raw)
        hits = _dedupe_generic(hits)
        if self._has_required:
            hits = _apply_required(hits)
        hits = [h for h in hits if not h.rule.skip_report]
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


def _line_end(text: bytes, end: int) -> int:
    newline = text.find(b"\n", end)
    return len(text) if newline < 0 else newline


def _secret_span(rule: _CompiledRule, match_b: bytes) -> tuple[int, int]:
    """Where the secret sits inside the match. Like Gitleaks, groups come from re-running the
    regex on the match text alone."""
    if not rule.groups:
        return 0, len(match_b)
    sub = rule.regex.search(match_b)
    if sub is None:
        return 0, len(match_b)
    if rule.secret_group:
        start, end = sub.span(rule.secret_group)
        return (start, end) if start >= 0 else (0, 0)
    for group in range(1, rule.groups + 1):
        start, end = sub.span(group)
        if start >= 0 and end > start:
            return start, end
    return 0, len(match_b)


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
            hit.rule.generic
            and any(hit.secret in secret for secret in specific.get(hit.line, ()))
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
