"""The ext_proc hook end to end: client -> real Envoy -> sidecar (gRPC) -> fake provider.

One Envoy runs a listener per scenario (main sidecar; sidecar down; sidecar too slow; sidecar
failing; body rewrite), all started once for the session (the ``stack`` fixture, conftest.py).
Every test uses its own cache partition (``x-bf-cache-key``) so tests do not see each other's
entries.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import grpc
import httpx
import openai
import orjson
import pytest
from envoy_harness import EnvoyStack
from extproc_scenarios import GUARD_RULES, GUARD_WIRED, SECRET, chat, sse_text
from fakes.upstream import HOLD_MARKER, FakeLLMUpstream
from grpc_health.v1 import health_pb2, health_pb2_grpc


# ---------------------------------------------------------------------- cache behaviour
def test_repeat_request_is_answered_from_cache(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    headers = {"x-bf-cache-key": "repeat"}
    body = chat("What is the boiling point of water at sea level?")
    with httpx.Client(base_url=stack.url("main"), headers=headers, timeout=30) as client:
        first = client.post("/v1/chat/completions", json=body)
        calls = upstream.count()
        second = client.post("/v1/chat/completions", json=body)
    assert first.status_code == 200 and first.headers["x-bf-cache-status"] == "miss"
    assert second.status_code == 200
    assert second.headers["x-bf-cache-status"] == "hit-exact"
    assert second.headers["x-bf-cache-similarity"] == "1.0000"
    assert second.headers["x-bf-cache-entry-id"] == first.headers["x-bf-cache-entry-id"]
    assert second.headers["content-type"] == "application/json"
    # Passed and served answers both carry an id to report a wrong hit with (issue 18).
    assert first.headers["x-bf-cache-request-id"]
    assert second.headers["x-bf-cache-request-id"] not in (
        "",
        first.headers["x-bf-cache-request-id"],
    )
    assert upstream.count() == calls  # the upstream was not called again
    assert second.json() == first.json()


def test_paraphrase_is_answered_with_hit_semantic(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    headers = {"x-bf-cache-key": "paraphrase"}
    with httpx.Client(base_url=stack.url("main"), headers=headers, timeout=30) as client:
        first = client.post("/v1/chat/completions", json=chat("What is the capital of France?"))
        calls = upstream.count()
        second = client.post(
            "/v1/chat/completions", json=chat("Tell me the capital city of France.")
        )
    assert first.headers["x-bf-cache-status"] == "miss"
    assert second.headers["x-bf-cache-status"] == "hit-semantic"
    assert 0.8 <= float(second.headers["x-bf-cache-similarity"]) < 1.0
    assert upstream.count() == calls
    assert second.json()["choices"] == first.json()["choices"]


@pytest.mark.parametrize("listener", ["main", "one_message"])
def test_openai_stream_is_cached_and_replayed_to_the_sdk(
    stack: EnvoyStack, upstream: FakeLLMUpstream, listener: str
) -> None:
    """Also with one message per request: the response side (mode_override to STREAMED)
    works without a request headers message."""
    client = openai.OpenAI(
        base_url=f"{stack.url(listener)}/v1",
        api_key="test",
        max_retries=0,
        default_headers={"x-bf-cache-key": f"openai-stream-{listener}"},
    )
    messages: Any = [{"role": "user", "content": "Write a haiku about the tide."}]
    texts, statuses = [], []
    calls = 0
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        statuses.append(raw.headers["x-bf-cache-status"])
        texts.append("".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices))
        if not calls:
            calls = upstream.count()
    assert statuses == ["miss", "hit-exact"]
    assert texts[0].endswith("to: Write a haiku about the tide.")
    assert texts[1] == texts[0]
    assert upstream.count() == calls


def test_anthropic_stream_is_cached_and_replayed_to_the_sdk(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    client = anthropic.Anthropic(
        base_url=stack.url("main"),
        api_key="test",
        max_retries=0,
        default_headers={"x-bf-cache-key": "anthropic-stream"},
    )
    texts = []
    for _ in range(2):
        with client.messages.stream(
            model="claude-fake",
            max_tokens=64,
            messages=[{"role": "user", "content": "Name three moons of Jupiter."}],
        ) as stream:
            texts.append(stream.get_final_text())
        if len(texts) == 1:
            calls = upstream.count()
    assert texts[0].endswith("to: Name three moons of Jupiter.")
    assert texts[1] == texts[0]
    assert upstream.count() == calls


def test_streamed_miss_is_forwarded_in_chunks_and_hit_is_one_sse_body(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    body = chat("Count from one to twenty in words.", stream=True)
    headers = {"x-bf-cache-key": "stream-chunks"}
    bodies, chunk_counts, types = [], [], []
    with httpx.Client(base_url=stack.url("main"), headers=headers, timeout=30) as client:
        for _ in range(2):
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                chunks = list(response.iter_raw())
                types.append(response.headers["content-type"])
            chunk_counts.append(len(chunks))
            bodies.append(b"".join(chunks))
    # Envoy forwarded the upstream's chunks as they came (STREAMED), not one buffered body.
    assert chunk_counts[0] > 1
    assert types == ["text/event-stream", "text/event-stream"]
    first, ended = sse_text(bodies[0])
    assert ended and first.endswith("to: Count from one to twenty in words.")
    assert bodies[1] == bodies[0]  # the replay is the exact event sequence


@pytest.mark.parametrize("listener", ["fixed_buffered", "fixed_streamed"])
@pytest.mark.parametrize("stream", [False, True])
def test_answers_are_cached_when_envoy_ignores_the_mode_override(
    stack: EnvoyStack, upstream: FakeLLMUpstream, listener: str, stream: bool
) -> None:
    """BUFFERED streams arrive as one body, STREAMED JSON answers in chunks: both are stored."""
    body = chat(f"Which planet is the largest? ({listener}, stream={stream})", stream=stream)
    headers = {"x-bf-cache-key": f"fixed-{listener}-{stream}"}
    raw, statuses = [], []
    with httpx.Client(base_url=stack.url(listener), headers=headers, timeout=30) as client:
        for _ in range(2):
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            raw.append(response.content)
            statuses.append(response.headers["x-bf-cache-status"])
            if len(raw) == 1:
                calls = upstream.count()
    assert statuses == ["miss", "hit-exact"]
    assert upstream.count() == calls
    assert raw[1] == raw[0]
    if stream:
        text = sse_text(raw[0])[0]
    else:
        text = orjson.loads(raw[0])["choices"][0]["message"]["content"]
    assert text.endswith(f"({listener}, stream={stream})")


def test_bad_cache_header_is_refused_with_400_naming_it(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url('main')}/v1/chat/completions",
        json=chat("hello"),
        headers={"x-bf-cache-ttl": "banana"},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["kind"] == "bad_request" and "x-bf-cache-ttl" in error["message"]
    assert upstream.count() == calls


def test_control_header_that_is_not_utf8_is_refused_naming_it(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url('main')}/v1/chat/completions",
        json=chat("hello there"),
        headers={"x-bf-cache-key": b"caf\xe9"},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["kind"] == "bad_header" and "x-bf-cache-key" in error["message"]
    assert upstream.count() == calls


def test_other_header_that_is_not_utf8_does_not_stop_the_request(stack: EnvoyStack) -> None:
    response = httpx.post(
        f"{stack.url('main')}/v1/chat/completions",
        json=chat("hello from a latin-1 client"),
        headers={"x-bf-cache-key": "latin1", "x-client-note": b"caf\xe9"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["x-bf-cache-status"] == "miss"


def test_malformed_json_is_refused_with_400(stack: EnvoyStack) -> None:
    response = httpx.post(
        f"{stack.url('main')}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["kind"] == "malformed_json"


def test_other_traffic_passes_through_untouched(stack: EnvoyStack) -> None:
    response = httpx.post(f"{stack.url('main')}/v1/files", content=b"\x00binary upload", timeout=30)
    assert response.status_code == 404  # the fake provider's own answer: it got the request
    assert response.json()["error"]["message"] == "no route /v1/files"


def test_grpc_health_service_reports_serving(stack: EnvoyStack) -> None:
    port = stack.sidecars["main"].grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------- authentication
@pytest.mark.parametrize("listener", ["wrong_token_closed", "no_token_closed"])
def test_envoy_without_the_right_token_is_refused(
    stack: EnvoyStack, upstream: FakeLLMUpstream, listener: str
) -> None:
    """The main sidecar needs a token (its own listeners send it as initial_metadata): a
    wrong or missing one ends the stream UNAUTHENTICATED, and Envoy failing closed answers
    500 without calling the provider or the cache."""
    main = stack.sidecars["main"]
    before = _metric(main.http_url, main.headers, "sidecar_extproc_unauthenticated_total")
    calls = upstream.count()
    body = chat(f"Refused through {listener}?")
    response = httpx.post(f"{stack.url(listener)}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 500
    assert "x-bf-cache-status" not in response.headers
    assert upstream.count() == calls
    after = _metric(main.http_url, main.headers, "sidecar_extproc_unauthenticated_total")
    assert after > before
    # the same question through the listener with the token is a miss: nothing was cached
    ok = httpx.post(
        f"{stack.url('main')}/v1/chat/completions",
        json=body,
        headers={"x-bf-cache-key": f"auth-{listener}"},
        timeout=30,
    )
    assert ok.status_code == 200 and ok.headers["x-bf-cache-status"] == "miss"


def test_wrong_token_with_fail_open_passes_through_unprocessed(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url('wrong_token_open')}/v1/chat/completions",
        json=chat("Passed through without the sidecar?"),
        timeout=30,
    )
    assert response.status_code == 200 and "x-bf-cache-status" not in response.headers
    assert upstream.count() == calls + 1


def test_sidecar_http_api_needs_the_token_but_healthz_does_not(stack: EnvoyStack) -> None:
    main = stack.sidecars["main"]
    assert httpx.get(f"{main.http_url}/readyz", timeout=10).status_code == 401
    assert httpx.get(f"{main.http_url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{main.http_url}/readyz", headers=main.headers, timeout=10).is_success


def _metric(url: str, headers: dict[str, str], name: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# ---------------------------------------------------------------------- request rewrite
def test_rewritten_request_reaches_upstream_with_correct_length(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    prompt = f"my key is {SECRET}, keep it safe"
    response = httpx.post(
        f"{stack.url('rewrite')}/v1/chat/completions", json=chat(prompt), timeout=30
    )
    assert response.status_code == 200
    call = upstream.calls_to("/chat/completions")[-1]
    assert SECRET.encode() not in call.body and b"[REDACTED]" in call.body
    assert int(call.headers["content-length"]) == len(call.body)
    assert "my key is [REDACTED], keep it safe" in response.text


def test_rewrite_without_length_fix_is_what_envoy_rejects(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    """Why the length fix exists: a stale content-length makes Envoy answer 500."""
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url('rewrite')}/v1/chat/completions",
        json=chat(f"my key is {SECRET}"),
        headers={"x-test-keep-length": "1"},
        timeout=30,
    )
    assert response.status_code == 500
    assert upstream.count() == calls


needs_guard = pytest.mark.skipif(
    not GUARD_WIRED, reason="guardrail rules are not wired into the sidecar (sidecar.guard)"
)


@needs_guard
@pytest.mark.parametrize("listener", ["guarded", "guarded_one_message"])
def test_guardrail_redaction_reaches_upstream_with_correct_length(
    stack: EnvoyStack, upstream: FakeLLMUpstream, listener: str
) -> None:
    """Also with one message per request (no request headers message to fix the length on:
    the buffer filter after ext_proc sets it)."""
    response = httpx.post(
        f"{stack.url(listener)}/v1/chat/completions",
        json=chat(f"please store {SECRET} for me via {listener}"),
        timeout=30,
    )
    assert response.status_code == 200
    call = upstream.calls_to("/chat/completions")[-1]
    assert b"please store " in call.body and SECRET.encode() not in call.body
    assert int(call.headers["content-length"]) == len(call.body)


@needs_guard
def test_guardrail_input_block_answers_without_calling_upstream(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url('guarded')}/v1/chat/completions",
        json=chat("tell me about FORBIDDEN-TOPIC"),
        timeout=30,
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "block-forbidden"
    assert upstream.count() == calls


@needs_guard
def test_guardrail_output_redaction_rewrites_plain_answer(stack: EnvoyStack) -> None:
    response = httpx.post(
        f"{stack.url('guarded')}/v1/chat/completions", json=chat("echo ZEBRA-1234"), timeout=30
    )
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    content = response.json()["choices"][0]["message"]["content"]
    assert "ZEBRA-1234" not in content and content.startswith("answer ")


@needs_guard
def test_guardrail_output_redaction_rewrites_stream_in_flight(stack: EnvoyStack) -> None:
    body = chat("please repeat ZEBRA-4321 and then say goodbye", stream=True)
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", f"{stack.url('guarded')}/v1/chat/completions", json=body
        ) as response:
            chunks = list(response.iter_raw())
    text, ended = sse_text(b"".join(chunks))
    assert response.status_code == 200 and len(chunks) > 1 and ended
    assert "ZEBRA-4321" not in text and text.endswith("and then say goodbye")


@needs_guard
def test_guardrail_output_redaction_of_a_stream_envoy_buffered(stack: EnvoyStack) -> None:
    """Without allow_mode_override Envoy hands over the whole stream at once; still redacted."""
    body = chat("repeat ZEBRA-9999 once more", stream=True)
    response = httpx.post(f"{stack.url('guarded_fixed')}/v1/chat/completions", json=body)
    text, ended = sse_text(response.content)
    assert response.status_code == 200 and ended
    assert "ZEBRA-9999" not in text and text.endswith("once more")
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(response.content)


@needs_guard
def test_guardrail_output_block_replaces_plain_answer(stack: EnvoyStack) -> None:
    response = httpx.post(
        f"{stack.url('guarded')}/v1/chat/completions", json=chat("echo DRAGON-7777"), timeout=30
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "block-dragon-answers"
    assert "DRAGON-7777" not in response.text


@needs_guard
def test_guardrail_output_block_ends_stream_with_error_event(stack: EnvoyStack) -> None:
    body = chat("echo DRAGON-8888 please", stream=True)
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", f"{stack.url('guarded')}/v1/chat/completions", json=body
        ) as response:
            raw = b"".join(response.iter_raw())
    assert response.status_code == 200  # headers went out before the answer was seen
    assert b"DRAGON-8888" not in raw
    last = [f for f in raw.split(b"\n\n") if f.strip()][-1]
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == "block-dragon-answers"


@needs_guard
def test_failure_mode_auto_is_closed_with_guardrails_open_without(stack: EnvoyStack) -> None:
    sidecars = [stack.sidecars[name] for name in ("main", "guarded")]
    modes = {
        s.name: httpx.get(f"{s.http_url}/readyz", headers=s.headers, timeout=10).json()["grpc"]
        for s in sidecars
    }
    assert modes["main"]["failure_mode"] == "open"
    assert modes["guarded"]["failure_mode"] == "closed"


# ---------------------------------------------------------------------- failure behaviour
@pytest.mark.parametrize(
    ("listener", "status", "reaches_upstream"),
    [("down_open", 200, True), ("down_closed", 500, False)],
)
def test_sidecar_down_follows_failure_mode_allow(
    stack: EnvoyStack, upstream: FakeLLMUpstream, listener: str, status: int, reaches_upstream: bool
) -> None:
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url(listener)}/v1/chat/completions", json=chat("is anyone there?"), timeout=30
    )
    assert response.status_code == status
    assert (upstream.count() == calls + 1) is reaches_upstream
    if reaches_upstream:
        assert "x-bf-cache-status" not in response.headers
        assert response.json()["choices"][0]["message"]["content"].endswith("is anyone there?")


@pytest.mark.parametrize(
    ("listener", "status", "reaches_upstream"),
    [("slow_open", 200, True), ("slow_closed", 504, False)],
)
def test_sidecar_too_slow_follows_message_timeout(
    stack: EnvoyStack, upstream: FakeLLMUpstream, listener: str, status: int, reaches_upstream: bool
) -> None:
    # A cached question in the scope first: a lookup in an empty scope embeds nothing.
    seeded = httpx.post(
        f"{stack.url(listener)}/v1/chat/completions", json=chat(f"seed {listener}"), timeout=30
    )
    assert seeded.status_code == 200
    calls, held = upstream.count(), upstream.held_embeddings
    prompt = f"{HOLD_MARKER} {listener}: a question whose embedding never returns in time"
    upstream.hold_embeddings()
    try:
        response = httpx.post(
            f"{stack.url(listener)}/v1/chat/completions", json=chat(prompt), timeout=30
        )
    finally:
        upstream.release_embeddings()
    assert response.status_code == status
    assert upstream.held_embeddings == held + 1  # the sidecar really was stuck on it
    assert (upstream.count() == calls + 1) is reaches_upstream
    if reaches_upstream:
        assert response.json()["choices"][0]["message"]["content"].endswith(prompt)


def test_sidecar_error_fails_open_with_the_answer_unmodified(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url('error_open')}/v1/chat/completions", json=chat("still fine?"), timeout=30
    )
    assert response.status_code == 200
    assert upstream.count() == calls + 1
    assert response.json()["choices"][0]["message"]["content"].endswith("to: still fine?")


def test_sidecar_error_fails_closed_with_500(stack: EnvoyStack, upstream: FakeLLMUpstream) -> None:
    calls = upstream.count()
    response = httpx.post(
        f"{stack.url('error_closed')}/v1/chat/completions", json=chat("refused?"), timeout=30
    )
    assert response.status_code == 500
    assert upstream.count() == calls


def test_sidecar_error_mid_stream_fails_open_with_the_stream_intact(stack: EnvoyStack) -> None:
    body = chat("Tell me a long story about a lighthouse keeper.", stream=True)
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", f"{stack.url('stream_error_open')}/v1/chat/completions", json=body
        ) as response:
            raw = b"".join(response.iter_raw())
    text, ended = sse_text(raw)
    assert response.status_code == 200
    assert ended and text.endswith("to: Tell me a long story about a lighthouse keeper.")


def test_sidecar_error_mid_stream_fails_closed_by_cutting_the_stream(stack: EnvoyStack) -> None:
    body = chat("Tell me another long story about a lighthouse keeper.", stream=True)
    received = b""
    with httpx.Client(timeout=30) as client:
        with pytest.raises(httpx.HTTPError):
            with client.stream(
                "POST", f"{stack.url('stream_error_closed')}/v1/chat/completions", json=body
            ) as response:
                assert response.status_code == 200  # headers were already on their way
                for chunk in response.iter_raw():
                    received += chunk
    assert b"[DONE]" not in received  # the client never saw a complete stream


# ---------------------------------------------------------------------- concurrency
async def _one(client: httpx.AsyncClient, i: int) -> tuple[int, str, str, bool]:
    """Request i: OpenAI streamed, OpenAI plain, or Anthropic streamed, with a unique prompt."""
    prompt = f"concurrent request number {i}: what is {i} times {i}?"
    kind = i % 3
    if kind == 2:
        path, payload = (
            "/v1/messages",
            {
                "model": "claude-fake",
                "max_tokens": 32,
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            },
        )
    else:
        path, payload = "/v1/chat/completions", chat(prompt, stream=kind == 0)
    # A partition per request: similar prompts must not hit each other semantically here.
    response = await client.post(path, json=payload, headers={"x-bf-cache-key": f"conc-{i}"})
    assert response.status_code == 200, response.text
    if kind == 1:
        text = response.json()["choices"][0]["message"]["content"]
        ended = True
    else:
        text, ended = sse_text(response.content)
    return i, text, response.headers["x-bf-cache-status"], ended


async def _round(url: str, count: int) -> list[tuple[int, str, str, bool]]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(_one(client, i) for i in range(count)))


def test_concurrent_requests_get_their_own_answers(
    stack: EnvoyStack, upstream: FakeLLMUpstream
) -> None:
    count = 60
    upstream.hold_until_in_flight(50)  # upstream answers only once 50 calls wait together
    try:
        calls = upstream.count()
        first = asyncio.run(_round(stack.url("main"), count))
    finally:
        upstream.hold_until_in_flight(0)
    assert upstream.max_in_flight >= 50
    assert upstream.count() == calls + count
    second = asyncio.run(_round(stack.url("main"), count))
    assert upstream.count() == calls + count  # every repeat came from the cache
    for (i, text, status, ended), (_, again, status2, ended2) in zip(first, second, strict=True):
        expected = f"to: concurrent request number {i}: what is {i} times {i}?"
        assert status == "miss" and ended and text.endswith(expected), (i, text)
        assert status2 == "hit-exact" and ended2 and again == text, (i, again)


def test_rules_file_for_guard_test_is_valid(tmp_path: Path) -> None:
    """The redact rule used once guardrails are wired must load (keeps the fixture honest)."""
    rules = pytest.importorskip("guardrails.rules")
    path = tmp_path / "guard.yaml"
    path.write_text(GUARD_RULES, encoding="utf-8")
    assert [str(e) for e in rules.validate_rule_files([str(path)])] == []
