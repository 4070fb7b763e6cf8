"""Bearer tokens on the HTTP hook and admin API (in process, through the real ASGI app)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_config
from hookclient import chat_body, openai_answer

from sidecar.auth import AuthConfigError, TokenSet, is_loopback, load_tokens
from sidecar.config import ServerConfig

TOKEN_ENV = "SIDECAR_TEST_AUTH_TOKENS"
OLD, NEW = "old-token-7c1f", "new-token-93ab"


def test_token_set_accepts_every_configured_token_and_nothing_else() -> None:
    tokens = TokenSet([OLD, NEW])
    assert tokens.accepts(f"Bearer {OLD}") and tokens.accepts(f"bearer {NEW}")
    for wrong in (None, "", OLD, f"Basic {OLD}", f"Bearer {OLD}x", f"Bearer {OLD[:-1]}", "Bearer "):
        assert not tokens.accepts(wrong), wrong


def test_token_variable_missing_or_empty_is_an_error_naming_it() -> None:
    server = ServerConfig(auth_token_env=TOKEN_ENV)
    for environ in ({}, {TOKEN_ENV: " , "}):
        with pytest.raises(AuthConfigError, match=TOKEN_ENV):
            load_tokens(server, environ)
    tokens = load_tokens(server, {TOKEN_ENV: f" {OLD} ,{NEW}"})
    assert tokens is not None and len(tokens) == 2
    assert load_tokens(ServerConfig(), {}) is None


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.4", "sidecar.internal"))


@pytest.fixture
def auth_config(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(TOKEN_ENV, f"{OLD},{NEW}")
    return make_config(server={"auth_token_env": TOKEN_ENV})


def _assert_unauthorized(res: Any) -> None:
    assert res.status_code == 401, (res.request.url, res.text)
    assert res.json()["error"]["kind"] == "unauthorized"
    assert res.headers["www-authenticate"].startswith("Bearer")


async def test_every_route_but_healthz_needs_the_token(
    sidecar_factory: Any, auth_config: Any
) -> None:
    async with sidecar_factory(auth_config) as (sidecar, client):
        calls = [
            ("POST", "/v1/hooks/request", {"method": "POST", "path": "/v1/chat/completions"}),
            ("POST", "/v1/hooks/response", {"request_id": "x", "status": 200, "body": {}}),
            ("DELETE", "/v1/cache/entries/abc", None),
            ("DELETE", "/v1/cache/partitions/test", None),
            ("GET", "/metrics", None),
            ("GET", "/readyz", None),
            ("GET", "/no/such/route", None),
        ]
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": OLD}):
            for method, path, body in calls:
                res = await client.request(method, path, json=body, headers=headers)
                _assert_unauthorized(res)
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        metrics = await client.get("/metrics", headers={"authorization": f"Bearer {NEW}"})
        assert metrics.status_code == 200
        assert 'sidecar_hook_errors_total{kind="unauthorized",transport="http"}' in metrics.text
        assert OLD not in metrics.text and NEW not in metrics.text


async def test_both_rotated_tokens_work_and_an_entry_id_alone_cannot_delete(
    sidecar_factory: Any, auth_config: Any
) -> None:
    async with sidecar_factory(auth_config) as (sidecar, client):
        old = {"authorization": f"Bearer {OLD}"}
        new = {"authorization": f"Bearer {NEW}"}
        envelope = {
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": {},
            "body": chat_body("What is the tallest mountain on Earth?"),
        }
        first = (await client.post("/v1/hooks/request", json=envelope, headers=old)).json()
        stored = await client.post(
            "/v1/hooks/response",
            json={
                "request_id": first["request_id"],
                "request_secret": first["request_secret"],
                "status": 200,
                "headers": {"content-type": "application/json"},
                "body": openai_answer("Mount Everest."),
            },
            headers=new,
        )
        entry_id = stored.json()["stored_entry_id"]
        res = await client.delete(f"/v1/cache/entries/{entry_id}")
        _assert_unauthorized(res)
        hit = (await client.post("/v1/hooks/request", json=envelope, headers=new)).json()
        assert hit["cache"]["status"] == "hit-exact"
        res = await client.delete(f"/v1/cache/entries/{entry_id}", headers=old)
        assert res.status_code == 200 and res.json() == {"deleted": entry_id}


async def test_a_set_but_missing_token_variable_stops_the_app(
    sidecar_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = make_config(server={"auth_token_env": TOKEN_ENV})
    with pytest.raises(AuthConfigError, match=TOKEN_ENV):
        async with sidecar_factory(config):
            pass


async def test_litellm_guardrail_endpoint_needs_the_token(
    sidecar_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv(TOKEN_ENV, NEW)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "profiles:\n  words:\n    provider: regex\n"
        "    config: {patterns: [{name: forbidden, pattern: 'FORBIDDEN'}]}\n"
        "rules:\n  - {id: block-forbidden, apply_to: input, profiles: [words], action: block}\n"
    )
    config = make_config(
        server={"auth_token_env": TOKEN_ENV},
        guardrails={
            "rules": [str(rules)],
            "reload_interval": 0,
            "audit_log": str(tmp_path / "audit.jsonl"),
        },
    )
    call = {"texts": ["say FORBIDDEN"], "input_type": "request"}
    async with sidecar_factory(config) as (sidecar, client):
        path = "/beta/litellm_basic_guardrail_api"
        _assert_unauthorized(await client.post(path, json=call))
        res = await client.post(path, json=call, headers={"authorization": f"Bearer {NEW}"})
        assert res.status_code == 200 and res.json()["action"] == "BLOCKED"
