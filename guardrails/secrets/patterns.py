"""RE2 regexes for the detector: compilation with clear errors, and fast match location.

Every pattern is compiled by RE2 (``google-re2``), whose matching time is linear in the text
whatever the pattern, so no rule file can make a scan blow up. Patterns are compiled as bytes
(UTF-8), like Go's regexp, which Gitleaks uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import re2

from guardrails.secrets.config import SecretsConfigError

# RE2's default 8 MiB budget makes the DFA give up on some large Gitleaks patterns and fall
# back to the slower (still linear) NFA; a larger budget keeps them on the DFA.
_MAX_MEM = 64 << 20
_UNANCHORED = re2._Anchor.UNANCHORED
_ANCHOR_START = re2._Anchor.ANCHOR_START
_NO_MATCH = (-1, -1)
# Keyword bytes up to which the pre-filter is an RE2 set (see keyword_set); the built-in pack
# has under 600. The set's DFA has at most this many states plus one, of at most ~2 KB each
# (9 MB), far inside RE2's memory budget, so its search never gives up.
KEYWORD_SET_MAX_BYTES = 4096
# An optional leading (?flags), then a bracket class repeated {0,N} lazily.
_PREFIX_HEAD = re2.compile(r"^(\(\?[A-Za-z]+\))?(\[(?:\\.|[^\]\\])+\])\{0,(\d{1,3})\}\?")


class Regex:
    """A compiled RE2 pattern with allocation-light search helpers.

    The helpers call the extension object directly: ``re2``'s Python-level ``search`` builds a
    generator and a match object per call, which dominated scans of match-dense text.
    """

    __slots__ = ("pattern", "groups", "_re", "_raw")

    def __init__(self, pattern: str, where: str, *, capture: bool = True) -> None:
        options = re2.Options()
        options.max_mem = _MAX_MEM
        options.log_errors = False
        options.never_capture = not capture
        try:
            self._re: Any = re2.compile(pattern.encode("utf-8"), options)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise SecretsConfigError(f"{where}: invalid regex {pattern!r}: {reason}") from exc
        self.pattern = pattern
        self.groups: int = self._re.groups
        self._raw: Any = self._re._regexp

    def span(self, text: bytes, pos: int = 0) -> tuple[int, int] | None:
        """The leftmost match at or after ``pos`` (the whole text is context for ``\\b``)."""
        first = self._raw.Match(_UNANCHORED, text, pos, len(text))[0]
        return None if first[0] < 0 else first

    def group_spans(self, text: bytes, at: int | None = None) -> list[tuple[int, int]] | None:
        """Spans of the whole match and every group (``(-1, -1)`` when a group is unset).

        With ``at``, the match must start there (much cheaper than searching)."""
        if at is None:
            spans: list[tuple[int, int]] = self._raw.Match(_UNANCHORED, text, 0, len(text))
        else:
            spans = self._raw.Match(_ANCHOR_START, text, at, len(text))
        return None if spans[0] == _NO_MATCH else spans

    def search(self, text: bytes) -> bool:
        return self._raw.Match(_UNANCHORED, text, 0, len(text))[0][0] >= 0

    def spans(self, text: bytes) -> Iterator[tuple[int, int]]:
        """Non-overlapping matches left to right, as ``finditer`` gives them."""
        pos = 0
        size = len(text)
        while pos <= size:
            found = self.span(text, pos)
            if found is None:
                return
            yield found
            pos = found[1] if found[1] > found[0] else found[1] + 1


def compile_any(patterns: Sequence[str], where: str) -> Regex:
    """One regex that matches where any of ``patterns`` does: one pass instead of many."""
    for i, pattern in enumerate(patterns):
        Regex(pattern, f"{where} regex #{i + 1}", capture=False)  # names the culprit
    if len(patterns) == 1:
        return Regex(patterns[0], where, capture=False)
    return Regex("|".join(f"(?:{p})" for p in patterns), where, capture=False)


def lazy_prefix(pattern: str) -> tuple[str, int, str, str] | None:
    """Split ``(?flags)[class]{0,N}?rest`` into ``((?flags)rest, N, (?flags), [class])``.

    Gitleaks' generated rules start with such an optional lazy prefix (``[\\w.-]{0,50}?``).
    It only moves where a match starts, yet it makes RE2's DFA track every possible start and
    run several times slower. ``RuleMatcher`` finds ``rest`` and extends it backwards instead.
    """
    head = _PREFIX_HEAD.match(pattern)
    if head is None:
        return None
    rest = pattern[head.end() :]
    if not rest or rest[0] in "*+?{" or has_top_level_alternation(rest):
        return None
    flags = head.group(1) or ""
    return flags + rest, int(head.group(3)), flags, head.group(2)


def has_top_level_alternation(pattern: str) -> bool:
    """Whether ``pattern`` has a ``|`` outside any group (so a prefix would bind to one
    branch only)."""
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i):
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


class RuleMatcher:
    """Finds a rule regex's matches; groups are extracted separately (``Regex.group_spans``).

    Matches are located with capture groups switched off, which lets RE2 skip its submatch
    engines. For patterns with a lazy optional prefix the core is searched and each hit is
    extended backwards over the prefix: the leftmost full match starts at most N characters
    before the leftmost core match (else its core would start earlier), and its lazy prefix
    stops at that core match, so the result equals the full regex's ``finditer``.
    """

    __slots__ = ("_plain", "_core", "_prefix_max", "_prefix_run", "core_groups")

    def __init__(self, pattern: str, where: str) -> None:
        split = lazy_prefix(pattern)
        #: the core with its groups (the prefix has none), for extracting the secret
        self.core_groups: Regex | None = None
        self._plain: Regex | None = None
        self._core: Regex | None = None
        self._prefix_max = 0
        self._prefix_run: Regex | None = None
        if split is None:
            self._plain = Regex(pattern, where, capture=False)
            return
        core, self._prefix_max, flags, prefix_class = split
        self._core = Regex(core, where, capture=False)
        self.core_groups = Regex(core, where)
        # longest run of prefix characters (at most N) that ends the window
        self._prefix_run = Regex(
            f"{flags}{prefix_class}{{0,{self._prefix_max}}}\\z", where, capture=False
        )

    def spans(self, text: bytes) -> Iterator[tuple[int, int, int]]:
        """``(start, end, core_start)`` of each match; ``core_start`` is where the part after
        the optional prefix begins (``start`` when there is no prefix)."""
        if self._plain is not None:
            for start, end in self._plain.spans(text):
                yield start, end, start
            return
        assert self._core is not None and self._prefix_run is not None
        pos = 0
        size = len(text)
        while pos <= size:
            core = self._core.span(text, pos)
            if core is None:
                return
            core_start, end = core
            start = core_start
            window = max(pos, start - 4 * self._prefix_max)  # N characters, 4 bytes at most
            run = self._prefix_run.span(text[window:start])
            if run is not None:
                start = window + run[0]
            yield start, end, core_start
            pos = end if end > start else end + 1


def keyword_set(keywords: Sequence[str]) -> Any:
    """An RE2 set of the keywords as literals, or None to keep the Aho-Corasick automaton.

    ``Match`` on a lower-cased text's UTF-8 bytes gives the index of every keyword occurring
    anywhere in it, which is the set the automaton's iteration collects: UTF-8 is
    self-synchronising, so a keyword's bytes occur in the text's bytes exactly where the
    keyword occurs in the text. RE2 reports an exhausted DFA budget as "no match", which would
    silently skip rules; so sets whose DFA could come near the budget (its states are at most
    the keywords' bytes plus one) stay on the automaton, and so do keywords that are not valid
    Unicode (the automaton never matches them either, but they cannot be encoded).
    """
    try:
        encoded = [k.encode("utf-8") for k in keywords]
    except UnicodeEncodeError:
        return None
    if not encoded or sum(len(k) for k in encoded) > KEYWORD_SET_MAX_BYTES:
        return None
    options = re2.Options()
    options.literal = True
    options.never_capture = True
    options.max_mem = _MAX_MEM
    options.log_errors = False
    literals = re2.Set.SearchSet(options)
    try:
        for index, keyword in enumerate(encoded):
            if literals.Add(keyword) != index:
                return None
        literals.Compile()
    except re2.error:
        return None
    return literals._set  # the extension object: Match returns a list, never None
