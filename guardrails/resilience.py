"""Resilience for checks that call a remote service: timeout, retries, breaker, concurrency.

Every remote guardrail profile owns one :class:`ResilientCaller`. A call through it:

1. is refused at once with :class:`CircuitOpenError` while the profile's breaker is open (after
   ``breaker_failures`` consecutive failed calls); once ``breaker_reset_s`` has passed, one call
   is let through as a half-open probe, and its outcome closes or re-opens the breaker;
2. waits for one of ``max_concurrency`` slots (at most ``queue_timeout_s``, by default
   ``timeout_s``, else :class:`RemoteSaturatedError`), so a slow service cannot pile up
   unbounded work;
3. makes up to ``1 + max_retries`` attempts, each bounded by ``timeout_s``. Only throttling and
   5xx answers are retried, after a full-jitter exponential backoff (never less than the
   service's ``Retry-After`` hint, never more than ``backoff_max_s``). Timeouts are not retried:
   the engine's own deadline is usually close behind.

Failures surface as :class:`RemoteCheckError` subclasses so the rule's ``on_error`` decides
between fail-open and fail-closed. Messages name the provider, profile, kind and HTTP status,
never the text, the credentials or the service's error message (which may echo input).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from guardrails.base import CheckConfigError
from guardrails.remote_metrics import RemoteMetrics

T = TypeVar("T")
log = logging.getLogger(__name__)


class ErrorKind(enum.StrEnum):
    TIMEOUT = "timeout"
    THROTTLED = "throttled"
    SERVER = "server"  # 5xx
    CLIENT = "client"  # 4xx other than throttling: bad request, credentials, unknown guardrail
    TRANSPORT = "transport"  # connection refused/reset, DNS
    BAD_RESPONSE = "bad_response"  # a 2xx whose body is not what the API defines
    CIRCUIT_OPEN = "circuit_open"
    SATURATED = "saturated"  # no concurrency slot became free in time

    @property
    def retryable(self) -> bool:
        return self in (ErrorKind.THROTTLED, ErrorKind.SERVER)

    @property
    def service_fault(self) -> bool:
        """Whether this kind says the service is unhealthy (counts towards opening the breaker).

        A client error means the service answered, so it counts as a success for the breaker.
        """
        return self in (
            ErrorKind.TIMEOUT,
            ErrorKind.THROTTLED,
            ErrorKind.SERVER,
            ErrorKind.TRANSPORT,
            ErrorKind.BAD_RESPONSE,
        )


class RemoteCheckError(Exception):
    """A remote guardrail call failed. The rule's ``on_error`` decides what happens next."""

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


class RemoteTimeoutError(RemoteCheckError, TimeoutError):
    def __init__(self, message: str) -> None:
        super().__init__(message, kind=ErrorKind.TIMEOUT)


class CircuitOpenError(RemoteCheckError):
    def __init__(self, message: str) -> None:
        super().__init__(message, kind=ErrorKind.CIRCUIT_OPEN)


class RemoteSaturatedError(RemoteCheckError):
    def __init__(self, message: str) -> None:
        super().__init__(message, kind=ErrorKind.SATURATED)


# --------------------------------------------------------------------------- configuration


#: the profile config keys ResiliencePolicy reads
RESILIENCE_CONFIG_KEYS = (
    "timeout_ms",
    "max_retries",
    "backoff_base_ms",
    "backoff_max_ms",
    "breaker_failures",
    "breaker_reset_s",
    "max_concurrency",
    "queue_timeout_ms",
)


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    timeout_s: float = 1.0
    max_retries: int = 2
    backoff_base_s: float = 0.05
    backoff_max_s: float = 0.5
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    max_concurrency: int = 16
    # how long a call may wait for a concurrency slot; None: the same as timeout_s
    queue_timeout_s: float | None = None

    @property
    def queue_wait_s(self) -> float:
        return self.timeout_s if self.queue_timeout_s is None else self.queue_timeout_s

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> ResiliencePolicy:
        """Read the resilience keys of a profile config; ``where`` prefixes error messages."""
        d = cls()

        def ms(key: str, default_s: float, minimum: float) -> float:
            return read_float(config, key, default_s * 1000, where, minimum=minimum) / 1000

        return cls(
            timeout_s=ms("timeout_ms", d.timeout_s, 1),
            max_retries=read_int(
                config, "max_retries", d.max_retries, where, minimum=0, maximum=10
            ),
            backoff_base_s=ms("backoff_base_ms", d.backoff_base_s, 0),
            backoff_max_s=ms("backoff_max_ms", d.backoff_max_s, 0),
            breaker_failures=read_int(
                config, "breaker_failures", d.breaker_failures, where, minimum=1
            ),
            breaker_reset_s=read_float(
                config, "breaker_reset_s", d.breaker_reset_s, where, minimum=0
            ),
            max_concurrency=read_int(
                config, "max_concurrency", d.max_concurrency, where, minimum=1, maximum=1024
            ),
            queue_timeout_s=(
                ms("queue_timeout_ms", 0, 0) if config.get("queue_timeout_ms") is not None else None
            ),
        )


def reject_unknown_keys(config: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    allowed = set(known)
    unknown = sorted(str(k) for k in config if k not in allowed)
    if unknown:
        raise CheckConfigError(
            f"{where}: unknown config key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )


def read_str(
    config: Mapping[str, Any], key: str, where: str, *, default: str | None = None
) -> str | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CheckConfigError(f"{where}: {key} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise CheckConfigError(f"{where}: {key} must not be empty")
    return text


def require_str(config: Mapping[str, Any], key: str, where: str) -> str:
    value = read_str(config, key, where)
    if value is None:
        raise CheckConfigError(f"{where}: {key} is required")
    return value


def read_bool(config: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckConfigError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def read_int(
    config: Mapping[str, Any],
    key: str,
    default: int,
    where: str,
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    value = config.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckConfigError(f"{where}: {key} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise CheckConfigError(f"{where}: {key} must be {bound}, got {value}")
    return value


def read_float(
    config: Mapping[str, Any], key: str, default: float, where: str, *, minimum: float
) -> float:
    value = config.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckConfigError(f"{where}: {key} must be a number, got {value!r}")
    if value < minimum:
        raise CheckConfigError(f"{where}: {key} must be >= {minimum}, got {value}")
    return float(value)


# --------------------------------------------------------------------------- circuit breaker


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe.

    ``clock`` returns seconds (monotonic); tests pass a hand-driven clock so no test sleeps.
    While open, only the probe's outcome changes the state: calls admitted before the breaker
    opened may still finish, and their results are stale.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def admit(self) -> bool:
        """Let a call through or raise :class:`CircuitOpenError`. Returns True for the probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        raise CircuitOpenError("circuit open")

    def record_success(self, is_probe: bool) -> None:
        if self._opened_at is not None and not is_probe:
            return
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def record_failure(self, is_probe: bool) -> None:
        if is_probe:
            self._opened_at = self._clock()
            self._probe_in_flight = False
            return
        if self._opened_at is not None:
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at = self._clock()

    def record_abandoned(self, is_probe: bool) -> None:
        """The call ended without telling anything about the service (cancelled, no slot)."""
        if is_probe:
            self._probe_in_flight = False


# --------------------------------------------------------------------------- caller


class ResilientCaller:
    """Runs calls to one remote profile under its timeout, retry, breaker and concurrency rules.

    ``sleep`` and ``rand`` are the backoff's sleep and jitter source; ``clock`` drives the
    breaker's cool-down. All three are injectable so tests need no wall-clock waiting.
    """

    def __init__(
        self,
        provider: str,
        profile: str,
        policy: ResiliencePolicy,
        *,
        metrics: RemoteMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.provider = provider
        self.profile = profile
        self.policy = policy
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_reset_s, clock)
        self._slots = asyncio.Semaphore(policy.max_concurrency)
        self._waiting = 0
        self._in_flight = 0
        self._sleep = sleep
        self._rand = rand
        self.metrics = metrics if metrics is not None else RemoteMetrics()
        self._m = self.metrics.bind(provider, profile)
        self._m.track_breaker(lambda: float(self.breaker.state))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state

    def close(self) -> None:
        self._m.unbind()

    def _label(self) -> str:
        return f"{self.provider} profile {self.profile!r}"

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` (one request to the service) with retries; raise RemoteCheckError."""
        self._m.calls.inc()
        try:
            is_probe = self.breaker.admit()
        except CircuitOpenError:
            self._m.error(ErrorKind.CIRCUIT_OPEN)
            raise CircuitOpenError(
                f"{self._label()}: circuit open after {self.policy.breaker_failures} "
                f"consecutive failures; next probe after {self.policy.breaker_reset_s:g} s"
            ) from None
        outcome: bool | None = None  # True success, False service fault, None abandoned
        try:
            await self._acquire_slot()
            try:
                result = await self._attempts(op)
            finally:
                self._in_flight -= 1
                self._m.in_flight.dec()
                self._slots.release()
            outcome = True
            return result
        except RemoteCheckError as exc:
            if exc.kind.service_fault:
                outcome = False
            elif exc.kind is ErrorKind.CLIENT:
                outcome = True
            raise
        finally:
            before = self.breaker.state
            if outcome is True:
                self.breaker.record_success(is_probe)
            elif outcome is False:
                self.breaker.record_failure(is_probe)
            else:
                self.breaker.record_abandoned(is_probe)
            self._log_transition(before, self.breaker.state)

    def _log_transition(self, before: BreakerState, after: BreakerState) -> None:
        if after is before:
            return
        if after is BreakerState.OPEN:
            log.warning(
                "%s: circuit breaker open for %g s", self._label(), self.policy.breaker_reset_s
            )
        elif after is BreakerState.CLOSED:
            log.info("%s: circuit breaker closed", self._label())

    async def _acquire_slot(self) -> None:
        self._waiting += 1
        try:
            async with asyncio.timeout(self.policy.queue_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            self._m.error(ErrorKind.SATURATED)
            raise RemoteSaturatedError(
                f"{self._label()}: all {self.policy.max_concurrency} concurrent calls busy "
                f"for {self.policy.queue_wait_s:g} s"
            ) from None
        finally:
            self._waiting -= 1
        self._in_flight += 1
        self._m.in_flight.inc()

    async def _attempts(self, op: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            self._m.attempts.inc()
            started = time.perf_counter()
            error: RemoteCheckError
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    result = await op()
            except RemoteCheckError as exc:
                error = exc
            except TimeoutError:
                error = RemoteTimeoutError(
                    f"{self._label()}: no answer within {self.policy.timeout_s * 1000:g} ms"
                )
            else:
                self._m.latency.observe(time.perf_counter() - started)
                return result
            self._m.latency.observe(time.perf_counter() - started)
            self._m.error(error.kind)
            if not error.retryable or attempt >= self.policy.max_retries:
                if error.retryable and attempt:
                    error.args = (f"{error} (gave up after {attempt + 1} attempts)",)
                raise error
            await self._sleep(self.backoff_s(attempt, error.retry_after_s))
            attempt += 1

    def backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Full-jitter exponential backoff, raised to the service's Retry-After hint, capped."""
        cap = min(self.policy.backoff_max_s, self.policy.backoff_base_s * (2**attempt))
        delay = self._rand() * cap
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.policy.backoff_max_s))
        return delay


async def run_all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; on the first failure cancel the rest and re-raise it as is.

    ``asyncio.TaskGroup`` would wrap the error in an ExceptionGroup, hiding its type from the
    engine's ``on_error`` handling.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled()]
    first = next((exc for exc in failures if exc is not None), None)
    if first is not None:
        raise first
    return [task.result() for task in tasks]
