"""One gRPC message per request: Envoy skips the request headers message and sends the headers
the sidecar reads as attributes with the buffered body (docs/envoy.md). The redaction case is
and the streamed (SDK) cases are parametrised into test_extproc_envoy.py. A buffer filter after
ext_proc keeps the request away from the upstream until the sidecar has answered.

Runs on the shared Envoy stack (conftest.py): the ``one_message`` listener talks to the same
sidecar as ``main``, ``guarded_one_message`` to the guardrails sidecar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import make_config
from envoy_harness import EnvoyStack
from extproc_scenarios import GUARD_WIRED, chat
from google.protobuf import struct_pb2

from sidecar.transports.extproc import ExtProcError, PipelineProcessor
from sidecar.transports.extproc.messages import (
    ATTRIBUTES_NAMESPACE,
    REQUEST_ATTRIBUTES,
    REQUEST_TIME,
    HttpBody,
    ProcessingRequest,
    as_message,
    read_attributes,
)

UPSTREAM_REQUESTS = "cluster.upstream_llm.upstream_rq_total"


def post(stack: EnvoyStack, listener: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url(listener)}/v1/chat/completions",
        json=body,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        timeout=30,
    )


# ---------------------------------------------------------------------- reading attributes
def test_attributes_become_the_header_map_the_pipeline_reads() -> None:
    values = struct_pb2.Struct()
    values.update(
        {
            "request.method": "POST",
            "request.path": "/v1/chat/completions?x=1",
            "request.headers['x-bf-cache-key']": "team-a",
            'request.headers["X-Team"]': "blue",
            "request.size": 42.0,  # another attribute: not a header
        }
    )
    message = ProcessingRequest()
    message.attributes[ATTRIBUTES_NAMESPACE].CopyFrom(values)
    assert read_attributes(message) == {
        ":method": "POST",
        ":path": "/v1/chat/completions?x=1",
        "x-bf-cache-key": "team-a",
        "x-team": "blue",
    }
    assert read_attributes(ProcessingRequest()) is None


def test_every_header_the_sidecar_reads_is_requested() -> None:
    for header in ("x-bf-cache-key", "x-bf-cache-ttl", "x-bf-cache-threshold", "content-type"):
        assert f"request.headers['{header}']" in REQUEST_ATTRIBUTES
    assert {"request.method", "request.path"} <= set(REQUEST_ATTRIBUTES)


def test_documented_envoy_snippet_lists_the_same_attributes() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "envoy.md").read_text("utf-8")
    section = docs.split("### One message per request", 1)[1]
    snippet = section.split("```yaml", 1)[1].split("```", 1)[0]
    (ext_proc, buffer, _router) = yaml.safe_load(snippet)
    typed = ext_proc["typed_config"]
    # ... and request.time, the overload signal (docs/overload.md)
    assert typed["request_attributes"] == [*REQUEST_ATTRIBUTES, REQUEST_TIME]
    assert typed["processing_mode"]["request_header_mode"] == "SKIP"
    assert buffer["name"] == "envoy.filters.http.buffer"


# ---------------------------------------------------------------------- through Envoy
def test_exact_hit_never_reaches_the_upstream(stack: EnvoyStack) -> None:
    body = chat("How many bones are in the adult human body?")
    before = stack.stat(UPSTREAM_REQUESTS)
    first = post(stack, "one_message", body, x_bf_cache_key="one-repeat")
    second = post(stack, "one_message", body, x_bf_cache_key="one-repeat")
    assert first.status_code == 200 and first.headers["x-bf-cache-status"] == "miss"
    assert second.status_code == 200 and second.headers["x-bf-cache-status"] == "hit-exact"
    assert second.json() == first.json()
    # Only the miss opened an upstream request: the buffer filter held the hit back.
    assert stack.stat(UPSTREAM_REQUESTS) - before == 1


def test_partition_header_arrives_as_an_attribute(stack: EnvoyStack) -> None:
    body = chat("What is the tallest mountain in Africa?")
    assert post(stack, "one_message", body, x_bf_cache_key="one-a").headers[
        "x-bf-cache-status"
    ] == ("miss")
    other = post(stack, "one_message", body, x_bf_cache_key="one-b")
    assert other.headers["x-bf-cache-status"] == "miss"  # another partition: not shared


def test_entries_are_shared_with_the_two_message_listener(stack: EnvoyStack) -> None:
    """Headers read from attributes give the same cache key as a headers message."""
    body = chat("Which planet has the most moons?")
    first = post(stack, "main", body, x_bf_cache_key="one-shared")
    second = post(stack, "one_message", body, x_bf_cache_key="one-shared")
    assert first.headers["x-bf-cache-status"] == "miss"
    assert second.headers["x-bf-cache-status"] == "hit-exact"
    assert second.headers["x-bf-cache-entry-id"] == first.headers["x-bf-cache-entry-id"]


def test_paraphrase_is_a_semantic_hit(stack: EnvoyStack) -> None:
    post(stack, "one_message", chat("What is the capital of Japan?"), x_bf_cache_key="one-para")
    second = post(
        stack, "one_message", chat("Tell me the capital city of Japan."), x_bf_cache_key="one-para"
    )
    assert second.headers["x-bf-cache-status"] == "hit-semantic"


def test_bad_cache_header_is_refused_naming_it(stack: EnvoyStack) -> None:
    before = stack.stat(UPSTREAM_REQUESTS)
    response = post(
        stack, "one_message", chat("hello"), x_bf_cache_key="one-bad", x_bf_cache_ttl="soon"
    )
    assert response.status_code == 400
    assert "x-bf-cache-ttl" in response.json()["error"]["message"]
    assert stack.stat(UPSTREAM_REQUESTS) == before


def test_other_traffic_passes_through(stack: EnvoyStack) -> None:
    post_other = httpx.post(
        f"{stack.url('one_message')}/v1/files", content=b"\x00binary upload", timeout=30
    )
    assert post_other.status_code == 404
    assert post_other.json()["error"]["message"] == "no route /v1/files"
    get = httpx.get(f"{stack.url('one_message')}/v1/models", timeout=30)
    assert get.status_code == 200 and get.json() == {"status": "ok"}  # the fake's GET answer


needs_guard = pytest.mark.skipif(
    not GUARD_WIRED, reason="guardrail rules are not wired into the sidecar (sidecar.guard)"
)


@needs_guard
def test_blocked_request_never_reaches_the_upstream(stack: EnvoyStack) -> None:
    before = stack.stat(UPSTREAM_REQUESTS)
    response = post(stack, "guarded_one_message", chat("tell me about FORBIDDEN-TOPIC"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "block-forbidden"
    assert stack.stat(UPSTREAM_REQUESTS) == before


# ---------------------------------------------------------------------- processor, no Envoy
async def test_body_without_headers_or_attributes_is_a_named_sidecar_error(
    sidecar_factory: Any,
) -> None:
    """Envoy set to SKIP the headers but not sending attributes: the sidecar cannot tell what
    the request is, and says how to fix it (the server's failure mode then applies)."""
    async with sidecar_factory() as (sidecar, _):
        processor = PipelineProcessor(sidecar.pipeline)
        with pytest.raises(ExtProcError, match="request_attributes"):
            await processor.request_body(HttpBody(body=b"{}", end_of_stream=True))


async def test_attributes_for_other_traffic_pass_the_body_untouched(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (sidecar, _):
        processor = PipelineProcessor(sidecar.pipeline)
        processor.request_attributes({":method": "POST", ":path": "/v1/files"})
        reply = as_message(
            await processor.request_body(HttpBody(body=b"\x00upload", end_of_stream=True))
        )
        assert reply.WhichOneof("response") == "request_body"
        assert not reply.request_body.response.HasField("body_mutation")


async def test_streamed_chunks_past_max_body_bytes_are_not_kept(sidecar_factory: Any) -> None:
    """request_body_mode STREAMED: chunks are kept for the decision up to max_body_bytes only;
    a longer request passes uncached (counted as a bypass) and nothing past the bound is held."""
    config = make_config(server={"max_body_bytes": 4096})
    async with sidecar_factory(config) as (sidecar, _):
        metrics = sidecar.pipeline.metrics.registry
        before = metrics.get_sample_value("sidecar_cache_bypasses_total") or 0.0
        processor = PipelineProcessor(sidecar.pipeline)
        processor.request_attributes({":method": "POST", ":path": "/v1/chat/completions"})
        chunk = b"x" * 1500
        for _ in range(20):  # 30 KB in all
            reply = as_message(await processor.request_body(HttpBody(body=chunk)))
            assert reply.WhichOneof("response") == "request_body"
            assert sum(len(c) for c in processor._request_chunks) <= 4096
        last = as_message(await processor.request_body(HttpBody(body=b"}", end_of_stream=True)))
        assert last.WhichOneof("response") == "request_body"
        assert not last.request_body.response.HasField("body_mutation")
        assert metrics.get_sample_value("sidecar_cache_bypasses_total") == before + 1
