"""The keyword pre-filter as one RE2 set picks the same rules, and so gives the same findings,
as the Aho-Corasick automaton it stands in for (``guardrails.secrets.patterns.keyword_set``).

Each scanner is built twice: as configured (the RE2 set) and with ``KEYWORD_SET_MAX_BYTES``
at 0, which keeps every rule set on the automaton, as before the set existed. Texts hold each
keyword alone, upper-cased inside other text, next to other keywords and overlapping them, in
non-ASCII text, and random mixtures of keyword pieces; findings are compared on the built-in
pack's examples. (Tests do not read the development data outside the repository; the same
comparison on Gitleaks' own test cases is ``benchmarks/secrets_bench.py``'s compatibility
figure, unchanged by the set.)
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

import guardrails.secrets.patterns as patterns
from guardrails.secrets import SecretScanner, builtin_ruleset
from guardrails.secrets.config import RuleSet
from tests.test_secrets_builtin import EXAMPLES


def both(ruleset: RuleSet, monkeypatch: pytest.MonkeyPatch) -> tuple[SecretScanner, SecretScanner]:
    with_set = SecretScanner(ruleset)
    with monkeypatch.context() as patch:
        patch.setattr(patterns, "KEYWORD_SET_MAX_BYTES", 0)
        automaton_only = SecretScanner(ruleset)
    assert with_set._keyword_set is not None
    assert automaton_only._keyword_set is None
    return with_set, automaton_only


def keywords(ruleset: RuleSet) -> list[str]:
    return sorted({k for rule in ruleset.rules for k in rule.keywords})


def keyword_texts(words: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = ["", "nothing to see here", "ÄÖÜ ß 東京 😀"]
    for word in words:
        texts += [
            word,
            f"the {word.upper()} value",  # the scan lower-cases the text first
            f"x{word}x",
            f"é{word}東",
            word[:-1],  # one character short: no keyword
            word[1:],
        ]
    for _ in range(3000):  # overlapping and adjacent keywords, keyword pieces, noise
        parts = []
        for _ in range(rng.randint(1, 6)):
            word = rng.choice(words)
            cut = rng.randint(0, len(word))
            parts.append(rng.choice([word, word[:cut], word[cut:], word.upper(), " ", "é", "_"]))
        texts.append("".join(parts))
    return texts


RULESETS: dict[str, Callable[[], RuleSet]] = {"builtin": builtin_ruleset}


@pytest.mark.parametrize("name", sorted(RULESETS))
def test_the_set_triggers_the_same_rules(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ruleset = RULESETS[name]()
    fast, plain = both(ruleset, monkeypatch)
    words = keywords(ruleset)
    differing = [
        t
        for t in keyword_texts(words, seed=16)
        if fast._triggered(t.lower()) != plain._triggered(t.lower())
    ]
    assert differing == []
    # every keyword, on its own, triggers its rules through the set
    for word in words:
        picked = {fast.rule_ids[i] for i in fast._triggered(word)}
        assert {r.id for r in ruleset.rules if word in r.keywords} <= picked


def test_builtin_examples_give_the_same_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, plain = both(builtin_ruleset(), monkeypatch)
    texts = [text for true, false in EXAMPLES.values() for text in (*true, *false)]
    texts += [f"Summary: {t.upper()} and again {t}" for t in texts]
    found = 0
    for text in texts:
        assert fast.scan_report(text) == plain.scan_report(text), text[:40]
        found += bool(plain.scan(text))
    assert found > len(EXAMPLES)  # the examples do find secrets
