"""What the stores keep: bounded TTLs, rows that cannot be read, older schema versions, and
deleted answers leaving the disk.

Every test here starts real stores: SQLite files in a temporary data directory, the shared Redis
(keys under a per-run prefix, deleted at the end).
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from backend_servers import delete_prefix, redis_reachable
from conftest import make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip

from sidecar.cache.model import SCHEMA_VERSION, CacheEntry, UnreadableEntry
from sidecar.config import ConfigError, load_config, parse_duration

SHARED_REDIS = "redis://127.0.0.1:6379"
SECRET = "Kestrel-7731 lives at 12 Harbour Lane"  # text that must never reach a log line


def _persistent(tmp_path: Path, **cache: Any) -> Any:
    return make_config(cache={"data_dir": str(tmp_path / "data"), **cache})


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(tmp_path / "data" / "cache.sqlite3"))


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# ---------------------------------------------------------------- item 1: TTL bounds
def test_non_finite_durations_are_refused() -> None:
    for value in ("1" * 400 + "d", float("inf"), float("nan"), "1" * 400):
        with pytest.raises(ValueError, match="finite"):
            parse_duration(value)


def test_config_ttl_over_max_and_infinite_values_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  ttl: 31d\n")
    with pytest.raises(ConfigError, match=r"cache.ttl 31d is over cache.max_ttl 30d"):
        load_config(path, environ={})
    path.write_text("cache:\n  ttl: 2h\n  max_ttl: 1h\n")
    with pytest.raises(ConfigError, match=r"over cache.max_ttl 1h"):
        load_config(path, environ={})
    path.write_text("embedder:\n  timeout: .inf\n")
    with pytest.raises(ConfigError, match="embedder.timeout"):
        load_config(path, environ={})
    path.write_text("server:\n  pending_ttl: .nan\n")
    with pytest.raises(ConfigError, match="finite"):
        load_config(path, environ={})
    assert load_config(None, environ={}).cache.max_ttl == 30 * 86400


async def test_ttl_header_over_the_maximum_is_a_400(sidecar_factory: Any, tmp_path: Path) -> None:
    config = _persistent(tmp_path, max_ttl="1d")
    async with sidecar_factory(config) as (sidecar, client):
        body = chat_body("What is the capital of France?")
        for raw in ("1" * 400 + "d", "25h", "2d"):
            res = await request_hook(client, body, headers={"x-bf-cache-ttl": raw})
            assert res.status_code == 400, raw
            message = res.json()["error"]["message"]
            assert "x-bf-cache-ttl" in message, message
            assert "1d" in message or "finite" in message, message
        assert (await sidecar.pending.stats()).items == 0
        _, resp = await round_trip(
            client, body, openai_answer("Paris."), headers={"x-bf-cache-ttl": "1d"}
        )
        assert resp is not None and "stored_entry_id" in resp
    # The store wrote a finite expiry, and the next start reads it back.
    async with sidecar_factory(config) as (_, client):
        assert (await request_hook(client, body)).json()["cache"]["status"] == "hit-exact"


# ---------------------------------------------------------------- items 1 and 11: loading
def _old_format_row(entry: CacheEntry) -> bytes:
    """An entry exactly as sidecars before the schema version wrote it (schema version 1):
    the same fields, no "v"."""
    return orjson.dumps(
        {
            "id": entry.id,
            "partition": entry.partition,
            "scope": entry.scope,
            "question": entry.question,
            "answer": entry.answer.to_json(),
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "vector": entry.vector,
            "meta": entry.meta,
        }
    )


async def test_unreadable_rows_are_named_counted_and_skipped(
    sidecar_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _persistent(tmp_path)
    good = chat_body("What is the capital of France?")
    bad = chat_body("Where does Kestrel live?")
    async with sidecar_factory(config) as (_, client):
        await round_trip(client, good, openai_answer("Paris."))
        _, resp = await round_trip(client, bad, openai_answer(SECRET))
        assert resp is not None
        bad_id = resp["stored_entry_id"]
    with _db(tmp_path) as db:
        (raw,) = db.execute("SELECT data FROM entries WHERE id = ?", (bad_id,)).fetchone()
        # The issue's row: an infinite TTL written as expires_at null by orjson.
        broken = orjson.loads(raw)
        broken["expires_at"] = None
        db.execute(
            "UPDATE entries SET data = ?, expires_at = ? WHERE id = ?",
            (orjson.dumps(broken), float("inf"), bad_id),
        )
        rows = [
            ("garbage-row", b"\x00not json " + SECRET.encode()),
            ("future-row", orjson.dumps({**broken, "id": "future-row", "v": SCHEMA_VERSION + 1})),
            ("number-row", 12345),
            ("array-row", b"[1, 2]"),
        ]
        for row_id, data in rows:
            db.execute(
                "INSERT INTO entries (id, partition, expires_at, used_at, data)"
                " VALUES (?, 'test', 9e18, 0, ?)",
                (row_id, data),
            )
    caplog.set_level(logging.INFO, logger="sidecar")
    async with sidecar_factory(config) as (sidecar, client):
        assert (await request_hook(client, good)).json()["cache"]["status"] == "hit-exact"
        again = await request_hook(client, bad)
        assert again.status_code == 200 and again.json()["cache"]["status"] == "miss"
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, 'sidecar_cache_unreadable_entries_total{store="embedded"}') == 5
        # An operator can delete a named row through the admin API.
        assert (await client.delete("/v1/cache/entries/garbage-row")).status_code == 200
        assert (await client.delete("/v1/cache/entries/garbage-row")).status_code == 404
    summary = [
        r.getMessage() for r in caplog.records if "unreadable rows skipped" in r.getMessage()
    ]
    assert len(summary) == 1, summary
    line = summary[0]
    assert "1 entries loaded" in line and "5 unreadable rows skipped" in line, line
    for row_id in (bad_id, "garbage-row", "future-row", "number-row", "array-row"):
        assert repr(row_id) in line, (row_id, line)
    assert "expires_at is not a finite number" in line
    assert f"schema version {SCHEMA_VERSION + 1}" in line
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "Kestrel" not in everything and "Harbour" not in everything
    # Skipped rows are left for a newer sidecar (or an operator), never silently dropped.
    with _db(tmp_path) as db:
        ids = {row[0] for row in db.execute("SELECT id FROM entries")}
    assert "future-row" in ids and "garbage-row" not in ids


async def test_rows_of_the_previous_schema_are_read_and_migrated(
    sidecar_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _persistent(tmp_path)
    questions = [f"What is the capital of country number {i}?" for i in range(3)]
    async with sidecar_factory(config) as (_, client):
        for q in questions:
            await round_trip(client, chat_body(q), openai_answer(f"Answer to {q}"))
    with _db(tmp_path) as db:
        for row_id, raw in db.execute("SELECT id, data FROM entries").fetchall():
            old = _old_format_row(CacheEntry.from_bytes(raw))
            assert b'"v"' not in old
            db.execute("UPDATE entries SET data = ? WHERE id = ?", (old, row_id))
    caplog.set_level(logging.INFO, logger="sidecar")
    async with sidecar_factory(config) as (sidecar, client):
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 3
        for q in questions:
            res = (await request_hook(client, chat_body(q))).json()
            assert res["cache"]["status"] == "hit-exact"
        para = await request_hook(
            client, chat_body("Which city is the capital of country number 1?")
        )
        assert para.json()["cache"]["status"] in ("hit-semantic", "miss")  # vectors were kept
    line = next(r.getMessage() for r in caplog.records if "migrated" in r.getMessage())
    assert "3 entries loaded, 3 migrated" in line and "0 unreadable" in line, line
    with _db(tmp_path) as db:
        versions = [orjson.loads(raw).get("v") for (raw,) in db.execute("SELECT data FROM entries")]
    assert versions == [SCHEMA_VERSION] * 3


@pytest.fixture
def redis_prefix() -> Any:
    if (why := redis_reachable()) is not None:
        pytest.skip(f"needs the shared Redis: {why}")
    prefix = f"stored-{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_prefix(SHARED_REDIS, prefix)


async def test_redis_entries_that_cannot_be_read_are_misses(
    sidecar_factory: Any, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    config = make_config(
        cache={"exact_store": SHARED_REDIS, "namespace": redis_prefix},
        server={"pending_store": "memory"},  # this test is about entries, not pending contexts
    )
    body = chat_body("Where does Kestrel live?")
    old_body = chat_body("What is the capital of France?")
    caplog.set_level(logging.WARNING, logger="sidecar")
    async with sidecar_factory(config) as (_, client):
        _, resp = await round_trip(client, body, openai_answer(SECRET))
        _, old_resp = await round_trip(client, old_body, openai_answer("Paris."))
        assert resp is not None and old_resp is not None
        sync = redis.Redis.from_url(SHARED_REDIS)
        try:
            (key,) = list(sync.scan_iter(match=f"{redis_prefix}:*:e:{resp['stored_entry_id']}"))
            ttl = sync.pttl(key)
            broken = orjson.loads(sync.get(key))
            broken["answer"] = {"status": "twenty", "body": SECRET}
            sync.set(key, orjson.dumps(broken), px=ttl)
            # A previous release's entry (schema version 1) is still served.
            (old_key,) = list(
                sync.scan_iter(match=f"{redis_prefix}:*:e:{old_resp['stored_entry_id']}")
            )
            old = _old_format_row(CacheEntry.from_bytes(sync.get(old_key)))
            sync.set(old_key, old, px=sync.pttl(old_key))
        finally:
            sync.close()
        res = await request_hook(client, body)
        assert res.status_code == 200 and res.json()["cache"]["status"] == "miss"
        assert (await request_hook(client, old_body)).json()["cache"]["status"] == "hit-exact"
        metrics = (await client.get("/metrics")).text
        # Counted per failed read (the exact lookup, the semantic candidate, the single-flight
        # re-check each read it once).
        assert _metric(metrics, 'sidecar_cache_unreadable_entries_total{store="redis"}') >= 1
        # The miss stores a fresh answer over the unreadable one.
        done = await client.post(
            "/v1/hooks/response",
            json={
                "request_id": res.json()["request_id"],
                "request_secret": res.json()["request_secret"],
                "status": 200,
                "headers": {},
                "body": openai_answer("Somewhere."),
            },
        )
        assert done.json().get("stored_entry_id") == resp["stored_entry_id"]
        assert (await request_hook(client, body)).json()["cache"]["status"] == "hit-exact"
    lines = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert lines and all(resp["stored_entry_id"] in line for line in lines)
    assert "Kestrel" not in "\n".join(r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- item 9: deleted bytes
async def test_deleted_answers_leave_the_database_and_wal(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    config = _persistent(tmp_path)
    marker = f"WALRUS-{uuid.uuid4().hex}"
    files = [tmp_path / "data" / "cache.sqlite3", tmp_path / "data" / "cache.sqlite3-wal"]

    def on_disk() -> bool:
        return any(p.exists() and marker.encode() in p.read_bytes() for p in files)

    async with sidecar_factory(config) as (_, client):
        await round_trip(client, chat_body("Keep this one"), openai_answer("kept answer"))
        _, resp = await round_trip(client, chat_body("Delete this one"), openai_answer(marker))
        assert resp is not None and on_disk()
        res = await client.delete(f"/v1/cache/entries/{resp['stored_entry_id']}")
        assert res.status_code == 200
        assert not on_disk()
        # Partition deletes too.
        marker2 = f"OTTER-{uuid.uuid4().hex}"
        headers = {"x-bf-cache-key": "tenant-b"}
        await round_trip(
            client, chat_body("Partition answer"), openai_answer(marker2), headers=headers
        )
        assert any(marker2.encode() in p.read_bytes() for p in files if p.exists())
        assert (await client.delete("/v1/cache/partitions/tenant-b")).status_code == 200
        assert not any(marker2.encode() in p.read_bytes() for p in files if p.exists())
        assert (await request_hook(client, chat_body("Keep this one"))).json()["cache"][
            "status"
        ] == "hit-exact"


def test_sidecar_serve_starts_over_the_issue_row(tmp_path: Path) -> None:
    """The reported failure: one entry stored with an infinite TTL (orjson wrote its expiry as
    null) made every later ``sidecar serve`` exit. Now the process starts and reports it."""
    import httpx
    import yaml

    from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

    data = tmp_path / "data"
    data.mkdir()
    row = {
        "id": "0123456789abcdef0123456789abcdef",
        "partition": "t",
        "scope": "s",
        "question": "q",
        "answer": {"status": 200, "headers": {}, "body": "{}", "streamed": False},
        "created_at": 1.0,
        "expires_at": None,
        "vector": None,
        "meta": {},
    }
    with sqlite3.connect(str(data / "cache.sqlite3")) as db:
        db.execute(
            "CREATE TABLE entries (id TEXT PRIMARY KEY, partition TEXT NOT NULL,"
            " expires_at REAL NOT NULL, used_at REAL NOT NULL, data BLOB NOT NULL)"
        )
        db.execute(
            "INSERT INTO entries VALUES (?, 't', ?, 0, ?)",
            (row["id"], float("inf"), orjson.dumps(row)),
        )
    port = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "http_port": port,
                    "grpc_enabled": False,
                    "shed_loop_lag_ms": 0,
                    "shed_store_lag_ms": 0,
                },
                "cache": {"data_dir": str(data), "default_cache_key": "t"},
            }
        )
    )
    log = tmp_path / "sidecar.log"
    proc = ManagedProcess("sidecar", sidecar_command(config), log).start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz", 180)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert _metric(metrics, 'sidecar_cache_unreadable_entries_total{store="embedded"}') == 1
    finally:
        proc.stop()
    text = log.read_text()
    assert f"1 unreadable rows skipped: '{row['id']}' (expires_at is not a finite number)" in text


@pytest.mark.parametrize(
    "vector",
    [["0.5", 0.1], [None, 0.1], [[0.5], [0.1]], [[0.5], 0.1], [float("nan")], "0.5"],
)
def test_a_vector_that_is_not_a_flat_list_of_finite_numbers_is_unreadable(vector: Any) -> None:
    entry = CacheEntry.from_bytes(
        orjson.dumps(
            {"v": SCHEMA_VERSION, "id": "x", "partition": "p", "scope": "s", "question": "q",
             "answer": {"status": 200, "headers": {}, "body": "{}"}, "created_at": 1.0,
             "expires_at": 2.0, "vector": [0.25, 1, -0.5]}
        )
    )  # fmt: skip
    assert entry.vector == [0.25, 1, -0.5]
    raw = orjson.loads(entry.to_bytes())
    raw["vector"] = vector
    with pytest.raises(UnreadableEntry, match="vector is not a list of finite numbers"):
        CacheEntry.from_bytes(orjson.dumps(raw))
