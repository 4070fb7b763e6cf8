"""The dashboard's parts without a browser: the bounded ring of recent decisions, login
sessions, figures read from counters, and the HTTP routes with and without a token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeClock, make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip
from observed_rules import RULES

from sidecar.metrics import Metrics
from sidecar.services import Sidecar
from sidecar.transports.http import create_app
from sidecar.ui.decisions import MAX_REASON_CHARS, Decision, RecentDecisions, safe_reason
from sidecar.ui.figures import bucket_quantile, read_counters, summary
from sidecar.ui.sessions import SessionStore, session_from_cookie_header

TOKEN = "t0ken-for-ui-tests"


def _row(i: int, reason: str = "exact key matched") -> Decision:
    return Decision(float(i), "http", "ab" * 8, "hit-exact", reason, 0.5, False, ())


def test_recent_decisions_are_bounded_in_count() -> None:
    ring = RecentDecisions(max_items=100, max_bytes=10**9)
    for i in range(10_000):
        ring.add(_row(i))
    assert len(ring) == 100 and ring.recorded == 10_000
    assert [d.time for d in ring.latest(3)] == [9999.0, 9998.0, 9997.0]
    assert len(ring.latest(1000)) == 100


def test_recent_decisions_are_bounded_in_bytes() -> None:
    ring = RecentDecisions(max_items=10_000, max_bytes=64 * 1024)
    for i in range(10_000):
        ring.add(_row(i, "x" * 150))
    assert ring.bytes <= 64 * 1024
    assert 0 < len(ring) < 10_000
    assert ring.latest(1)[0].time == 9999.0  # the newest stays


def test_reasons_lose_query_strings_and_length() -> None:
    reason = "bypass: /v1/users/Zanzibar/x?q=1 is not an LLM API the sidecar handles"
    assert safe_reason(reason) == "bypass: the path is not an LLM API the sidecar handles"
    assert "Zanzibar" not in safe_reason("refused: cache key?user=Zanzibar")
    assert len(safe_reason("y" * 5000)) == MAX_REASON_CHARS


def test_sessions_expire_and_are_bounded() -> None:
    clock = FakeClock()
    store = SessionStore(ttl_s=60, max_sessions=3, clock=clock)
    first = store.create()
    assert store.valid(first) and not store.valid("guess") and not store.valid(None)
    clock.advance(61)
    assert not store.valid(first)
    ids = [store.create() for _ in range(5)]
    assert len(store) == 3
    assert not store.valid(ids[0]) and store.valid(ids[-1])  # the oldest went first
    store.end(ids[-1])
    assert not store.valid(ids[-1])
    assert len(ids[0]) >= 43  # 32 random bytes, base64url


def test_cookie_header_parsing() -> None:
    assert session_from_cookie_header('a=1; sidecar_ui_session="abc"; b=2') == "abc"
    assert session_from_cookie_header("bad cookie; sidecar_ui_session=xyz") == "xyz"
    assert session_from_cookie_header("other=1") is None


def test_bucket_quantile_follows_histogram_quantile() -> None:
    buckets = [(0.001, 0.0), (0.01, 10.0), (0.1, 20.0), (float("inf"), 20.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.01)
    assert bucket_quantile(0.25, buckets) == pytest.approx(0.001 + 0.009 * 0.5)
    assert bucket_quantile(0.5, []) is None
    assert bucket_quantile(0.99, [(0.1, 0.0), (float("inf"), 4.0)]) == 0.1


def test_figures_read_counters_not_the_store() -> None:
    metrics = Metrics()
    metrics.requests.labels("http", "hit-exact").inc(3)
    metrics.requests.labels("http", "miss").inc(1)
    metrics.hits.labels("exact").inc(3)
    metrics.tokens_saved.labels("m", "exact").inc(30)
    metrics.request_seconds.labels("hit-exact").observe(0.0004)
    out = summary(read_counters(metrics.registry))
    assert out["totals"]["requests"] == 4 and out["totals"]["hit_rate_exact"] == 0.75
    assert out["totals"]["tokens_saved"] == 30
    assert out["latency"]["hit-exact"]["count"] == 1
    assert 0.25 <= out["latency"]["hit-exact"]["p50_ms"] <= 0.5


def _app_client(sidecar: Sidecar) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(sidecar, manage_lifecycle=False))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


@asynccontextmanager
async def _guarded_sidecar(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch, **server: Any
) -> AsyncIterator[tuple[Sidecar, httpx.AsyncClient]]:
    """A sidecar with a token (``UI_TOKEN``) and one rule file, and a client on its app."""
    monkeypatch.setenv("UI_TOKEN", TOKEN)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = make_config(
        server={"auth_token_env": "UI_TOKEN", **server},
        guardrails={"rules": [str(rules)], "reload_interval": 0, "audit_log": ""},
    )
    sidecar = Sidecar(config, embedder=embedder)
    await sidecar.start()
    try:
        async with _app_client(sidecar) as client:
            yield sidecar, client
    finally:
        await sidecar.close()


async def test_ui_is_open_without_a_token(sidecar_factory: Any) -> None:
    async with sidecar_factory(make_config()) as (sidecar, client):
        await round_trip(client, chat_body("What is 2+2, Zanzibar?"), openai_answer("4"))
        await request_hook(client, chat_body("What is 2+2, Zanzibar?"))
        page = await client.get("/ui")
        assert page.status_code == 200 and "plotly.min.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        login = await client.get("/ui/login")
        assert login.status_code == 303 and login.headers["location"] == "/ui"
        data = (await client.get("/ui/api/summary")).json()
        assert data["totals"]["requests"] == 2 and data["totals"]["hit_exact"] == 1
        assert [d["status"] for d in data["decisions"]] == ["hit-exact", "miss"]
        assert "Zanzibar" not in str(data)
        js = await client.get("/ui/static/plotly.min.js", headers={"accept-encoding": "gzip"})
        assert js.status_code == 200 and b"plotly" in js.content[:2000].lower()
        etag = {"if-none-match": js.headers["etag"]}
        again = await client.get("/ui/static/plotly.min.js", headers=etag)
        assert again.status_code == 304
        assert (await client.get("/ui/static/../../auth.py")).status_code == 404
        bad = await client.get("/ui/api/summary?decisions=abc")
        assert bad.status_code == 400 and "decisions" in bad.json()["error"]["message"]


async def test_recent_decisions_need_no_stage_timings(sidecar_factory: Any) -> None:
    async with sidecar_factory(make_config()) as (sidecar, client):
        miss = (await request_hook(client, chat_body("hello"))).json()
        assert miss["action"] == "continue"
        assert sidecar.pipeline is not None and not sidecar.pipeline._record_stages
        assert sidecar.dashboard is not None and len(sidecar.dashboard.decisions) == 0
        await round_trip(client, chat_body("hello again"), openai_answer("hi"))
        await request_hook(client, chat_body("hello again"))
        rows = sidecar.dashboard.decisions.latest(10)
        assert [r.status for r in rows] == ["hit-exact", "miss"]
        assert all(r.latency_ms > 0 for r in rows)


async def test_ui_can_be_switched_off(sidecar_factory: Any) -> None:
    async with sidecar_factory(make_config(ui={"enabled": False})) as (sidecar, client):
        assert sidecar.dashboard is None and sidecar.observers == []
        assert (await client.get("/ui")).status_code == 404


async def test_login_with_a_token(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _guarded_sidecar(tmp_path, embedder, monkeypatch) as (sidecar, client):
        assert (await client.get("/ui")).status_code == 303
        assert (await client.get("/ui/api/summary")).status_code == 401
        assert (await client.get("/ui/static/dashboard.js")).status_code == 401
        wrong = await client.post("/ui/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        query = await client.post(f"/ui/login?token={TOKEN}")
        assert query.status_code == 400 and "set-cookie" not in query.headers
        ok = await client.post("/ui/login", data={"token": TOKEN})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert "Secure" not in cookie  # loopback only: plain HTTP may carry it
        assert (await client.get("/ui/api/summary")).status_code == 200
        # the session opens /ui only
        assert (await client.get("/metrics")).status_code == 401
        hook = await client.post("/v1/hooks/request", json={})
        assert hook.status_code == 401
        # a bearer token opens /ui too (scripts, curl)
        bearer = {"authorization": f"Bearer {TOKEN}"}
        client.cookies.clear()
        assert (await client.get("/ui/api/summary", headers=bearer)).status_code == 200
        # log out ends the session server-side
        await client.post("/ui/login", data={"token": TOKEN})
        session = client.cookies.get("sidecar_ui_session")
        assert sidecar.dashboard is not None and sidecar.dashboard.sessions.valid(session)
        out = await client.post("/ui/logout")
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert not sidecar.dashboard.sessions.valid(session)
        stale = {"cookie": f"sidecar_ui_session={session}"}
        assert (await client.get("/ui/api/summary", headers=stale)).status_code == 401


async def test_secure_cookie_beyond_loopback(
    embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UI_TOKEN", TOKEN)
    config = make_config(server={"auth_token_env": "UI_TOKEN", "http_host": "0.0.0.0"})
    sidecar = Sidecar(config, embedder=embedder)
    await sidecar.start()
    try:
        async with _app_client(sidecar) as client:
            ok = await client.post("/ui/login", data={"token": TOKEN})
            assert "Secure" in ok.headers["set-cookie"]
    finally:
        await sidecar.close()


def test_summary_partitions_are_bounded() -> None:
    """The summary reads counters, whose partition label is bounded: 100,000 partitions give
    N + 1 rows to read (speed is measured by benchmarks/ui_bench.py, not here)."""
    metrics = Metrics(max_label_values=100)
    for i in range(100_000):
        metrics.partition_requests.labels(metrics.partition_label(f"p{i}"), "miss").inc()
    out = summary(read_counters(metrics.registry))
    assert out["partitions_total"] == 101  # N + other
    assert len(out["partitions"]) == 25
    assert out["partitions"][0] == {
        "partition": "other",
        "requests": 99_900,
        "hit-exact": 0,
        "hit-semantic": 0,
        "miss": 99_900,
        "bypass": 0,
    }


async def test_wrong_tokens_in_the_login_form_lock_the_address_out(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _guarded_sidecar(tmp_path, embedder, monkeypatch, auth_max_failures=2) as (
        sidecar,
        client,
    ):
        for _ in range(5):  # page loads without a session are not guesses
            assert (await client.get("/ui")).status_code == 303
        for guess in ("nope", "still-nope"):
            wrong = await client.post("/ui/login", data={"token": guess})
            assert wrong.status_code == 401
        locked = await client.post("/ui/login", data={"token": TOKEN})
        assert locked.status_code == 429 and "set-cookie" not in locked.headers
        assert int(locked.headers["retry-after"]) > 0
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/ui/api/summary", headers=bearer)).status_code == 429
        assert (await client.get("/ui/api/summary")).status_code == 401  # no token: plain
