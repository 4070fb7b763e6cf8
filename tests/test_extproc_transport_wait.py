"""Refusing ext_proc streams that queued too long in the gRPC transport
(``server.refuse_streams_wait_ms``, issue 16).

Under overload, streams wait in grpc's transport before the sidecar's handler takes them up;
neither the event loop's lag nor the round trip sees that queue. Envoy's ``request.time``
attribute on a stream's first message does: a stream that waited past the mark is refused
(failing open: a clean close, Envoy forwards the request uncached), counted with the cause
``transport_wait``. The end-to-end case sets the mark at 1 microsecond, which every stream
passes; no timing is asserted.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy_harness import (
    OverloadStack,
    assert_shed_requests_reach_the_provider,
    overload_stack,
)
from extproc_scenarios import chat
from google.protobuf import struct_pb2
from test_extproc_limits import channel, headers_message

from sidecar.metrics import Metrics
from sidecar.overload import SUSTAINED_PROBES, TRANSPORT_WAIT, LoadGovernor
from sidecar.transports.extproc import ExtProcServer, PassThroughProcessor
from sidecar.transports.extproc.messages import ATTRIBUTES_NAMESPACE, REQUEST_TIME, request_time

CHAT = "/v1/chat/completions"


def refused(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "sidecar_overload_shed_total", {"work": "extproc_stream", "cause": TRANSPORT_WAIT}
    )
    return value or 0.0


def governor(wait_ms: float, on_stall: bool = True) -> tuple[LoadGovernor, Metrics]:
    metrics = Metrics()
    gov = LoadGovernor(metrics, 64, shed_loop_lag_ms=10, shed_store_lag_ms=40)
    gov.refuse_streams_over(100, on_stall, wait_ms=wait_ms)
    return gov, metrics


def test_failing_open_a_stream_that_waited_past_the_mark_is_refused_and_counted() -> None:
    gov, metrics = governor(20)
    assert gov.admit_waited(0.019)
    assert not gov.admit_waited(0.021)
    assert gov.admit_waited(0.001)  # judged per stream: the next one on time is served
    assert refused(metrics) == 1
    assert metrics.registry.get_sample_value("sidecar_extproc_transport_wait_seconds") == 0.001


def test_failing_open_streams_behind_a_late_one_are_refused_before_their_first_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("sidecar.overload.time.monotonic", lambda: clock[0])
    gov, metrics = governor(50)
    assert gov.admit_stream()
    assert not gov.admit_waited(0.080)  # 30 ms past the mark
    # the streams taken up next queued behind it: refused before any message is read
    clock[0] += 0.029
    assert not gov.admit_stream()
    assert refused(metrics) == 2
    # ... for as long as its wait exceeded the mark; then streams are read and judged again
    clock[0] += 0.002
    assert gov.admit_stream()
    assert gov.admit_waited(0.010)
    assert gov.admit_stream()
    assert refused(metrics) == 2


def test_failing_closed_a_late_stream_never_refuses_the_streams_behind_it() -> None:
    gov, metrics = governor(20, on_stall=False)
    assert gov.admit_waited(0.5)
    assert gov.admit_stream()
    assert refused(metrics) == 0


def test_failing_closed_a_late_stream_is_served_but_a_lasting_wait_sheds() -> None:
    gov, metrics = governor(20, on_stall=False)
    for _ in range(SUSTAINED_PROBES):
        assert gov.admit_waited(0.06)  # a refused stream would be an error: never refused
    assert refused(metrics) == 0
    # ... but five streams in a row that late shed lookups and stores like a lagging loop
    assert gov.loop_lagging
    assert gov.shed_store()


def test_mark_zero_never_refuses() -> None:
    gov, metrics = governor(0)
    for _ in range(SUSTAINED_PROBES):
        assert gov.admit_waited(5.0)
    assert refused(metrics) == 0


def test_streams_queued_behind_the_start_up_are_neither_refused_nor_shed() -> None:
    gov, metrics = governor(20)
    gov.settle(grace_s=60.0)
    for _ in range(SUSTAINED_PROBES):
        assert gov.admit_waited(5.0)
    assert refused(metrics) == 0
    assert not gov.loop_lagging


def attributes(when: struct_pb2.Value) -> pb.ProcessingRequest:
    message = headers_message()
    message.attributes[ATTRIBUTES_NAMESPACE].fields[REQUEST_TIME].CopyFrom(when)
    return message


def test_request_time_is_read_as_envoy_writes_it() -> None:
    text = struct_pb2.Value(string_value="2026-12-06T16:34:36.340462Z")
    assert request_time(attributes(text)) == pytest.approx(1796574876.340462)
    nanos = struct_pb2.Value(string_value="2026-12-06T16:34:36.340462123Z")
    assert request_time(attributes(nanos)) == pytest.approx(1796574876.340462)
    assert request_time(headers_message()) is None
    assert request_time(attributes(struct_pb2.Value(string_value="yesterday"))) is None


async def serving(admit_waited: object) -> AsyncIterator[ExtProcServer]:
    server = ExtProcServer(
        PassThroughProcessor,
        port=0,
        failure_mode="open",
        admit_waited=admit_waited,  # type: ignore[arg-type]
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def test_a_late_stream_is_closed_cleanly_after_its_first_message() -> None:
    waits: list[float] = []

    def refuse(waited: float) -> bool:
        waits.append(waited)
        return False

    async for server in serving(refuse):
        async with channel(server.port) as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=30)
            sent = time.time() - 0.5  # Envoy received the request half a second ago
            await call.write(attributes(struct_pb2.Value(number_value=sent)))
            assert await call.read() is grpc.aio.EOF  # no reply: Envoy goes on without it
            assert await call.code() == grpc.StatusCode.OK
            # without the attribute the stream is not judged, and it is served
            call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=30)
            await call.write(headers_message())
            reply = await call.read()
            assert isinstance(reply, pb.ProcessingResponse) and reply.HasField("request_headers")
            await call.done_writing()
    assert len(waits) == 1 and waits[0] >= 0.5


@pytest.fixture(scope="module")
def waiting_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OverloadStack]:
    with overload_stack(
        tmp_path_factory.mktemp("wait-envoy"),
        "waiting",
        # every stream waits longer than a microsecond between Envoy and the handler
        {"refuse_streams_wait_ms": 0.001},
        # Envoy sends request.time on "timed" only
        {"timed": {"request_time": True}, "untimed": {}},
    ) as stack:
        yield stack


def test_envoy_forwards_a_stream_that_waited_too_long_uncached(
    waiting_stack: OverloadStack,
) -> None:
    env, sidecar, upstream = waiting_stack
    body = chat("Which gas do plants take in from the air?")
    with httpx.Client(timeout=30) as client:
        # Without request.time the sidecar cannot tell a wait: the request is served and stored.
        first = client.post(f"{env.url('untimed')}{CHAT}", json=body)
        assert first.headers.get("x-bf-cache-status") == "miss", env.logs()
        assert (
            client.post(f"{env.url('untimed')}{CHAT}", json=body).headers.get("x-bf-cache-status")
            == "hit-exact"
        )
    # Refused once the start-up grace (LoadGovernor.settle, 1 s) is over, during which
    # streams queued behind the start are not judged; even a request the cache holds then
    # reaches the provider, the sidecar never taking it up.
    assert_shed_requests_reach_the_provider(env, "timed", sidecar, upstream, body)
