"""The embedded index's HNSW graphs keep i8 vectors (``cache.vector_graph_dtype``); their
similarities are approximate, so the cache re-scores every candidate with the float32 vector
the exact store keeps before deciding. Decisions on an i8 graph are those of an f32 graph.

The real model and real usearch graphs (``graph_at`` 2, so every scope is a graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hookclient import chat_body
from prometheus_client import CollectorRegistry

from sidecar.cache.keys import CachePlan, plan_request
from sidecar.cache.layer import CacheStatus, DualCache
from sidecar.cache.model import CachedAnswer
from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex
from sidecar.config import CacheConfig
from sidecar.formats import parse_request
from sidecar.metrics import Metrics

STORED = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "What is the boiling point of water at sea level?",
    "Who wrote Pride and Prejudice?",
    "How many legs does a spider have?",
    "What is the tallest mountain in the world?",
]
ASKED = [
    "What's the capital city of France?",
    "How can I reverse a Python list?",
    "At what temperature does water boil at sea level?",
    "Who is the author of Pride and Prejudice?",
    "How many legs do spiders have?",
    "Which mountain is the highest on Earth?",
    "What is the capital of Germany?",
    "How do I sort a dictionary by value in Python?",
]


def plan_for(question: str, threshold: float) -> CachePlan:
    head = {"x-bf-cache-key": "team-a"}
    parsed = parse_request("/v1/chat/completions", chat_body(question), head)
    assert parsed is not None
    return plan_request(parsed, head, CacheConfig(threshold=threshold))


async def decisions(embedder: Any, dtype: str, threshold: float) -> list[tuple[Any, ...]]:
    exact = EmbeddedExactStore(":memory:", 1000, 1 << 30)
    index = EmbeddedVectorIndex(graph_at=2, graph_dtype=dtype)
    cache = DualCache(exact, index, embedder, Metrics(CollectorRegistry()))
    await cache.start()
    try:
        for question in STORED:
            plan = plan_for(question, threshold)
            vector = (await embedder.embed([question]))[0]
            answer = CachedAnswer(200, {}, question.encode())
            assert await cache.store(plan, answer, vector) is not None
        out = []
        for question in ASKED:
            found = await cache.lookup(plan_for(question, threshold))
            served = found.entry.question if found.entry is not None else None
            out.append((question, found.status, served, found.similarity))
        return out
    finally:
        await cache.close()


async def test_i8_graph_neighbours_are_marked_approximate() -> None:
    index = EmbeddedVectorIndex(graph_at=2)  # the default: i8
    await index.start("m:8", 8)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((10, 8)).astype(np.float32)
    for n, row in enumerate(rows):
        await index.add(f"id-{n}", "s", "p", row.tolist(), 1e12)
    found = await index.search("s", rows[3].tolist(), 3)
    assert found[0].id == "id-3" and not found[0].exact
    assert abs(found[0].similarity - 1.0) < 0.02
    f32 = EmbeddedVectorIndex(graph_at=2, graph_dtype="f32")
    await f32.start("m:8", 8)
    await f32.add("id-3", "s", "p", rows[3].tolist(), 1e12)
    await f32.add("id-4", "s", "p", rows[4].tolist(), 1e12)
    assert all(n.exact for n in await f32.search("s", rows[3].tolist(), 2))


async def test_an_i8_graph_decides_as_an_f32_graph_on_exact_similarities(embedder: Any) -> None:
    # Two thresholds: one the paraphrases clear, one just above a paraphrase's similarity, where
    # an approximate score a few thousandths off would flip the decision.
    f32 = await decisions(embedder, "f32", 0.8)
    assert any(status is CacheStatus.HIT_SEMANTIC for _, status, _, _ in f32)
    assert any(status is CacheStatus.MISS for _, status, _, _ in f32)
    tight = min(s for _, status, _, s in f32 if status is CacheStatus.HIT_SEMANTIC) + 1e-4
    for threshold in (0.8, tight):
        want = await decisions(embedder, "f32", threshold)
        got = await decisions(embedder, "i8", threshold)
        for (question, status, served, sim), (_, i8_status, i8_served, i8_sim) in zip(
            want, got, strict=True
        ):
            assert (i8_status, i8_served) == (status, served), question
            if i8_status is CacheStatus.HIT_SEMANTIC:
                assert sim is not None and i8_sim is not None
                assert abs(i8_sim - sim) < 1e-5, question  # the stored vector's, not the graph's
