"""Two real ``sidecar serve`` processes sharing the Redis exact store (the shared Redis on
127.0.0.1:6379) and a Valkey + RediSearch vector store (started here): an answer stored
through one replica is an exact and a semantic hit through the other, and identical misses
arriving at both at once send one request upstream while the rest wait for its answer.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from backend_servers import (
    ServerProcess,
    ServerUnavailable,
    delete_prefix,
    redis_reachable,
    valkey_with_search,
)
from hookclient import chat_body, openai_answer, request_hook, response_hook, round_trip
from replica import Replica, new_pending_key

SHARED_REDIS = "redis://127.0.0.1:6379"


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[Replica, Replica]]:
    if (why := redis_reachable()) is not None:
        pytest.skip(f"replica test needs the shared Redis: {why}")
    try:
        search = valkey_with_search()
    except ServerUnavailable as exc:
        pytest.skip(f"Valkey + RediSearch unavailable: {exc}")
    server: ServerProcess = search
    try:
        server.start()
    except ServerUnavailable as exc:
        server.cleanup()
        pytest.skip(f"Valkey + RediSearch cannot start here: {exc}")
    namespace = f"rtest-{uuid.uuid4().hex[:8]}"
    config = {
        "cache": {
            "exact_store": SHARED_REDIS,
            "vector_store": server.url,
            "namespace": namespace,
            "data_dir": ":memory:",
            "default_cache_key": "replica-test",
            # generous: the owner's answer always comes back well within it in these tests
            "lock_wait_ms": 60_000,
        }
    }
    workdir = tempfile.mkdtemp(prefix="sidecar-replicas-")
    env = {"SIDECAR_PENDING_KEY": new_pending_key()}  # pending contexts go to Redis too
    pair = (Replica(config, workdir, "a", env), Replica(config, workdir, "b", env))
    try:
        for replica in pair:
            replica.start()
        for replica in pair:
            replica.wait_ready()
        yield pair
    finally:
        for replica in pair:
            replica.stop()
        server.cleanup()
        delete_prefix(SHARED_REDIS, namespace)


async def _vectors_landed(client: httpx.AsyncClient, deadline_s: float = 60.0) -> None:
    """Poll a replica (another process) until its vector backlog is empty."""
    deadline = time.monotonic() + deadline_s
    while (await client.get("/readyz")).json().get("vector_backlog") != 0:
        assert time.monotonic() < deadline, "the replica's vector backlog never emptied"
        await asyncio.sleep(0.05)  # polling interval for another process, not synchronisation


async def test_answer_stored_through_one_replica_hits_through_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    body = chat_body("What is the boiling point of water at sea level?")
    async with httpx.AsyncClient(base_url=a.url) as ca, httpx.AsyncClient(base_url=b.url) as cb:
        first, stored = await round_trip(ca, body, openai_answer("100 degrees Celsius."))
        assert first["cache"]["status"] == "miss"
        assert stored is not None and "stored_entry_id" in stored
        exact = (await request_hook(cb, body)).json()
        assert exact["action"] == "respond" and exact["cache"]["status"] == "hit-exact"
        assert exact["response"]["body"]["choices"][0]["message"]["content"] == (
            "100 degrees Celsius."
        )
        # The vector is computed after the store answered: the other replica sees the entry
        # as a semantic candidate once replica a reports its backlog empty.
        await _vectors_landed(ca)
        paraphrase = chat_body("at sea level, what's the boiling point of water?")
        semantic = (await request_hook(cb, paraphrase)).json()
        assert semantic["cache"]["status"] == "hit-semantic", semantic["cache"]["reason"]
        # ...and an invalidation through one replica is seen by the other.
        deleted = await cb.delete(f"/v1/cache/entries/{stored['stored_entry_id']}")
        assert deleted.status_code == 200
        assert (await request_hook(ca, body)).json()["cache"]["status"] == "miss"


async def test_concurrent_identical_misses_across_replicas_go_upstream_once(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    body = chat_body(f"Write a haiku about request {uuid.uuid4().hex[:6]}.")
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=90) as ca,
        httpx.AsyncClient(base_url=b.url, timeout=90) as cb,
    ):
        client_of = {asyncio.create_task(request_hook(c, body)): c for c in (ca, cb) * 3}
        # Before an answer is stored only the owner of the miss lock can finish: every other
        # request waits for it (lock_wait is a minute), so the first to finish is the owner.
        done, waiting = await asyncio.wait(client_of, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(waiting) == 5
        first = done.pop()
        owner = first.result().json()
        assert owner["action"] == "continue" and owner["cache"]["status"] == "miss"
        # The proxy sends the owner's answer to the replica that saw its request.
        reply = await response_hook(client_of[first], owner, openai_answer("Quiet keys align."))
        assert reply.status_code == 200 and "stored_entry_id" in reply.json()
        rest = [r.json() for r in await asyncio.gather(*waiting)]
        # Exactly one of six identical concurrent requests went upstream; the others got its
        # answer: after waiting on the lock (exact hit), or, when their lookup reached the
        # vector store after the answer was stored, as a semantic hit of similarity 1.
        assert [r["action"] for r in rest] == ["respond"] * 5, [r["cache"] for r in rest]
        assert {r["cache"]["status"] for r in rest} <= {"hit-exact", "hit-semantic"}
