"""Typo tolerance for the match verifier: a misspelt word counts as the word it misspells.

"How do I chagne my billing adress?" repeats "How do I change my billing address?". Without
help the checks see "chagne" and "adress" as content words on one side only (and "Dokcer" as
another name than "Docker"). ``repair_typos`` rewrites each question so that a word within a
small edit distance (1, or 2 for long words) of a word that only the other question has takes
that word's spelling -- unless both are real, different English words ("form" / "from",
"rest" / "reset"): those stay different.

"Real word" means: in the English frequency list that ships with ``pyspellchecker`` (MIT,
pure data, installed from the package index; read once, no network), at a frequency that
leaves out the list's rare misspellings ("instal", "wight"), or a well-known name of
``lexicon.KNOWN_NAMES``. The list is read directly rather than through the spell checker's
correction API because only membership is needed, and correction against the other question's
words is both cheaper and better informed than correction against a dictionary.
"""

from __future__ import annotations

import gzip
import json
import re
from functools import lru_cache
from importlib import resources

from sidecar.cache.match import lexicon as lex

#: a word counts as real from this many occurrences in the frequency list on
MIN_FREQUENCY = 500
_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*[A-Za-z]|[A-Za-z]")


class WordListError(RuntimeError):
    """The packaged word list is missing or unreadable."""


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Lower-case English words (``pyspellchecker``'s frequency list, frequent enough)."""
    try:
        source = resources.files("spellchecker").joinpath("resources", "en.json.gz")
        with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
            counts: dict[str, int] = json.load(fh)
    except (ModuleNotFoundError, OSError, ValueError) as exc:
        raise WordListError(
            f"the English word list (pyspellchecker's en.json.gz) cannot be read: {exc}"
        ) from exc
    return frozenset(w for w, n in counts.items() if n >= MIN_FREQUENCY)


def is_real_word(word: str) -> bool:
    w = word.lower()
    return w in english_words() or w in lex.KNOWN_NAMES or w in lex.STOPWORDS


def close_spelling(a: str, b: str) -> bool:
    """Damerau-Levenshtein distance (adjacent swaps count 1) of at most 1, or 2 when both
    words have 6 letters or more; never for words shorter than 3 letters. (Written here: the
    cut-off keeps it to a few microseconds for the word pairs a question pair has.)"""
    shortest = min(len(a), len(b))
    if shortest < 3 or a == b:
        return False
    if a.endswith(b) or b.endswith(a):
        return False  # a prefix added: "subscribe" / "unsubscribe", "serialize" / "deserialize"
    limit = 2 if shortest >= 6 else 1
    if abs(len(a) - len(b)) > limit:
        return False
    return _distance(a, b, limit) <= limit


def _distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance, stopping early past ``limit``."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        prev2, prev = prev, row
    return prev[-1]


def typo_pairs(question: str, candidate: str) -> dict[str, str]:
    """Misspelt word (lower case) -> the word of the other question it stands for (as written
    there).

    Only words that one question has and the other lacks are matched, each at most once, the
    closest first. A pair of two real words is never a typo."""
    raw_q = {w.lower(): w for w in reversed(_WORD.findall(question))}
    raw_c = {w.lower(): w for w in reversed(_WORD.findall(candidate))}
    only_q, only_c = raw_q.keys() - raw_c.keys(), raw_c.keys() - raw_q.keys()
    if not only_q or not only_c:
        return {}
    out: dict[str, str] = {}
    used: set[str] = set()
    for x in sorted(only_q):
        real_x = is_real_word(x)
        for y in sorted(only_c, key=lambda y: (abs(len(y) - len(x)), y)):
            if y in used or not close_spelling(x, y):
                continue
            real_y = is_real_word(y)
            if real_x and real_y:
                continue  # "form" / "from": two words, not a typo
            if not (real_x or real_y) and min(len(x), len(y)) < 5:
                continue  # "npm" / "pnpm": short names, likely two tools
            # keep the real spelling: the misspelt side takes the other's word
            if real_x:
                out[y] = raw_q[x]
            else:
                out[x] = raw_c[y]
            used.add(y)
            break
    return out


def repair_typos(question: str, candidate: str) -> tuple[str, str]:
    """Both texts with each misspelt word replaced by its counterpart on the other side
    (keeping a leading capital), so every later check sees one spelling."""
    pairs = typo_pairs(question, candidate)
    if not pairs:
        return question, candidate

    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        right = pairs.get(word.lower())
        if right is None:
            return word
        return right[0].upper() + right[1:] if word[0].isupper() else right

    return _WORD.sub(fix, question), _WORD.sub(fix, candidate)


_SPELLING_TOKEN = re.compile(r"[a-z0-9]+")


def spelling_repeat(question: str, candidate: str) -> bool:
    """Is ``question`` the same text as ``candidate`` but for a few slips of the keyboard?

    Compared character by character on the whole question, as a person would read it: both
    are lower-cased and cut into words (punctuation dropped); the two must have the same words
    in the same order, every number the same, and the words that differ each within a
    Damerau-Levenshtein distance of 1 (2 from 6 letters), with at most ``len // 20 + 1``
    letters edited in all (1 in a question under 20 characters, 2 under 40, ...).

    Unlike ``typo_pairs`` this also holds when a slip lands on another real word ("How do I
    rest my password" / "reset"): whether that is a slip or a real change is for the pair
    model to say (``verify.py``), not this function."""
    a = _SPELLING_TOKEN.findall(question.lower())
    b = _SPELLING_TOKEN.findall(candidate.lower())
    if len(a) != len(b) or len(a) < 3:
        return False
    budget = min(len(question), len(candidate)) // 20 + 1
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        if x.isdigit() or y.isdigit() or any(c.isdigit() for c in x + y):
            return False  # "2 tickets" / "4 tickets", "v2" / "v3": never a slip
        if x.endswith(y) or y.endswith(x):
            return False  # a prefix added: "subscribe" / "unsubscribe"
        limit = 2 if min(len(x), len(y)) >= 6 else 1
        if min(len(x), len(y)) < 3 or abs(len(x) - len(y)) > limit:
            return False
        cost = _distance(x, y, limit)
        budget -= cost
        if cost > limit or budget < 0:
            return False
    return True
