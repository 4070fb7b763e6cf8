"""Two real ``sidecar serve`` replicas behind a round-robin TCP proxy on loopback, sharing the
Redis exact store (the shared Redis on 127.0.0.1:6379): the request hook reaches one replica,
the response hook the other, and the answer is still completed, with the reversible-PII
placeholders restored, because the pending context travels through Redis, sealed (AES-GCM):
Redis never holds the personal data or the question in clear."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from backend_servers import delete_prefix, free_port, redis_reachable
from hookclient import chat_body, openai_answer
from replica import REPO, Replica, new_pending_key

SHARED_REDIS = "redis://127.0.0.1:6379"
EMAIL = "alice.smith@example.com"
QUESTION = f"Please email the quarterly invoice to {EMAIL} today."
RULES = """
profiles:
  pii:
    provider: presidio
    config: {entities: [EMAIL_ADDRESS, PHONE_NUMBER], min_score: 0.5, redaction: reversible}
rules:
  - id: pii-reversible
    when: 'true'
    apply_to: both
    profiles: [pii]
    action: redact
"""


class RoundRobin:
    """A TCP proxy handing each new connection to the next backend in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.routed: list[int] = []  # backend port of each connection, in order
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.ports[len(self.routed) % len(self.ports)]
        self.routed.append(port)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Replica, Replica, str]]:
    if (why := redis_reachable()) is not None:
        pytest.skip(f"replica test needs the shared Redis: {why}")
    namespace = f"pendrep-{uuid.uuid4().hex[:8]}"
    workdir = tempfile.mkdtemp(prefix="sidecar-pending-replicas-")
    rules = Path(workdir) / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    config = {
        "server": {"grpc_enabled": False},
        "cache": {
            "exact_store": SHARED_REDIS,
            "vector_store": "",  # exact layer only: no embedding model to load
            "namespace": namespace,
            "data_dir": ":memory:",
            "default_cache_key": "pending-replicas",
        },
        "guardrails": {"rules": [str(rules)], "audit_log": str(Path(workdir) / "audit.jsonl")},
    }
    env = {"SIDECAR_PENDING_KEY": new_pending_key()}
    pair = (Replica(config, workdir, "a", env), Replica(config, workdir, "b", env))
    try:
        for replica in pair:
            replica.start()
        for replica in pair:
            replica.wait_ready()
        yield pair[0], pair[1], namespace
    finally:
        for replica in pair:
            replica.stop()
        delete_prefix(SHARED_REDIS, namespace)


@pytest.fixture
async def proxy(setup: tuple[Replica, Replica, str]) -> AsyncIterator[RoundRobin]:
    a, b, _ = setup
    rr = RoundRobin([a.port, b.port])
    await rr.start()
    yield rr
    await rr.stop()


async def post(proxy: RoundRobin, path: str, envelope: dict[str, Any]) -> httpx.Response:
    """One request on a fresh connection, so the proxy picks the next replica."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}", timeout=60) as c:
        return await c.post(path, json=envelope, headers={"connection": "close"})


def sealed_values(namespace: str) -> list[bytes]:
    """Every byte under the namespace (pending contexts, their accounting, cache entries)."""
    client = redis.Redis.from_url(SHARED_REDIS)
    out: list[bytes] = []
    try:
        for key in client.scan_iter(match=f"{namespace}:*"):
            kind = client.type(key)
            if kind == b"string":
                out.append(key + b"=" + (client.get(key) or b""))
            elif kind == b"zset":
                out.append(key + b"=" + b",".join(client.zrange(key, 0, -1)))
            elif kind == b"hash":
                pairs = client.hgetall(key).items()
                out.append(key + b"=" + b",".join(k + b":" + v for k, v in pairs))
            else:
                out.append(key)
        return out
    finally:
        client.close()


async def test_response_hook_on_the_other_replica_restores_pii(
    setup: tuple[Replica, Replica, str], proxy: RoundRobin
) -> None:
    a, b, namespace = setup
    async with httpx.AsyncClient() as client:
        for replica in (a, b):
            ready = (await client.get(f"{replica.url}/readyz")).json()
            assert ready["pending_store"] == "redis"
    request = {"method": "POST", "path": "/v1/chat/completions", "body": chat_body(QUESTION)}
    first = await post(proxy, "/v1/hooks/request", request)
    assert first.status_code == 200, first.text
    pending = first.json()
    assert pending["action"] == "continue" and pending["cache"]["status"] == "miss"
    sent = pending["body"]["messages"][0]["content"]
    assert EMAIL not in sent and "[EMAIL_ADDRESS_1]" in sent
    # While the request waits, Redis holds its context sealed: no personal data, no question.
    values = sealed_values(namespace)
    assert any(b":{pending}:c:" in v for v in values)
    assert not any(EMAIL.encode() in v or b"quarterly" in v for v in values)

    answer = {
        "request_id": pending["request_id"],
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": openai_answer("Done: the invoice went to [EMAIL_ADDRESS_1]."),
    }
    wrong = await post(proxy, "/v1/hooks/response", {**answer, "request_secret": "guess"})
    assert wrong.status_code == 404  # and nothing is consumed:
    done = await post(
        proxy, "/v1/hooks/response", {**answer, "request_secret": pending["request_secret"]}
    )
    assert done.status_code == 200, done.text
    reply = done.json()
    assert reply["body"]["choices"][0]["message"]["content"] == (
        f"Done: the invoice went to {EMAIL}."
    )
    assert reply["stored_entry_id"]
    # The request went to one replica, the two response hooks to the other and back.
    assert proxy.routed == [a.port, b.port, a.port]
    # Answered once, whichever replica is asked again.
    again = await post(
        proxy, "/v1/hooks/response", {**answer, "request_secret": pending["request_secret"]}
    )
    assert again.status_code == 404
    # The stored answer keeps its placeholder; another user's address is restored on a hit.
    bob = {**request, "body": chat_body(QUESTION.replace("alice.smith", "bob.jones"))}
    hit = (await post(proxy, "/v1/hooks/request", bob)).json()
    assert hit["cache"]["status"] == "hit-exact"
    assert hit["response"]["body"]["choices"][0]["message"]["content"] == (
        "Done: the invoice went to bob.jones@example.com."
    )
    assert not any(EMAIL.encode() in v for v in sealed_values(namespace))


def test_serve_refuses_to_start_without_the_pending_key(tmp_path: Path) -> None:
    config = {
        "server": {"http_port": free_port(), "grpc_enabled": False},
        "cache": {"exact_store": SHARED_REDIS, "vector_store": "none", "data_dir": ":memory:"},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_PENDING_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert b"SIDECAR_PENDING_KEY is not set" in done.stdout + done.stderr
