"""Reversible PII redaction end to end through the HTTP hook: the provider sees placeholders,
the client gets its own values back (streamed or not), and the cache keeps placeholders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import rules_sidecar
from hookclient import (
    anthropic_stream,
    chat_body,
    openai_answer,
    openai_stream,
    request_hook,
    response_hook,
)

from sidecar.formats import ApiFormat
from sidecar.sse import iter_text_deltas, parse_events

RULES = """
profiles:
  pii:
    provider: presidio
    config: {entities: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD], min_score: 0.5,
             redaction: reversible}
rules:
  - id: pii-reversible
    when: 'true'
    apply_to: both
    profiles: [pii]
    action: redact
"""


@pytest.fixture
def pii_sidecar(tmp_path: Path, sidecar_factory: Any) -> Any:
    return rules_sidecar(tmp_path, sidecar_factory, RULES)


def _text(api: ApiFormat, sse: str) -> str:
    return "".join(t for e in parse_events(sse.encode()) for _, t in iter_text_deltas(api, e))


async def test_reversible_round_trip_and_cache(pii_sidecar: Any) -> None:
    factory, audit = pii_sidecar
    async with factory as (sidecar, client):
        q = "Please email the invoice to alice.smith@example.com today."
        first = (await request_hook(client, chat_body(q))).json()
        sent = first["body"]["messages"][0]["content"]
        assert "alice.smith@example.com" not in sent and "[EMAIL_ADDRESS_1]" in sent
        provider_answer = openai_answer("Sure, I will send it to [EMAIL_ADDRESS_1].")
        resp = (await response_hook(client, first, provider_answer)).json()
        restored = resp["body"]["choices"][0]["message"]["content"]
        assert restored == "Sure, I will send it to alice.smith@example.com."
        assert resp.get("stored_entry_id")
        store: Any = sidecar.cache.exact if sidecar.cache else None
        # every stored entry, read back from the store (SQLite holds them; memory a record)
        entries = [await store.get(entry_id) for entry_id in list(store._rows)]
        assert entries and None not in entries
        for entry in entries:
            body = entry.answer.body.decode()
            assert "[EMAIL_ADDRESS_1]" in body and "alice" not in body

        # Another user's address: same redacted key -> a hit, restored with *their* value.
        hit = (await request_hook(client, chat_body(q.replace("alice.smith", "bob.jones")))).json()
        assert hit["cache"]["status"] == "hit-exact"
        text = hit["response"]["body"]["choices"][0]["message"]["content"]
        assert text == "Sure, I will send it to bob.jones@example.com."
    assert "alice" not in audit.read_text() and "bob" not in audit.read_text()


async def test_reversible_restore_in_streams(pii_sidecar: Any) -> None:
    factory, _ = pii_sidecar
    async with factory as (_, client):
        q = "Call me on +1 415 555 0132 or mail carol@example.net"
        first = (await request_hook(client, chat_body(q, stream=True))).json()
        sent = first["body"]["messages"][0]["content"]
        assert "carol@example.net" not in sent and "[EMAIL_ADDRESS_1]" in sent
        parts = ["I will mail [EMAIL", "_ADDRESS_1] and ", "call [PHONE_NUM", "BER_1]."]
        resp = (
            await response_hook(
                client, first, openai_stream(parts), content_type="text/event-stream"
            )
        ).json()
        text = _text(ApiFormat.OPENAI, resp["body"])
        assert text == "I will mail carol@example.net and call +1 415 555 0132."
        assert resp["body"].rstrip().endswith("data: [DONE]")

        anth = {
            "model": "c",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": q}],
        }
        first = (await request_hook(client, anth, path="/v1/messages")).json()
        resp = (
            await response_hook(
                client,
                first,
                anthropic_stream(parts),
                content_type="text/event-stream",
            )
        ).json()
        text = _text(ApiFormat.ANTHROPIC, resp["body"])
        assert text == "I will mail carol@example.net and call +1 415 555 0132."
        events = parse_events(resp["body"].encode())
        assert all(json.loads(e.data) for e in events if e.data)  # every event valid JSON
