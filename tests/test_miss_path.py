"""A miss's critical path: no embedding when the scope is empty, vectors of new entries added
off the request path (bounded, counted, persisted), and the embedder's queue budget.

The real model throughout. Where a test needs the model to be busy, it wraps it in
``GatedEmbedder``, whose calls wait for an ``asyncio.Event`` the test sets: no sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip
from prometheus_client import CollectorRegistry

from embedders.base import EmbedderError, EmbedderOverloaded
from embedders.batching import MicroBatcher
from sidecar.cache.keys import CachePlan, plan_request
from sidecar.cache.layer import (
    EMPTY_SCOPE,
    OVERLOADED,
    VECTOR_PENDING,
    CacheStatus,
    DualCache,
)
from sidecar.cache.model import CachedAnswer, CacheEntry
from sidecar.cache.stores.embedded import EmbeddedExactStore, EmbeddedVectorIndex
from sidecar.config import CacheConfig
from sidecar.formats import parse_request
from sidecar.metrics import Metrics

ANSWER = CachedAnswer(200, {"content-type": "application/json"}, b'{"answer": "Paris"}')


class GatedEmbedder:
    """The real model, but every call first waits for ``gate`` (the test holds the model)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()  # set when a call reaches the model
        self.calls: list[list[str]] = []
        self.idle_calls: list[list[str]] = []  # the texts of calls to embed_idle

    async def start(self) -> None:
        return None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        await self.gate.wait()
        matrix: np.ndarray = await self.inner.embed(texts)
        return matrix

    async def embed_idle(self, texts: Sequence[str]) -> np.ndarray:
        self.idle_calls.append(list(texts))
        self.calls.append(list(texts))
        self.entered.set()
        await self.gate.wait()
        matrix: np.ndarray = await self.inner.embed_idle(texts)
        return matrix

    async def close(self) -> None:
        return None


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def plan_for(question: str, partition: str = "team-a", model: str = "gpt-4o-mini") -> CachePlan:
    head = {"x-bf-cache-key": partition}
    parsed = parse_request("/v1/chat/completions", chat_body(question, model=model), head)
    assert parsed is not None
    return plan_request(parsed, head, CacheConfig(threshold=0.8))


def dual(embedder: Any, data_dir: str = ":memory:", **kwargs: Any) -> DualCache:
    exact = EmbeddedExactStore(data_dir, 1000, 1 << 30)
    return DualCache(exact, EmbeddedVectorIndex(), embedder, Metrics(CollectorRegistry()), **kwargs)


# ---------------------------------------------------------------- empty scope
async def test_a_miss_in_an_empty_scope_skips_the_embedding(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    cache = dual(gated)
    await cache.start()
    try:
        plan = plan_for("What is the capital of France?")
        # The model is held: a lookup that embedded would never return.
        miss = await cache.lookup(plan)
        assert (miss.status, miss.reason, miss.vector) == (CacheStatus.MISS, EMPTY_SCOPE, None)
        metrics = cache.metrics
        assert sample(metrics, "sidecar_cache_semantic_lookups_total", path="skipped_empty_scope")
        assert sample(metrics, "sidecar_embedding_seconds_count") == 0
        # The store answers while the model is still held: the entry serves exact hits now.
        entry = await cache.store(plan, ANSWER, miss.vector, miss.pending)
        assert entry is not None and entry.vector is None
        assert sample(metrics, "sidecar_cache_vector_backlog") == 1
        assert (await cache.lookup(plan)).status is CacheStatus.HIT_EXACT
        gated.gate.set()
        assert cache.backlog is not None
        await cache.backlog.settled()
        assert sample(metrics, "sidecar_cache_vectors_added_late_total") == 1
        assert sample(metrics, "sidecar_cache_vector_backlog") == 0
        stored = await cache.exact.get(entry.id)
        assert stored is not None and stored.vector is not None  # kept with the entry
        semantic = await cache.lookup(plan_for("What's the capital city of France?"))
        assert semantic.status is CacheStatus.HIT_SEMANTIC, semantic.reason
        # Another partition, model or history is another scope: empty again.
        for other in (
            plan_for("What's the capital city of France?", partition="team-b"),
            plan_for("What's the capital city of France?", model="gpt-4o"),
        ):
            assert (await cache.lookup(other)).reason == EMPTY_SCOPE
    finally:
        gated.gate.set()
        await cache.close()


async def test_a_lookup_right_after_a_store_sees_the_late_vector(embedder: Any) -> None:
    """Read-your-writes: a scope whose vectors are on the way is not empty, and its lookup
    waits (within the budget) for them."""
    cache = dual(embedder)
    await cache.start()
    try:
        plan = plan_for("How do I reset my password?")
        miss = await cache.lookup(plan)
        assert miss.reason == EMPTY_SCOPE
        await cache.store(plan, ANSWER, miss.vector, miss.pending)
        hit = await cache.lookup(plan_for("How can I reset my password?"))
        assert hit.status is CacheStatus.HIT_SEMANTIC, hit.reason
    finally:
        await cache.close()


async def test_an_early_embedding_is_used_inline_or_discarded(embedder: Any) -> None:
    cache = dual(embedder)
    await cache.start()
    try:
        plan = plan_for("Who wrote Hamlet?")
        miss = await cache.lookup(plan)
        assert miss.pending is not None and miss.pending.task is not None
        await asyncio.wait({miss.pending.task})  # the provider was slow: the vector is ready
        entry = await cache.store(plan, ANSWER, miss.vector, miss.pending)
        assert entry is not None and entry.vector is not None
        assert sample(cache.metrics, "sidecar_cache_vectors_added_late_total") == 0
        # A request that ends unstored frees its early embedding.
        other = await cache.lookup(plan_for("How tall is K2?", partition="team-b"))
        assert other.pending is not None
        await cache.release(other)
        assert other.pending is None
        assert sample(cache.metrics, "sidecar_cache_vector_backlog") == 0
    finally:
        await cache.close()


# ---------------------------------------------------------------- backlog bounds, drops
@pytest.mark.parametrize(
    "bounds", [{"backlog_items": 1}, {"backlog_bytes": 40}], ids=["count", "bytes"]
)
async def test_a_full_backlog_drops_vectors_with_a_count(
    embedder: Any, bounds: dict[str, Any]
) -> None:
    gated = GatedEmbedder(embedder)
    cache = dual(gated, **bounds)
    await cache.start()
    try:
        first = plan_for("What is the capital of France?")
        second = plan_for("How do I bake sourdough bread at home?", partition="team-b")
        entries = []
        for plan in (first, second):
            miss = await cache.lookup(plan)
            entries.append(await cache.store(plan, ANSWER, miss.vector, miss.pending))
        assert all(e is not None for e in entries)
        metrics = cache.metrics
        assert sample(metrics, "sidecar_cache_vector_drops_total", reason="backlog_full") == 1
        assert (await cache.lookup(second)).status is CacheStatus.HIT_EXACT  # still stored
        gated.gate.set()
        assert cache.backlog is not None
        await cache.backlog.settled()
        assert sample(metrics, "sidecar_cache_vectors_added_late_total") == 1
    finally:
        gated.gate.set()
        await cache.close()


async def test_shutdown_reports_the_vectors_it_could_not_add(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    cache = dual(gated, drain_s=0.0)
    await cache.start()
    plan = plan_for("What is the capital of France?")
    miss = await cache.lookup(plan)
    await cache.store(plan, ANSWER, miss.vector, miss.pending)
    assert cache.backlog is not None
    metrics = cache.metrics
    await cache.close()  # the model never answers: the vector is reported lost
    assert sample(metrics, "sidecar_cache_vector_drops_total", reason="shutdown") == 1
    assert cache.backlog.items == 0


async def test_a_restart_requeues_entries_stored_without_their_vector(
    embedder: Any, tmp_path: Path
) -> None:
    """An acknowledged entry survives a stop before its vector was attached (the process was
    killed): the next start computes the vector again."""
    data_dir = str(tmp_path)
    plan = plan_for("What is the capital of France?")
    exact = EmbeddedExactStore(data_dir, 1000, 1 << 30)
    await exact.start()
    # As the cache layer leaves it until the late vector lands (then the process died).
    pending = CacheEntry(
        plan.exact_key, plan.partition, plan.scope, plan.question, ANSWER, 1.0, 9e12
    )
    pending.meta[VECTOR_PENDING] = True
    direct = plan_for("What is the capital of Italy?")  # stored for exact hits only
    await exact.put(pending)
    await exact.put(
        CacheEntry(
            direct.exact_key, direct.partition, direct.scope, direct.question, ANSWER, 1.0, 9e12
        )
    )
    await exact.close()
    cache = dual(embedder, data_dir)
    await cache.start()
    try:
        assert cache.backlog is not None
        await cache.backlog.settled()
        # one: the entry stored for exact hits only is not given a vector
        assert sample(cache.metrics, "sidecar_cache_vectors_added_late_total") == 1
        hit = await cache.lookup(plan_for("What's the capital city of France?"))
        assert hit.status is CacheStatus.HIT_SEMANTIC, hit.reason
    finally:
        await cache.close()
    # The late vector was persisted with the entry: the next start indexes it directly.
    again = dual(embedder, data_dir)
    await again.start()
    try:
        assert again.backlog is not None and again.backlog.items == 0
        stored = await again.exact.get(plan.exact_key)
        assert stored is not None and VECTOR_PENDING not in stored.meta
        hit = await again.lookup(plan_for("What's the capital city of France?"))
        assert hit.status is CacheStatus.HIT_SEMANTIC, hit.reason
    finally:
        await again.close()


# ---------------------------------------------------------------- overload
async def test_the_batcher_refuses_work_predicted_past_the_budget(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    batcher = MicroBatcher(gated, window=0.0, max_batch=4)
    gated.gate.set()
    await batcher.embed(["a first batch times the model"])
    assert batcher.predicted_wait() == 0.0
    gated.gate.clear()
    gated.entered.clear()
    queued = [asyncio.ensure_future(batcher.embed([f"question {i}"])) for i in range(40)]
    await gated.entered.wait()  # the first batch holds the model, the rest queue
    assert batcher.predicted_wait() > 0.0
    with pytest.raises(EmbedderOverloaded, match="over the"):
        await batcher.embed_within(["one more"], batcher.predicted_wait() / 2)
    assert batcher.stats.overloaded == 1
    gated.gate.set()
    await asyncio.gather(*queued)


async def test_a_text_still_queued_at_the_deadline_is_withdrawn(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    batcher = MicroBatcher(gated, window=0.0, max_batch=1)
    running = asyncio.ensure_future(batcher.embed(["the model is busy with this one"]))
    await gated.entered.wait()
    # No timing yet: nothing is predicted, the deadline refuses it.
    with pytest.raises(EmbedderOverloaded, match="still queued"):
        await batcher.embed_within(["waits behind it"], 0.001)
    gated.gate.set()
    await running
    assert gated.calls == [["the model is busy with this one"]]  # the withdrawn text never ran


async def test_urgent_texts_run_before_background_ones(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    batcher = MicroBatcher(gated, window=0.0, max_batch=8)
    busy = asyncio.ensure_future(batcher.embed(["holding the model"]))
    await gated.entered.wait()
    # Queued while the model is held: the background text first, the lookup after it.
    background = asyncio.ensure_future(batcher.embed_background(["stored entry"]))
    urgent = asyncio.ensure_future(batcher.embed(["a lookup"]))
    gated.gate.set()
    await asyncio.gather(busy, background, urgent)
    assert gated.calls == [["holding the model"], ["a lookup"], ["stored entry"]]
    # Only the background text ran on the idle-priority lane.
    assert gated.idle_calls == [["stored entry"]]


async def test_background_batches_learn_their_own_cost(embedder: Any) -> None:
    """A deferred vector on the idle lane waits for free cores: its time per token must not
    pass for the request lane's, or lookups would be refused for a queue they do not face."""
    gated = GatedEmbedder(embedder)
    gated.gate.set()
    batcher = MicroBatcher(gated, window=0.0, max_batch=8)
    await batcher.embed(["a lookup"])
    urgent_cost = batcher._unit_cost
    assert urgent_cost is not None and batcher._idle_unit_cost is None
    await batcher.embed_background(["a stored entry's question"])
    assert gated.idle_calls == [["a stored entry's question"]]
    assert batcher._unit_cost == urgent_cost and batcher._idle_unit_cost is not None


async def test_an_overloaded_lookup_skips_the_semantic_layer(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    batcher = MicroBatcher(gated, window=0.0, max_batch=1)
    cache = dual(batcher, max_queue_ms=1.0)
    await cache.start()
    try:
        gated.gate.set()
        seed = plan_for("What is the capital of France?")
        miss = await cache.lookup(seed)
        await cache.store(seed, ANSWER, miss.vector, miss.pending)
        assert cache.backlog is not None
        await cache.backlog.settled()
        gated.gate.clear()
        gated.entered.clear()
        busy = asyncio.ensure_future(batcher.embed(["the model is busy"]))
        await gated.entered.wait()
        plan = plan_for("What's the capital city of France?")
        lookup = await cache.lookup(plan)
        assert (lookup.status, lookup.reason) == (CacheStatus.MISS, OVERLOADED)
        metrics = cache.metrics
        assert sample(metrics, "sidecar_cache_semantic_lookups_total", path="skipped_overloaded")
        # Stored for exact hits at once; its vector follows when the model has room.
        entry = await cache.store(plan, ANSWER, lookup.vector, lookup.pending)
        assert entry is not None and entry.vector is None
        gated.gate.set()
        await busy
        await cache.backlog.settled()
        assert sample(metrics, "sidecar_cache_vectors_added_late_total") == 2
    finally:
        gated.gate.set()
        await cache.close()


# ---------------------------------------------------------------- through the hook
async def test_the_hook_reports_the_skip_and_stores_at_once(sidecar_factory: Any) -> None:
    async with sidecar_factory(make_config()) as (sidecar, client):
        body = chat_body("What is the capital of France?")
        first, stored = await round_trip(client, body, openai_answer("Paris."))
        assert first["cache"]["reason"] == EMPTY_SCOPE
        assert stored is not None and stored["stored_entry_id"]
        again = (await request_hook(client, body)).json()
        assert again["cache"]["status"] == "hit-exact"
        assert sidecar.cache is not None and sidecar.cache.backlog is not None
        await sidecar.cache.backlog.settled()
        text = sidecar.metrics.render().decode()
        assert "sidecar_cache_vectors_added_late_total 1.0" in text


def test_the_model_runs_below_the_event_loop_priority(embedder: Any) -> None:
    """Exact hits are answered by the event loop; the model's threads yield the cores to it."""
    import os
    import threading

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread priority on this platform")
    model_thread = embedder._pool.submit(own_nice).result()
    assert model_thread >= min(19, own_nice() + 5)


async def test_deferred_vectors_compute_at_idle_priority() -> None:
    """``embedder.background_priority: idle-compute``: vectors nobody waits for run on a thread
    of their own whose compute threads (torch's team, created from it) are at SCHED_IDLE, while
    that thread, which holds the GIL between operations, keeps the model's nice value; they are
    the vectors the request lane computes."""
    import os

    import torch

    from embedders import build_embedder
    from embedders.base import idle_thread_name
    from sidecar.config import EmbedderConfig

    if not hasattr(os, "SCHED_IDLE") or not os.path.isdir("/proc/self/task"):
        pytest.skip("no SCHED_IDLE on this platform")
    embedder: Any = build_embedder(
        "sentence-transformers",
        model=EmbedderConfig().model,
        max_batch=1,
        background_priority="idle-compute",
    )
    await embedder.start()
    try:

        def named(name: str) -> dict[int, int]:
            """Policy by thread id, for this process's threads called ``name``."""
            found = {}
            for entry in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{entry}/comm") as f:
                    if f.read().strip() == name:
                        found[int(entry)] = os.sched_getscheduler(int(entry))
            return found

        master = embedder._idle_pool.submit(threading_id).result()
        threads = named(idle_thread_name(master))
        assert threads.pop(master) != os.SCHED_IDLE
        if torch.get_num_threads() > 1:
            assert threads and embedder.idle_threads == len(threads)
        assert all(policy == os.SCHED_IDLE for policy in threads.values())
        texts = ["What is the capital of France?", "How do I reset my password?"]
        np.testing.assert_allclose(
            await embedder.embed_idle(texts), await embedder.embed(texts), atol=1e-5
        )
    finally:
        await embedder.close()


async def test_the_idle_setting_puts_the_lanes_own_thread_at_idle_too(embedder: Any) -> None:
    """``embedder.background_priority: idle``: the thread running the model's Python code for
    deferred vectors is at SCHED_IDLE as well (the request lane's thread is not, nor another
    embedder's lane in the same process)."""
    import os

    from embedders import build_embedder
    from sidecar.config import EmbedderConfig

    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("no SCHED_IDLE on this platform")
    config = EmbedderConfig.model_validate({"background_priority": "idle"})
    model = build_embedder(
        config.backend,
        model=config.model,
        max_batch=1,
        background_priority=config.background_priority,
    )
    await model.start()
    try:
        idle_pool = model._idle_pool  # type: ignore[attr-defined]
        assert idle_pool.submit(os.sched_getscheduler, 0).result() == os.SCHED_IDLE
        request_pool = model._pool  # type: ignore[attr-defined]
        assert request_pool.submit(os.sched_getscheduler, 0).result() != os.SCHED_IDLE
        other = embedder._pool.submit(os.sched_getscheduler, 0).result()
        assert other != os.SCHED_IDLE
        # the default lane: its own thread, not at SCHED_IDLE either
        assert embedder._idle_pool.submit(os.sched_getscheduler, 0).result() != os.SCHED_IDLE
    finally:
        await model.close()
    with pytest.raises(ValueError, match="background_priority"):
        EmbedderConfig.model_validate({"background_priority": "realtime"})


async def test_deferred_vectors_compute_on_one_torch_thread_by_default(embedder: Any) -> None:
    """``embedder.background_priority: normal`` (the default): deferred vectors run on a thread
    of their own that computes with one torch thread, so a backlog that never empties keeps
    one core busy, not all; the request lane keeps torch's count, and so do threads that first
    use torch afterwards. Both lanes give the same vectors."""
    import threading

    import torch

    from embedders.sentence_tf import _torch_threads

    request_threads = embedder._pool.submit(_torch_threads, 0).result()
    assert embedder._idle_pool.submit(_torch_threads, 0).result() == 1
    assert embedder.background_torch_threads == 1
    assert embedder._idle_pool.submit(threading.get_native_id).result() != (
        embedder._pool.submit(threading.get_native_id).result()
    )
    with ThreadPoolExecutor(1) as fresh:
        assert fresh.submit(torch.get_num_threads).result() == request_threads
    texts = ["What is the capital of France?", "How do I reset my password? " * 20]
    np.testing.assert_allclose(
        await embedder.embed_idle(texts), await embedder.embed(texts), atol=1e-5
    )


async def test_the_low_setting_runs_deferred_vectors_at_nice_19() -> None:
    """``embedder.background_priority: low``: the deferred lane's thread at nice 19 (the normal
    policy's lowest weight, not SCHED_IDLE: it keeps a share of busy cores), computing with
    one torch thread; the request lane keeps its nice value and policy."""
    import os

    from embedders.sentence_tf import _torch_threads
    from sidecar.config import EmbedderConfig
    from sidecar.services import embedder_from_config

    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priority on this platform")

    def nice_and_policy() -> tuple[int, int]:
        return os.getpriority(os.PRIO_PROCESS, threading_id()), os.sched_getscheduler(0)

    config = EmbedderConfig.model_validate({"background_priority": "low", "max_batch": 1})
    model: Any = embedder_from_config(config)
    await model.start()
    try:
        assert model._idle_pool.submit(nice_and_policy).result() == (19, os.SCHED_OTHER)
        assert model._idle_pool.submit(_torch_threads, 0).result() == 1
        nice, policy = model._pool.submit(nice_and_policy).result()
        assert policy == os.SCHED_OTHER
        own = os.getpriority(os.PRIO_PROCESS, threading_id())
        assert nice == min(19, own + 5)  # the request lane's usual step below the loop
        texts = ["What is the capital of France?"]
        np.testing.assert_allclose(
            await model.embed_idle(texts), await model.embed(texts), atol=1e-5
        )
    finally:
        await model.close()


async def test_the_deferred_lanes_thread_count_is_configurable() -> None:
    """``embedder.background_threads``: the deferred lane's torch threads (never more than the
    request lane's); a negative count is refused with a clear error."""
    import torch

    from embedders.sentence_tf import SentenceTransformerEmbedder, _torch_threads
    from sidecar.config import EmbedderConfig
    from sidecar.services import embedder_from_config

    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread on this machine: nothing to choose from")
    config = EmbedderConfig.model_validate({"background_threads": 2, "max_batch": 1})
    model: Any = embedder_from_config(config)
    await model.start()
    try:
        assert model._idle_pool.submit(_torch_threads, 0).result() == 2
    finally:
        await model.close()
    with pytest.raises(EmbedderError, match="background_threads"):
        SentenceTransformerEmbedder(background_threads=-1)
    with pytest.raises(ValueError, match="background_threads"):
        EmbedderConfig.model_validate({"background_threads": -1})


def threading_id() -> int:
    import threading

    return threading.get_native_id()


def test_acknowledged_entries_survive_kill_9(tmp_path: Path) -> None:
    """Every ``stored_entry_id`` the hook returned is there after ``kill -9`` and a restart,
    vectors included (computed again for entries whose late vector had not landed)."""
    import os
    import signal

    import httpx
    import yaml

    from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

    http_port = free_port()
    config = {
        "server": {
            "http_port": http_port,
            "grpc_port": free_port(),
            "grpc_enabled": False,
            # a loaded test machine must not shed the paraphrase or its store
            "shed_loop_lag_ms": 0,
            "shed_store_lag_ms": 0,
        },
        "cache": {"data_dir": str(tmp_path / "data"), "default_cache_key": "k9"},
        # a paraphrase after the restart waits (within this) for the re-queued vectors
        "embedder": {"max_queue_ms": 30_000},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{http_port}"
    questions = {
        f"p{i}": q
        for i, q in enumerate(
            ["What is the capital of France?", "How do I bake sourdough bread?", "Who is Ada?"]
        )
    }
    acknowledged: dict[str, str] = {}
    first = ManagedProcess("sidecar", sidecar_command(path), tmp_path / "first.log").start()
    try:
        first.wait_ready(f"{url}/readyz", 240)
        with httpx.Client(base_url=url, timeout=60) as client:
            for partition, question in questions.items():
                envelope = {
                    "method": "POST",
                    "path": "/v1/chat/completions",
                    "headers": {"x-bf-cache-key": partition},
                    "body": chat_body(question),
                }
                req = client.post("/v1/hooks/request", json=envelope).json()
                assert req["cache"]["reason"] == EMPTY_SCOPE
                reply = client.post(
                    "/v1/hooks/response",
                    json={
                        "request_id": req["request_id"],
                        "request_secret": req["request_secret"],
                        "status": 200,
                        "headers": {"content-type": "application/json"},
                        "body": openai_answer(f"answer to {question}"),
                    },
                ).json()
                acknowledged[partition] = reply["stored_entry_id"]
        os.kill(first.pid, signal.SIGKILL)  # right after the last acknowledgement
    finally:
        first.stop()
    second = ManagedProcess("sidecar", sidecar_command(path), tmp_path / "second.log").start()
    try:
        second.wait_ready(f"{url}/readyz", 240)
        with httpx.Client(base_url=url, timeout=60) as client:
            for partition, question in questions.items():
                envelope = {
                    "method": "POST",
                    "path": "/v1/chat/completions",
                    "headers": {"x-bf-cache-key": partition},
                    "body": chat_body(question),
                }
                hit = client.post("/v1/hooks/request", json=envelope).json()
                assert hit["cache"]["status"] == "hit-exact"
                assert hit["cache"]["entry_id"] == acknowledged[partition]
            envelope = {
                "method": "POST",
                "path": "/v1/chat/completions",
                "headers": {"x-bf-cache-key": "p0"},
                "body": chat_body("What's the capital city of France?"),
            }
            para = client.post("/v1/hooks/request", json=envelope).json()
            assert para["cache"]["status"] == "hit-semantic", para["cache"]["reason"]
    finally:
        second.stop()
