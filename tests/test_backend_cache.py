"""The cache contract through the real cache layer and sidecar, over backend combinations:
hits, TTL and invalidation, a backend going down (uncached, /readyz, logs) and coming back,
and single-flight for identical misses (in-process and across Redis-sharing caches).

Servers come from tests/backend_servers.py; unavailable ones skip with the reason (``-rs``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from backend_servers import (
    ServerProcess,
    ServerUnavailable,
    delete_prefix,
    plain_redis,
    redis_reachable,
    valkey_with_search,
)
from conftest import FakeClock, make_config
from hookclient import chat_body, openai_answer, request_hook, response_hook, round_trip

from sidecar.cache.keys import CachePlan, plan_request
from sidecar.cache.layer import CacheStatus, DualCache, Lookup
from sidecar.cache.model import CachedAnswer
from sidecar.cache.single_flight import MissLock, SingleFlight
from sidecar.cache.stores.backends import build_exact_store, build_single_flight, build_vector_index
from sidecar.config import CacheConfig
from sidecar.formats import parse_request
from sidecar.metrics import Metrics

RUN = f"btest-{uuid.uuid4().hex[:8]}"
SHARED_REDIS = "redis://127.0.0.1:6379"
ANSWER = CachedAnswer(200, {"content-type": "application/json"}, b'{"answer": "Paris"}')


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[str]:
    if (why := redis_reachable()) is not None:
        pytest.skip(f"needs the shared Redis: {why}")
    yield SHARED_REDIS
    delete_prefix(SHARED_REDIS, RUN)


def start_or_skip(server: ServerProcess) -> ServerProcess:
    try:
        return server.start()
    except ServerUnavailable as exc:
        server.cleanup()
        pytest.skip(f"{server.name} cannot start here: {exc}")


def search_server_or_skip() -> ServerProcess:
    try:
        return start_or_skip(valkey_with_search())
    except ServerUnavailable as exc:
        pytest.skip(f"Valkey + RediSearch unavailable: {exc}")


@pytest.fixture(scope="session")
def search_server() -> Iterator[ServerProcess]:
    server = search_server_or_skip()
    yield server
    server.cleanup()


def plan_for(question: str, config: CacheConfig, **headers: str) -> CachePlan:
    head = {"x-bf-cache-key": "team-a", **headers}
    parsed = parse_request("/v1/chat/completions", chat_body(question), head)
    assert parsed is not None
    return plan_request(parsed, head, config)


# ---------------------------------------------------------------- hits, TTL, invalidation
COMBOS = [("embedded", "embedded"), ("redis", "redis-search"), ("redis", "qdrant-local")]


@pytest.fixture(params=COMBOS, ids=["+".join(c) for c in COMBOS])
async def cache(
    request: pytest.FixtureRequest, embedder: Any, clock: FakeClock
) -> AsyncIterator[DualCache]:
    exact_kind, vector_kind = request.param
    urls = {"embedded": "embedded", "qdrant-local": "qdrant+local://:memory:"}
    if exact_kind == "redis":
        urls["redis"] = request.getfixturevalue("shared_redis")
    if vector_kind == "redis-search":
        urls["redis-search"] = request.getfixturevalue("search_server").url
    config = CacheConfig(
        exact_store=urls[exact_kind],
        vector_store=urls[vector_kind],
        data_dir=":memory:",
        namespace=f"{RUN}-{uuid.uuid4().hex[:6]}",
    )
    exact = build_exact_store(config, clock)
    dual = DualCache(exact, build_vector_index(config, clock), embedder, Metrics(), clock=clock)
    await dual.start()
    yield dual
    await dual.delete_partition("team-a")
    await dual.close()


async def test_stored_answer_hits_exact_and_semantic_until_ttl(
    cache: DualCache, clock: FakeClock
) -> None:
    config = CacheConfig(ttl=60, threshold=0.8)
    plan = plan_for("What is the capital of France?", config)
    miss = await cache.lookup(plan)
    assert miss.status is CacheStatus.MISS
    assert await cache.store(plan, ANSWER, miss.vector) is not None
    exact = await cache.lookup(plan)
    assert exact.status is CacheStatus.HIT_EXACT and exact.entry is not None
    assert exact.entry.answer.body == ANSWER.body
    paraphrase = plan_for("what's the capital city of France?", config)
    semantic = await cache.lookup(paraphrase)
    assert semantic.status is CacheStatus.HIT_SEMANTIC, semantic.reason
    other_partition = plan_for("What is the capital of France?", config, **{"x-bf-cache-key": "b"})
    assert (await cache.lookup(other_partition)).status is CacheStatus.MISS
    clock.advance(61)
    assert (await cache.lookup(plan)).status is CacheStatus.MISS
    assert (await cache.lookup(paraphrase)).status is CacheStatus.MISS


async def test_delete_partition_and_entry_forget_both_layers(cache: DualCache) -> None:
    config = CacheConfig(ttl=60)
    first, second = plan_for("Who wrote Hamlet?", config), plan_for("How tall is K2?", config)
    for plan in (first, second):
        await cache.store(plan, ANSWER, None)
    assert await cache.delete(first.exact_key) is True
    assert (await cache.lookup(first)).status is CacheStatus.MISS
    assert (await cache.lookup(plan_for("who was the author of Hamlet", config))).entry is None
    assert (await cache.lookup(second)).status is CacheStatus.HIT_EXACT
    assert await cache.delete_partition("team-a") == 1
    assert (await cache.lookup(second)).status is CacheStatus.MISS
    assert (await cache.lookup(plan_for("how high is K2", config))).status is CacheStatus.MISS


# ---------------------------------------------------------------- backend down, then back
@pytest.mark.parametrize("which", ["exact", "vector"])
async def test_backend_down_serves_uncached_reports_and_recovers(
    which: str, sidecar_factory: Any, caplog: pytest.LogCaptureFixture, pending_key: str
) -> None:
    password = "s3cret-" + uuid.uuid4().hex[:6]
    if which == "exact":
        server = start_or_skip(plain_redis(password=password))
        cache = {"exact_store": server.url, "vector_store": "embedded"}
        unhealthy = "exact_store:redis"
    else:
        server = search_server_or_skip()
        cache = {"exact_store": "embedded", "vector_store": server.url}
        unhealthy = "vector_store:redis"
    config = make_config(cache={**cache, "namespace": RUN, "data_dir": ":memory:"})
    try:
        async with sidecar_factory(config) as (sidecar, client):
            assert (await client.get("/readyz")).status_code == 200
            server.stop()
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and unhealthy in ready.json()["unhealthy"]
            body = chat_body("Name the largest planet.")
            with caplog.at_level("ERROR", logger="sidecar.cache"):
                req = (await request_hook(client, body)).json()
            assert req["action"] == "continue"
            assert req["cache"]["status"] == "bypass"
            assert "cache backend unavailable" in req["cache"]["reason"]
            assert any("unavailable" in r.getMessage() for r in caplog.records)
            resp = (await response_hook(client, req, openai_answer("Jupiter"))).json()
            # A down exact store stores nothing; with only the vector store down, the answer is
            # kept for exact hits.
            assert ("stored_entry_id" in resp) is (which == "vector")
            server.start()  # same port, empty: the sidecar recovers without a restart
            assert (await client.get("/readyz")).status_code == 200
            question = chat_body("Which planet has the most moons?")
            _, stored = await round_trip(client, question, openai_answer("Saturn"))
            assert stored is not None and "stored_entry_id" in stored
            again = (await request_hook(client, question)).json()
            assert again["cache"]["status"] == "hit-exact"
            paraphrase = chat_body("which planet has the largest number of moons?")
            similar = (await request_hook(client, paraphrase)).json()
            assert similar["cache"]["status"] == "hit-semantic", similar["cache"]["reason"]
            logged = caplog.text + str(ready.json()) + str(req)
            assert password not in logged
    finally:
        server.cleanup()


# ---------------------------------------------------------------- single-flight
class WatchedLock:
    """The real lock, plus an event telling the test that a waiter has begun waiting."""

    def __init__(self, inner: MissLock) -> None:
        self.inner = inner
        self.name = inner.name
        self.waiting = asyncio.Event()

    async def acquire(self, key: str, partition: str, ttl: float) -> str | None:
        return await self.inner.acquire(key, partition, ttl)

    async def wait(self, key: str, partition: str, timeout: float) -> bool:
        self.waiting.set()
        return await self.inner.wait(key, partition, timeout)

    async def release(self, key: str, partition: str, token: str) -> None:
        await self.inner.release(key, partition, token)


@pytest.fixture(params=["local", "redis"])
async def replicas(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[tuple[DualCache, DualCache, WatchedLock, CacheConfig]]:
    """Two caches sharing one store and one lock, as two replicas would (exact layer only)."""
    exact_url = "embedded" if request.param == "local" else request.getfixturevalue("shared_redis")
    config = CacheConfig(
        exact_store=exact_url,
        vector_store="none",
        data_dir=":memory:",
        namespace=f"{RUN}-{uuid.uuid4().hex[:6]}",
        lock_wait_ms=20_000,
        lock_ttl_ms=30_000,
    )
    exact = build_exact_store(config, clock)
    base = build_single_flight(config, exact)
    assert base is not None and base.lock.name == request.param
    lock = WatchedLock(base.lock)
    flight = SingleFlight(lock, base.wait, base.ttl)
    a = DualCache(exact, None, None, Metrics(), clock=clock, single_flight=flight)
    b = DualCache(exact, None, None, Metrics(), clock=clock, single_flight=flight)
    await a.start()
    yield a, b, lock, config
    await a.delete_partition("team-a")
    await a.close()


async def test_waiter_gets_the_owners_answer(replicas: Any) -> None:
    a, b, lock, config = replicas
    plan = plan_for("Explain TCP slow start.", config)
    owner = await a.lookup(plan)
    assert owner.status is CacheStatus.MISS and owner.lock is not None
    waiter = asyncio.create_task(b.lookup(plan))
    await asyncio.wait_for(lock.waiting.wait(), 10)
    assert not waiter.done()
    await a.store(plan, ANSWER, None)
    await a.release(owner)
    served: Lookup = await asyncio.wait_for(waiter, 10)
    assert served.status is CacheStatus.HIT_EXACT and "after waiting" in served.reason
    assert owner.lock is None  # released once; a second release is a no-op
    await a.release(owner)


class AnswerBeforeAcquire(WatchedLock):
    """Lets the other replica store its answer and release the lock just before this one's
    lock attempt: the window between a lookup's miss and its acquire, made deterministic."""

    def __init__(self, inner: MissLock, before: Callable[[], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.before: Callable[[], Awaitable[None]] | None = before

    async def acquire(self, key: str, partition: str, ttl: float) -> str | None:
        if self.before is not None:
            hook, self.before = self.before, None
            await hook()
        return await self.inner.acquire(key, partition, ttl)


async def test_answer_stored_between_miss_and_lock_is_served(replicas: Any) -> None:
    a, b, lock, config = replicas
    plan = plan_for("What does a load balancer do?", config)
    owner = await a.lookup(plan)
    assert owner.lock is not None

    async def owner_answers() -> None:
        await a.store(plan, ANSWER, None)
        await a.release(owner)

    b.single_flight = SingleFlight(AnswerBeforeAcquire(lock.inner, owner_answers), 20.0, 30.0)
    late = await b.lookup(plan)
    # Without the re-check it would own a fresh lock and send a second request upstream.
    assert late.status is CacheStatus.HIT_EXACT and late.lock is None
    token = await lock.inner.acquire(plan.exact_key, plan.partition, 30.0)
    assert token is not None  # the lock taken for the re-check was given back
    await lock.inner.release(plan.exact_key, plan.partition, token)


async def test_concurrent_identical_misses_elect_one_owner(replicas: Any) -> None:
    a, b, _, config = replicas
    short = SingleFlight(a.single_flight.lock, 0.2, 30.0)  # nobody answers: bounded wait
    a.single_flight = b.single_flight = short
    plan = plan_for("Summarise the CAP theorem.", config)
    results = await asyncio.gather(*(c.lookup(plan) for c in (a, b) * 4))
    owners = [r for r in results if r.lock is not None]
    assert len(owners) == 1
    waiters = [r for r in results if r.lock is None]
    assert all(r.status is CacheStatus.MISS and "wait limit reached" in r.reason for r in waiters)
    await a.release(owners[0])


async def test_abandoned_lock_expires_and_frees_waiters(replicas: Any) -> None:
    a, b, _, config = replicas
    a.single_flight = b.single_flight = SingleFlight(a.single_flight.lock, 20.0, 0.3)
    plan = plan_for("What is a B-tree?", config)
    owner = await a.lookup(plan)
    assert owner.lock is not None  # ...and its owner never answers
    late = await b.lookup(plan)
    assert late.status is CacheStatus.MISS and "lock ended without a stored answer" in late.reason


async def test_no_store_requests_take_no_lock(replicas: Any) -> None:
    a, b, _, config = replicas
    plan = plan_for("Define entropy.", config, **{"x-bf-cache-no-store": "true"})
    first, second = await a.lookup(plan), await b.lookup(plan)
    assert first.lock is None and second.lock is None and "waited" not in second.reason


async def test_pipeline_releases_the_lock_when_the_answer_is_not_storable(
    sidecar_factory: Any,
) -> None:
    config = make_config(cache={"lock_wait_ms": 20_000})
    async with sidecar_factory(config) as (_, client):
        body = chat_body("Is this answer cached?")
        first = (await request_hook(client, body)).json()
        assert first["action"] == "continue"
        await response_hook(client, first, {"error": "overloaded"}, status=503)
        second = (await request_hook(client, body)).json()
        assert second["cache"]["status"] == "miss" and "waited" not in second["cache"]["reason"]
        stored = await response_hook(client, second, openai_answer("Yes."))
        assert "stored_entry_id" in stored.json()
        third = (await request_hook(client, body)).json()
        assert third["cache"]["status"] == "hit-exact"
