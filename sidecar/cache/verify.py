"""The match verifier: refuses a semantic hit when two close questions need different answers.

Sentence embeddings score "Is the clinic open on Sundays?" and "... closed on Sundays?" as
near-duplicates, so no similarity threshold separates them. ``AnswerChangeVerifier`` compares
the structure of the new question and the cached one and refuses the hit when they differ in
something that changes an answer:

- negation: one side is negated ("not", "never", "without", "can't", ...);
- antonym: the sides sit on opposite poles ("open"/"closed", "enable"/"disable",
  "lock"/"unlock", "upload"/"download", "cheapest"/"most expensive");
- number: the numbers differ ("2 tickets" vs "4 tickets"; "two" and "2" are the same);
- unit: same numbers, other units or currencies ("5 kg" vs "5 lb", "USD" vs "EUR");
- datetime: other days, months, dates, times or periods ("2pm" and "14:00" are the same);
- entity: another name, product, code identifier or version ("Salesforce" vs "HubSpot");
- scope: other quantifiers or restrictors ("all" vs "some", "only", "less");
- order: the same names in swapped roles ("from Friday to Sunday" vs the reverse,
  "X better than Y" vs "Y better than X").

Everything is cheap token structure: a question is analysed once (cached by text) and a
comparison costs tens of microseconds. Refusal reasons name the check and the kind of
difference, never the user's words, because reasons reach traces and metrics.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import get_args

from sidecar.cache import verify_lexicon as lex
from sidecar.cache.layer import MatchVerifier, Verdict
from sidecar.config import CacheConfig, VerifierCheck, VerifierStrictness

ALL_CHECKS: tuple[VerifierCheck, ...] = get_args(VerifierCheck)

# -------------------------------------------------------------------- tokenising
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_CLOCK_12H = re.compile(r"\b(\d{1,2})(?::([0-5]\d))?\s*([ap])\.?\s?m\b\.?", re.IGNORECASE)
_CLOCK_24H = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_TOKEN = re.compile(
    r"@[td][\d-]+"  # placeholders written by _prepare
    r"|[$€£¥%]"
    r"|[A-Za-z0-9]+(?:[._+#'’][A-Za-z0-9]+)*(?:\(\))?[+#]*"
    r"|[.?!:;]"
)
_HYPHENATED = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+")
_PLAIN_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)(st|nd|rd|th)?$")
_NUMBER_SUFFIX = re.compile(r"^(\d+(?:\.\d+)?)([a-z%]+)$")
_RETIREMENT_PLAN = re.compile(r"^\d{3}[kb]$")  # "401k" is a name, not 401,000
_CAMEL = re.compile(r"[a-z][A-Z]")
_SENTENCE_END = frozenset(".?!:;")
_BIGRAMS = {
    ("log", "in"): "login",
    ("log", "out"): "logout",
    ("sign", "in"): "signin",
    ("sign", "out"): "signout",
    ("check", "in"): "checkin",
    ("check", "out"): "checkout",
}
_ONE_BLOCKERS = frozenset("which the this that any no every each some only another".split())


def _clock(hour: int, minute: int, half: str = "") -> str:
    if half:
        hour = hour % 12 + (12 if half.lower() == "p" else 0)
    return f"@t{hour * 60 + minute}"


def _prepare(text: str) -> str:
    """Rewrite clock times and ISO dates to placeholder tokens, drop thousands separators."""
    text = _THOUSANDS.sub("", text)
    text = _ISO_DATE.sub(lambda m: f" @d{m.group(1)}-{m.group(2)}-{m.group(3)} ", text)
    text = _CLOCK_12H.sub(
        lambda m: " " + _clock(int(m.group(1)), int(m.group(2) or 0), m.group(3)) + " ", text
    )
    return _CLOCK_24H.sub(lambda m: " " + _clock(int(m.group(1)), int(m.group(2))) + " ", text)


def _name_form(word: str) -> str:
    """One spelling per name: lower case, no hyphens or possessive, known suffixes dropped."""
    w = word.lower().replace("’", "'").replace("-", "")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.replace("'", "")
    for suffix in lex.NAME_SUFFIXES:
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            w = w[: -len(suffix)]
            break
    return lex.ALIASES.get(w, w)


def _canonical_number(raw: str) -> str:
    if "." not in raw:
        return str(int(raw))
    return raw  # versions and decimals keep their digits ("3.8" is not "3.80" for a version)


# -------------------------------------------------------------------- features
@dataclass(frozen=True, slots=True)
class QuestionFeatures:
    """What the checks compare, computed once per distinct question text."""

    tokens: tuple[str, ...]  # lower case, punctuation dropped, bigrams joined ("login")
    forms: frozenset[str]  # every spelling a name on the other side may match
    negations: int
    values: tuple[str, ...]  # canonical numbers, sorted
    quantities: tuple[tuple[str, str], ...]  # (number, unit), sorted
    units: frozenset[str]  # units and currencies mentioned, with or without a number
    times: frozenset[str]  # days, months, dates, clock times, periods
    soft_times: frozenset[str]  # "today", "now": vague on their own
    entities: dict[str, int]  # name form -> index in tokens
    scope: frozenset[int]  # indices of SCOPE_GROUPS present
    restrictors: frozenset[str]
    downward: frozenset[str]
    comparatives: frozenset[str]
    roles: dict[str, str]  # relation word -> the first content word after it


def _is_entity(raw: str, lower: str, sentence_start: bool) -> bool:
    if lower in lex.STOPWORDS or lower in lex.WEEKDAYS or lower in lex.MONTHS:
        return False
    if lower in lex.UNITS or lower in lex.DAY_PARTS:
        return False
    has_digit = any(c.isdigit() for c in raw)
    if has_digit:
        return any(c.isalpha() for c in raw)  # S23, 0x80070005, ipv6, 401k
    if "_" in raw or "()" in raw or ("." in raw and not raw.endswith(".")):
        return True  # code identifiers: snake_case, pandas.merge, len()
    if _name_form(raw) in lex.KNOWN_NAMES:
        return True
    if not raw[0].isupper():
        return bool(_CAMEL.search(raw))  # iPhone, useEffect
    if raw.isupper() and len(raw) >= 2:
        return True  # acronyms: USB, JFK, IRA
    if _CAMEL.search(raw):
        return True  # HubSpot, TypeError
    if sentence_start:
        return False
    return lower != "i"


@lru_cache(maxsize=8192)
def analyse(text: str) -> QuestionFeatures:
    """Structure of one (normalised) question. Cached: a cached question is analysed once."""
    raw_tokens = _TOKEN.findall(_prepare(text))
    words: list[str] = []  # original case
    starts: list[bool] = []
    symbols_before: list[str] = []
    at_start = True
    pending_symbol = ""
    for tok in raw_tokens:
        if tok in _SENTENCE_END:
            at_start = True
            continue
        if tok in lex.CURRENCY_SYMBOLS or tok == "%":
            if tok == "%" and words:
                words.append("%")
                starts.append(False)
                symbols_before.append("")
            else:
                pending_symbol = tok
            continue
        words.append(tok)
        starts.append(at_start)
        symbols_before.append(pending_symbol)
        pending_symbol = ""
        at_start = False
    lowers = [w.lower().replace("’", "'") for w in words]
    lowers = [w[:-2] if w.endswith("'s") else w for w in lowers]
    lowers = [w.replace("'", "") for w in lowers]
    # Join phrasal opposites so "log in" and "login" read the same.
    tokens: list[str] = []
    origin: list[int] = []
    i = 0
    while i < len(lowers):
        pair = (lowers[i], lowers[i + 1]) if i + 1 < len(lowers) else None
        if pair in _BIGRAMS:
            tokens.append(_BIGRAMS[pair])
            origin.append(i)
            i += 2
            continue
        tokens.append(lowers[i])
        origin.append(i)
        i += 1

    values: list[str] = []
    quantities: list[tuple[str, str]] = []
    units: set[str] = set()
    times: set[str] = set()
    soft: set[str] = set()
    entities: dict[str, int] = {}
    number_at: set[int] = set()

    def unit_after(j: int) -> str:
        if j >= len(tokens):
            return ""
        word = tokens[j]
        if word in ("degree", "degrees") and j + 1 < len(tokens):
            nxt = tokens[j + 1]
            return {"c": "c", "celsius": "c", "f": "f", "fahrenheit": "f"}.get(nxt, "deg")
        if word == "us" and j + 1 < len(tokens) and tokens[j + 1].startswith("dollar"):
            return "usd"
        return lex.UNITS.get(word, "")

    for j, tok in enumerate(tokens):
        if tok.startswith("@t") or tok.startswith("@d"):
            times.add(tok)
            continue
        value = ""
        unit = ""
        if m := _PLAIN_NUMBER.match(tok):
            value = _canonical_number(m.group(1))
        elif _RETIREMENT_PLAN.match(tok):
            pass
        elif m := _NUMBER_SUFFIX.match(tok):
            suffix = m.group(2)
            if suffix == "k":
                value = str(int(float(m.group(1)) * 1000))
            elif suffix in ("st", "nd", "rd", "th"):
                value = _canonical_number(m.group(1))
            elif suffix in lex.UNITS:
                value, unit = _canonical_number(m.group(1)), lex.UNITS[suffix]
        elif tok in lex.SMALL_NUMBERS:
            value = str(lex.SMALL_NUMBERS[tok])
        elif tok == "one":
            prev = tokens[j - 1] if j else ""
            nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
            if nxt in lex.SCALES or (
                nxt.isalpha() and nxt not in lex.STOPWORDS and prev not in _ONE_BLOCKERS
            ):
                value = "1"
        if not value:
            continue
        number_at.add(j)
        # "twenty five", "two hundred", "5 million"
        k = j + 1
        if value.isdigit():
            total = int(value)
            while k < len(tokens) and (tokens[k] in lex.SCALES or tokens[k] in lex.SMALL_NUMBERS):
                if tokens[k] in lex.SCALES:
                    total *= lex.SCALES[tokens[k]]
                else:
                    total += lex.SMALL_NUMBERS[tokens[k]]
                number_at.add(k)
                k += 1
            value = str(total)
        if not unit:
            unit = unit_after(k)
            symbol = symbols_before[origin[j]] if origin[j] < len(symbols_before) else ""
            if symbol:
                unit = lex.CURRENCY_SYMBOLS[symbol]
        values.append(value)
        quantities.append((value, unit))
        if unit:
            units.add(unit)
    # numbers written as words inside a run ("twenty five") were folded into the first
    values_counter = _fold_runs(values, quantities, tokens, number_at)
    values, quantities = values_counter

    for j, tok in enumerate(tokens):
        if j in number_at:
            continue
        if tok in lex.UNITS and tok not in lex.AMBIGUOUS_UNITS:
            units.add(lex.UNITS[tok])
        if tok in lex.WEEKDAYS:
            times.add(lex.WEEKDAYS[tok])
        elif tok in lex.MONTHS:
            raw = words[origin[j]]
            near_number = (j + 1 in number_at) or (j - 1 in number_at)
            if tok not in ("may", "march") or near_number or (raw[0].isupper() and j > 0):
                times.add(lex.MONTHS[tok])
        elif tok in lex.DAY_PARTS:
            times.add(tok)
        elif tok in lex.SOFT_TIME_WORDS:
            soft.add(tok)
        elif tok in lex.RELATIVE_PERIODS and j and tokens[j - 1] in lex.RELATIVE_MARKERS:
            times.add(f"{tokens[j - 1]}-{tok}")
        if tok == "new" and j + 1 < len(tokens) and tokens[j + 1] in ("year", "years"):
            times.add("newyear")
    for sym in symbols_before:
        if sym:
            units.add(lex.CURRENCY_SYMBOLS[sym])

    for j, tok in enumerate(tokens):
        if j in number_at or tok.startswith("@"):
            continue
        wi = origin[j]
        raw = words[wi]
        if _is_entity(raw, tok, starts[wi]):
            entities.setdefault(_name_form(raw), j)

    forms: set[str] = set(tokens)
    forms.update(_name_form(t) for t in words)
    forms.update(_name_form(a + b) for a, b in zip(lowers, lowers[1:], strict=False))
    forms.update(_name_form(h) for h in _HYPHENATED.findall(text))
    token_set = set(tokens)
    scope = frozenset(i for i, group in enumerate(lex.SCOPE_GROUPS) if token_set & group)
    roles: dict[str, str] = {}
    for j, tok in enumerate(tokens):
        if tok in lex.ROLE_WORDS and tok not in roles:
            for nxt in tokens[j + 1 : j + 4]:
                if nxt not in lex.STOPWORDS:
                    roles[tok] = _name_form(nxt)
                    break
    return QuestionFeatures(
        tokens=tuple(tokens),
        forms=frozenset(forms),
        negations=sum(1 for t in tokens if t in lex.NEGATIONS),
        values=tuple(sorted(values)),
        quantities=tuple(sorted(quantities)),
        units=frozenset(units),
        times=frozenset(times),
        soft_times=frozenset(soft),
        entities=entities,
        scope=scope,
        restrictors=frozenset(token_set & lex.RESTRICTORS),
        downward=frozenset(token_set & lex.DOWNWARD),
        comparatives=frozenset(token_set & lex.COMPARATIVE_WORDS),
        roles=roles,
    )


def _fold_runs(
    values: list[str],
    quantities: list[tuple[str, str]],
    tokens: Sequence[str],
    number_at: set[int],
) -> tuple[list[str], list[tuple[str, str]]]:
    """Drop the numbers that a preceding word-number run already absorbed."""
    # A run like "twenty five" was recorded twice (25 at "twenty", 5 at "five"); keep the
    # first of each run of adjacent number positions.
    starts = [j for j in sorted(number_at) if j - 1 not in number_at]
    if len(starts) == len(values):
        return values, quantities
    keep = len(starts)
    return values[:keep], quantities[:keep]
