"""The adaptive simulation's question classes and stream (benchmarks/adaptive_stream.py), on a
small inline fixture (the benchmark feeds it the Quora pairs of the shared data), and its fake
provider (benchmarks/adaptive_provider.py)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from benchmarks.adaptive_provider import TEMPLATES, class_answer, class_facts, wording_of
from benchmarks.adaptive_stream import (
    DEFAULT_MIX,
    DEFAULT_NEW_CLASS_SHARES,
    KINDS,
    LabelledPair,
    build_classes,
    drop_near_twins,
    generate_stream,
    kind_counts,
    near_twin_pairs,
    question_key,
    same_words_twins,
    select_traps,
    stream_digest,
    trap_world,
    word_key,
)
from sidecar.demo.processes import ManagedProcess, free_port


def _fixture() -> list[LabelledPair]:
    """Twelve topics of three paraphrases (chained duplicates: a~b, b~c), a conflicting
    non-duplicate inside one topic, non-duplicates across topics, and lone questions."""
    pairs = []
    for t in range(12):
        a, b, c = (f"how do I fix thing {t} ({v})" for v in "abc")
        pairs += [LabelledPair(a, b, True), LabelledPair(b, c, True)]
        conflicting = f"  how do I fix thing {t}  (c)"
        pairs.append(LabelledPair(a, conflicting, False))
        pairs.append(LabelledPair(a, f"how do I break thing {t}", False))
    for t in range(60):
        pairs.append(LabelledPair(f"lone question {t}", f"other lone question {t}", False))
    return pairs


def _similarity(pairs: object) -> list[float]:
    # "fix" beside "break" of the same thing looks alike; lone questions do not.
    return [0.9 if "break" in a + b else 0.2 for a, b in pairs]  # type: ignore[attr-defined]


def _stream(seed: int, length: int = 150) -> list:
    classes, across = build_classes(_fixture())
    traps = select_traps(across, _similarity, 0.8)
    return generate_stream(classes, traps, length, seed)


def test_classes_are_the_duplicate_components_and_disjoint() -> None:
    classes, across = build_classes(_fixture())
    seen: set[str] = set()
    for members in classes.members:
        assert not seen & set(members), "a question in two classes"
        seen |= set(members)
    assert seen == set(classes.class_of)
    topic = classes.class_of["how do I fix thing 3 (a)"]
    # a~b and b~c join all three, and white space does not make another question
    assert sorted(classes.members[topic]) == [f"how do I fix thing 3 ({v})" for v in "abc"]
    assert classes.class_of["how do I break thing 3"] != topic
    # the non-duplicate inside one component is dropped, not offered as a trap
    assert classes.conflicting_pairs == 12
    assert all(classes.class_of[a] != classes.class_of[b] for a, b in across)


def test_traps_cross_classes_and_follow_their_look_alike() -> None:
    classes, across = build_classes(_fixture())
    traps = select_traps(across, _similarity, 0.8)
    assert len(traps) == 12
    assert all(classes.class_of[a] != classes.class_of[b] for a, b, _ in traps)
    stream = generate_stream(classes, traps, 150, seed=3)
    asked: set[str] = set()
    partners = {b: a for a, b, _ in traps} | {a: b for a, b, _ in traps}
    trap_requests = [r for r in stream if r.kind == "trap"]
    assert trap_requests, "no trap in the stream"
    for request in stream:
        if request.kind == "trap":
            # its look-alike of another class was asked before, its own class was not
            assert partners[request.text] in asked
            assert classes.class_of[partners[request.text]] != request.class_id
        asked.add(request.text)


def test_kinds_mean_what_they_say() -> None:
    stream = _stream(seed=5)
    classes, _ = build_classes(_fixture())
    asked_texts: set[str] = set()
    asked_classes: set[int] = set()
    for request in stream:
        assert classes.class_of[request.text] == request.class_id
        if request.kind == "repeat":
            assert request.text in asked_texts
        elif request.kind == "paraphrase":
            assert request.text not in asked_texts and request.class_id in asked_classes
        else:  # new and trap: a class asked for the first time
            assert request.class_id not in asked_classes
        asked_texts.add(request.text)
        asked_classes.add(request.class_id)
    counts = kind_counts(stream)
    assert set(counts) == set(KINDS) and sum(counts.values()) == len(stream) == 150
    assert all(counts[k] > 0 for k in KINDS), counts


def test_the_seed_freezes_the_stream() -> None:
    first, again, other = _stream(seed=11), _stream(seed=11), _stream(seed=12)
    assert first == again and stream_digest(first) == stream_digest(again)
    assert stream_digest(first) != stream_digest(other)
    # a longer stream starts with the shorter one: the length does not reshuffle it
    assert _stream(seed=11, length=200)[:150] == first


def test_running_out_of_classes_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="classes ran out after"):
        _stream(seed=1, length=10_000)
    with pytest.raises(ValueError, match="unknown request kind"):
        classes, across = build_classes(_fixture())
        generate_stream(classes, [], 10, 1, mix={"new": 1.0, "typo": 0.1})


def test_trap_share_sets_the_mix_and_keeps_the_default_world() -> None:
    # The default share gives the default mix exactly: the harsh world's streams are unchanged.
    assert trap_world(DEFAULT_MIX["trap"]) == (DEFAULT_MIX, DEFAULT_NEW_CLASS_SHARES)
    mix, shares = trap_world(0.02)
    assert mix["trap"] == 0.02 and sum(mix.values()) == pytest.approx(1.0)
    # the other kinds keep their proportions
    assert mix["repeat"] / mix["new"] == pytest.approx(DEFAULT_MIX["repeat"] / DEFAULT_MIX["new"])
    # classes with a trap question: twice the trap share of new questions, as by default
    assert shares == pytest.approx((0.6, 0.04, 0.36))
    with pytest.raises(ValueError, match="trap share"):
        trap_world(0.5)
    # Fewer traps in the stream at a lower share, same seed.
    classes, across = build_classes(_fixture())
    traps = select_traps(across, _similarity, 0.8)
    streams = {}
    for share in (0.02, 0.3):
        mix, shares = trap_world(share)
        streams[share] = generate_stream(classes, traps, 150, 5, mix, new_class_shares=shares)
    few, many = streams[0.02], streams[0.3]
    assert kind_counts(few)["trap"] < kind_counts(many)["trap"]


def test_each_class_question_is_asked_as_new_at_most_once() -> None:
    stream = _stream(seed=7)
    firsts = [r.class_id for r in stream if r.kind in ("new", "trap")]
    assert len(firsts) == len(set(firsts))
    for a, b in itertools.pairwise(stream):
        assert a.index + 1 == b.index


def test_same_words_twins_cross_classes_only() -> None:
    assert word_key("How do I fix it?") == word_key("fix  it, how do i") == "do fix how i it"
    assert word_key("How do I fix it?") != word_key("How do I fix them?")
    pairs = [*_fixture(), LabelledPair("question 7, lone?", "yet another question 7", False)]
    classes, _ = build_classes(pairs)
    twins = same_words_twins(classes)
    assert twins == [("lone question 7", "question 7, lone?")]
    # the paraphrases of one class are not twins, however alike
    assert all(classes.class_of[a] != classes.class_of[b] for a, b in twins)


def test_near_twin_pairs_by_cosine_across_classes() -> None:
    pairs = [LabelledPair("a", "d", True), LabelledPair("b", "c", False)]
    classes, _ = build_classes(pairs)
    b = [0.99, (1 - 0.99**2) ** 0.5]
    vectors = {"a": [1.0, 0.0], "b": b, "c": [0.0, 1.0], "d": [1.0, 0.0]}
    questions = ["a", "b", "c", "d"]
    for block in (1, 3, 1024):  # block boundaries change nothing
        found = near_twin_pairs(questions, [vectors[q] for q in questions], classes, 0.9, block)
        # a~d is one class; b~c is far apart; each pair once
        assert [(x, y) for x, y, _ in found] == [("a", "b"), ("b", "d")], block
        assert all(abs(sim - 0.99) < 1e-3 for *_, sim in found)
    with pytest.raises(ValueError, match="3 vectors for 4 questions"):
        near_twin_pairs(questions, [vectors[q] for q in "abc"], classes, 0.9)


def test_clean_variant_drops_unlabelled_twins_and_keeps_traps() -> None:
    pairs = [*_fixture(), LabelledPair("question 7, lone?", "yet another question 7", False)]
    classes, across = build_classes(pairs)
    traps = select_traps(across, _similarity, 0.8)
    twins = [
        *same_words_twins(classes),  # two lone questions with the same words: unlabelled
        ("how do I fix thing 3 (a)", "how do I break thing 3"),  # a labelled trap: both stay
        # a trap question (class of 1) beside a paraphrase (class of 3): the one not in a trap
        ("how do I break thing 5", "how do I fix thing 6 (b)"),
        ("how do I fix thing 1 (a)", "how do I fix thing 1 (b)"),  # one class: not twins
        # neither in a trap: the question of the smaller class goes, which also settles the
        # same-words pair above (its other question stays)
        ("lone question 7", "how do I fix thing 8 (c)"),
    ]
    cleaned = drop_near_twins(classes, traps, twins)
    assert cleaned.dropped == ["how do I fix thing 6 (b)", "lone question 7"]
    assert cleaned.twin_pairs == 3
    assert drop_near_twins(classes, traps, reversed(twins)) == cleaned  # input order: no matter
    kept = cleaned.classes
    assert not set(cleaned.dropped) & set(kept.class_of)
    assert len(kept.class_of) == len(classes.class_of) - 2
    for class_id, members in enumerate(kept.members):
        assert members and all(kept.class_of[q] == class_id for q in members)
    # the classes are the same sets of questions, renumbered
    before = {frozenset(m) - set(cleaned.dropped) for m in classes.members} - {frozenset()}
    assert before == {frozenset(m) for m in kept.members}
    assert cleaned.traps == traps  # no trap lost a question
    # seeded and reproducible; dropped questions are never asked
    first = generate_stream(kept, cleaned.traps, 120, seed=4)
    assert first == generate_stream(kept, cleaned.traps, 120, seed=4)
    assert not {r.text for r in first} & set(cleaned.dropped)
    assert all(kept.class_of[r.text] == r.class_id for r in first)
    assert kind_counts(first)["trap"] > 0


def test_provider_answers_by_class_in_varied_words(tmp_path: Path) -> None:
    """The simulation's fake provider, a real process on loopback: one class's answers share
    their facts in different words, another class's name other facts, and a question outside
    the class map is a 400 naming the problem."""
    class_map = {
        question_key("how do I fix thing 1 (a)"): 1,
        question_key("how do I fix thing 1 (b)"): 1,
        question_key("how do I break thing 1"): 2,
    }
    (tmp_path / "classes.json").write_bytes(orjson.dumps(class_map))
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.adaptive_provider", str(port)]
    command += [str(tmp_path / "classes.json"), "5"]
    provider = ManagedProcess("provider", command, tmp_path / "provider.log").start()
    try:
        provider.wait_ready(f"http://127.0.0.1:{port}/healthz", 30)

        def ask(question: str) -> httpx.Response:
            body = {"model": "m", "messages": [{"role": "user", "content": question}]}
            return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)

        answers = {}
        for question in class_map:
            reply = ask(question)
            assert reply.status_code == 200
            answers[question] = reply.json()["choices"][0]["message"]["content"]
        assert (
            ask("how do I fix thing 1 (a)").json()["choices"][0]["message"]["content"]
            == (answers["how do I fix thing 1 (a)"])
        ), "the same question, the same words"
        unknown = ask("a question nobody mapped")
        assert unknown.status_code == 400 and "class map" in unknown.text
    finally:
        provider.stop()
    facts = class_facts(1, 5)
    for wording in range(len(TEMPLATES)):
        text = class_answer(1, 5, wording)
        assert facts["person"] in text and str(facts["count"]) in text
    other = class_facts(2, 5)
    assert answers["how do I break thing 1"] == class_answer(
        2, 5, wording_of("how do I break thing 1")
    )
    assert other["person"] != facts["person"] or other["count"] != facts["count"]
    assert len({class_answer(1, 5, w) for w in range(len(TEMPLATES))}) == len(TEMPLATES)
