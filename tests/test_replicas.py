"""Two real ``sidecar serve`` processes sharing the Redis exact store (the shared Redis on
127.0.0.1:6379) and a Valkey + RediSearch vector store (started here): an answer stored
through one replica is an exact and a semantic hit through the other, and identical misses
arriving at both at once send one request upstream while the rest wait for its answer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from backend_servers import (
    ServerProcess,
    ServerUnavailable,
    delete_prefix,
    free_port,
    redis_reachable,
    valkey_with_search,
)
from hookclient import chat_body, openai_answer, request_hook, response_hook, round_trip

SHARED_REDIS = "redis://127.0.0.1:6379"
REPO = Path(__file__).resolve().parent.parent


class Replica:
    """One ``python -m sidecar serve`` process on its own ports, stopped by its PID."""

    def __init__(self, config: dict[str, Any], workdir: str, name: str) -> None:
        self.port = free_port()
        config = {**config, "server": {"http_port": self.port, "grpc_port": free_port()}}
        self.config_path = Path(workdir) / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = Path(workdir) / f"{name}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "--config", str(self.config_path)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:  # poll /readyz with a deadline (the model loads first)
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica not ready in {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""


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
    pair = (Replica(config, workdir, "a"), Replica(config, workdir, "b"))
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
        reply = await response_hook(
            client_of[first], owner["request_id"], openai_answer("Quiet keys align.")
        )
        assert reply.status_code == 200 and "stored_entry_id" in reply.json()
        rest = [r.json() for r in await asyncio.gather(*waiting)]
        # Exactly one of six identical concurrent requests went upstream; the others got its
        # answer: after waiting on the lock (exact hit), or, when their lookup reached the
        # vector store after the answer was stored, as a semantic hit of similarity 1.
        assert [r["action"] for r in rest] == ["respond"] * 5, [r["cache"] for r in rest]
        assert {r["cache"]["status"] for r in rest} <= {"hit-exact", "hit-semantic"}
