"""Timeout, retries, circuit breaker and concurrency limit of remote guardrail calls.

The operations here are plain coroutines standing in for "one request to the service"; the
adapters' own tests drive the same layer through real HTTP against the fakes.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from guardrails.base import CheckConfigError
from guardrails.remote_metrics import RemoteMetrics
from guardrails.resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ErrorKind,
    RemoteCheckError,
    RemoteSaturatedError,
    RemoteTimeoutError,
    ResiliencePolicy,
    ResilientCaller,
    run_all,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_caller(
    registry: CollectorRegistry | None = None,
    clock: FakeClock | None = None,
    sleep: SleepRecorder | None = None,
    rand: float = 0.5,
    **policy: float,
) -> ResilientCaller:
    defaults = dict(
        timeout_s=5.0,
        max_retries=2,
        backoff_base_s=0.1,
        backoff_max_s=1.0,
        breaker_failures=3,
        breaker_reset_s=30.0,
        max_concurrency=4,
    )
    defaults.update(policy)
    return ResilientCaller(
        "test",
        "p1",
        ResiliencePolicy(**defaults),  # type: ignore[arg-type]
        metrics=RemoteMetrics(registry),
        clock=clock or FakeClock(),
        sleep=sleep or SleepRecorder(),
        rand=lambda: rand,
    )


class Script:
    """An operation failing with the given kinds first, then returning "ok"."""

    def __init__(self, *failures: ErrorKind) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            kind = self.failures.pop(0)
            raise RemoteCheckError(f"scripted {kind}", kind=kind, status=None)
        return "ok"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"provider": "test", "profile": "p1", **labels})
    return 0.0 if value is None else value


# --------------------------------------------------------------------------- breaker


def test_breaker_opens_after_consecutive_failures_and_probes_after_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=clock)
    for _ in range(2):
        assert breaker.admit() is False
        breaker.record_failure(False)
    assert breaker.state is BreakerState.CLOSED
    breaker.admit()
    breaker.record_failure(False)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit() is True  # the probe
    with pytest.raises(CircuitOpenError):  # only one probe at a time
        breaker.admit()
    breaker.record_success(True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


def test_failed_probe_reopens_for_a_full_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=clock)
    breaker.admit()
    breaker.record_failure(False)
    clock.advance(10)
    assert breaker.admit() is True
    breaker.record_failure(True)
    assert breaker.state is BreakerState.OPEN
    clock.advance(9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(1)
    assert breaker.state is BreakerState.HALF_OPEN


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=10, clock=FakeClock())
    breaker.record_failure(False)
    breaker.record_success(False)
    breaker.record_failure(False)
    assert breaker.state is BreakerState.CLOSED


def test_stale_outcomes_do_not_change_an_open_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=clock)
    breaker.record_failure(False)
    breaker.record_success(False)  # a call admitted before the breaker opened
    assert breaker.state is BreakerState.OPEN
    clock.advance(10)
    assert breaker.admit() is True
    breaker.record_abandoned(True)  # a cancelled probe frees the probe slot
    assert breaker.admit() is True


# --------------------------------------------------------------------------- retries


async def test_throttling_is_retried_with_jittered_backoff_then_succeeds() -> None:
    registry = CollectorRegistry()
    sleep = SleepRecorder()
    caller = make_caller(registry, sleep=sleep, rand=0.5)
    op = Script(ErrorKind.THROTTLED, ErrorKind.SERVER)
    assert await caller.call(op) == "ok"
    assert op.calls == 3
    # full jitter: rand * min(max, base * 2**attempt)
    assert sleep.delays == pytest.approx([0.05, 0.1])
    assert sample(registry, "guardrail_remote_attempts_total") == 3
    assert sample(registry, "guardrail_remote_calls_total") == 1
    assert sample(registry, "guardrail_remote_errors_total", kind="throttled") == 1
    assert sample(registry, "guardrail_remote_errors_total", kind="server") == 1
    assert sample(registry, "guardrail_remote_latency_seconds_count") == 3
    assert caller.breaker_state is BreakerState.CLOSED


async def test_retries_are_bounded_and_the_last_error_propagates() -> None:
    caller = make_caller(max_retries=2)
    op = Script(*[ErrorKind.SERVER] * 5)
    with pytest.raises(RemoteCheckError) as info:
        await caller.call(op)
    assert info.value.kind is ErrorKind.SERVER
    assert "gave up after 3 attempts" in str(info.value)
    assert op.calls == 3


@pytest.mark.parametrize(
    "kind", [ErrorKind.CLIENT, ErrorKind.TRANSPORT, ErrorKind.TIMEOUT, ErrorKind.BAD_RESPONSE]
)
async def test_only_throttling_and_5xx_are_retried(kind: ErrorKind) -> None:
    caller = make_caller(max_retries=3)
    op = Script(kind)
    with pytest.raises(RemoteCheckError) as info:
        await caller.call(op)
    assert info.value.kind is kind
    assert op.calls == 1


def test_backoff_is_capped_and_honours_retry_after() -> None:
    full = make_caller(rand=1.0, backoff_base_s=0.1, backoff_max_s=0.5)
    assert [full.backoff_s(n, None) for n in range(4)] == pytest.approx([0.1, 0.2, 0.4, 0.5])
    none = make_caller(rand=0.0, backoff_base_s=0.1, backoff_max_s=0.5)
    assert none.backoff_s(0, None) == 0.0
    assert none.backoff_s(0, 0.3) == pytest.approx(0.3)  # Retry-After is a floor...
    assert none.backoff_s(0, 60) == pytest.approx(0.5)  # ...within the cap


async def test_each_attempt_is_bounded_by_the_timeout() -> None:
    registry = CollectorRegistry()
    caller = make_caller(registry, timeout_s=0.05, max_retries=2)
    never = asyncio.Event()
    calls = 0

    async def hangs() -> str:
        nonlocal calls
        calls += 1
        await never.wait()
        return "unreachable"

    with pytest.raises(RemoteTimeoutError) as info:
        await caller.call(hangs)
    assert isinstance(info.value, TimeoutError)  # engines catching TimeoutError see it too
    assert info.value.kind is ErrorKind.TIMEOUT
    assert calls == 1  # timeouts are not retried
    assert sample(registry, "guardrail_remote_errors_total", kind="timeout") == 1


# --------------------------------------------------------------------------- breaker in caller


async def test_caller_opens_breaker_rejects_without_calling_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.resilience")
    registry = CollectorRegistry()
    clock = FakeClock()
    caller = make_caller(registry, clock=clock, max_retries=1, breaker_failures=2)
    failing = Script(*[ErrorKind.SERVER] * 4)
    for _ in range(2):  # two logical calls of two attempts each
        with pytest.raises(RemoteCheckError):
            await caller.call(failing)
    assert failing.calls == 4
    assert caller.breaker_state is BreakerState.OPEN
    assert sample(registry, "guardrail_remote_breaker_state") == 1
    assert "test profile 'p1': circuit breaker open for 30 s" in caplog.messages

    healthy = Script()
    with pytest.raises(CircuitOpenError) as info:
        await caller.call(healthy)
    assert healthy.calls == 0
    assert info.value.kind is ErrorKind.CIRCUIT_OPEN
    assert "p1" in str(info.value)
    assert sample(registry, "guardrail_remote_errors_total", kind="circuit_open") == 1

    clock.advance(30)
    assert sample(registry, "guardrail_remote_breaker_state") == 2  # half-open, read at scrape
    assert await caller.call(healthy) == "ok"
    assert caller.breaker_state is BreakerState.CLOSED
    assert sample(registry, "guardrail_remote_breaker_state") == 0
    assert caplog.messages[-1] == "test profile 'p1': circuit breaker closed"


async def test_client_errors_do_not_open_the_breaker() -> None:
    caller = make_caller(breaker_failures=2)
    for _ in range(4):
        with pytest.raises(RemoteCheckError):
            await caller.call(Script(ErrorKind.CLIENT))
    assert caller.breaker_state is BreakerState.CLOSED


# --------------------------------------------------------------------------- concurrency


async def test_concurrency_limit_queues_calls_beyond_the_limit() -> None:
    registry = CollectorRegistry()
    caller = make_caller(registry, max_concurrency=2)
    entered = 0
    most = 0
    changed = asyncio.Condition()
    release = asyncio.Event()

    async def held() -> str:
        nonlocal entered, most
        async with changed:
            entered += 1
            most = max(most, entered)
            changed.notify_all()
        await release.wait()
        entered -= 1
        return "ok"

    tasks = [asyncio.ensure_future(caller.call(held)) for _ in range(5)]
    async with changed:
        await changed.wait_for(lambda: entered == 2)
    assert caller.in_flight == 2
    assert caller.waiting == 3
    assert sample(registry, "guardrail_remote_in_flight") == 2
    release.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 5
    assert most == 2
    assert caller.in_flight == 0
    assert sample(registry, "guardrail_remote_in_flight") == 0


async def test_a_call_waiting_too_long_for_a_slot_is_rejected() -> None:
    registry = CollectorRegistry()
    caller = make_caller(registry, max_concurrency=1, queue_timeout_s=0.05)
    release = asyncio.Event()
    started = asyncio.Event()

    async def held() -> str:
        started.set()
        await release.wait()
        return "ok"

    holder = asyncio.ensure_future(caller.call(held))
    await started.wait()
    with pytest.raises(RemoteSaturatedError):
        await caller.call(Script())
    release.set()
    assert await holder == "ok"
    assert sample(registry, "guardrail_remote_errors_total", kind="saturated") == 1
    assert caller.breaker_state is BreakerState.CLOSED  # local saturation says nothing remote


# --------------------------------------------------------------------------- helpers, config


async def test_run_all_cancels_siblings_and_reraises_the_error_unwrapped() -> None:
    cancelled = asyncio.Event()

    async def slow() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    async def fails() -> int:
        raise RemoteCheckError("boom", kind=ErrorKind.SERVER)

    with pytest.raises(RemoteCheckError, match="boom"):
        await run_all([slow(), fails()])
    assert cancelled.is_set()

    async def value(n: int) -> int:
        return n

    assert await run_all([value(1), value(2)]) == [1, 2]
    assert await run_all([]) == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"timeout_ms": "fast"}, "timeout_ms must be a number"),
        ({"timeout_ms": 0}, "timeout_ms must be >= 1"),
        ({"max_retries": -1}, "max_retries must be between 0 and 10"),
        ({"max_retries": True}, "max_retries must be an integer"),
        ({"breaker_failures": 0}, "breaker_failures must be >= 1"),
        ({"max_concurrency": 1.5}, "max_concurrency must be an integer"),
    ],
)
def test_policy_config_errors_name_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(CheckConfigError, match=message):
        ResiliencePolicy.from_config(config, "test")


def test_policy_reads_milliseconds() -> None:
    policy = ResiliencePolicy.from_config(
        {"timeout_ms": 250, "backoff_base_ms": 10, "backoff_max_ms": 40, "breaker_reset_s": 5},
        "test",
    )
    assert policy.timeout_s == pytest.approx(0.25)
    assert policy.backoff_base_s == pytest.approx(0.01)
    assert policy.backoff_max_s == pytest.approx(0.04)
    assert policy.breaker_reset_s == 5


def test_closing_a_caller_removes_its_series() -> None:
    registry = CollectorRegistry()
    caller = make_caller(registry)
    assert (
        registry.get_sample_value(
            "guardrail_remote_breaker_state", {"provider": "test", "profile": "p1"}
        )
        == 0
    )
    caller.close()
    assert (
        registry.get_sample_value(
            "guardrail_remote_breaker_state", {"provider": "test", "profile": "p1"}
        )
        is None
    )
