"""Typo tolerance, minimal edits and version tokens in the rule checks (issue 14, items 2-3).

The examples are written for these tests; none is an item of the frozen development set.
"""

from __future__ import annotations

import pytest

from sidecar.cache.match.verify import AnswerChangeVerifier
from sidecar.cache.match.words import close_spelling, repair_typos, typo_pairs


def refusals(question: str, cached: str) -> list[str]:
    return [r.split(":")[0] for r in AnswerChangeVerifier().refusals(question, cached)]


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        ("How do I update my delivery address?", "How do I updaet my delivery adress?"),
        ("Why does Kubernetes evict my pods?", "Why does Kuberntes evict my pods?"),
        ("Where is the invoice for my last payment?", "Where is the invioce for my last payment?"),
        ("How can I export a spreadsheet to PDF?", "How can I exprot a spreadhseet to PDF?"),
    ],
)
def test_near_repeats_with_typos_pass_every_check(cached: str, question: str) -> None:
    assert refusals(question, cached) == []


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        ("How do I fill in the tax form?", "How do I fill in the tax from?"),
        ("Is the office open on weekdays?", "Is the office oven on weekdays?"),
    ],
)
def test_two_real_words_are_never_a_typo(cached: str, question: str) -> None:
    assert typo_pairs(question, cached) == {}
    assert "edit" in refusals(question, cached)


def test_a_prefix_that_reverses_a_word_is_not_a_typo() -> None:
    assert not close_spelling("subscribe", "unsubscribe")
    assert "antonym" in refusals(
        "How do I unsubscribe from alerts?", "How do I subscribe to alerts?"
    )


def test_short_unknown_names_are_not_typos_of_each_other() -> None:
    assert typo_pairs("How do I use pnpm workspaces?", "How do I use npm workspaces?") == {}


def test_repair_takes_the_spelling_of_the_other_side() -> None:
    question, cached = repair_typos("Why is my dokcer image huge?", "Why is my Docker image huge?")
    assert question == cached == "Why is my Docker image huge?"


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        ("How do I delete a cron job?", "How do I create a cron job?"),
        ("How do I rename a branch in git?", "How do I rename a remote in git?"),
        ("What is the median of these numbers?", "What is the mode of these numbers?"),
    ],
)
def test_a_one_word_substitution_that_is_no_synonym_is_refused(cached: str, question: str) -> None:
    assert refusals(question, cached) != []


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        ("How do I erase my search history?", "How do I delete my search history?"),
        ("How do I configure a proxy on my laptop?", "How do I set up a proxy on my laptop?"),
        ("How do I enable auto updates?", "How do I turn on auto updates?"),
        ("How do I sort a list of tuples?", "How do I sort lists of tuples?"),
        ("Which editor is the quickest to learn?", "Which editor is the fastest to learn?"),
    ],
)
def test_synonyms_and_inflections_pass_a_minimal_edit(cached: str, question: str) -> None:
    assert refusals(question, cached) == []


def test_longer_rewordings_are_not_minimal_edits() -> None:
    # more than two words differ: the edit check leaves it to the other checks and the models
    assert "edit" not in refusals(
        "How do I see the disk usage of a folder?", "Which command shows how big a folder is?"
    )


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        ("How do I add OAuth 2.0 to my API?", "How do I add OAuth2 to my API?"),
        ("Does the router support WPA3?", "Does the router support WPA 3?"),
        ("Is HTTP/2 faster than HTTP/1.1?", "Is HTTP2 faster than HTTP1.1?"),
    ],
)
def test_a_version_written_apart_or_together_is_one_name(cached: str, question: str) -> None:
    assert refusals(question, cached) == []


def test_different_versions_stay_different() -> None:
    assert refusals("How do I add OAuth 2.0 to my API?", "How do I add OAuth 1.0 to my API?")
    assert refusals("What changed in Node 18?", "What changed in Node 20?")


def test_a_number_after_an_ordinary_word_stays_a_number() -> None:
    assert refusals("Reserve a table for 4 tonight", "Reserve a table for 2 tonight") == ["number"]
