"""The PII recognizers' fast regular expressions find exactly what the plainer forms they
replace find, and the card pre-check never turns away a text a card pattern matches.

``StrictSsnRecognizer._MAY_MATCH``, ``PrecheckedIpRecognizer._MAY_HAVE_V4`` and
``_PHONE_CANDIDATE`` were rewritten for speed (the SSN shapes with their leading digit taken
out in front, "digit.digit" searched from its dot, the phone candidate with a lookahead on its
first character). The plain forms are kept here; both are run over texts built to sit on
every edge the rewrites touch: digits right before a shape, non-ASCII digits, separators, the
characters the phone lookbehinds refuse, and random mixtures of all of them.
"""

from __future__ import annotations

import random
import re

import pytest
import regex
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

from guardrails.pii.recognizers import (
    _PHONE_CANDIDATE,
    _PHONE_DIGITS,
    PrecheckedCreditCardRecognizer,
    PrecheckedIpRecognizer,
    StrictSsnRecognizer,
)

# The forms before the rewrite, character for character.
PLAIN_SSN_SHAPES = re.compile(r"(?<!\d)\d{3}[- .]?\d{2}[- .]?\d{4}(?!\d)|\d{5}-\d{4}|\d{3}-\d{6}")
PLAIN_IPV4_HINT = re.compile(r"\d\.\d")
PLAIN_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+\-./#@:=&?%$€£])"
    r"(?<!\d[ \-.])"
    r"(?:\+|00)?\(?\d(?:[ \-.()/\u00a0]{1,3}\d|\d){6,17}+"
    r"(?![\w@+]|[\-.:/,]\d)"
)

EDGES = [
    "",
    "123-45-6789",
    "0123-45-6789",
    "a123-45-6789",
    "1123 45 6789",
    "123.45.67890",
    "123456789",
    "1234567890",
    "12345-6789",
    "123-456789",
    "x12345-6789",
    "call 123 456 7890 now",
    "+44 (0)20 7946 0958",
    "0049 30 1234567",
    "(555) 123-4567",
    "tel:+15551234567",
    "id#5551234567",
    "v1.2.3.4567890",
    "$5551234567",
    "€5551234567",
    "12 3456789012",
    "١٢٣-٤٥-٦٧٨٩",  # Arabic-Indic digits: \d matches them
    "۱۲۳۴۵۶۷۸۹۰",
    "555\u00a0123\u00a04567",
    "a+5551234567",
    "5551234567@example.com",
    "+" * 5 + "5551234567",
    "((5551234567",
    "1-2-3-4-5-6-7-8-9-0",
    "12345678901234567890123",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "2221 0012 3412 3456",
    "5500 0000 0000 0004",
    "3782 822463 10005",
    "card 6011111111111117.",
    "10.0.0.1",
    "v2.0",
    "٣.٣",
    "a.1 1.b .5 5.",
]
ALPHABET = "0123456789 -.()/+\u00a0abcXY_#@:=&?%$€£,٣\n"


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        size = rng.randint(0, 60)
        digits_heavy = rng.random() < 0.7
        texts.append(
            "".join(
                rng.choice("0123456789")
                if digits_heavy and rng.random() < 0.6
                else rng.choice(ALPHABET)
                for _ in range(size)
            )
        )
    return texts


def all_texts() -> list[str]:
    texts = list(EDGES)
    # every edge inside other text, and glued to its neighbours
    texts += [f"{a} {b}" for a in EDGES for b in EDGES[:8]]
    texts += [a + b for a in EDGES for b in EDGES[:8]]
    texts += random_texts(20_000, seed=16)
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return all_texts()


def test_ssn_precheck_finds_the_same_texts(texts: list[str]) -> None:
    fast = StrictSsnRecognizer._MAY_MATCH
    differing = [t for t in texts if bool(fast.search(t)) != bool(PLAIN_SSN_SHAPES.search(t))]
    assert differing == []
    # the corpus exercises both answers, plenty of each
    found = sum(1 for t in texts if PLAIN_SSN_SHAPES.search(t))
    assert 1000 < found < len(texts) - 1000


def test_phone_candidates_are_the_same_matches(texts: list[str]) -> None:
    def spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
        return [m.span() for m in pattern.finditer(text)]

    differing = [t for t in texts if spans(_PHONE_CANDIDATE, t) != spans(PLAIN_PHONE_CANDIDATE, t)]
    assert differing == []
    found = sum(1 for t in texts if PLAIN_PHONE_CANDIDATE.search(t))
    assert 1000 < found < len(texts) - 1000


def test_ipv4_hint_finds_the_same_texts(texts: list[str]) -> None:
    fast = PrecheckedIpRecognizer._MAY_HAVE_V4
    differing = [t for t in texts if bool(fast.search(t)) != bool(PLAIN_IPV4_HINT.search(t))]
    assert differing == []
    found = sum(1 for t in texts if PLAIN_IPV4_HINT.search(t))
    assert 1000 < found < len(texts) - 1000


def test_card_precheck_passes_every_text_a_card_pattern_matches(texts: list[str]) -> None:
    recognizer = PrecheckedCreditCardRecognizer()
    flags = recognizer.global_regex_flags
    patterns = [
        regex.compile(p.regex, flags=flags)
        for p in [
            *CreditCardRecognizer.PATTERNS,
            PrecheckedCreditCardRecognizer.MASTERCARD_2_SERIES,
        ]
    ]
    matched = [t for t in texts if any(p.search(t) for p in patterns)]
    assert len(matched) > 100
    assert [t for t in matched if not recognizer._MAY_MATCH.search(t)] == []


def test_phone_precheck_passes_every_text_with_a_candidate(texts: list[str]) -> None:
    with_candidate = [t for t in texts if PLAIN_PHONE_CANDIDATE.search(t)]
    assert len(with_candidate) > 1000
    assert [t for t in with_candidate if not _PHONE_DIGITS.search(t)] == []
    # and it does turn texts away: short digit runs
    assert not _PHONE_DIGITS.search("call 555 123 or 12-34-5, room 101")
