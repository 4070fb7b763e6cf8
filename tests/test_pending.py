"""Request contexts waiting for their response hook: unguessable ids, a per-request secret, no
replacement of a pending id (409), and bounds in count and bytes that refuse new requests (503)
instead of evicting waiting ones."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import FakeClock, make_config
from hookclient import chat_body, openai_answer, request_hook, response_hook

from sidecar.context import RequestContext
from sidecar.pending import MemoryPendingStore, PendingConflict, PendingOverloaded, PendingUnknown

TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")


def answer_text(reply: dict[str, Any]) -> str:
    return str(reply["response"]["body"]["choices"][0]["message"]["content"])


async def test_server_issued_ids_and_secrets_are_random_tokens(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        replies = [
            (await request_hook(client, chat_body(f"Question number {i}?"))).json()
            for i in range(20)
        ]
    ids = [r["request_id"] for r in replies]
    secrets = [r["request_secret"] for r in replies]
    assert all(TOKEN.fullmatch(v) for v in ids + secrets), ids[:3]
    assert len(set(ids + secrets)) == 40


async def test_a_pending_id_cannot_be_taken_over_from_another_partition(
    sidecar_factory: Any,
) -> None:
    async with sidecar_factory() as (_, client):
        a_question = chat_body("What is the refund policy for team A?")
        b_question = chat_body("Write a poem for team B.")
        a = await client.post(
            "/v1/hooks/request",
            json={
                "request_id": "shared-id",
                "method": "POST",
                "path": "/v1/chat/completions",
                "headers": {"x-bf-cache-key": "team-a"},
                "body": a_question,
            },
        )
        assert a.status_code == 200 and a.json()["action"] == "continue"
        b = await client.post(
            "/v1/hooks/request",
            json={
                "request_id": "shared-id",
                "method": "POST",
                "path": "/v1/chat/completions",
                "headers": {"x-bf-cache-key": "team-b"},
                "body": b_question,
            },
        )
        assert b.status_code == 409, b.text
        error = b.json()["error"]
        assert error["kind"] == "conflict" and "shared-id" in error["message"]
        # A's answer is stored under A's question, in A's partition, and nowhere else.
        stored = await response_hook(client, a.json(), openai_answer("Refunds within 30 days."))
        assert stored.status_code == 200 and stored.json()["stored_entry_id"]
        hit = (await request_hook(client, a_question, headers={"x-bf-cache-key": "team-a"})).json()
        assert hit["cache"]["status"] == "hit-exact"
        assert answer_text(hit) == "Refunds within 30 days."
        other = await request_hook(client, b_question, headers={"x-bf-cache-key": "team-b"})
        assert other.json()["cache"]["status"] == "miss"
        # Once answered, the id is free again.
        again = await client.post(
            "/v1/hooks/request",
            json={"request_id": "shared-id", "method": "GET", "path": "/v1/models"},
        )
        assert again.status_code == 200


async def test_the_response_hook_needs_the_request_secret(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (sidecar, client):
        body = chat_body("Which river is the longest?")
        first = (await request_hook(client, body)).json()
        assert first["action"] == "continue"
        envelope = {"status": 200, "headers": {}, "body": openai_answer("An attacker's answer.")}
        unknown = await client.post(
            "/v1/hooks/response",
            json={**envelope, "request_id": "no-such-id", "request_secret": "guess"},
        )
        wrong = await client.post(
            "/v1/hooks/response",
            json={**envelope, "request_id": first["request_id"], "request_secret": "guess"},
        )
        # A wrong secret is refused exactly like an unknown id: nothing is revealed...
        assert wrong.status_code == unknown.status_code == 404
        assert wrong.json()["error"]["kind"] == unknown.json()["error"]["kind"]
        assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
            "no-such-id", first["request_id"]
        )
        missing = await client.post(
            "/v1/hooks/response", json={**envelope, "request_id": first["request_id"]}
        )
        assert missing.status_code == 400 and "'request_secret'" in missing.text
        # ...and nothing is consumed: the real response hook still completes the request.
        assert (await sidecar.pending.stats()).items == 1
        ok = await response_hook(client, first, openai_answer("The Nile."))
        assert ok.status_code == 200 and ok.json()["stored_entry_id"]
        hit = (await request_hook(client, body)).json()
        assert answer_text(hit) == "The Nile."
        # Answered once: the same id and secret are refused afterwards.
        assert (await response_hook(client, first, openai_answer("Again."))).status_code == 404


async def test_pending_bytes_are_capped_without_evicting_waiting_requests(
    sidecar_factory: Any,
) -> None:
    # Each request carries ~100 KB of metadata: two fit under 256 KiB, a third does not.
    config = make_config(server={"max_pending_bytes": 256 * 1024})
    blob = "m" * 100_000
    async with sidecar_factory(config) as (sidecar, client):
        waiting = []
        for i in range(2):
            res = await request_hook(client, chat_body(f"Big request {i}?", metadata={"x": blob}))
            assert res.status_code == 200, res.text
            waiting.append(res.json())
        held = await sidecar.pending.stats()
        assert held.items == 2 and 200_000 < held.bytes <= 256 * 1024
        refused = await request_hook(client, chat_body("Big request 2?", metadata={"x": blob}))
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["kind"] == "overloaded" and "server.max_pending_bytes" in error["message"]
        # A small request still fits; the waiting ones were not dropped to make room.
        small = await request_hook(client, chat_body("Small request?"))
        assert small.status_code == 200
        for i, pending in enumerate(waiting):
            done = await response_hook(client, pending, openai_answer(f"answer {i}"))
            assert done.status_code == 200 and done.json()["stored_entry_id"], done.text
        # Answered contexts give their room back.
        retry = await request_hook(client, chat_body("Big request 2?", metadata={"x": blob}))
        assert retry.status_code == 200, retry.text


async def test_pending_count_is_capped_without_evicting_waiting_requests(
    sidecar_factory: Any,
) -> None:
    config = make_config(server={"max_pending": 2})
    async with sidecar_factory(config) as (_, client):
        waiting = [(await request_hook(client, chat_body(q))).json() for q in ("one?", "two?")]
        refused = await request_hook(client, chat_body("three?"))
        assert refused.status_code == 503
        assert "server.max_pending" in refused.json()["error"]["message"]
        for pending in waiting:
            assert (await response_hook(client, pending, openai_answer("x"))).status_code == 200


def _ctx(request_id: str) -> RequestContext:
    return RequestContext(request_id, "http", "POST", "/v1/chat/completions", {})


async def test_expired_contexts_free_their_room_and_their_id(clock: FakeClock) -> None:
    store = MemoryPendingStore(ttl=60, max_items=10, max_bytes=1000, clock=clock)
    await store.put(_ctx("a"), "sa", 600)
    with pytest.raises(PendingOverloaded):
        await store.put(_ctx("b"), "sb", 600)
    with pytest.raises(PendingConflict):
        await store.put(_ctx("a"), "other", 10)
    clock.advance(61)
    await store.put(_ctx("b"), "sb", 600)  # a expired: its bytes are free
    with pytest.raises(PendingUnknown):
        await store.take("a", "sa")
    await store.put(_ctx("a"), "new", 100)  # ...and so is its id
    assert (await store.stats()).bytes == 700
    with pytest.raises(PendingUnknown):
        await store.take("b", "sa")
    assert (await store.take("b", "sb")).request_id == "b"
    assert (await store.stats()).bytes == 100
