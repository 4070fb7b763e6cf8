"""Bearer tokens on the HTTP hook and admin API (in process, through the real ASGI app)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_config
from hookclient import chat_body, openai_answer

from sidecar.auth import AuthConfigError, FailedAuthLimiter, TokenSet, is_loopback, load_tokens
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


# ---------------------------------------------------------------- failed-token limit
class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_locks_an_address_for_the_rest_of_its_window() -> None:
    clock = _Clock()
    limiter = FailedAuthLimiter(max_failures=3, window=60.0, clock=clock)
    for _ in range(2):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 0  # two of three: still allowed
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.2") == 0  # other addresses are untouched
    clock.now += 45.5
    assert limiter.retry_after("10.0.0.1") == 15  # rounded up: never "retry after 0"
    clock.now += 15
    assert limiter.retry_after("10.0.0.1") == 0 and limiter.locked() == 0
    limiter.failed("10.0.0.1")  # a new window starts from one failure
    assert limiter.retry_after("10.0.0.1") == 0


def test_limiter_keeps_a_bounded_number_of_addresses_and_can_be_off() -> None:
    limiter = FailedAuthLimiter(max_failures=1, window=60.0, max_addresses=100)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert limiter.locked() == 100  # the oldest windows were forgotten, not grown
    assert limiter.retry_after("10.0.0.0") == 0 and limiter.retry_after("10.0.3.231") == 60
    off = FailedAuthLimiter(max_failures=0, window=60.0)
    for _ in range(50):
        off.failed("10.0.0.1")
    assert off.retry_after("10.0.0.1") == 0


async def test_wrong_tokens_lock_the_address_out_and_missing_ones_do_not(
    sidecar_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, NEW)
    config = make_config(server={"auth_token_env": TOKEN_ENV, "auth_max_failures": 3})
    good = {"authorization": f"Bearer {NEW}"}
    async with sidecar_factory(config) as (sidecar, client):
        for _ in range(10):  # no token at all: refused, but not a guess
            _assert_unauthorized(await client.get("/readyz"))
        assert (await client.get("/readyz", headers=good)).status_code == 200
        for headers in ({"authorization": "Bearer guess-1"}, {"x-api-key": "guess-2"}):
            _assert_unauthorized(await client.get("/readyz", headers=headers))
        # the hook has its own fast path; it shares the same count
        hook = await client.post(
            "/v1/hooks/request",
            json={"method": "POST", "path": "/v1/chat/completions"},
            headers={"authorization": "Bearer guess-3"},
        )
        _assert_unauthorized(hook)
        for path in ("/readyz", "/v1/hooks/request"):
            locked = await client.request(
                "GET" if path == "/readyz" else "POST", path, headers=good, json={}
            )
            # even the right token is not compared while the address is locked out
            assert locked.status_code == 429, locked.text
            assert locked.json()["error"]["kind"] == "too_many_failures"
            assert 0 < int(locked.headers["retry-after"]) <= 60
            assert NEW not in locked.text
        # no token while locked: the plain 401 (nothing to compare, nothing counted)
        _assert_unauthorized(await client.get("/readyz"))
        assert (await client.get("/healthz")).status_code == 200  # probes stay open
        spec = (await client.get("/openapi.json", headers={"x-api-key": "x"})).status_code
        assert spec == 429
        metrics = sidecar.metrics.registry
        value = metrics.get_sample_value(
            "sidecar_hook_errors_total", {"kind": "auth_locked_out", "transport": "http"}
        )
        assert value == 3  # the two above and the spec
