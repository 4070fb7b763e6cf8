"""The match verifier: traps refused, paraphrases served, conversations kept apart.

Unit checks use the real verifier on the project's trap set; the hook tests run the real
embedding model behind the HTTP hook.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip

from sidecar.cache.layer import EMPTY_SCOPE
from sidecar.cache.match.verify import ALL_CHECKS, AnswerChangeVerifier, build_verifier
from sidecar.config import CacheConfig, ConfigError, load_config

TRAP_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "trap_pairs.jsonl"
TRAPS = [json.loads(line) for line in TRAP_FILE.read_text().splitlines() if line.strip()]
TRAP_CATEGORIES = sorted({r["category"] for r in TRAPS if not r["same"]})
SAME_CATEGORIES = sorted({r["category"] for r in TRAPS if r["same"]})


def refusing_checks(question: str, cached: str, **settings: Any) -> list[str]:
    verifier = AnswerChangeVerifier(**settings)
    return [r.split(":")[0] for r in verifier.refusals(question, cached)]


def test_trap_set_covers_the_issue_categories_and_domains() -> None:
    assert set(TRAP_CATEGORIES) == {
        "negation",
        "antonym",
        "number",
        "datetime",
        "unit",
        "entity",
        "scope",
    }
    assert set(SAME_CATEGORIES) == {"paraphrase", "near_repeat"}
    assert len(TRAPS) >= 500
    assert all(isinstance(r["a"], str) and isinstance(r["b"], str) for r in TRAPS)


@pytest.mark.parametrize(
    ("cached", "question", "check"),
    [
        ("Is the clinic open on Sundays?", "Is the clinic closed on Sundays?", "antonym"),
        ("Export my data from Salesforce", "Export my data from HubSpot", "entity"),
        ("Book 2 tickets for Friday", "Book 4 tickets for Saturday", "number"),
        ("Book 2 tickets for Friday", "Book 4 tickets for Saturday", "datetime"),
        ("Is ibuprofen safe with alcohol?", "Is ibuprofen unsafe with alcohol?", "antonym"),
    ],
)
def test_the_issue_examples_are_refused(cached: str, question: str, check: str) -> None:
    assert check in refusing_checks(question, cached)


@pytest.mark.parametrize(
    ("cached", "question", "check"),
    [
        ("Can I get a refund with a receipt?", "Can I get a refund without a receipt?", "negation"),
        (
            "Why did my card payment go through?",
            "Why didn't my card payment go through?",
            "negation",
        ),
        (
            "How do I enable two-factor authentication?",
            "How do I disable two-factor authentication?",
            "antonym",
        ),
        (
            "How do I lock my debit card in the app?",
            "How do I unlock my debit card in the app?",
            "antonym",
        ),
        (
            "How do I upload files to the shared drive?",
            "How do I download files from the shared drive?",
            "antonym",
        ),
        # a version written after a name is part of the name ("Python 3.8" is "Python3.8")
        ("Is Python 3.8 still supported?", "Is Python 3.12 still supported?", "entity"),
        ("Can I bring 3 bags on board?", "Can I bring 2 bags on board?", "number"),
        ("How many calories are in two eggs?", "How many calories are in three eggs?", "number"),
        ("Is the gym busy at 6am?", "Is the gym busy at 6pm?", "datetime"),
        ("Deliver the order on March 3", "Deliver the order on April 3", "datetime"),
        ("Convert 5 kg to pounds", "Convert 5 pounds to kg", "unit"),
        ("Refund 25 euros to my card", "Refund 25 dollars to my card", "unit"),
        ("How do I use useEffect in React?", "How do I use useMemo in React?", "entity"),
        (
            "Does the Samsung Galaxy S23 have an SD card slot?",
            "Does the Samsung Galaxy S24 have an SD card slot?",
            "entity",
        ),
        (
            "Is my Roth IRA contribution tax deductible?",
            "Is my traditional IRA contribution tax deductible?",
            "entity",
        ),
        ("Refund all items in my order", "Refund some items in my order", "scope"),
        (
            "Which is healthier, brown rice or white rice?",
            "Which is less healthy, brown rice or white rice?",
            "scope",
        ),
        ("Is Python faster than Java?", "Is Java faster than Python?", "order"),
        (
            "Change my reservation from Friday to Sunday",
            "Change my reservation from Sunday to Friday",
            "order",
        ),
    ],
)
def test_each_check_refuses_its_kind_of_difference(cached: str, question: str, check: str) -> None:
    assert check in refusing_checks(question, cached)


@pytest.mark.parametrize("category", TRAP_CATEGORIES)
def test_every_trap_category_is_refused(category: str) -> None:
    pairs = [r for r in TRAPS if r["category"] == category]
    verifier = AnswerChangeVerifier()
    accepted = [r for r in pairs if verifier.verify(r["b"], r["a"], 0.95).accept]
    assert len(accepted) <= 0.05 * len(pairs), accepted


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        ("Book 2 tickets for Friday", "Book two tickets for Friday"),
        ("Is the pharmacy open at 2pm on Saturday?", "Is the pharmacy open at 14:00 on Saturday?"),
        ("Convert 5 kg to pounds", "Convert 5 kilograms to pounds"),
        ("Convert 100 USD to EUR", "Convert $100 to EUR"),
        ("Can I return an item after 30 days?", "Can I return an item after thirty days?"),
        ("Why can't I log in to my account?", "Why am I unable to log in to my account?"),
        ("Is there free wifi at the hotel?", "Is there free Wi-Fi at the hotel?"),
        ("Export my data from Salesforce", "export my data from salesforce"),
        ("How do I reset my password?", "How can I reset my password?"),
        ("Can I use my Visa card at Aldi?", "Does Aldi accept Visa cards?"),
    ],
)
def test_paraphrases_are_accepted(cached: str, question: str) -> None:
    assert refusing_checks(question, cached) == []


@pytest.mark.parametrize("category", SAME_CATEGORIES)
def test_most_true_paraphrases_are_accepted(category: str) -> None:
    pairs = [r for r in TRAPS if r["category"] == category]
    verifier = AnswerChangeVerifier()
    refused = [r for r in pairs if not verifier.verify(r["b"], r["a"], 0.95).accept]
    assert len(refused) <= 0.1 * len(pairs), refused


def test_reasons_name_the_check_and_never_quote_the_question() -> None:
    verifier = AnswerChangeVerifier()
    reasons = set()
    for row in TRAPS:
        reason = verifier.verify(row["b"], row["a"], 0.95).reason
        if reason:
            check, _, detail = reason.partition(": ")
            assert check in ALL_CHECKS
            # fixed wording only: no digits, names or other words taken from the user's text
            assert re.fullmatch(r"[a-z ,]+", detail), reason
            reasons.add(reason)
    assert 5 <= len(reasons) <= 30


def test_settings_choose_checks_and_strictness() -> None:
    assert build_verifier(CacheConfig(verifier="off")) is None
    assert isinstance(build_verifier(CacheConfig()), AnswerChangeVerifier)
    negated = ("Is the clinic not open on Sundays?", "Is the clinic open on Sundays?")
    assert refusing_checks(*negated) == ["negation"]
    assert refusing_checks(*negated, checks=["entity", "number"]) == []

    one_sided_number = ("Book 2 tickets for Friday", "Book tickets for Friday")
    assert refusing_checks(*one_sided_number, strictness="lenient") == []
    assert refusing_checks(*one_sided_number, strictness="balanced") == ["number"]

    one_sided_name = ("How do I reset my password on Netflix?", "How do I reset my password?")
    assert refusing_checks(*one_sided_name, strictness="balanced") == []
    assert refusing_checks(*one_sided_name, strictness="strict") == ["entity"]

    with pytest.raises(ValueError, match="unknown verifier checks"):
        AnswerChangeVerifier(checks=["negation", "spelling"])  # type: ignore[list-item]


def test_verifier_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="cache.verifier"):
        load_config(environ={"SIDECAR_CACHE__VERIFIER": "maybe"})
    with pytest.raises(ConfigError, match="cache.verifier_checks"):
        load_config(environ={"SIDECAR_CACHE__VERIFIER_CHECKS": "[negation, spelling]"})
    config = load_config(environ={"SIDECAR_CACHE__VERIFIER_CHECKS": "[negation, number]"})
    assert config.cache.verifier_checks == ["negation", "number"]


# ---------------------------------------------------------------- through the HTTP hook
async def test_hook_refuses_a_trap_and_serves_a_paraphrase(sidecar_factory: Any) -> None:
    # The rule checks and the head; the pair model refuses this short rewording ("Does" for
    # "Is": a miss, not a wrong answer). tests/test_pair_model.py covers the pair model.
    async with sidecar_factory(make_config(cache={"pair_model": "off"})) as (_, client):
        await round_trip(
            client, chat_body("Is the clinic open on Sundays?"), openai_answer("Yes, 9 to 1.")
        )
        trap = (await request_hook(client, chat_body("Is the clinic closed on Sundays?"))).json()
        assert trap["action"] == "continue"
        assert trap["cache"]["status"] == "miss"
        assert "refused by the verifier" in trap["cache"]["reason"]
        assert "antonym" in trap["cache"]["reason"]
        para = (await request_hook(client, chat_body("Does the clinic open on Sundays?"))).json()
        assert para["cache"]["status"] == "hit-semantic"
        assert para["response"]["body"]["choices"][0]["message"]["content"] == "Yes, 9 to 1."
        metrics = (await client.get("/metrics")).text
        assert 'sidecar_cache_verifier_refusals_total{reason="antonym"} 1.0' in metrics


async def test_without_the_verifier_the_trap_is_served(sidecar_factory: Any) -> None:
    config = make_config(cache={"verifier": "off"})
    async with sidecar_factory(config) as (_, client):
        await round_trip(
            client, chat_body("Is the clinic open on Sundays?"), openai_answer("Yes, 9 to 1.")
        )
        trap = (await request_hook(client, chat_body("Is the clinic closed on Sundays?"))).json()
        assert trap["cache"]["status"] == "hit-semantic"  # the wrong answer the verifier stops


async def test_lookup_considers_more_than_the_nearest_candidate(
    sidecar_factory: Any, embedder: Any
) -> None:
    question = "Is the pharmacy open on Sundays?"
    negated, closed = "Is the pharmacy not open on Sundays?", "Is the pharmacy closed on Sundays?"
    paraphrase = "Can I visit the pharmacy on Sundays?"
    vectors = embedder.encode_sync([question, negated, closed, paraphrase])
    sims = [float(vectors[0] @ v) for v in vectors[1:]]
    assert sims[0] > sims[2] and sims[1] > sims[2] > 0.85  # both traps are nearer
    # The rule checks alone (this paraphrase scores just under the match head's minimum).
    config = make_config(cache={"threshold": 0.85, "match_head": "off", "pair_model": "off"})
    async with sidecar_factory(config) as (_, client):
        for text, answer in ((negated, "No."), (closed, "It is closed."), (paraphrase, "Yes.")):
            # seeded with an exact-only lookup, so each one is stored rather than served
            _, stored = await round_trip(
                client,
                chat_body(text),
                openai_answer(answer),
                headers={"x-bf-cache-threshold": "1.0"},
            )
            assert stored is not None and "stored_entry_id" in stored
        hit = (await request_hook(client, chat_body(question))).json()
        assert hit["cache"]["status"] == "hit-semantic"
        assert hit["response"]["body"]["choices"][0]["message"]["content"] == "Yes."


def _conversation(first: str, answer: str, follow_up: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": first},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up},
        ],
    }


# The match head and the pair model are off in both: they refuse the short reworded follow-up
# below (a missed hit, not a wrong one), which is not what this test is about.
@pytest.mark.parametrize(
    "cache",
    [{"match_head": "off", "pair_model": "off"}, {"threshold": 0.0, "verifier": "off"}],
)
async def test_follow_up_never_hits_another_conversation(
    sidecar_factory: Any, cache: dict[str, Any]
) -> None:
    """The scope covers the history: even with no threshold and no verifier, an identical
    follow-up in another conversation is a miss."""
    async with sidecar_factory(make_config(cache=cache)) as (_, client):
        basic = _conversation(
            "What does the basic plan cost?", "$10 a month.", "and for the premium plan?"
        )
        await round_trip(client, basic, openai_answer("$30 a month."))
        seats = _conversation(
            "How many seats does the basic plan include?",
            "Three seats.",
            "and for the premium plan?",
        )
        other = (await request_hook(client, seats)).json()
        assert other["cache"]["status"] == "miss"
        assert other["cache"]["reason"] == EMPTY_SCOPE
        again = (await request_hook(client, basic)).json()
        assert again["cache"]["status"] == "hit-exact"
        same_history = _conversation(
            "What does the basic plan cost?", "$10 a month.", "what about the premium plan?"
        )
        reworded = (await request_hook(client, same_history)).json()
        assert reworded["cache"]["status"] == "hit-semantic"
        assert reworded["response"]["body"]["choices"][0]["message"]["content"] == "$30 a month."
