"""Bad input to the HTTP hook gets a clear 4xx naming the problem and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip


async def _assert_untouched(sidecar: Any) -> None:
    assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0
    assert (await sidecar.pending.stats()).items == 0


async def test_malformed_json(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (sidecar, client):
        res = await client.post(
            "/v1/hooks/request",
            content=b'{"method": "POST",',
            headers={"content-type": "application/json"},
        )
        assert res.status_code == 400
        assert res.json()["error"]["kind"] == "malformed_json"
        res = await client.post("/v1/hooks/request", content=b"[1, 2]")
        assert res.status_code == 400 and "JSON object" in res.json()["error"]["message"]
        await _assert_untouched(sidecar)


async def test_missing_and_mistyped_fields(sidecar_factory: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"path": "/v1/chat/completions", "body": {}}, "'method'"),
        ({"method": "POST", "body": {}}, "'path'"),
        ({"method": "POST", "path": "/v1/chat/completions"}, "'body'"),
        ({"method": 1, "path": "/v1/chat/completions", "body": {}}, "'method'"),
        (
            {"method": "POST", "path": "/v1/chat/completions", "headers": [], "body": {}},
            "'headers'",
        ),
        (
            {"method": "POST", "path": "/v1/chat/completions", "headers": {"x-a": 1}, "body": {}},
            "'x-a'",
        ),
        ({"method": "POST", "path": "/v1/chat/completions", "body": {"model": "m"}}, "'messages'"),
        (
            {
                "method": "POST",
                "path": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": 5}]},
            },
            "messages[0].content",
        ),
        (
            {
                "method": "POST",
                "path": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            },
            "'stream'",
        ),
        (
            {
                "method": "POST",
                "path": "/v1/messages",
                "body": {"messages": [{"role": "robot", "content": "x"}]},
            },
            "messages[0].role",
        ),
        ({"method": "POST", "path": "/v1/chat/completions", "body": "text"}, "JSON object"),
    ]
    async with sidecar_factory() as (sidecar, client):
        for payload, needle in cases:
            res = await client.post("/v1/hooks/request", json=payload)
            assert res.status_code == 400, payload
            assert needle in res.json()["error"]["message"], (payload, res.json())
        await _assert_untouched(sidecar)


async def test_oversize_body(sidecar_factory: Any) -> None:
    config = make_config(server={"max_body_bytes": 1024})
    async with sidecar_factory(config) as (sidecar, client):
        huge = chat_body("x" * 200_000)
        res = await request_hook(client, huge)
        assert res.status_code == 413
        assert "max_body_bytes" in res.json()["error"]["message"]
        await _assert_untouched(sidecar)


async def test_response_hook_errors(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (sidecar, client):
        res = await client.post(
            "/v1/hooks/response",
            json={
                "request_id": "nope",
                "request_secret": "x",
                "status": 200,
                "headers": {},
                "body": {},
            },
        )
        assert res.status_code == 404 and "nope" in res.json()["error"]["message"]
        res = await client.post(
            "/v1/hooks/response", json={"request_id": "x", "request_secret": "s", "body": {}}
        )
        assert res.status_code == 400 and "'status'" in res.json()["error"]["message"]
        res = await client.post(
            "/v1/hooks/response",
            json={"request_id": "x", "request_secret": "s", "status": "200", "body": {}},
        )
        assert res.status_code == 400 and "'status'" in res.json()["error"]["message"]
        res = await client.post(
            "/v1/hooks/response",
            json={"request_id": "x", "request_secret": "s", "status": 999, "body": {}},
        )
        assert res.status_code == 400
        # A valid request id is not consumed by a malformed response call.
        first = (await request_hook(client, chat_body("What is the capital of France?"))).json()
        pending = {k: first[k] for k in ("request_id", "request_secret")}
        res = await client.post("/v1/hooks/response", json={**pending, "status": 200})
        assert res.status_code == 400 and "'body'" in res.json()["error"]["message"]
        ok = await client.post(
            "/v1/hooks/response",
            json={
                **pending,
                "status": 200,
                "headers": {},
                "body": openai_answer("Paris."),
            },
        )
        assert ok.status_code == 200 and ok.json()["stored_entry_id"]
        # Each request id answers once.
        again = await client.post(
            "/v1/hooks/response",
            json={
                **pending,
                "status": 200,
                "headers": {},
                "body": openai_answer("Paris."),
            },
        )
        assert again.status_code == 404
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 1


async def test_errors_are_counted_in_metrics(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        await client.post("/v1/hooks/request", content=b"{")
        text = (await client.get("/metrics")).text
        assert 'sidecar_hook_errors_total{kind="malformed_json",transport="http"} 1.0' in text


async def test_admin_endpoints(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        body = chat_body("What is the capital of France?")
        await round_trip(client, body, openai_answer("Paris."))
        await request_hook(client, body)
        await request_hook(client, chat_body("What's the capital city of France?"))
        await request_hook(client, body, headers={"x-bf-cache-key": "other"})
        metrics = (await client.get("/metrics")).text
        for line in (
            'sidecar_cache_hits_total{hit_type="exact"} 1.0',
            'sidecar_cache_hits_total{hit_type="semantic"} 1.0',
            "sidecar_cache_misses_total 2.0",
            "sidecar_cache_entries 1.0",
            "sidecar_cache_lookup_seconds_bucket",
            "sidecar_embedding_seconds_bucket",
        ):
            assert line in metrics, line
        assert "capital" not in metrics  # request text never reaches metrics


async def test_not_ready_before_start(embedder: Any) -> None:
    from sidecar.services import Sidecar
    from sidecar.transports.http import create_app

    sidecar = Sidecar(make_config(), embedder=embedder)
    app = create_app(sidecar, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://s"
    ) as client:
        assert (await client.get("/readyz")).status_code == 503
        res = await request_hook(client, chat_body("hi"))
        assert res.status_code == 503 and res.json()["error"]["kind"] == "not_ready"
