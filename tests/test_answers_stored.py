"""Which answers are stored: only complete, successful answers of the request's own format.
Malformed answers never fail the response hook.

Everything goes through the HTTP hook of a real sidecar (real embedder, real rule engine).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_config, running_sidecar
from hookclient import (
    anthropic_answer,
    anthropic_stream,
    chat_body,
    openai_answer,
    openai_stream,
    request_hook,
    response_hook,
    round_trip,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
SSE = "text/event-stream"

# An output rule makes every answer go through answer_pieces / the stream processor.
OUTPUT_RULES = r"""
profiles:
  emails:
    provider: regex
    config: {patterns: [{name: email, pattern: '[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-z]{2,}'}]}
rules:
  - id: redact-emails
    when: 'true'
    apply_to: output
    profiles: [emails]
    action: redact
"""


def anthropic_body(question: str, **params: Any) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": question}],
        **params,
    }


def _finish(answer: dict[str, Any], reason: str) -> dict[str, Any]:
    answer["choices"][0]["finish_reason"] = reason
    return answer


def _stop(answer: dict[str, Any], reason: str) -> dict[str, Any]:
    answer["stop_reason"] = reason
    return answer


HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
NO_FINISH_STREAM = openai_stream(["Why", " did"]).replace(
    '"finish_reason": "stop"', '"finish_reason": null'
)

# (name, path, request body, answer, content type, the response's cache.not_stored)
REFUSED: list[tuple[str, str, dict[str, Any], Any, str, str]] = [
    (
        "openai-error-200",
        CHAT,
        chat_body("q1"),
        {"error": {"message": "overloaded", "type": "server_error"}},
        "application/json",
        "answer is a provider error",
    ),
    (
        "anthropic-error-200",
        MESSAGES,
        anthropic_body("q2"),
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        "application/json",
        "answer is a provider error",
    ),
    (
        "finish-length",
        CHAT,
        chat_body("q3"),
        _finish(openai_answer("Once upon a"), "length"),
        "application/json",
        "finish reason is not in cache.storable_finish_reasons",
    ),
    (
        "finish-content-filter",
        CHAT,
        chat_body("q4"),
        _finish(openai_answer(""), "content_filter"),
        "application/json",
        "finish reason is not in cache.storable_finish_reasons",
    ),
    (
        "finish-null",
        CHAT,
        chat_body("q4b"),
        _finish(openai_answer("half"), None),  # type: ignore[arg-type]
        "application/json",
        "answer has no finish reason",
    ),
    (
        "stop-max-tokens",
        MESSAGES,
        anthropic_body("q5"),
        _stop(anthropic_answer("Once upon a"), "max_tokens"),
        "application/json",
        "finish reason is not in cache.storable_finish_reasons",
    ),
    (
        "stream-without-finish",
        CHAT,
        chat_body("q6", stream=True),
        NO_FINISH_STREAM,
        SSE,
        "stream ended without a finish reason",
    ),
    (
        "stream-only-done",
        CHAT,
        chat_body("q7", stream=True),
        "data: [DONE]\n\n",
        SSE,
        "stream ended without a finish reason",
    ),
    (
        "stream-finish-length",
        CHAT,
        chat_body("q7b", stream=True),
        openai_stream(["Once"]).replace('"finish_reason": "stop"', '"finish_reason": "length"'),
        SSE,
        "finish reason is not in cache.storable_finish_reasons",
    ),
    (
        "anthropic-stream-max-tokens",
        MESSAGES,
        anthropic_body("q8", stream=True),
        anthropic_stream(["Once"]).replace('"end_turn"', '"max_tokens"'),
        SSE,
        "finish reason is not in cache.storable_finish_reasons",
    ),
    (
        "empty-object",
        CHAT,
        chat_body("q9"),
        {},
        "application/json",
        "answer is not in the request's API format",
    ),
    ("null", CHAT, chat_body("q10"), None, "application/json", "answer is not a JSON object"),
    ("empty-string", CHAT, chat_body("q11"), "", "application/json", "answer is not JSON"),
    ("html-502-page", CHAT, chat_body("q12"), HTML_502, "text/html", "answer is not JSON"),
    (
        "anthropic-answer-to-openai-request",
        CHAT,
        chat_body("q13"),
        anthropic_answer("Paris."),
        "application/json",
        "answer is not in the request's API format",
    ),
    (
        "chat-answer-to-completions-request",
        COMPLETIONS,
        {"model": "m", "prompt": "q14"},
        openai_answer("Paris."),
        "application/json",
        "answer is not in the request's API format",
    ),
    (
        "embeddings-without-vectors",
        EMBEDDINGS,
        {"model": "e", "input": "q15"},
        {"object": "list", "data": []},
        "application/json",
        "answer is not in the request's API format",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "answer", "content_type", "why"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
async def test_failures_and_incomplete_answers_are_never_stored(
    sidecar_factory: Any, path: str, body: dict[str, Any], answer: Any, content_type: str, why: str
) -> None:
    async with sidecar_factory() as (sidecar, client):
        _, resp = await round_trip(client, body, answer, path=path, content_type=content_type)
        assert resp is not None and "stored_entry_id" not in resp, resp
        assert resp["cache"]["not_stored"] == why
        again = (await request_hook(client, body, path=path)).json()
        assert again["cache"]["status"] == "miss"
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0
        metrics = (await client.get("/metrics")).text
        assert "sidecar_cache_store_skips_total" in metrics


STORED: list[tuple[str, str, dict[str, Any], Any, str]] = [
    ("openai-stop", CHAT, chat_body("s1"), openai_answer("Paris."), "application/json"),
    (
        "openai-tool-call",
        CHAT,
        chat_body("s2"),
        {
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        },
        "application/json",
    ),
    (
        "anthropic-end-turn",
        MESSAGES,
        anthropic_body("s3"),
        anthropic_answer("Paris."),
        "application/json",
    ),
    ("openai-stream", CHAT, chat_body("s4", stream=True), openai_stream(["Pa", "ris"]), SSE),
    (
        "anthropic-stream",
        MESSAGES,
        anthropic_body("s5", stream=True),
        anthropic_stream(["Paris"]),
        SSE,
    ),
    (
        "completion",
        COMPLETIONS,
        {"model": "m", "prompt": "s6"},
        {"choices": [{"index": 0, "text": "Paris.", "finish_reason": "stop"}]},
        "application/json",
    ),
    (
        "embeddings",
        EMBEDDINGS,
        {"model": "e", "input": "s7"},
        {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]},
        "application/json",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "answer", "content_type"),
    [case[1:] for case in STORED],
    ids=[case[0] for case in STORED],
)
async def test_complete_answers_are_stored_and_replayed(
    sidecar_factory: Any, path: str, body: dict[str, Any], answer: Any, content_type: str
) -> None:
    async with sidecar_factory() as (_, client):
        _, resp = await round_trip(client, body, answer, path=path, content_type=content_type)
        assert resp is not None and "stored_entry_id" in resp, resp
        assert "not_stored" not in resp["cache"]
        again = (await request_hook(client, body, path=path)).json()
        assert again["cache"]["status"] == "hit-exact"


async def test_storable_finish_reasons_are_configurable(sidecar_factory: Any) -> None:
    config = make_config(cache={"storable_finish_reasons": ["stop", "length"]})
    async with sidecar_factory(config) as (_, client):
        body = chat_body("Tell me a long story")
        _, resp = await round_trip(client, body, _finish(openai_answer("Once upon a"), "length"))
        assert resp is not None and "stored_entry_id" in resp
        _, resp = await round_trip(
            client, anthropic_body("Hi"), anthropic_answer("Hello"), path=MESSAGES
        )
        assert resp is not None and resp["cache"]["not_stored"] == (
            "finish reason is not in cache.storable_finish_reasons"
        )


# ---------------------------------------------------------------- item 6: malformed answers
MALFORMED: list[tuple[str, dict[str, Any], Any, str]] = [
    (CHAT, chat_body("m1"), {"choices": 5}, "application/json"),
    (CHAT, chat_body("m2"), {"choices": [5, "x"]}, "application/json"),
    (
        CHAT,
        chat_body("m3"),
        {"choices": [{"message": {"content": 5, "tool_calls": 7}}]},
        "application/json",
    ),
    (COMPLETIONS, {"model": "m", "prompt": "m4"}, {"choices": {"text": 1}}, "application/json"),
    (MESSAGES, anthropic_body("m5"), {"content": True}, "application/json"),
    (
        MESSAGES,
        anthropic_body("m6"),
        {"content": [{"type": "text", "text": 5}]},
        "application/json",
    ),
    (CHAT, chat_body("m7", stream=True), 'data: {"choices": 5}\n\ndata: [DONE]\n\n', SSE),
    (
        CHAT,
        chat_body("m8", stream=True),
        'data: {"choices": [{"delta": 5, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n',
        SSE,
    ),
    (MESSAGES, anthropic_body("m9", stream=True), "event: message_stop\ndata: [1]\n\n", SSE),
]


@pytest.mark.parametrize(("path", "body", "answer", "content_type"), MALFORMED)
async def test_malformed_answers_pass_through_uncached(
    tmp_path: Path,
    embedder: Any,
    path: str,
    body: dict[str, Any],
    answer: Any,
    content_type: str,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(OUTPUT_RULES)
    config = make_config(guardrails={"rules": [str(rules)], "reload_interval": 0, "audit_log": ""})
    async with running_sidecar(config, embedder) as (sidecar, client):
        first = (await request_hook(client, body, path=path)).json()
        res = await response_hook(client, first, answer, content_type=content_type)
        assert res.status_code == 200, res.text
        reply = res.json()
        assert reply["action"] == "continue" and "stored_entry_id" not in reply
        assert reply["cache"]["not_stored"]
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0


async def test_request_id_after_a_bad_response_hook(sidecar_factory: Any) -> None:
    """A response hook the caller got wrong (a 4xx) leaves the request id pending, so a
    corrected retry stores the answer. A response hook that was answered (even with a
    malformed answer passed through uncached) completes the request: the id is used up."""
    async with sidecar_factory() as (_, client):
        first = (await request_hook(client, chat_body("What is the capital of France?"))).json()
        bad = await client.post(
            "/v1/hooks/response",
            json={"request_id": first["request_id"], "status": "ok", "body": {}},
        )
        assert bad.status_code == 400
        good = await response_hook(client, first, openai_answer("Paris."))
        assert good.status_code == 200 and "stored_entry_id" in good.json()

        second = (await request_hook(client, chat_body("And of Spain?"))).json()
        odd = await response_hook(client, second, {"choices": 5})
        assert odd.status_code == 200 and "stored_entry_id" not in odd.json()
        again = await response_hook(client, second, openai_answer("Madrid."))
        assert again.status_code == 404
        assert again.json()["error"]["kind"] == "unknown_request_id"


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "message",
                    "content",
                    "text",
                    "delta",
                    "type",
                    "finish_reason",
                    "stop_reason",
                    "tool_calls",
                    "function",
                    "arguments",
                    "index",
                    "data",
                    "error",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)
_REQUESTS = [
    (CHAT, chat_body("prop-chat")),
    (CHAT, chat_body("prop-chat-stream", stream=True)),
    (MESSAGES, anthropic_body("prop-messages")),
    (MESSAGES, anthropic_body("prop-messages-stream", stream=True)),
    (COMPLETIONS, {"model": "m", "prompt": "prop-completion"}),
    (EMBEDDINGS, {"model": "e", "input": "prop-embeddings"}),
]


def test_random_answers_never_fail_the_response_hook(tmp_path: Path, embedder: Any) -> None:
    """Property: whatever JSON the provider answered (as a body, or as the data of SSE events),
    the response hook answers 200 and never raises. The sidecar is started once."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(OUTPUT_RULES)
    config = make_config(guardrails={"rules": [str(rules)], "reload_interval": 0, "audit_log": ""})
    loop = asyncio.new_event_loop()
    running = running_sidecar(config, embedder)
    _, client = loop.run_until_complete(running.__aenter__())

    async def one(path: str, body: dict[str, Any], answer: Any, as_sse: bool) -> httpx.Response:
        first = await request_hook(client, body, path=path)
        assert first.status_code == 200, first.text
        payload: Any = answer
        if as_sse:
            payload = "".join(f"data: {json.dumps(a)}\n\n" for a in answer) + "data: [DONE]\n\n"
        return await response_hook(
            client,
            first.json(),
            payload,
            content_type=SSE if as_sse else "application/json",
        )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        request=st.sampled_from(_REQUESTS),
        answer=_json,
        events=st.lists(_json, min_size=1, max_size=3),
        as_sse=st.booleans(),
    )
    def check(request: tuple[str, dict[str, Any]], answer: Any, events: Any, as_sse: bool) -> None:
        path, body = request
        res = loop.run_until_complete(one(path, body, events if as_sse else answer, as_sse))
        assert res.status_code == 200, res.text

    try:
        check()
    finally:
        loop.run_until_complete(running.__aexit__(None, None, None))
        loop.close()


DETECT_RULES = r"""
profiles:
  emails:
    provider: regex
    config: {patterns: [{name: email, pattern: '[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-z]{2,}'}]}
rules:
  - id: watch-emails
    apply_to: output
    profiles: [emails]
    action: detect_only
"""


@pytest.mark.parametrize("store_flagged", [True, False])
async def test_answers_with_personal_data_follow_store_flagged_answers(
    tmp_path: Path, embedder: Any, store_flagged: bool
) -> None:
    """The model's own personal data is stored as produced by default; with
    cache.store_flagged_answers off, an answer an output rule flagged is not stored."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(DETECT_RULES)
    config = make_config(
        cache={"store_flagged_answers": store_flagged},
        guardrails={"rules": [str(rules)], "reload_interval": 0, "audit_log": ""},
    )
    leaked = "Write to jane.doe@example.com."
    async with running_sidecar(config, embedder) as (_, client):
        cases = [
            (chat_body("Who do I write to?"), openai_answer(leaked), "application/json"),
            (chat_body("Who do I email?", stream=True), openai_stream([leaked]), SSE),
        ]
        for body, answer, ctype in cases:
            _, resp = await round_trip(client, body, answer, content_type=ctype)
            assert resp is not None
            if store_flagged:
                assert "stored_entry_id" in resp, resp
            else:
                assert "stored_entry_id" not in resp
                assert resp["cache"]["not_stored"].startswith("flagged by an output guardrail")
        _, clean = await round_trip(client, chat_body("Capital?"), openai_answer("Paris."))
        assert clean is not None and "stored_entry_id" in clean
