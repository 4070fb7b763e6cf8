"""The ``secrets`` check inside the rule engine, through the HTTP hook: input redaction and
blocking, output redaction of a token split across stream events, and no secret text in the
cache, the audit log, the service log or metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import rules_sidecar
from hookclient import chat_body, openai_answer, openai_stream, request_hook, round_trip
from secrets_fakes import ALNUM, Fakes

from sidecar.formats import ApiFormat
from sidecar.sse import iter_text_deltas, parse_events

RULES = """
profiles:
  secrets: {provider: secrets}
rules:
  - id: block-secrets-in-tools
    when: 'has(params.tools)'
    apply_to: input
    profiles: [secrets]
    action: block
  - id: redact-secrets
    when: '!has(params.tools)'
    apply_to: both
    profiles: [secrets]
    action: redact
"""


def github_token() -> str:
    return "gh" + "p_" + Fakes(7).mixed(36, ALNUM)


@pytest.fixture
def secret_sidecar(tmp_path: Path, sidecar_factory: Any) -> Any:
    return rules_sidecar(tmp_path, sidecar_factory, RULES)


async def test_input_redaction_keeps_prose(
    secret_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    factory, audit = secret_sidecar
    token = github_token()
    async with factory as (sidecar, client):
        q = f"Why does git push fail with token {token} on my repo?"
        req, _ = await round_trip(client, chat_body(q), openai_answer("Check its scopes."))
        sent = req["body"]["messages"][0]["content"]
        assert token not in sent
        assert sent.startswith("Why does git push fail with token [SECRET:")
        assert sent.endswith("] on my repo?")
        assert sidecar.cache is not None
        store: Any = sidecar.cache.exact
        # every stored entry, read back from the store (SQLite holds them; memory a record)
        entries = [await store.get(entry_id) for entry_id in list(store._rows)]
        assert entries and None not in entries
        for entry in entries:
            assert token not in entry.question and token not in entry.answer.body.decode()
        metrics = (await client.get("/metrics")).text
    assert token not in audit.read_text()
    assert token not in caplog.text
    assert token not in metrics


async def test_tool_requests_with_secrets_are_blocked(secret_sidecar: Any) -> None:
    factory, _ = secret_sidecar
    token = github_token()
    async with factory as (_, client):
        body = chat_body(
            f"use {token}",
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
        res = (await request_hook(client, body)).json()
        assert res["action"] == "respond" and res["response"]["status"] == 403
        message = res["response"]["body"]["error"]["message"]
        assert "block-secrets-in-tools" in message and "secret:" in message
        assert token not in message


async def test_streamed_output_token_split_across_events(secret_sidecar: Any) -> None:
    factory, _ = secret_sidecar
    token = github_token()
    async with factory as (sidecar, client):
        parts = ["Here is the key: ", token[:10], token[10:25], token[25:], " keep it safe."]
        _, resp = await round_trip(
            client,
            chat_body("what key?", stream=True),
            openai_stream(parts),
            content_type="text/event-stream",
        )
        assert resp is not None
        assert token not in resp["body"]
        events = parse_events(resp["body"].encode())
        text = "".join(t for e in events for _, t in iter_text_deltas(ApiFormat.OPENAI, e))
        assert text.startswith("Here is the key: [SECRET:") and text.endswith(" keep it safe.")
        assert "stored_entry_id" not in resp  # a redacted answer is not cached
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0
