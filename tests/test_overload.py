"""Admission control under overload (issue 16) and the liveness listener (issue 15).

Through a real sidecar with the real model. Where a lookup must hold its place in the
embedder, the model is wrapped in ``GatedEmbedder`` (its calls wait for an event the test
sets). Where the event loop must fall behind, the test stalls the loop itself (the sidecar runs
in the test's loop), which is what an overload does to it; no timing is asserted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from conftest import make_config, running_sidecar
from hookclient import chat_body, openai_answer, request_hook, response_hook, round_trip
from test_miss_path import GatedEmbedder

from embedders.batching import MicroBatcher
from sidecar.cache.layer import OVERLOADED, STORE_SHED
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command
from sidecar.health_listener import HealthListener
from sidecar.metrics import Metrics
from sidecar.overload import LoadGovernor
from sidecar.services import Sidecar

SEED = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"
OTHER_PARAPHRASE = "Which city is the capital of France?"


def shed(sidecar: Sidecar, work: str, cause: str) -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "sidecar_overload_shed_total", {"work": work, "cause": cause}
    )
    return 0.0 if value is None else value


def skipped(sidecar: Sidecar) -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "sidecar_cache_semantic_lookups_total", {"path": "skipped_overloaded"}
    )
    return 0.0 if value is None else value


async def seed(sidecar: Sidecar, client: httpx.AsyncClient) -> None:
    _, stored = await round_trip(client, chat_body(SEED), openai_answer("Paris."))
    assert stored is not None and stored["stored_entry_id"]
    assert sidecar.cache is not None and sidecar.cache.backlog is not None
    await sidecar.cache.backlog.settled()  # its vector is indexed: the scope is populated


async def stall_until(sidecar: Sidecar, condition: Any, stall_s: float) -> None:
    """Block the event loop ``stall_s`` at a time (as an overload does) until ``condition``;
    the governor's probe measures the lag between the stalls. Bounded by a deadline."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the governor never saw the loop lag"
        time.sleep(stall_s)  # the stall itself (CPU work on the loop), not a synchronisation
        await asyncio.sleep(0)


async def test_a_lookup_over_the_in_flight_limit_is_skipped_and_counted(embedder: Any) -> None:
    gated = GatedEmbedder(embedder)
    gated.gate.set()
    config = make_config(embedder={"max_inflight_lookups": 1})
    async with running_sidecar(config, gated) as (sidecar, client):
        await seed(sidecar, client)
        gated.gate.clear()
        gated.entered.clear()
        holder = asyncio.create_task(request_hook(client, chat_body(PARAPHRASE)))
        await gated.entered.wait()  # the one in-flight place is taken, in the model

        refused = await request_hook(client, chat_body(OTHER_PARAPHRASE))
        body = refused.json()
        assert (body["cache"]["status"], body["cache"]["reason"]) == ("miss", OVERLOADED)
        assert shed(sidecar, "semantic_lookup", "inflight_limit") == 1
        assert skipped(sidecar) == 1
        # The skipped miss is still stored for exact hits at once.
        stored = await response_hook(client, body, openai_answer("Paris, still."))
        assert stored.json()["stored_entry_id"]

        # Exact hits do not wait for the held lookup.
        exact = (await request_hook(client, chat_body(SEED))).json()
        assert exact["cache"]["status"] == "hit-exact"
        assert not holder.done()

        gated.gate.set()
        held = (await holder).json()
        assert held["cache"]["reason"] != OVERLOADED  # the lookup holding the place ran
        assert sidecar.governor.inflight == 0


async def test_a_lagging_event_loop_sheds_semantic_lookups_and_early_vectors(
    embedder: Any,
) -> None:
    config = make_config(server={"shed_loop_lag_ms": 20, "shed_store_lag_ms": 0})
    async with running_sidecar(config, embedder) as (sidecar, client):
        await seed(sidecar, client)
        assert not sidecar.governor.loop_lagging
        await stall_until(sidecar, lambda: sidecar.governor.loop_lagging, 0.04)

        body = (await request_hook(client, chat_body(PARAPHRASE))).json()
        assert (body["cache"]["status"], body["cache"]["reason"]) == ("miss", OVERLOADED)
        assert shed(sidecar, "semantic_lookup", "loop_lag") == 1
        assert shed(sidecar, "early_vector", "loop_lag") == 1
        assert skipped(sidecar) == 1
        exact = (await request_hook(client, chat_body(SEED))).json()
        assert exact["cache"]["status"] == "hit-exact"
        stored = (await response_hook(client, body, openai_answer("Paris."))).json()
        assert stored["stored_entry_id"]  # its vector follows through the backlog


async def test_deferred_vectors_wait_while_lookups_are_shed_and_land_after(
    embedder: Any,
) -> None:
    """While the governor sheds lookups, the model's cores go to the requests: the vector of a
    miss stored meanwhile waits in the backlog (counted there), then lands."""
    config = make_config(server={"shed_loop_lag_ms": 20, "shed_store_lag_ms": 0})
    batcher = MicroBatcher(embedder, window=0.002, max_batch=32)
    async with running_sidecar(config, batcher) as (sidecar, client):
        await seed(sidecar, client)
        assert sidecar.cache is not None and sidecar.cache.backlog is not None
        registry = sidecar.metrics.registry
        assert registry.get_sample_value("sidecar_embedding_background_held_seconds") == 0
        await stall_until(sidecar, lambda: sidecar.governor.loop_lagging, 0.04)

        body = (await request_hook(client, chat_body(PARAPHRASE))).json()
        assert body["cache"]["reason"] == OVERLOADED
        # still shedding when the store defers the vector (at once, unless the hook was slow)
        await stall_until(sidecar, lambda: sidecar.governor.loop_lagging, 0.04)
        stored = (await response_hook(client, body, openai_answer("Paris."))).json()
        assert stored["stored_entry_id"]
        await sidecar.cache.backlog.settled()  # attached once the shedding was over
        assert not sidecar.governor.loop_lagging
        assert (registry.get_sample_value("sidecar_embedding_background_held_seconds") or 0) > 0
        # the seed's vector and the held one
        assert registry.get_sample_value("sidecar_cache_vectors_added_late_total") == 2
        assert registry.get_sample_value("sidecar_cache_vector_backlog") == 0  # none dropped
        # the shedding is over: lookups embed again, each one's queue wait is observed
        again = (await request_hook(client, chat_body(OTHER_PARAPHRASE))).json()
        assert again["cache"]["status"] == "hit-semantic"
        assert registry.get_sample_value("sidecar_embedding_queue_wait_seconds_count") == 1


async def test_a_loop_far_behind_sheds_the_store_too(embedder: Any) -> None:
    config = make_config(server={"shed_loop_lag_ms": 2, "shed_store_lag_ms": 5})
    async with running_sidecar(config, embedder) as (sidecar, client):
        await seed(sidecar, client)
        governor = sidecar.governor
        await stall_until(sidecar, lambda: governor.loop_lagging and governor.shed_store(), 0.05)
        stores_shed = shed(sidecar, "store", "loop_lag")

        body = (await request_hook(client, chat_body(PARAPHRASE))).json()
        assert (body["cache"]["reason"], body["cache"]["not_stored"]) == (OVERLOADED, STORE_SHED)
        assert shed(sidecar, "store", "loop_lag") == stores_shed + 1
        answered = (await response_hook(client, body, openai_answer("Paris."))).json()
        assert answered.get("stored_entry_id") is None
        assert answered["cache"]["not_stored"] == STORE_SHED
        exact = (await request_hook(client, chat_body(SEED))).json()
        assert exact["cache"]["status"] == "hit-exact"


def stalls(metrics: Metrics) -> dict[str, float]:
    kinds = ("loop_busy", "not_scheduled", "blocked", "unknown")
    return {
        kind: metrics.registry.get_sample_value("sidecar_event_loop_stalls_total", {"kind": kind})
        or 0.0
        for kind in kinds
    }


def test_a_stall_is_counted_by_what_the_loop_thread_did_meanwhile() -> None:
    metrics = Metrics()
    governor = LoadGovernor(metrics, 64, shed_loop_lag_ms=10)
    governor._count_stall(0.2, ran=0.15, waited_for_core=0.01)  # ran: work on the loop
    governor._count_stall(0.2, ran=0.01, waited_for_core=0.15)  # ready, no core free
    governor._count_stall(0.2, ran=0.01, waited_for_core=0.01)  # slept: GIL, blocking call
    governor._count_stall(0.2, ran=0.01, waited_for_core=None)  # no schedstat to tell
    assert stalls(metrics) == {"loop_busy": 1, "not_scheduled": 1, "blocked": 1, "unknown": 1}


async def test_a_loop_blocked_in_a_call_is_a_stall_not_counted_as_work_on_the_loop() -> None:
    metrics = Metrics()
    governor = LoadGovernor(metrics, 64, shed_loop_lag_ms=10)
    governor.start()
    try:
        await asyncio.sleep(0.05)  # the probe runs
        deadline = time.monotonic() + 30
        while sum(stalls(metrics).values()) == 0:
            assert time.monotonic() < deadline, "the probe never saw the stall"
            time.sleep(0.15)  # a blocking call on the loop (the stall under test)
            await asyncio.sleep(0.03)  # the probe's turn to measure it
    finally:
        await governor.close()
    counted = stalls(metrics)
    assert counted["loop_busy"] == 0  # the thread slept: no work on the loop to move
    expected = "blocked" if os.path.exists("/proc/thread-self/schedstat") else "unknown"
    # (on a busy host the thread may then wait for a core long enough to count as such)
    assert counted[expected] + counted["not_scheduled"] >= 1


# ---------------------------------------------------------------- the liveness listener
def test_the_liveness_listener_answers_from_its_process_and_reports_a_stalled_loop() -> None:
    listener = HealthListener("127.0.0.1", 0, stall_s=1.0)
    listener.start()
    try:
        base = f"http://127.0.0.1:{listener.port}"
        listener.beat()
        ok = httpx.get(f"{base}/healthz", timeout=5)
        assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 404
        assert httpx.post(f"{base}/healthz", timeout=5).status_code == 405
        # No more beats: the loop has stalled; within a deadline the probe says so.
        deadline = time.monotonic() + 30
        while (stalled := httpx.get(f"{base}/healthz", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "the listener never reported the stall"
            time.sleep(0.1)  # polling another process, not synchronisation
        assert (stalled.status_code, stalled.json()) == (503, {"status": "stalled"})
        listener.beat()
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        listener.close()


def test_sidecar_serve_answers_liveness_on_the_health_port(tmp_path: Path) -> None:
    http_port, health_port = free_port(), free_port()
    config = {
        "server": {"http_port": http_port, "grpc_enabled": False, "health_port": health_port},
        "cache": {"data_dir": ":memory:", "default_cache_key": "t", "vector_store": "none"},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ManagedProcess("sidecar", sidecar_command(path), tmp_path / "sidecar.log").start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{http_port}/readyz", 180)
        reply = httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=5)
        assert (reply.status_code, reply.json()) == (200, {"status": "ok"})
        # Its process dies with the sidecar, even killed with -9: the port is freed.
        os.kill(proc.pid, signal.SIGKILL)  # our own child, by its PID
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=2)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "the liveness process outlived the sidecar"
            time.sleep(0.1)  # polling another process, not synchronisation
    finally:
        proc.stop()


# ---------------------------------------------------------------- large bodies, off the loop
async def test_a_large_hook_payload_is_decoded_off_the_loop_with_the_same_answers(
    sidecar_factory: Any,
) -> None:
    long_question = "Summarise this: " + "lorem ipsum dolor sit amet " * 12_000  # ~320 KB
    async with sidecar_factory(make_config()) as (_sidecar, client):
        first, stored = await round_trip(client, chat_body(long_question), openai_answer("ok"))
        assert first["cache"]["status"] == "miss"
        assert stored is not None and stored["stored_entry_id"]
        again = (await request_hook(client, chat_body(long_question))).json()
        assert again["cache"]["status"] == "hit-exact"
        broken = b'{"method": "POST", "path": "/v1/chat/completions", "body": "' + b"x" * 300_000
        reply = await client.post(
            "/v1/hooks/request", content=broken, headers={"content-type": "application/json"}
        )
        assert reply.status_code == 400
        assert reply.json()["error"]["kind"] == "malformed_json"
