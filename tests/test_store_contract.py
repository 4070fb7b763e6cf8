"""One contract for every cache backend: the same tests, parametrised over the stores.

Exact stores: embedded, Redis (the shared server on 127.0.0.1:6379), Redis Cluster (a one-node
Valkey cluster). Vector indexes: embedded, Redis/Valkey + RediSearch (started here from PyPI
packages), Qdrant local mode, a Qdrant server (``QDRANT_URL``), Weaviate (``WEAVIATE_URL``).
Backends that cannot run here are skipped with the reason (``pytest -rs`` prints it).
Keys in the shared Redis carry a per-run prefix and are deleted at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from backend_servers import (
    ServerProcess,
    ServerUnavailable,
    assign_all_slots,
    delete_prefix,
    free_port,
    plain_redis,
    redis_reachable,
    valkey_cluster_node,
    valkey_with_search,
)
from conftest import FakeClock

from sidecar.cache.model import CachedAnswer, CacheEntry
from sidecar.cache.stores.backends import BackendConfigError, build_exact_store, build_vector_index
from sidecar.cache.stores.base import ExactStore, StoreUnavailable, VectorIndex
from sidecar.cache.stores.embedded import EmbeddedExactStore
from sidecar.cache.stores.redis_conn import parse_redis_url, short_hash
from sidecar.cache.stores.redis_exact import RedisExactStore
from sidecar.config import CacheConfig

RUN = f"ctest-{uuid.uuid4().hex[:8]}"
SHARED_REDIS = "redis://127.0.0.1:6379"
_seq = itertools.count()
DIM = 8


# ---------------------------------------------------------------- servers (session scope)
@pytest.fixture(scope="session")
def shared_redis() -> Iterator[str]:
    if (why := redis_reachable()) is not None:
        pytest.skip(f"Redis exact-store tests need the shared Redis: {why}")
    yield SHARED_REDIS
    delete_prefix(SHARED_REDIS, RUN)


def _started(server: ServerProcess, what: str) -> ServerProcess:
    try:
        return server.start()
    except ServerUnavailable as exc:
        server.cleanup()
        pytest.skip(f"{what} cannot start here: {exc}")


@pytest.fixture(scope="session")
def search_server() -> Iterator[ServerProcess]:
    try:
        server = valkey_with_search()
    except ServerUnavailable as exc:
        pytest.skip(f"Valkey + RediSearch unavailable: {exc}")
    yield _started(server, "Valkey + RediSearch")
    server.cleanup()


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[ServerProcess]:
    try:
        server = valkey_cluster_node()
    except ServerUnavailable as exc:
        pytest.skip(f"Valkey cluster node unavailable: {exc}")
    _started(server, "Valkey cluster node")
    assign_all_slots(server.port)
    yield server
    server.cleanup()


@pytest.fixture
def ns() -> str:
    return f"{RUN}-{next(_seq)}"


# ---------------------------------------------------------------- exact stores
def entry(
    entry_id: str, partition: str, expires_at: float, body: bytes = b"{}", now: float = 0.0
) -> CacheEntry:
    return CacheEntry(
        id=entry_id,
        partition=partition,
        scope=f"scope-{partition}",
        question=f"question {entry_id}",
        answer=CachedAnswer(200, {"content-type": "application/json"}, body),
        created_at=now,
        expires_at=expires_at,
        vector=[0.5] * DIM,
        meta={"k": "v"},
    )


def redis_exact(url: str, prefix: str, clock: Any) -> RedisExactStore:
    return RedisExactStore(parse_redis_url(url, "test"), prefix, clock, count_interval=0)


@pytest.fixture(params=["embedded", "redis", "redis-cluster"])
async def exact(request: pytest.FixtureRequest, clock: FakeClock, ns: str) -> AsyncIterator[Any]:
    kind = request.param
    store: ExactStore
    if kind == "embedded":
        store = EmbeddedExactStore(":memory:", 100_000, 1 << 30, clock)
    elif kind == "redis":
        store = redis_exact(request.getfixturevalue("shared_redis"), ns, clock)
    else:
        port = request.getfixturevalue("cluster_server").port
        store = redis_exact(f"redis+cluster://127.0.0.1:{port}", ns, clock)
    await store.start()
    yield store
    await store.close()


async def test_exact_roundtrip_with_and_without_partition(exact: Any, clock: FakeClock) -> None:
    e = entry("id-1", "team-a", clock() + 60, b'{"answer": 42}', clock())
    assert await exact.put(e) == []
    for got in (await exact.get("id-1", "team-a"), await exact.get("id-1")):
        assert got is not None
        assert (got.id, got.partition, got.scope, got.question) == (
            e.id,
            e.partition,
            e.scope,
            e.question,
        )
        assert got.answer == e.answer and got.expires_at == e.expires_at and got.meta == e.meta
    assert await exact.get("id-unknown", "team-a") is None
    assert await exact.health() is None


async def test_exact_ttl_expiry_follows_the_clock(exact: Any, clock: FakeClock) -> None:
    await exact.put(entry("short", "p", clock() + 10))
    await exact.put(entry("long", "p", clock() + 1000))
    await exact.put(entry("born-expired", "p", clock() - 1))
    assert await exact.get("short", "p") is not None
    assert await exact.get("born-expired", "p") is None
    clock.advance(11)
    assert await exact.get("short", "p") is None
    assert await exact.get("short") is None
    assert await exact.get("long", "p") is not None


async def test_exact_partitions_are_isolated(exact: Any, clock: FakeClock) -> None:
    for i in range(3):
        await exact.put(entry(f"a{i}", "team-a", clock() + 60))
        await exact.put(entry(f"b{i}", "team-b", clock() + 60))
    assert sorted(await exact.delete_partition("team-a")) == ["a0", "a1", "a2"]
    assert await exact.get("a0", "team-a") is None and await exact.get("a1") is None
    assert all([await exact.get(f"b{i}", "team-b") for i in range(3)])
    assert await exact.count() == 3
    assert await exact.delete_partition("team-a") == []
    assert await exact.delete_partition("never-used") == []


async def test_exact_delete_by_id(exact: Any, clock: FakeClock) -> None:
    await exact.put(entry("x", "p", clock() + 60))
    await exact.put(entry("y", "p", clock() + 60))
    assert await exact.delete("x") is True
    assert await exact.delete("x") is False
    assert await exact.get("x", "p") is None
    assert await exact.get("y", "p") is not None
    assert await exact.delete_partition("p") == ["y"]  # a deleted id leaves no trace


async def test_exact_entry_moving_partition_leaves_no_copy(exact: Any, clock: FakeClock) -> None:
    await exact.put(entry("moved", "old", clock() + 60))
    await exact.put(entry("moved", "new", clock() + 60, b'"v2"'))
    assert await exact.delete_partition("old") == []
    got = await exact.get("moved")
    assert got is not None and got.partition == "new" and got.answer.body == b'"v2"'


async def test_exact_concurrent_writers(exact: Any, clock: FakeClock) -> None:
    writes = [exact.put(entry(f"w{i}", f"p{i % 4}", clock() + 60)) for i in range(80)]
    # Twenty writers race on one id: one version wins whole, never a mix.
    same = [exact.put(entry("hot", "p0", clock() + 60, f'"v{i}"'.encode())) for i in range(20)]
    await asyncio.gather(*writes, *same)
    assert await exact.count() == 81
    hot = await exact.get("hot", "p0")
    assert hot is not None and hot.answer.body in {f'"v{i}"'.encode() for i in range(20)}
    results = await asyncio.gather(*(exact.get(f"w{i}", f"p{i % 4}") for i in range(80)))
    assert all(r is not None for r in results)
    assert len(await exact.delete_partition("p1")) == 20


# ---------------------------------------------------------------- Redis specifics
async def test_redis_entries_carry_native_expiry(shared_redis: str, ns: str) -> None:
    """Bifrost writes Redis entries without expiry; ours expire natively, index keys too."""
    store = redis_exact(shared_redis, ns, time.time)
    now = time.time()
    await store.put(entry("ttl", "team-a", now + 30))
    raw = redis.Redis.from_url(shared_redis)
    tag = f"{ns}:{{{short_hash('team-a')}}}"
    try:
        for key in (f"{tag}:e:ttl", f"{tag}:m", f"{ns}:i:ttl"):
            assert 0 < raw.pttl(key) <= 30_000, key
        # And they really go away, on Redis's own clock (polling with a deadline).
        await store.put(entry("gone", "team-a", time.time() + 0.2))
        deadline = time.monotonic() + 10
        while raw.exists(f"{tag}:e:gone", f"{ns}:i:gone"):
            assert time.monotonic() < deadline, "entry outlived its TTL"
            await asyncio.sleep(0.02)
        assert await store.get("gone", "team-a") is None
    finally:
        raw.close()
        await store.close()


async def test_redis_keys_share_a_cluster_slot_per_partition(shared_redis: str, ns: str) -> None:
    store = redis_exact(shared_redis, ns, time.time)
    await store.put(entry("slot", "team-a", time.time() + 30))
    await store.close()
    raw = redis.Redis.from_url(shared_redis)
    try:
        keys = sorted(k.decode() for k in raw.scan_iter(match=f"{ns}:{{*", count=100))
    finally:
        raw.close()
    tag = "{" + short_hash("team-a") + "}"
    assert keys == [f"{ns}:{tag}:e:slot", f"{ns}:{tag}:m"]


async def test_redis_exact_down_then_recovers_without_restart(ns: str, clock: FakeClock) -> None:
    server = plain_redis()
    _started(server, "a private Redis")
    try:
        store = redis_exact(server.url, ns, clock)
        await store.start()
        await store.put(entry("before", "p", clock() + 60))
        server.stop()
        with pytest.raises(StoreUnavailable) as failure:
            await store.get("before", "p")
        assert f"127.0.0.1:{server.port}" in str(failure.value)
        assert (why := await store.health()) is not None and "redis" in why
        server.start()  # empty again: nothing survives, but the same store object works
        assert await store.health() is None
        assert await store.get("before", "p") is None
        await store.put(entry("after", "p", clock() + 60))
        assert await store.get("after", "p") is not None
        await store.close()
    finally:
        server.cleanup()


async def test_redis_errors_never_show_the_password(ns: str, clock: FakeClock) -> None:
    port = free_port()  # nothing listens here
    store = redis_exact(f"redis://user:s3cret-pass@127.0.0.1:{port}/0", ns, clock)
    with pytest.raises(StoreUnavailable) as failure:
        await store.get("x", "p")
    why = await store.health()
    await store.close()
    assert why is not None
    for text in (str(failure.value), why, repr(store.target)):
        assert "s3cret-pass" not in text and f"127.0.0.1:{port}" in text


# ---------------------------------------------------------------- vector indexes
VECTOR_KINDS = ["embedded", "redis-search", "qdrant-local", "qdrant-server", "weaviate"]


def vector_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "embedded":
        return "embedded"
    if kind == "redis-search":
        return str(request.getfixturevalue("search_server").url)
    if kind == "qdrant-local":
        return "qdrant+local://:memory:"
    env = "QDRANT_URL" if kind == "qdrant-server" else "WEAVIATE_URL"
    if not os.environ.get(env):
        pytest.skip(f"{kind}: no server here; set {env} (e.g. {kind.split('-')[0]}://host:port)")
    return os.environ[env]


@pytest.fixture(params=VECTOR_KINDS)
async def vectors(
    request: pytest.FixtureRequest, clock: FakeClock, ns: str
) -> AsyncIterator[VectorIndex]:
    url = vector_url(request.param, request)
    index = build_vector_index(CacheConfig(vector_store=url, namespace=ns), clock)
    assert index is not None
    await index.start(f"test-model:{DIM}", DIM)
    yield index
    await index.remove_partition("p")
    await index.remove_partition("q")
    await index.close()


def unit(*hot: int, dim: int = DIM) -> list[float]:
    v = np.zeros(dim, dtype=np.float32)
    for i in hot:
        v[i] = 1.0
    return (v / np.linalg.norm(v)).tolist()


async def test_vector_nearest_first_with_cosine_similarity(
    vectors: VectorIndex, clock: FakeClock
) -> None:
    later = clock() + 60
    await vectors.add("same", "s", "p", unit(0), later)
    await vectors.add("near", "s", "p", unit(0, 1), later)
    await vectors.add("far", "s", "p", unit(5), later)
    found = await vectors.search("s", unit(0), 3)
    assert [n.id for n in found] == ["same", "near", "far"]
    assert found[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert found[1].similarity == pytest.approx(2**-0.5, abs=1e-4)
    assert found[2].similarity == pytest.approx(0.0, abs=1e-4)
    assert [n.id for n in await vectors.search("s", unit(0), 1)] == ["same"]
    assert await vectors.count() == 3
    assert await vectors.health() is None


async def test_vector_scopes_are_isolated(vectors: VectorIndex, clock: FakeClock) -> None:
    await vectors.add("in-a", "scope-a", "p", unit(0), clock() + 60)
    await vectors.add("in-b", "scope-b", "p", unit(0), clock() + 60)
    assert [n.id for n in await vectors.search("scope-a", unit(0), 5)] == ["in-a"]
    assert [n.id for n in await vectors.search("scope-b", unit(0), 5)] == ["in-b"]
    assert await vectors.search("scope-c", unit(0), 5) == []


async def test_vector_readd_replaces(vectors: VectorIndex, clock: FakeClock) -> None:
    await vectors.add("x", "scope-a", "p", unit(0), clock() + 60)
    await vectors.add("x", "scope-b", "p", unit(1), clock() + 60)
    assert await vectors.search("scope-a", unit(0), 5) == []
    found = await vectors.search("scope-b", unit(1), 5)
    assert [n.id for n in found] == ["x"] and found[0].similarity == pytest.approx(1, abs=1e-4)
    assert await vectors.count() == 1


async def test_vector_delete_by_id_and_by_partition(vectors: VectorIndex, clock: FakeClock) -> None:
    for i in range(4):
        await vectors.add(f"p{i}", "s", "p", unit(i), clock() + 60)
        await vectors.add(f"q{i}", "s", "q", unit(i), clock() + 60)
    await vectors.remove(["p0", "q0", "never-added"])
    ids = {n.id for n in await vectors.search("s", unit(0), 10)}
    assert ids == {"p1", "p2", "p3", "q1", "q2", "q3"}
    await vectors.remove_partition("p")
    assert {n.id for n in await vectors.search("s", unit(0), 10)} == {"q1", "q2", "q3"}
    assert await vectors.count() == 3


async def test_vector_concurrent_writers(vectors: VectorIndex, clock: FakeClock) -> None:
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(60, DIM)).astype(np.float32)
    await asyncio.gather(
        *(vectors.add(f"c{i}", "s", "p", rows[i].tolist(), clock() + 60) for i in range(60))
    )
    assert await vectors.count() == 60
    for i in (0, 17, 59):
        best = (await vectors.search("s", rows[i].tolist(), 1))[0]
        assert best.id == f"c{i}" and best.similarity == pytest.approx(1.0, abs=1e-3)


async def test_vector_search_skips_expired(
    vectors: VectorIndex, clock: FakeClock, request: pytest.FixtureRequest
) -> None:
    if vectors.name == "embedded":
        pytest.skip("embedded index leaves expiry to the cache layer's re-check (contract allows)")
    if vectors.name == "redis":
        pytest.skip(
            "Redis expires vectors natively on its own clock (the contract allows it): "
            "see test_redis_vector_hashes_expire_natively"
        )
    await vectors.add("short", "s", "p", unit(0), clock() + 10)
    await vectors.add("long", "s", "p", unit(0, 1), clock() + 1000)
    assert {n.id for n in await vectors.search("s", unit(0), 5)} == {"short", "long"}
    clock.advance(11)
    assert [n.id for n in await vectors.search("s", unit(0), 5)] == ["long"]
    sweep = getattr(vectors, "sweep", None)
    if sweep is not None:
        await sweep()
        assert await vectors.count() == 1


@pytest.mark.parametrize("kind", [k for k in VECTOR_KINDS if k != "embedded"])
async def test_vector_namespaces_never_mix(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock, ns: str
) -> None:
    """Another model (or dimension) gets another index: same ids, no cross-talk. (The embedded
    index lives in one process with one model, so it has nothing to mix.)"""
    url = vector_url(kind, request)
    config = CacheConfig(vector_store=url, namespace=ns)
    first, second, wider = (build_vector_index(config, clock) for _ in range(3))
    assert first is not None and second is not None and wider is not None
    await first.start(f"model-a:{DIM}", DIM)
    await second.start(f"model-b:{DIM}", DIM)
    await wider.start(f"model-a:{DIM * 2}", DIM * 2)
    try:
        await first.add("x", "s", "p", unit(0), clock() + 60)
        assert await second.search("s", unit(0), 5) == []
        assert await wider.search("s", unit(0, dim=DIM * 2), 5) == []
        with pytest.raises(ValueError):
            await wider.add("y", "s", "p", unit(0), clock() + 60)  # wrong dimension
    finally:
        for index in (first, second, wider):
            await index.remove_partition("p")
            await index.close()


# A backend that is down: nothing listens on these ports.
def _down_urls() -> list[tuple[str, str]]:
    p1, p2 = free_port(), free_port()
    return [
        ("redis", f"redis://:s3cret-pass@127.0.0.1:{p1}"),
        ("qdrant", f"qdrants://:s3cret-pass@127.0.0.1:{p1}"),
        ("qdrant", f"qdrant+grpc://127.0.0.1:{p1}"),
        ("weaviate", f"weaviate://:s3cret-pass@127.0.0.1:{p1}?grpc_port={p2}"),
    ]


@pytest.mark.parametrize(
    ("name", "url"), _down_urls(), ids=["redis", "qdrants-rest", "qdrant-grpc", "weaviate"]
)
async def test_vector_backend_down_is_reported_not_raised_at_start(
    name: str, url: str, clock: FakeClock, ns: str
) -> None:
    index = build_vector_index(CacheConfig(vector_store=url, namespace=ns), clock)
    assert index is not None and index.name == name
    await index.start(f"test-model:{DIM}", DIM)  # must not raise: the sidecar starts uncached
    why = await index.health()
    assert why is not None and name in why and "s3cret-pass" not in why
    with pytest.raises(StoreUnavailable) as failure:
        await index.search("s", unit(0), 3)
    assert "s3cret-pass" not in str(failure.value)
    with pytest.raises(StoreUnavailable):
        await index.add("x", "s", "p", unit(0), clock() + 60)
    await index.close()


async def test_redis_vector_down_then_recovers_and_recreates_index(
    ns: str, clock: FakeClock
) -> None:
    try:
        server = valkey_with_search()
    except ServerUnavailable as exc:
        pytest.skip(f"Valkey + RediSearch unavailable: {exc}")
    _started(server, "Valkey + RediSearch")
    try:
        index = build_vector_index(CacheConfig(vector_store=server.url, namespace=ns), clock)
        assert index is not None
        await index.start(f"test-model:{DIM}", DIM)
        await index.add("a", "s", "p", unit(0), clock() + 60)
        server.stop()
        with pytest.raises(StoreUnavailable):
            await index.search("s", unit(0), 3)
        assert await index.health() is not None
        server.start()  # empty: the index is gone and must come back by itself
        assert await index.search("s", unit(0), 3) == []
        await index.add("b", "s", "p", unit(1), clock() + 60)
        assert [n.id for n in await index.search("s", unit(1), 3)] == ["b"]
        assert await index.health() is None
        await index.close()
    finally:
        server.cleanup()


async def test_redis_vector_hashes_expire_natively(
    search_server: ServerProcess, ns: str, clock: FakeClock
) -> None:
    index = build_vector_index(CacheConfig(vector_store=search_server.url, namespace=ns), clock)
    assert index is not None
    await index.start(f"test-model:{DIM}", DIM)
    await index.add("e", "s", "p", unit(0), clock() + 30)
    await index.add("brief", "s", "p", unit(0, 1), clock() + 0.2)
    raw = redis.Redis.from_url(search_server.url)
    try:
        keys = sorted(raw.scan_iter(match=f"{ns}:v:*"))
        assert [raw.pttl(k) <= 30_000 and raw.pttl(k) > 0 for k in keys] == [True, True]
        deadline = time.monotonic() + 10  # Redis's own clock: poll with a deadline
        while {n.id for n in await index.search("s", unit(0), 5)} != {"e"}:
            assert time.monotonic() < deadline, "vector outlived its TTL"
            await asyncio.sleep(0.02)
        assert await index.count() == 1
    finally:
        raw.close()
        await index.close()


# ---------------------------------------------------------------- selection by URL
@pytest.mark.parametrize(
    ("field", "url", "message"),
    [
        ("exact_store", "memcached://h:11211", "unsupported backend 'memcached'"),
        ("exact_store", "qdrant://h:6333", "is a vector database"),
        ("exact_store", "redis://", "has no host"),
        ("exact_store", "redis://h:port", "invalid Redis URL"),
        ("exact_store", "redis://h:6379/x", "database number"),
        ("exact_store", "redis://h:6379?socket_timeout=soon", "socket_timeout"),
        ("exact_store", "redis+cluster://h:7000/3", "only database 0"),
        ("vector_store", "pinecone://x", "unsupported backend 'pinecone'"),
        ("vector_store", "qdrant+local://", "needs a directory or :memory:"),
        ("vector_store", "qdrant://h:6333?colour=red", "unknown Qdrant URL option(s) colour"),
        ("vector_store", "qdrant://h?api_key_env=SIDECAR_TEST_UNSET_VAR", "is not set"),
        ("vector_store", "weaviate://:8080", "has no host"),
        ("vector_store", "weaviate://h:8080?grpc_port=x", "must be numbers"),
    ],
)
def test_bad_backend_urls_name_the_problem(field: str, url: str, message: str) -> None:
    config = CacheConfig(**{field: url})
    with pytest.raises(BackendConfigError) as failure:
        if field == "exact_store":
            build_exact_store(config)
        else:
            build_vector_index(config)
    assert f"cache.{field}" in str(failure.value) and message in str(failure.value)


def test_backend_selection_by_url() -> None:
    chosen = {
        url: type(build_vector_index(CacheConfig(vector_store=url))).__name__
        for url in (
            "embedded",
            "none",
            "redis://127.0.0.1:6379",
            "rediss://u:p@cache.example:6380/0",
            "qdrant://q:6333",
            "qdrant+grpc://q:6334",
            "qdrant+local://:memory:",
            "weaviate://w:8080",
        )
    }
    assert chosen == {
        "embedded": "EmbeddedVectorIndex",
        "none": "NoneType",
        "redis://127.0.0.1:6379": "RedisVectorIndex",
        "rediss://u:p@cache.example:6380/0": "RedisVectorIndex",
        "qdrant://q:6333": "QdrantVectorIndex",
        "qdrant+grpc://q:6334": "QdrantVectorIndex",
        "qdrant+local://:memory:": "QdrantVectorIndex",
        "weaviate://w:8080": "WeaviateVectorIndex",
    }
    assert type(build_exact_store(CacheConfig(exact_store="redis+cluster://h:7000"))).__name__ == (
        "RedisExactStore"
    )
    with pytest.raises(BackendConfigError, match="cache.namespace"):
        build_exact_store(CacheConfig(exact_store="redis://h:6379", namespace="a{b}"))


async def test_an_empty_scope_is_never_reported_while_it_has_a_vector(
    vectors: VectorIndex, clock: FakeClock
) -> None:
    """What lets a lookup skip its embedding (an index that cannot tell has no method, and
    the lookup embeds: docs)."""
    check = getattr(vectors, "scope_is_empty", None)
    if check is None:
        assert vectors.name in ("qdrant", "weaviate")
        return
    assert await check("fresh")
    await vectors.add("x", "fresh", "p", unit(0), clock() + 60)
    assert not await check("fresh")
    assert await check("another")
