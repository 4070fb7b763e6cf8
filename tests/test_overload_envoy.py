"""A miss whose store is shed, through a real Envoy: the sidecar ends the ext_proc stream after
the request, and Envoy forwards the answer to the client without it (issue 16, overload).

The sidecar's shedding marks are set at 1 microsecond, which the event loop's 10 ms timers
always pass (the standard asyncio loop, whose timer lateness is never zero): every miss in
this module is one whose store is shed. No timing is asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from envoy_harness import OverloadStack, overload_stack
from extproc_scenarios import chat

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def shedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OverloadStack]:
    with overload_stack(
        tmp_path_factory.mktemp("overload-envoy"),
        "shedding",
        {"event_loop": "asyncio", "shed_loop_lag_ms": 0.001, "shed_store_lag_ms": 0.001},
        {"shedding": {}},
    ) as stack:
        yield stack


def test_a_shed_store_passes_the_answer_through_envoy_uncached(
    shedding: OverloadStack,
) -> None:
    env, sidecar, upstream = shedding
    # Wait (bounded) until the governor has seen five late probes: the store tier is on.
    deadline = time.monotonic() + 30
    body = chat("What is the boiling point of water at sea level?")
    with httpx.Client(base_url=env.url("shedding"), timeout=30) as client:
        attempt = 0
        while sidecar.shed_total("store") == 0:
            # new questions: a store happens only on a miss (the governor ignores the first
            # second after start-up, so an early miss may still be stored and hit later)
            assert time.monotonic() < deadline, env.logs()
            attempt += 1
            warm = chat(f"Warm-up question number {attempt}?")
            assert client.post(CHAT, json=warm).status_code == 200
        before, calls = sidecar.shed_total("store"), upstream.count()
        answers = [client.post(CHAT, json=body) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 200, env.logs()
        assert answer.json()["choices"][0]["message"]["content"]  # the provider's answer
        # The stream ended after the request: the answer did not pass through the sidecar.
        assert "x-bf-cache-status" not in answer.headers
    assert upstream.count() == calls + 2  # not stored: both went to the provider
    assert sidecar.shed_total("store") == before + 2
