"""Question features for the match verifier: what ``sidecar.cache.match.verify`` compares.

``analyse`` turns one normalised question into its structure: tokens, negations, numbers with
their units, days and times, names, scope words, comparison roles, what the question asks for,
and the antonym poles it uses. It is cached by text, so a cached question is analysed once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from sidecar.cache.match import lexicon as lex

# -------------------------------------------------------------------- tokenising
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_CLOCK_12H = re.compile(r"\b(\d{1,2})(?:[:.]([0-5]\d))?\s*([ap])\.?\s?m\b\.?", re.IGNORECASE)
_CLOCK_24H = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_TOKEN = re.compile(
    r"@[td][\d-]+"  # placeholders written by _prepare
    r"|[$€£¥₹%]"
    r"|[A-Za-z0-9]+(?:[._+#'’][A-Za-z0-9]+)*(?:\(\))?[+#]*"
    r"|[.?!:;]"
)
_HYPHENATED = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+")
_PLAIN_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)(st|nd|rd|th|s)?$")
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
    ("new", "year"): "newyear",
    ("new", "years"): "newyear",
    ("zoom", "in"): "zoomin",
    ("zoom", "out"): "zoomout",
    ("opt", "in"): "optin",
    ("opt", "out"): "optout",
    ("plug", "in"): "plugin",
}
_ONE_BLOCKERS = frozenset("which the this that any no every each some only another".split())
_CURRENCIES = frozenset("usd eur gbp jpy cad aud chf inr mxn cny btc eth".split())


def _clock(hour: int, minute: int, half: str = "") -> str:
    if half:
        hour = hour % 12 + (12 if half.lower() == "p" else 0)
    return f"@t{hour * 60 + minute}"


_VERSIONED = re.compile(
    r"(^|[.?!]\s+|\b)([A-Za-z][A-Za-z+#]*)(?: |/|-)v?(\d+(?:\.\d+)*)\b(?![.,]\d)"
)


def _versioned_name(match: re.Match[str]) -> str:
    """ "OAuth 2.0" -> "OAuth2", "HTTP/2" -> "HTTP2", "Python 3.12" -> "Python3.12": a name
    and its version written apart are one token, as when written together ("OAuth2")."""
    lead, name, version = match.groups()
    lower = name.lower()
    sentence_start = not match.start() or bool(lead.strip())
    is_name = (
        lower in lex.KNOWN_NAMES
        or lower in lex.ALIASES
        or (len(name) >= 2 and name.isupper())
        or bool(_CAMEL.search(name))
        or (name[0].isupper() and not sentence_start)
    )
    if not is_name or lower in lex.UNITS or lower in lex.MONTHS or lower in lex.WEEKDAYS:
        return match.group(0)
    while version.endswith(".0"):
        version = version[:-2]  # "OAuth 2.0" is "OAuth2"
    return f"{lead}{name}{version}"


def _prepare(text: str) -> str:
    """Rewrite clock times and ISO dates to placeholder tokens, drop thousands separators,
    join names to their versions."""
    text = _THOUSANDS.sub("", text)
    text = _VERSIONED.sub(_versioned_name, text)
    text = _ISO_DATE.sub(lambda m: f" @d{m.group(1)}-{m.group(2)}-{m.group(3)} ", text)
    text = _CLOCK_12H.sub(
        lambda m: " " + _clock(int(m.group(1)), int(m.group(2) or 0), m.group(3)) + " ", text
    )
    return _CLOCK_24H.sub(lambda m: " " + _clock(int(m.group(1)), int(m.group(2))) + " ", text)


@lru_cache(maxsize=65536)
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


@dataclass(slots=True)
class _Words:
    """Word tokens of a question with what the lower-case forms lose."""

    raw: list[str]  # original case
    starts: list[bool]  # first word of a sentence
    symbol: list[str]  # currency symbol written just before the word
    tokens: list[str]  # lower case, possessives dropped, bigrams joined
    origin: list[int]  # index in ``raw`` of each token


def _split(text: str) -> _Words:
    words = _Words([], [], [], [], [])
    at_start, pending = True, ""
    for tok in _TOKEN.findall(_prepare(text)):
        if tok in _SENTENCE_END:
            at_start = True
            continue
        if tok in lex.CURRENCY_SYMBOLS:
            pending = tok
            continue
        words.raw.append(tok)
        words.starts.append(at_start)
        words.symbol.append(pending)
        pending, at_start = "", False
    lowers = [w.lower().replace("’", "'") for w in words.raw]
    lowers = [(w[:-2] if w.endswith("'s") else w).replace("'", "") for w in lowers]
    i = 0
    while i < len(lowers):
        pair = (lowers[i], lowers[i + 1]) if i + 1 < len(lowers) else None
        words.tokens.append(_BIGRAMS.get(pair, lowers[i]) if pair else lowers[i])
        words.origin.append(i)
        i += 2 if pair in _BIGRAMS else 1
    return words


# -------------------------------------------------------------------- features
@dataclass(frozen=True, slots=True)
class QuestionFeatures:
    """What the checks compare, computed once per distinct question text."""

    tokens: tuple[str, ...]  # lower case, punctuation dropped, bigrams joined ("login")
    token_set: frozenset[str]
    forms: frozenset[str]  # every spelling a name on the other side may match
    negations: int
    values: frozenset[str]  # canonical numbers ("two" is "2"; "one" is kept apart)
    has_one: bool  # the word "one" used as a number
    quantities: frozenset[tuple[str, str]]  # (number, unit)
    units: frozenset[str]  # units and currencies mentioned, with or without a number
    times: frozenset[str]  # named days, months, dates, clock times
    periods: frozenset[str]  # parts of days and years, relative periods, "today"
    entities: dict[str, int]  # name form -> index in tokens
    scope: frozenset[int]  # indices of SCOPE_GROUPS present
    restrictors: frozenset[str]
    downward: frozenset[str]
    comparatives: frozenset[str]
    moves: tuple[str, str]  # first content words after "from" and after "to"
    than: str  # first content word after "than"
    before_than: frozenset[str]  # words before "than"
    directions: tuple[frozenset[str], frozenset[str]]  # (source words, target words)
    focus: str  # what the question asks for: "reason", "amount", ... or ""
    poles: dict[int, int]  # antonym axis -> the one pole this question uses
    prefixed: tuple[tuple[str, str], ...]  # ("unlock", "lock"), ("download", "upload")


def _is_entity(raw: str, lower: str, sentence_start: bool) -> bool:
    if raw == "US":
        return True  # the country, not the pronoun
    if lower in lex.STOPWORDS or lower in lex.WEEKDAYS or lower in lex.MONTHS:
        return False
    if lower in lex.UNITS or lower in lex.DAY_PARTS or lower in lex.HOLIDAYS:
        return False
    if any(c.isdigit() for c in raw):
        return any(c.isalpha() for c in raw)  # S23, 0x80070005, ipv6, 401k
    if "_" in raw or "()" in raw or ("." in raw and not raw.endswith(".")):
        return True  # code identifiers: snake_case, pandas.merge, len()
    if _name_form(raw) in lex.KNOWN_NAMES:
        return True
    if not raw[0].isupper():
        return bool(_CAMEL.search(raw))  # iPhone, useEffect
    if (raw.isupper() and len(raw) >= 2) or _CAMEL.search(raw):
        return True  # acronyms (USB, JFK) and inner capitals (HubSpot, TypeError)
    return not sentence_start and lower != "i"


def _number(tokens: Sequence[str], j: int) -> tuple[str, str]:
    """(value, unit) of the number written at ``tokens[j]``, or ("", "") when it is none."""
    tok = tokens[j]
    if m := _PLAIN_NUMBER.match(tok):
        return _canonical_number(m.group(1)), ""
    if _RETIREMENT_PLAN.match(tok):
        return "", ""
    if m := _NUMBER_SUFFIX.match(tok):
        suffix = m.group(2)
        if suffix == "k":
            return str(int(float(m.group(1)) * 1000)), ""
        if suffix in lex.UNITS:
            return _canonical_number(m.group(1)), lex.UNITS[suffix]
        return "", ""
    if tok in lex.SMALL_NUMBERS:
        return str(lex.SMALL_NUMBERS[tok]), ""
    if tok == "one":  # usually a pronoun ("which one", "how can one"); a number before a noun
        prev = tokens[j - 1] if j else ""
        nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
        if nxt in lex.SCALES or (
            nxt.isalpha()
            and nxt not in lex.STOPWORDS
            and prev not in _ONE_BLOCKERS
            and prev not in lex.STOPWORDS
        ):
            return "one", ""
    return "", ""


def _unit_near(tokens: Sequence[str], before: int, after: int) -> str:
    if after < len(tokens):
        word = tokens[after]
        if word in ("degree", "degrees") and after + 1 < len(tokens):
            return {"c": "c", "celsius": "c", "f": "f", "fahrenheit": "f"}.get(
                tokens[after + 1], "deg"
            )
        if word == "us" and after + 1 < len(tokens) and tokens[after + 1].startswith("dollar"):
            return "usd"
        if word in lex.UNITS:
            return lex.UNITS[word]
    if before >= 0 and lex.UNITS.get(tokens[before], "") in _CURRENCIES:
        return lex.UNITS[tokens[before]]  # "INR 15000", "USD 20"
    return ""


@dataclass(slots=True)
class _Numbers:
    values: set[str]
    quantities: set[tuple[str, str]]
    units: set[str]
    positions: set[int]
    has_one: bool = False


def _numbers(words: _Words) -> _Numbers:
    tokens = words.tokens
    out = _Numbers(set(), set(), set(), set())
    j = 0
    while j < len(tokens):
        at = j
        value, unit = _number(tokens, j)
        j += 1
        if not value:
            continue
        out.positions.add(at)
        if value.isdigit():  # "twenty five", "two hundred", "5 million"
            total = int(value)
            while j < len(tokens) and (tokens[j] in lex.SCALES or tokens[j] in lex.SMALL_NUMBERS):
                word = tokens[j]
                total = (
                    total * lex.SCALES[word]
                    if word in lex.SCALES
                    else total + (lex.SMALL_NUMBERS[word])
                )
                out.positions.add(j)
                j += 1
            value = str(total)
        if not unit:
            symbol = words.symbol[words.origin[at]]
            unit = lex.CURRENCY_SYMBOLS[symbol] if symbol else _unit_near(tokens, at - 1, j)
        if value == "one":
            out.has_one, value = True, "1"
        else:
            out.values.add(value)
        if unit or value != "1":
            out.quantities.add((value, unit))
        if unit:
            out.units.add(unit)
    for j, tok in enumerate(tokens):
        if j not in out.positions and tok in lex.UNITS and tok not in lex.AMBIGUOUS_UNITS:
            out.units.add(lex.UNITS[tok])
    out.units.update(lex.CURRENCY_SYMBOLS[s] for s in words.symbol if s)
    return out


def _times(words: _Words, numbers: set[int]) -> tuple[set[str], set[str]]:
    """(named days, dates and clock times; parts of days and relative periods)."""
    tokens = words.tokens
    times: set[str] = set()
    periods: set[str] = set()
    for j, tok in enumerate(tokens):
        if tok.startswith(("@t", "@d")):
            times.add(tok)
        elif tok in lex.WEEKDAYS:
            times.add(lex.WEEKDAYS[tok])
        elif tok in lex.MONTHS:
            raw = words.raw[words.origin[j]]
            near_number = (j + 1 in numbers) or (j - 1 in numbers)
            # "may" and "march" are months only when written like one
            if tok not in ("may", "march") or near_number or (raw[0].isupper() and j > 0):
                times.add(lex.MONTHS[tok])
        elif tok in lex.HOLIDAYS:
            times.add(tok)
        elif tok in lex.SOFT_TIME_WORDS:
            periods.add("now")
        elif tok in lex.DAY_PARTS:
            periods.add(tok.rstrip("s") if tok.startswith("week") else tok)
        elif tok in lex.RELATIVE_PERIODS and j and tokens[j - 1] in lex.RELATIVE_MARKERS:
            periods.add(f"{tokens[j - 1]}-{tok}")
    return times, periods


def _negations(words: _Words) -> int:
    count = 0
    tokens = words.tokens
    for j, tok in enumerate(tokens):
        if tok not in lex.NEGATIONS:
            continue
        # "..., or not?" and "why not?" are question tags, not negations
        if tok == "not" and j and tokens[j - 1] in ("or", "why"):
            continue
        at = words.origin[j]
        if tok == "none" and words.raw[at] == "None" and not words.starts[at]:
            continue  # the code literal: "why does it print None?"
        count += 1
    return count


def _scope(tokens: Sequence[str]) -> frozenset[int]:
    found: set[int] = set()
    for j, tok in enumerate(tokens):
        if tok == "all" and tokens[j + 1 : j + 2] == ("time",):
            continue  # "of all time" is emphasis, not a quantifier
        found.update(i for i, group in enumerate(lex.SCOPE_GROUPS) if tok in group)
    return frozenset(found)


def _object_after(tokens: Sequence[str], word: str) -> tuple[str, int]:
    if word not in tokens:
        return "", -1
    at = tokens.index(word)
    for nxt in tokens[at + 1 : at + 4]:
        if nxt not in lex.STOPWORDS:
            return _name_form(nxt), at
    return "", at


def _focus(tokens: Sequence[str]) -> str:
    for j, tok in enumerate(tokens[:8]):
        for size in (2, 1):
            kind = lex.FOCUS_OPENERS.get(tuple(tokens[j : j + size]))
            if kind is not None:
                return kind
        if tok in ("what", "which", "how"):
            return ""
    return ""


# word -> (axis index, pole) for every word of every axis
_AXIS_OF: dict[str, list[tuple[int, int]]] = {}
for _i, _axis in enumerate(lex.AXES):
    for _pole_index, _words in ((-1, _axis[0]), (1, _axis[1])):
        for _w in _words:
            _AXIS_OF.setdefault(_w, []).append((_i, _pole_index))


def _poles(tokens: Sequence[str]) -> dict[int, int]:
    """Axis index -> -1 or 1 for the axes whose words sit on one pole only."""
    seen: dict[int, set[int]] = {}
    for tok in tokens:
        for axis, pole in _AXIS_OF.get(tok, ()):
            seen.setdefault(axis, set()).add(pole)
    return {axis: next(iter(poles)) for axis, poles in seen.items() if len(poles) == 1}


def _prefixed(tokens: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """(word, its opposite spelling) for words whose prefix negates or reverses a stem."""
    out: list[tuple[str, str]] = []
    for word in set(tokens):
        for prefix in lex.NEGATING_PREFIXES:
            if word.startswith(prefix) and len(word) - len(prefix) >= 3:
                out.append((word, word[len(prefix) :]))
        for p1, p2 in lex.SWAPPED_PREFIXES:
            for x, y in ((p1, p2), (p2, p1)):
                if word.startswith(x) and len(word) - len(x) >= 3:
                    out.append((word, y + word[len(x) :]))
    return tuple(out)


_TOWARDS = frozenset({"to", "into", "onto", "toward", "towards"})
#: words that end the stretch of words a "from" or "to" governs
_STRETCH_ENDS = _TOWARDS | frozenset(
    "from than in on at with using via for by and or but so because when if while then".split()
)
#: a "to" after these words starts an infinitive ("how to", "a way to", "want to"), not a target
_INFINITIVE_LEADS = frozenset(
    "way ways want wants wanted need needs needed like love able unable going trying try tried "
    "used plan planning wish order possible best easiest fastest simplest better steps step "
    "command commands script code function method tool tools time decide learn start begin "
    "ready easy hard difficult safe good bad important necessary allowed supposed reason "
    "tips help".split()
)


def _stretch(tokens: Sequence[str], start: int, step: int) -> list[str]:
    """Content words from ``start`` on (``step`` 1 forward, -1 backward) up to a stretch end."""
    out: list[str] = []
    j = start
    while 0 <= j < len(tokens) and tokens[j] not in _STRETCH_ENDS:
        if tokens[j] not in lex.STOPWORDS:
            word = tokens[j]
            out.append(word[:-1] if word.endswith("s") and len(word) > 3 else word)
        j += step
    return out


def _directions(tokens: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(source words, target words): the content words after "from" or before a "to" that
    points somewhere, and the content words after it. "convert a list to a string": source
    {convert, list}, target {string}; "copy from the host into the container": source {host},
    target {container}. An infinitive "to" ("how to", "a way to") points nowhere."""
    sources: set[str] = set()
    targets: set[str] = set()
    for j, tok in enumerate(tokens):
        if tok == "from":
            sources.update(_stretch(tokens, j + 1, 1))
        elif tok in _TOWARDS and j > 0:
            before = tokens[j - 1]
            if before in lex.STOPWORDS or before in _INFINITIVE_LEADS:
                continue
            sources.update(_stretch(tokens, j - 1, -1))
            targets.update(_stretch(tokens, j + 1, 1))
    return frozenset(sources), frozenset(targets)


@lru_cache(maxsize=8192)
def analyse(text: str) -> QuestionFeatures:
    """Structure of one (normalised) question. Cached: a cached question is analysed once."""
    words = _split(text)
    tokens = words.tokens
    numbers = _numbers(words)
    times, periods = _times(words, numbers.positions)
    entities: dict[str, int] = {}
    for j, tok in enumerate(tokens):
        if j in numbers.positions or tok.startswith("@"):
            continue
        raw = words.raw[words.origin[j]]
        if _is_entity(raw, tok, words.starts[words.origin[j]]):
            entities.setdefault(_name_form(raw), j)
    for compound in _HYPHENATED.findall(text):
        # "Wi-Fi" and "USB-C" are one name each, matching "wifi" and "usbc"
        # dict.fromkeys: a part may repeat ("Step-by-step")
        parts = list(
            dict.fromkeys(p for p in (_name_form(x) for x in compound.split("-")) if p in entities)
        )
        if parts:
            entities.setdefault(_name_form(compound), min(entities[p] for p in parts))
            for p in parts:
                del entities[p]
    forms: set[str] = set(tokens)
    forms.update(_name_form(t) for t in words.raw)
    forms.update(_name_form(a + b) for a, b in zip(tokens, tokens[1:], strict=False))
    forms.update(_name_form(h) for h in _HYPHENATED.findall(text))
    token_set = set(tokens)
    than, than_at = _object_after(tokens, "than")
    return QuestionFeatures(
        tokens=tuple(tokens),
        token_set=frozenset(tokens),
        forms=frozenset(forms),
        negations=_negations(words),
        values=frozenset(numbers.values),
        has_one=numbers.has_one,
        quantities=frozenset(numbers.quantities),
        units=frozenset(numbers.units),
        times=frozenset(times),
        periods=frozenset(periods),
        entities=entities,
        scope=_scope(tokens),
        restrictors=frozenset(token_set & lex.RESTRICTORS),
        downward=frozenset(token_set & lex.DOWNWARD),
        comparatives=frozenset(token_set & lex.COMPARATIVE_WORDS),
        moves=(_object_after(tokens, "from")[0], _object_after(tokens, "to")[0]),
        than=than,
        before_than=frozenset(_name_form(t) for t in tokens[: max(than_at, 0)]),
        directions=_directions(tokens),
        focus=_focus(tokens),
        poles=_poles(tokens),
        prefixed=_prefixed(tokens),
    )
