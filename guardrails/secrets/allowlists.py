"""Allowlists: conditions under which a candidate secret is not reported.

A rule is checked against the global allowlists and its own. All OR-condition allowlists that
apply to a rule are merged into one regex per target (secret, match, line) plus one stopword
trie, so a candidate costs a few RE2 calls however many allowlists there are. AND-condition
allowlists are checked one by one, as every criterion they set must hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ahocorasick

from guardrails.secrets.config import Allowlist
from guardrails.secrets.patterns import Regex, compile_any

_SMALL_STOPWORD_LIST = 8

LineFn = Callable[[], bytes]


class Stopwords:
    """Case-insensitive substring test against many words at once."""

    __slots__ = ("_words", "_trie")

    def __init__(self, words: Iterable[str]) -> None:
        unique = tuple(dict.fromkeys(w.lower() for w in words if w))
        self._words: tuple[str, ...] = ()
        self._trie: Any = None
        if len(unique) > _SMALL_STOPWORD_LIST:
            self._trie = ahocorasick.Automaton()
            for word in unique:
                self._trie.add_word(word, word)
            self._trie.make_automaton()
        else:
            self._words = unique

    def __bool__(self) -> bool:
        return bool(self._words) or self._trie is not None

    def found_in(self, secret: str) -> bool:
        lowered = secret.lower()
        if self._trie is not None:
            for _ in self._trie.iter(lowered):
                return True
            return False
        return any(word in lowered for word in self._words)


class _RegexCache:
    """Compiles each distinct pattern list once; many rules share the global allowlists."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, ...], Regex] = {}

    def get(self, patterns: Sequence[str], where: str) -> Regex | None:
        key = tuple(dict.fromkeys(patterns))
        if not key:
            return None
        if key not in self._done:
            self._done[key] = compile_any(key, where)
        return self._done[key]


def _target(secret_b: bytes, match_b: bytes, line: LineFn, target: str) -> bytes:
    if target == "match":
        return match_b
    if target == "line":
        return line()
    return secret_b


class _AndAllowlist:
    """Allows a finding only when every criterion it sets holds."""

    __slots__ = ("target", "regex", "paths", "stopwords", "has_commits")

    def __init__(self, allowlist: Allowlist, cache: _RegexCache, where: str) -> None:
        self.target = allowlist.regex_target
        self.regex = cache.get(allowlist.regexes, where)
        self.paths = cache.get(allowlist.paths, f"{where} paths")
        self.stopwords = Stopwords(allowlist.stopwords)
        self.has_commits = bool(allowlist.commits)

    def allows(
        self, secret: str, secret_b: bytes, match_b: bytes, line: LineFn, path: bytes | None
    ) -> bool:
        if self.has_commits:  # a scanned text has no commit
            return False
        if self.paths is not None and (path is None or not self.paths.search(path)):
            return False
        if self.regex is not None and not self.regex.search(
            _target(secret_b, match_b, line, self.target)
        ):
            return False
        return not (self.stopwords and not self.stopwords.found_in(secret))


class AllowlistSet:
    """Every allowlist that applies to one rule."""

    __slots__ = ("_secret", "_match", "_line", "_paths", "_stopwords", "_and", "empty")

    def __init__(self, allowlists: Sequence[tuple[Allowlist, str]], cache: _RegexCache) -> None:
        """``allowlists`` pairs each allowlist with where it came from, for errors."""
        by_target: dict[str, list[str]] = {"secret": [], "match": [], "line": []}
        paths: list[str] = []
        stopwords: list[str] = []
        self._and: list[_AndAllowlist] = []
        for allowlist, where in allowlists:
            if allowlist.match_all:
                self._and.append(_AndAllowlist(allowlist, cache, where))
                continue
            # validate each list on its own so an error names the right allowlist
            cache.get(allowlist.regexes, where)
            cache.get(allowlist.paths, f"{where} paths")
            by_target[allowlist.regex_target].extend(allowlist.regexes)
            paths.extend(allowlist.paths)
            stopwords.extend(allowlist.stopwords)
        self._secret = cache.get(by_target["secret"], "allowlist regexes (secret)")
        self._match = cache.get(by_target["match"], "allowlist regexes (match)")
        self._line = cache.get(by_target["line"], "allowlist regexes (line)")
        self._paths = cache.get(paths, "allowlist paths")
        self._stopwords = Stopwords(stopwords)
        self.empty = not (
            self._secret or self._match or self._line or self._paths or self._stopwords or self._and
        )

    def allows(
        self, secret: str, secret_b: bytes, match_b: bytes, line: LineFn, path: bytes | None
    ) -> bool:
        if self.empty:
            return False
        if self._secret is not None and self._secret.search(secret_b):
            return True
        if self._stopwords and self._stopwords.found_in(secret):
            return True
        if self._match is not None and self._match.search(match_b):
            return True
        if self._line is not None and self._line.search(line()):
            return True
        if self._paths is not None and path is not None and self._paths.search(path):
            return True
        return any(a.allows(secret, secret_b, match_b, line, path) for a in self._and)


def new_cache() -> _RegexCache:
    return _RegexCache()
