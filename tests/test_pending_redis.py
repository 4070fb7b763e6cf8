"""The Redis pending store on the shared Redis: contexts shared by replicas, sealed with AES-GCM
(no plaintext in Redis, bound to their request id), answered once, bounded in bytes."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import redis
from backend_servers import delete_prefix, free_port, redis_reachable
from conftest import make_config

from guardrails.pii.redaction import VAULT_KEY, PlaceholderVault
from sidecar.cache.keys import CachePlan
from sidecar.cache.layer import CacheStatus, Lookup
from sidecar.cache.single_flight import HeldLock
from sidecar.context import HookError, RequestContext
from sidecar.pending import (
    PendingConfigError,
    PendingConflict,
    PendingContexts,
    PendingOverloaded,
    PendingUnknown,
    build_pending,
    build_pending_store,
    pending_config_errors,
)
from sidecar.pending_redis import RedisPendingStore, load_keys

SHARED_REDIS = "redis://127.0.0.1:6379"
PII = "dana.keller@example.com"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def namespace() -> Any:
    if (why := redis_reachable()) is not None:
        pytest.skip(f"needs the shared Redis: {why}")
    ns = f"pendtest-{uuid.uuid4().hex[:8]}"
    yield ns
    delete_prefix(SHARED_REDIS, ns)


@pytest.fixture
async def make_store(namespace: str) -> AsyncIterator[Callable[..., RedisPendingStore]]:
    made: list[RedisPendingStore] = []

    def make(key: str, **server: Any) -> RedisPendingStore:
        config = make_config(
            cache={"exact_store": SHARED_REDIS, "namespace": namespace},
            server={"pending_ttl": 30, **server},
        )
        store = build_pending_store(config, {"SIDECAR_PENDING_KEY": key})
        assert isinstance(store, RedisPendingStore)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def context(request_id: str) -> RequestContext:
    vault = PlaceholderVault()
    vault.placeholder_for("EMAIL_ADDRESS", PII)
    ctx = RequestContext(request_id, "http", "POST", "/v1/chat/completions", {"x": "y"})
    ctx.plan = CachePlan(partition="team-a", exact_key="k1", question="Mail [EMAIL_ADDRESS_1]")
    ctx.lookup = Lookup(
        CacheStatus.MISS,
        "no entry",
        vector=np.arange(4, dtype=np.float32),
        lock=HeldLock("k1", "team-a", "tok"),
    )
    ctx.guard_state[VAULT_KEY] = vault
    ctx.note("cache miss")
    return ctx


def raw_values(namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        return [client.get(k) or b"" for k in client.scan_iter(match=f"{namespace}:*:c:*")]
    finally:
        client.close()


async def test_a_context_put_by_one_replica_is_taken_once_by_another(
    make_store: Any, namespace: str
) -> None:
    key = new_key()
    a, b = make_store(key), make_store(key)
    await a.put(context("req-1"), "secret-1", 1000)
    values = raw_values(namespace)
    assert len(values) == 1 and PII.encode() not in values[0] and b"team-a" not in values[0]
    with pytest.raises(PendingConflict):
        await b.put(context("req-1"), "secret-2", 1000)
    with pytest.raises(PendingUnknown):
        await b.take("req-1", "wrong secret")  # refused, and nothing consumed
    ctx = await b.take("req-1", "secret-1")
    assert ctx.plan is not None and ctx.plan.partition == "team-a"
    assert ctx.lookup is not None and ctx.lookup.lock == HeldLock("k1", "team-a", "tok")
    assert ctx.lookup.vector is not None and ctx.lookup.vector.tolist() == [0, 1, 2, 3]
    vault = ctx.guard_state[VAULT_KEY]
    assert isinstance(vault, PlaceholderVault) and vault.mapping["[EMAIL_ADDRESS_1]"] == PII
    assert ctx.trace == ["cache miss"]
    with pytest.raises(PendingUnknown):
        await a.take("req-1", "secret-1")  # answered once
    assert (await a.stats()).items == 0 and (await a.stats()).bytes == 0
    assert raw_values(namespace) == []


async def test_contexts_expire_with_pending_ttl(make_store: Any, namespace: str) -> None:
    store = make_store(new_key())
    await store.put(context("req-ttl"), "s", 100)
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        assert keys and all(0 < client.pttl(k) <= 30_000 for k in keys)
    finally:
        client.close()


async def test_bytes_are_capped_across_replicas(make_store: Any) -> None:
    key = new_key()
    a, b = make_store(key, max_pending_bytes=64 * 1024), make_store(key)
    await a.put(context("r1"), "s", 40_000)
    with pytest.raises(PendingOverloaded) as refused:
        await a.put(context("r2"), "s", 40_000)
    assert "server.max_pending_bytes" in refused.value.message
    await b.take("r1", "s")  # taken through the other replica: the room is given back
    await a.put(context("r2"), "s", 40_000)


async def test_a_sealed_context_opens_only_with_its_key_and_under_its_id(
    make_store: Any, namespace: str
) -> None:
    a, stranger = make_store(new_key()), make_store(new_key())
    await a.put(context("req-k"), "s", 100)
    with pytest.raises(HookError) as refused:
        await stranger.take("req-k", "s")
    assert refused.value.status == 503 and "SIDECAR_PENDING_KEY" in refused.value.message
    # A sealed value moved under another request's key does not open either (the id is the
    # associated data).
    await a.put(context("req-x"), "s", 100)
    await a.put(context("req-y"), "s", 100)
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        keys = a._keys("req-x", "s")[0], a._keys("req-y", "s")[0]
        client.set(keys[1], client.get(keys[0]) or b"", px=30_000)
    finally:
        client.close()
    with pytest.raises(HookError) as moved:
        await a.take("req-y", "s")
    assert moved.value.kind == "pending_unreadable"


def test_the_key_must_be_set_and_be_32_bytes_of_base64() -> None:
    config = make_config(cache={"exact_store": SHARED_REDIS})
    with pytest.raises(PendingConfigError, match="SIDECAR_PENDING_KEY is not set"):
        build_pending_store(config, {})
    with pytest.raises(PendingConfigError, match="key 1 in K is not valid base64"):
        load_keys("K", {"K": "not base64!"})
    with pytest.raises(PendingConfigError, match="key 2 in K decodes to 16 bytes"):
        load_keys("K", {"K": new_key() + "," + base64.b64encode(os.urandom(16)).decode()})
    raw = os.urandom(32)
    assert load_keys("K", {"K": base64.urlsafe_b64encode(raw).decode().rstrip("=")}) == [raw]
    # The memory store needs no key; an explicit Redis URL needs one too.
    assert build_pending_store(make_config(), {}).name == "memory"
    explicit = make_config(server={"pending_store": SHARED_REDIS, "pending_key_env": "MY_KEY"})
    with pytest.raises(PendingConfigError, match="MY_KEY"):
        build_pending_store(explicit, {})
    assert pending_config_errors(explicit, {}) and not pending_config_errors(
        explicit, {"MY_KEY": new_key()}
    )
    memory = make_config(cache={"exact_store": SHARED_REDIS}, server={"pending_store": "memory"})
    assert build_pending_store(memory, {}).name == "memory"


def test_check_config_reports_a_missing_key(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sidecar.cli import main

    path = tmp_path / "sidecar.yaml"
    path.write_text(f"cache: {{exact_store: '{SHARED_REDIS}'}}\n")
    monkeypatch.delenv("SIDECAR_PENDING_KEY", raising=False)
    assert main(["check-config", "--config", str(path)]) == 1
    assert "SIDECAR_PENDING_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("SIDECAR_PENDING_KEY", new_key())
    assert main(["check-config", "--config", str(path)]) == 0


async def test_keys_rotate_without_losing_waiting_requests(make_store: Any) -> None:
    old, new = new_key(), new_key()
    before = make_store(old)
    await before.put(context("sealed-with-old"), "s", 100)
    # Step 2 of a rotation: the new key seals, the old one still opens.
    during = make_store(f"{new},{old}")
    await during.put(context("sealed-with-new"), "s", 100)
    assert (await during.take("sealed-with-old", "s")).request_id == "sealed-with-old"
    after = make_store(new)
    assert (await after.take("sealed-with-new", "s")).request_id == "sealed-with-new"


async def test_an_unreachable_redis_keeps_contexts_in_the_process(namespace: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    config = make_config(cache={"exact_store": dead, "namespace": namespace})
    pending = build_pending(config, environ={"SIDECAR_PENDING_KEY": new_key()})
    try:
        assert pending.store.name == "redis"
        await pending.ensure_free("r1")
        secret = await pending.hold(context("r1"))
        with pytest.raises(PendingConflict):
            await pending.ensure_free("r1")
        with pytest.raises(PendingUnknown):
            await pending.take("r1", "wrong")
        assert (await pending.take("r1", secret)).request_id == "r1"
        # Without the in-process fallback, the request is refused with 503, naming the store.
        alone = PendingContexts(pending.store)
        with pytest.raises(HookError) as refused:
            await alone.hold(context("r2"))
        assert refused.value.status == 503
        assert "pending store unavailable" in refused.value.message
    finally:
        await pending.close()
