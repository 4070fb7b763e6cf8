"""Stream refusal under overload (``server.refuse_streams_lag_ms``, issue 16): a sustained lag
past the mark makes the ext_proc server refuse new streams before reading them, by the failure
policy: fail open closes the stream cleanly (Envoy forwards the request uncached), fail closed
answers RESOURCE_EXHAUSTED. Every refusal is counted.

The governor's marks are fed measured lags directly; the end-to-end case sets the mark at 1
microsecond, which the standard asyncio loop's 10 ms timers always pass, so every stream after
the first five probes is refused. No timing is asserted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy_harness import (
    OverloadStack,
    assert_shed_requests_reach_the_provider,
    overload_stack,
)
from extproc_scenarios import chat
from test_extproc_limits import channel

from sidecar.metrics import Metrics
from sidecar.overload import SUSTAINED_PROBES, LoadGovernor
from sidecar.transports.extproc import ExtProcServer, FailureMode, PassThroughProcessor


def shed_count(metrics: Metrics, work: str) -> float:
    value = metrics.registry.get_sample_value(
        "sidecar_overload_shed_total", {"work": work, "cause": "loop_lag"}
    )
    return value or 0.0


def governor(refuse_ms: float, on_stall: bool = True) -> tuple[LoadGovernor, Metrics]:
    metrics = Metrics()
    gov = LoadGovernor(metrics, 64, shed_loop_lag_ms=10, shed_store_lag_ms=40)
    gov.refuse_streams_over(refuse_ms, on_stall)
    return gov, metrics


def test_failing_closed_refuses_streams_only_once_the_lag_lasts() -> None:
    gov, _ = governor(100, on_stall=False)
    for _ in range(SUSTAINED_PROBES - 1):
        gov.observe_lag(0.5)
    assert gov.admit_stream()  # a stall alone: its requests may still make the timeout
    gov.observe_lag(0.5)
    assert not gov.admit_stream()


def test_failing_open_one_stall_past_the_mark_refuses_streams() -> None:
    gov, metrics = governor(100)
    gov.observe_lag(0.09)
    assert gov.admit_stream()
    gov.observe_lag(0.5)  # one probe half a second late: a stall
    assert not gov.admit_stream()
    assert not gov.admit_stream()
    assert shed_count(metrics, "extproc_stream") == 2
    assert not gov.loop_lagging  # the lower marks still wait for a sustained lag


def test_the_stall_of_start_up_refuses_nothing() -> None:
    gov, metrics = governor(100)
    gov.observe_lag(0.5)  # model loading, the collector's pass before gc.freeze
    assert not gov.admit_stream()
    gov.settle(grace_s=60.0)
    assert gov.admit_stream()  # what start-up caused is forgotten
    for _ in range(SUSTAINED_PROBES):
        gov.observe_lag(0.5)  # the probe's first, late readings after start-up
    assert gov.admit_stream() and not gov.loop_lagging
    gov.settle(grace_s=0.0)
    gov.observe_lag(0.5)  # past the grace a stall counts again
    assert not gov.admit_stream()
    assert shed_count(metrics, "extproc_stream") == 2


def test_a_lag_between_the_store_mark_and_the_stream_mark_refuses_no_stream() -> None:
    gov, metrics = governor(100)
    for _ in range(SUSTAINED_PROBES):
        gov.observe_lag(0.06)  # over the store mark (40 ms), under the stream mark
    assert gov.shed_store()
    assert gov.admit_stream()
    assert shed_count(metrics, "extproc_stream") == 0


def test_a_backed_up_transport_refuses_streams_once_its_round_trips_stay_slow() -> None:
    gov, _ = governor(100)
    for _ in range(SUSTAINED_PROBES - 1):
        gov.observe_round_trip(0.15)
    assert gov.admit_stream()  # four slow round trips may be slow clients
    gov.observe_round_trip(0.15)
    assert not gov.admit_stream()


def test_mark_zero_never_refuses() -> None:
    gov, metrics = governor(0)
    for _ in range(SUSTAINED_PROBES * 2):
        gov.observe_lag(5.0)
    assert gov.admit_stream()
    assert shed_count(metrics, "extproc_stream") == 0


async def refusing(mode: FailureMode) -> AsyncIterator[ExtProcServer]:
    server = ExtProcServer(PassThroughProcessor, port=0, failure_mode=mode, admit=lambda: False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def test_fail_open_refusal_closes_the_stream_cleanly_without_reading_it() -> None:
    async for server in refusing("open"):
        async with channel(server.port) as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=30)
            # Nothing written: the refusal comes before any message is read (a write racing
            # it would fail this client's own call, not the refusal).
            assert await call.read() is grpc.aio.EOF  # no reply: Envoy goes on without it
            assert await call.code() == grpc.StatusCode.OK


async def test_fail_closed_refusal_answers_resource_exhausted() -> None:
    async for server in refusing("closed"):
        async with channel(server.port) as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=30)
            assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "refuse_streams_lag_ms" in (await call.details() or "")


@pytest.fixture(scope="module")
def refusing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OverloadStack]:
    with overload_stack(
        tmp_path_factory.mktemp("refusal-envoy"),
        "refusing",
        {"event_loop": "asyncio", "refuse_streams_lag_ms": 0.001},
        # failure_mode_allow false: a cleanly closed stream passes where Envoy's errors do not
        {"refusing": {}},
    ) as stack:
        yield stack


def test_a_refused_stream_lets_envoy_forward_the_request_uncached(
    refusing_stack: OverloadStack,
) -> None:
    env, sidecar, upstream = refusing_stack
    body = chat("Which planet is known as the red planet?")
    # The governor refuses once it has seen five late probes.
    assert_shed_requests_reach_the_provider(env, "refusing", sidecar, upstream, body)
