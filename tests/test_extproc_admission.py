"""Admission in Envoy (issue 16, overload): a bound on the ext_proc cluster's concurrent
streams (its circuit breaker, ``ExtProcListener.max_streams``) fails a stream over it inside
Envoy, before the sidecar sees it. Failing open, the request goes on to the provider uncached
at once, and Envoy counts it; failing closed, it is an error at once.

The one admitted stream is held in a processor until the test releases it, so the second
request provably did not wait for a slot: it is answered while the first is still held.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from envoy_harness import EnvoyStack, envoy_available
from extproc_scenarios import chat
from fakes.upstream import FakeLLMUpstream

from sidecar.demo.envoy import cluster_name
from sidecar.transports.extproc import FailureMode
from sidecar.transports.extproc.messages import HttpHeaders, ProcessingResponse
from sidecar.transports.extproc.processor import PassThroughProcessor

PATH = "/v1/chat/completions"


class Gate:
    """Holds every stream that reaches the processor until ``release``; counts them."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.streams = 0

    def processor(self) -> PassThroughProcessor:
        gate = self

        class Held(PassThroughProcessor):
            async def request_headers(self, message: HttpHeaders) -> ProcessingResponse:
                gate.streams += 1
                gate.entered.set()
                # in a thread: the server's event loop stays free for other streams
                await asyncio.to_thread(gate.released.wait, 60)
                return await super().request_headers(message)

        return Held()


@pytest.fixture(scope="module")
def bounded(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EnvoyStack, FakeLLMUpstream, dict[str, Gate]]]:
    reason = envoy_available()
    if reason is not None:
        pytest.skip(f"Envoy unavailable: {reason}")
    upstream = FakeLLMUpstream().start()
    env = EnvoyStack(tmp_path_factory.mktemp("admission"), upstream.port)
    modes: tuple[FailureMode, ...] = ("open", "closed")
    gates: dict[str, Gate] = {mode: Gate() for mode in modes}
    for mode in modes:
        port = env.add_inprocess_extproc(gates[mode].processor, mode)
        env.add_listener(mode, port, failure_mode_allow=mode == "open", max_streams=1)
    try:
        env.start()
        yield env, upstream, gates
    finally:
        for gate in gates.values():
            gate.released.set()
        env.stop()
        upstream.stop()


@pytest.mark.parametrize(("listener", "status"), [("open", 200), ("closed", 500)])
def test_a_stream_over_envoys_bound_fails_at_once_without_reaching_the_sidecar(
    bounded: tuple[EnvoyStack, FakeLLMUpstream, dict[str, Gate]], listener: str, status: int
) -> None:
    env, upstream, gates = bounded
    gate = gates[listener]
    cluster = f"cluster.{cluster_name(env.listeners[listener])}"
    ext_proc = f"http.{listener}.ext_proc"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, env.url(listener) + PATH, json=chat("held"), timeout=60)
        assert gate.entered.wait(30), env.logs()  # the bound's one stream is taken
        overflowed = env.stat(f"{cluster}.upstream_rq_active_overflow")
        allowed = env.stat(f"{ext_proc}.failure_mode_allowed")
        calls = upstream.count()
        second = httpx.post(env.url(listener) + PATH, json=chat("over the bound"), timeout=60)
        # answered while the first stream is still held: it never waited for a slot
        assert not first.done()
        assert second.status_code == status, env.logs()
        assert gate.streams == 1  # the processor never saw it
        assert env.stat(f"{cluster}.upstream_rq_active_overflow") == overflowed + 1
        # the counter an operator scrapes (Envoy's /stats/prometheus, docs/overload.md)
        scraped = httpx.get(f"http://127.0.0.1:{env.admin_port}/stats/prometheus", timeout=10).text
        assert (
            f'envoy_cluster_upstream_rq_active_overflow{{envoy_cluster_name="'
            f'{cluster_name(env.listeners[listener])}"}} {overflowed + 1}'
        ) in scraped.splitlines()
        if status == 200:
            # failing open: forwarded unprocessed to the provider, counted as such
            assert upstream.count() == calls + 1
            assert second.json()["choices"][0]["message"]["content"].endswith("over the bound")
            assert "x-bf-cache-status" not in second.headers
            assert env.stat(f"{ext_proc}.failure_mode_allowed") == allowed + 1
        else:
            assert upstream.count() == calls  # failing closed: nothing passes unchecked
        gate.released.set()
        assert first.result(60).status_code == 200  # the admitted stream was unharmed
