"""A miss whose store is shed, through a real Envoy: the sidecar ends the ext_proc stream after
the request, and Envoy forwards the answer to the client without it (issue 16, overload).

The sidecar's shedding marks are set at 1 microsecond, which the event loop's 10 ms timers
always pass (the standard asyncio loop, whose timer lateness is never zero): every miss in
this module is one whose store is shed. No timing is asserted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from envoy_harness import OverloadStack, assert_shed_requests_reach_the_provider, overload_stack
from extproc_scenarios import chat


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
    # Bounded wait until the governor has seen five late probes (the store tier is on), with
    # new questions: a store happens only on a miss (the governor ignores the first second
    # after start-up, so an early miss may still be stored and hit later).
    assert_shed_requests_reach_the_provider(
        env,
        "shedding",
        sidecar,
        upstream,
        chat("What is the boiling point of water at sea level?"),
        work="store",
        warm_up=lambda attempt: chat(f"Warm-up question number {attempt}?"),
    )
