"""The learned match head: the bundled weights, when it is used, and what it refuses.

Runs the real embedding model; the pairs are written here (not taken from the training data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip

from sidecar.cache.match.head import (
    DEFAULT_HEAD,
    DuplicateHead,
    MatchHeadError,
    bundled_head,
    head_for,
)
from sidecar.cache.match.verify import (
    AnswerChangeVerifier,
    build_verifier,
    embedder_vectors,
    pair_text_features,
)
from sidecar.config import EmbedderConfig, SidecarConfig
from sidecar.formats import normalise_text

# Pairs every rule-based check lets through (same numbers, names, polarity ...).
SAME = [
    ("What is the best way to learn Python?", "How should I start learning Python?"),
    ("How do I get rid of acne?", "What are the best ways to get rid of acne?"),
    ("How can I lose weight fast?", "What is the fastest way to lose weight?"),
    ("What is the capital of France?", "Tell me the capital city of France."),
]
# The head is not always right the other way: "How can I improve my writing skills?" and
# "What steps can I take to write better?" score 0.35 (a missed hit, not a wrong answer).
DIFFERENT = [
    ("How did you become a data scientist?", "How can I become a data scientist?"),
    ("What is the attention span of a goldfish?", "Why is my attention span that of a goldfish?"),
    ("What shoes does Ne-Yo wear?", "What does Ne-Yo wear?"),
]


def score(head: DuplicateHead, embedder: Any, question: str, cached: str) -> float:
    q, c = normalise_text(question), normalise_text(cached)
    u, v = embedder.encode_sync([q, c])
    return head.score(u, v, float(u @ v), pair_text_features(q, c))


@pytest.fixture(scope="module")
def head() -> DuplicateHead:
    return DuplicateHead.load(DEFAULT_HEAD)


def test_bundled_head_names_its_model_and_training_data(head: DuplicateHead) -> None:
    assert head.model == "all-MiniLM-L6-v2" and head.dimension == 384
    assert "excluding the first 10000" in head.info["trained_on"]
    assert head.info["held_out_operating_point"]["precision"] > 0.8


@pytest.mark.parametrize(("question", "cached"), SAME)
def test_paraphrases_score_above_the_default_minimum(
    head: DuplicateHead, embedder: Any, question: str, cached: str
) -> None:
    assert AnswerChangeVerifier().refusals(question, cached) == []
    assert score(head, embedder, question, cached) >= SidecarConfig().cache.match_head_min


@pytest.mark.parametrize(("question", "cached"), DIFFERENT)
def test_different_questions_the_rules_miss_score_below_it(
    head: DuplicateHead, embedder: Any, question: str, cached: str
) -> None:
    assert AnswerChangeVerifier().refusals(question, cached) == []
    assert score(head, embedder, question, cached) < SidecarConfig().cache.match_head_min


def test_score_does_not_depend_on_which_side_is_cached(head: DuplicateHead, embedder: Any) -> None:
    for question, cached in SAME + DIFFERENT:
        forward = score(head, embedder, question, cached)
        assert score(head, embedder, cached, question) == pytest.approx(forward, abs=0.02)


def test_head_is_used_only_with_the_model_it_was_trained_for(tmp_path: Path) -> None:
    assert head_for("auto", "all-MiniLM-L6-v2", 384) is not None
    assert head_for("auto", "sentence-transformers/all-MiniLM-L6-v2", 384) is not None
    assert head_for("auto", "text-embedding-3-small", 1536) is None
    assert head_for("off", "all-MiniLM-L6-v2", 384) is None
    with pytest.raises(MatchHeadError, match="trained on all-MiniLM-L6-v2"):
        head_for(str(DEFAULT_HEAD), "text-embedding-3-small", 1536)
    broken = tmp_path / "head.npz"
    broken.write_bytes(b"not a head")
    with pytest.raises(MatchHeadError, match=str(broken)):
        head_for(str(broken), "all-MiniLM-L6-v2", 384)
    with pytest.raises(MatchHeadError, match="missing.npz"):
        head_for(str(tmp_path / "missing.npz"), "all-MiniLM-L6-v2", 384)


def test_a_local_model_path_or_a_remote_model_turns_the_bundled_head_off() -> None:
    config = SidecarConfig().cache
    with_head = build_verifier(config, EmbedderConfig(), 384)
    assert isinstance(with_head, AnswerChangeVerifier) and with_head.head is not None
    local = build_verifier(config, EmbedderConfig(model_path="/models/mine"), 384)
    assert isinstance(local, AnswerChangeVerifier) and local.head is None
    remote = build_verifier(config, EmbedderConfig(backend="openai", base_url="http://x/v1"), 384)
    assert isinstance(remote, AnswerChangeVerifier) and remote.head is None


def test_head_refusal_reason_names_the_head_not_the_words(head: DuplicateHead) -> None:
    verifier = AnswerChangeVerifier(head=head, head_min=1.0)  # nothing scores 1.0
    u = np.ones(384, dtype=np.float32) / np.sqrt(384)
    verdict = verifier.verify("how do i sleep better?", "how can i sleep better?", 0.95, (u, u))
    assert not verdict.accept and verdict.reason.startswith("match_head: duplicate score")
    assert "sleep" not in verdict.reason
    # without the vectors (an entry stored without one) the head is not asked
    assert verifier.verify("how do i sleep better?", "how can i sleep better?", 0.95).accept


# ---------------------------------------------------------------- through the HTTP hook
async def test_hook_refuses_what_only_the_head_catches(sidecar_factory: Any) -> None:
    cached, other = DIFFERENT[0][1], DIFFERENT[0][0]
    async with sidecar_factory() as (sidecar, client):
        assert sidecar.cache.verifier.head is not None
        await round_trip(client, chat_body(cached), openai_answer("Study statistics first."))
        reply = (await request_hook(client, chat_body(other))).json()
        assert reply["cache"]["status"] == "miss"
        assert "match_head" in reply["cache"]["reason"]
        para = (await request_hook(client, chat_body("How do I become a data scientist?"))).json()
        assert para["cache"]["status"] == "hit-semantic"
        metrics = (await client.get("/metrics")).text
        assert 'sidecar_cache_verifier_refusals_total{reason="match_head"} 1.0' in metrics


async def test_match_head_off_serves_it(sidecar_factory: Any) -> None:
    cached, other = DIFFERENT[0][1], DIFFERENT[0][0]
    async with sidecar_factory(make_config(cache={"match_head": "off"})) as (sidecar, client):
        assert sidecar.cache.verifier.head is None
        await round_trip(client, chat_body(cached), openai_answer("Study statistics first."))
        reply = (await request_hook(client, chat_body(other))).json()
        assert reply["cache"]["status"] == "hit-semantic"


def test_the_bundled_head_follows_the_backend_that_computes_the_vectors() -> None:
    # int8 weights move the vectors a little; a head trained on them ships as its own file,
    # and until one ships int8 falls back to torch's head. fp32 returns torch's vectors.
    assert embedder_vectors(EmbedderConfig()) == "torch"
    assert embedder_vectors(EmbedderConfig(backend="onnx")) == "onnx-fp32"
    assert embedder_vectors(EmbedderConfig(backend="onnx", onnx_quantize=True)) == "onnx-int8"
    assert bundled_head("torch") == bundled_head("onnx-fp32") == DEFAULT_HEAD
    assert bundled_head("onnx-int8") != DEFAULT_HEAD
    torch_head = head_for("auto", "all-MiniLM-L6-v2", 384, "torch")
    int8_head = head_for("auto", "all-MiniLM-L6-v2", 384, "onnx-int8")
    assert torch_head is not None and int8_head is not None
    if bundled_head("onnx-int8").is_file():
        assert int8_head.info["vectors"] == "onnx-int8"
        assert not np.array_equal(int8_head.w1, torch_head.w1)
    else:
        assert np.array_equal(int8_head.w1, torch_head.w1)
    int8 = EmbedderConfig(backend="onnx", onnx_quantize=True)
    verifier = build_verifier(SidecarConfig().cache, int8, 384)
    assert isinstance(verifier, AnswerChangeVerifier) and verifier.head is not None
    assert np.array_equal(verifier.head.w1, int8_head.w1)
