"""Direction swaps and near-repeats by spelling (issue 14, second round).

The ``order`` check refuses a question whose source and target are swapped around "to" /
"into" / "from"; a near-repeat by spelling (typos, also onto another real word) is offered
below the similarity threshold and is not judged by the match head. Through the HTTP hook
with the real embedder, verifier, head and bundled pair model.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip

from sidecar.cache.candidates import Candidate
from sidecar.cache.match.verify import AnswerChangeVerifier, build_verifier
from sidecar.cache.match.words import spelling_repeat
from sidecar.config import CacheConfig


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        ("How do I convert a list to a string?", "How do I convert a string to a list?"),
        (
            "How do I copy files from the host into the container?",
            "How do I copy files from the container to the host?",
        ),
        ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius"),
        (
            "Move the files to the archive from the inbox",
            "Move the files from the archive to the inbox",
        ),
        ("Cast a list of strings to a dict", "Cast a dict to a list of strings"),
    ],
)
def test_source_and_target_swapped_is_refused_by_the_rules(cached: str, question: str) -> None:
    refused = AnswerChangeVerifier().refusals(question, cached)
    # "from ... to ..." swapped whole is the older "from and to swapped"
    assert refused in (["order: source and target swapped"], ["order: from and to swapped"])


@pytest.mark.parametrize(
    ("cached", "question"),
    [
        # the same direction, other wording or word order
        (
            "How to convert a list to a string in Python",
            "In Python, how to convert a list to a string",
        ),
        ("How do I send money to India from the US?", "How do I send money from the US to India?"),
        (
            "How do I convert Celsius to Fahrenheit?",
            "What is the formula to convert Celsius to Fahrenheit?",
        ),
        ("Tips to move from Java to Python", "Moving from Java to Python: tips?"),
    ],
)
def test_the_same_direction_in_other_words_is_no_swap(cached: str, question: str) -> None:
    assert not any(
        r.startswith("order:") for r in AnswerChangeVerifier().refusals(question, cached)
    )


@pytest.mark.parametrize(
    ("cached", "question", "expected"),
    [
        ("How do I change my billing address?", "How do I chagne my billing adress?", True),
        ("How do I reset my password?", "How do I rest my password?", True),
        ("Is the clinic open on Sundays?", "is the clinic open on sundays", True),
        ("Book 2 tickets for Friday", "Book 4 tickets for Friday", False),  # numbers never slip
        ("Delete the first line of the file", "Delete the last line of the file", False),
        ("How do I subscribe to the newsletter?", "How do I unsubscribe to the newsletter?", False),
        ("Upgrade to Python 3.8", "Upgrade to Python 3.9", False),
        ("How do I reset my password?", "How do I reset my password now please?", False),
    ],
)
def test_spelling_repeat(cached: str, question: str, expected: bool) -> None:
    assert spelling_repeat(question, cached) is expected


def test_a_slip_onto_a_real_word_is_for_the_pair_model_to_judge() -> None:
    # without the pair model the rules' refusal stands: "rest" and "reset" are both words
    rules_only = AnswerChangeVerifier()
    verdict = rules_only.verify_batch(
        "How do I rest my password?", [Candidate("How do I reset my password?", 0.9)]
    )[0]
    assert not verdict.accept and verdict.reason.startswith("edit:")


def test_with_the_pair_model_a_slip_is_served_and_a_real_change_is_not() -> None:
    verifier = build_verifier(CacheConfig())
    assert isinstance(verifier, AnswerChangeVerifier) and verifier.pair_model is not None
    slip, change = verifier.verify_batch(
        "How do I rest my password?",
        [Candidate("How do I reset my password?", 0.9), Candidate("How do I reset my pass?", 0.9)],
    )
    assert slip.accept
    (change,) = verifier.verify_batch(
        "Fill in the from for a refund", [Candidate("Fill in the form for a refund", 0.9)]
    )
    assert not change.accept and change.reason.startswith("pair_model:")


async def test_a_direction_swap_is_not_served(sidecar_factory: Any) -> None:
    async with sidecar_factory(make_config()) as (_, client):
        await round_trip(
            client,
            chat_body("How do I convert a list to a string in Python?"),
            openai_answer("Use ''.join(items)."),
        )
        swap = (
            await request_hook(client, chat_body("How do I convert a string to a list in Python?"))
        ).json()
        assert swap["cache"]["status"] == "miss"
        assert "order: source and target swapped" in swap["cache"]["reason"]
        same = (
            await request_hook(client, chat_body("how do I convert a list to a string in python"))
        ).json()
        assert same["cache"]["status"] == "hit-semantic"


async def test_a_typo_near_repeat_is_served_even_below_the_threshold(
    sidecar_factory: Any, embedder: Any
) -> None:
    cached, typo = "Why do I need a catalytic converter?", "Why do I need a catlytic conevrter?"
    other = "Why do I need a muffler?"
    vectors = embedder.encode_sync([cached, typo, other])
    similarity, other_similarity = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert 0.4 <= similarity < 0.65 and 0.4 <= other_similarity < 0.65  # the typos moved it
    threshold = 0.7
    async with sidecar_factory(make_config(cache={"threshold": threshold})) as (_, client):
        await round_trip(client, chat_body(cached), openai_answer("To clean the exhaust."))
        hit = (await request_hook(client, chat_body(typo))).json()
        assert hit["cache"]["status"] == "hit-semantic", hit["cache"]
        assert hit["cache"]["reason"].startswith("near-repeat by spelling")
        assert hit["response"]["body"]["choices"][0]["message"]["content"] == (
            "To clean the exhaust."
        )
        # an unrelated question at the same distance is not offered
        other = (
            await request_hook(client, chat_body("How can I find venture capital firms?"))
        ).json()
        assert other["cache"]["status"] == "miss"


async def test_without_a_verifier_nothing_below_the_threshold_is_served(
    sidecar_factory: Any, embedder: Any
) -> None:
    cached, typo = "Why do I need a catalytic converter?", "Why do I need a catlytic conevrter?"
    config = make_config(cache={"threshold": 0.7, "verifier": "off"})
    async with sidecar_factory(config) as (_, client):
        await round_trip(client, chat_body(cached), openai_answer("To clean the exhaust."))
        miss = (await request_hook(client, chat_body(typo))).json()
        assert miss["cache"]["status"] == "miss"
