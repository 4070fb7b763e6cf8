"""The scenarios of the Envoy end-to-end tests: the listeners one Envoy runs (main sidecar,
guardrails, sidecar down / too slow / failing, body rewrite), the test processors behind some
of them, and small request helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import orjson
from envoy_harness import EnvoyStack
from fakes.upstream import FakeLLMUpstream

from sidecar.demo.processes import free_port
from sidecar.transports.extproc import PassThroughProcessor
from sidecar.transports.extproc.messages import (
    REQUEST_BODY,
    REQUEST_HEADERS,
    RESPONSE_BODY,
    RESPONSE_HEADERS,
    BodySendMode,
    HttpBody,
    HttpHeaders,
    ProcessingResponse,
    body_reply,
    continue_for,
    headers_reply,
    read_headers,
)

GUARD_WIRED = importlib.util.find_spec("sidecar.guard") is not None
MAIN_TOKEN = "e2e-main-token-4b8c"
SECRET = "SECRET-123456"
GUARD_RULES = """\
profiles:
  fake-secret:
    provider: regex
    config: {patterns: [{name: fake-secret, pattern: 'SECRET-[0-9]{6}'}]}
  forbidden:
    provider: regex
    config: {patterns: [{name: forbidden, pattern: 'FORBIDDEN-TOPIC'}]}
  zebra:
    provider: regex
    config: {patterns: [{name: zebra, pattern: 'ZEBRA-[0-9]{4}'}]}
  dragon:
    provider: regex
    config: {patterns: [{name: dragon, pattern: 'DRAGON-[0-9]{4}'}]}
rules:
  - {id: redact-fake-secret, apply_to: input, profiles: [fake-secret], action: redact}
  - {id: block-forbidden, apply_to: input, profiles: [forbidden], action: block}
  - {id: redact-zebra-answers, apply_to: output, profiles: [zebra], action: redact}
  - {id: block-dragon-answers, apply_to: output, profiles: [dragon], action: block}
"""


class FailingProcessor(PassThroughProcessor):
    """Raises on the chosen message (the request body, or the Nth streamed answer chunk)."""

    def __init__(self, fail_on: str, after_chunks: int = 0) -> None:
        self._fail_on = fail_on
        self._after = after_chunks
        self._chunks = 0

    async def request_body(self, message: HttpBody) -> ProcessingResponse:
        if self._fail_on == REQUEST_BODY:
            raise RuntimeError("injected request failure")
        return continue_for(REQUEST_BODY)

    async def response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        return headers_reply(RESPONSE_HEADERS, response_body_mode=BodySendMode.STREAMED)

    async def response_body(self, message: HttpBody) -> ProcessingResponse:
        self._chunks += 1
        if self._fail_on == RESPONSE_BODY and self._chunks > self._after:
            raise RuntimeError("injected answer failure")
        return continue_for(RESPONSE_BODY)


class RewritingProcessor(PassThroughProcessor):
    """Redacts SECRET in the request body; ``x-test-keep-length`` leaves content-length stale."""

    def __init__(self) -> None:
        self._fix_length = True

    async def request_headers(self, message: HttpHeaders) -> ProcessingResponse:
        self._fix_length = "x-test-keep-length" not in read_headers(message, "request")
        return continue_for(REQUEST_HEADERS)

    async def request_body(self, message: HttpBody) -> ProcessingResponse:
        new = message.body.replace(SECRET.encode(), b"[REDACTED]")
        return body_reply(REQUEST_BODY, new, fix_length=self._fix_length)


def build_stack(workdir: Path, upstream: FakeLLMUpstream) -> EnvoyStack:
    """Every scenario's processes and listeners (not started)."""
    env = EnvoyStack(workdir, upstream.port)
    # Cache only: grpc_failure_mode "auto" means fail open. It requires a bearer token, which
    # its listeners send as grpc_service.initial_metadata (as in compose/envoy.yaml).
    main = env.add_sidecar(
        "main",
        {
            "cache": {"data_dir": ":memory:", "default_cache_key": "e2e"},
            # A paraphrase sent right after a store waits (within this budget) for the late
            # vector of the first question; the test machine's cores are shared.
            "embedder": {"max_queue_ms": 10_000},
            "server": {"log_level": "warning"},
        },
        token=MAIN_TOKEN,
    )
    token = main.grpc_metadata
    env.add_listener("main", main.grpc_port, initial_metadata=token)
    # One gRPC message per request: headers skipped, sent as attributes with the body.
    env.add_listener("one_message", main.grpc_port, single_message=True, initial_metadata=token)
    # Envoy ignoring the sidecar's mode_override: bodies arrive as configured.
    env.add_listener(
        "fixed_buffered", main.grpc_port, allow_mode_override=False, initial_metadata=token
    )
    env.add_listener(
        "fixed_streamed",
        main.grpc_port,
        allow_mode_override=False,
        response_body_mode="STREAMED",
        initial_metadata=token,
    )
    # The main sidecar with a wrong token, and with none: its streams are refused.
    wrong = (("authorization", "Bearer not-the-token"),)
    env.add_listener("wrong_token_closed", main.grpc_port, initial_metadata=wrong)
    env.add_listener(
        "wrong_token_open", main.grpc_port, failure_mode_allow=True, initial_metadata=wrong
    )
    env.add_listener("no_token_closed", main.grpc_port)
    if GUARD_WIRED:
        # Guardrails (exact cache only, no model to load): "auto" means fail closed.
        rules = workdir / "guard.yaml"
        rules.write_text(GUARD_RULES, encoding="utf-8")
        guarded = env.add_sidecar(
            "guarded",
            {
                "cache": {"data_dir": ":memory:", "default_cache_key": "g", "vector_store": ""},
                "guardrails": {"rules": [str(rules)]},
                "server": {"log_level": "warning"},
            },
        )
        env.add_listener("guarded", guarded.grpc_port)
        env.add_listener("guarded_fixed", guarded.grpc_port, allow_mode_override=False)
        env.add_listener("guarded_one_message", guarded.grpc_port, single_message=True)
    # A sidecar whose embedding provider stalls on HOLD_MARKER: the sidecar becomes too slow.
    slow = env.add_sidecar(
        "slow",
        {
            "cache": {"data_dir": ":memory:", "default_cache_key": "slow"},
            "embedder": {
                "backend": "openai",
                "base_url": f"{upstream.url}/v1",
                "model": "fake-embed",
                "timeout": 30,
                # Held in the model, not skipped in the queue: what the timeout tests need.
                "max_queue_ms": 30_000,
            },
            "server": {"log_level": "warning"},
        },
    )
    dead_port = free_port()  # nothing listens here: the sidecar is down
    env.add_listener("down_open", dead_port, failure_mode_allow=True)
    env.add_listener("down_closed", dead_port, failure_mode_allow=False)
    env.add_listener("slow_open", slow.grpc_port, failure_mode_allow=True, message_timeout=0.5)
    env.add_listener("slow_closed", slow.grpc_port, failure_mode_allow=False, message_timeout=0.5)
    fail_request_open = env.add_inprocess_extproc(lambda: FailingProcessor(REQUEST_BODY), "open")
    fail_request_closed = env.add_inprocess_extproc(
        lambda: FailingProcessor(REQUEST_BODY), "closed"
    )
    fail_stream_open = env.add_inprocess_extproc(
        lambda: FailingProcessor(RESPONSE_BODY, after_chunks=3), "open"
    )
    env.add_listener("error_open", fail_request_open)
    env.add_listener("error_closed", fail_request_closed)
    env.add_listener("stream_error_open", fail_stream_open)
    fail_stream_closed = env.add_inprocess_extproc(
        lambda: FailingProcessor(RESPONSE_BODY, after_chunks=3), "closed"
    )
    env.add_listener("stream_error_closed", fail_stream_closed)
    env.add_listener("rewrite", env.add_inprocess_extproc(RewritingProcessor, "closed"))
    return env


def chat(prompt: str, stream: bool = False, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}


def sse_text(raw: bytes) -> tuple[str, bool]:
    """(text, ended properly) of an OpenAI or Anthropic event stream."""
    text, ended = [], False
    for frame in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in frame.decode().splitlines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                ended = True
                continue
            payload = orjson.loads(data)
            if payload.get("type") == "message_stop":
                ended = True
            if payload.get("type") == "content_block_delta":
                text.append(payload["delta"]["text"])
            for choice in payload.get("choices") or []:
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text), ended
