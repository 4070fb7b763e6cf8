"""``sidecar serve`` stops in order on SIGTERM and SIGINT: both listeners stop, the vector
backlog drains, the embedded index is saved, and the process exits 0; the next start loads the
saved index instead of rebuilding it, and nothing stored is lost.

A real process with the embedded store in a temporary directory. Its embeddings come from the
fake provider (tests/fakes/upstream.py, OpenAI-compatible ``/v1/embeddings``), which holds
every input carrying HOLD_MARKER until the test releases it: that is how the test knows the
backlog still holds vectors when the signal arrives.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from fakes.upstream import HOLD_MARKER, FakeLLMUpstream
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hookclient import chat_body, openai_answer, request_hook, round_trip

from sidecar.demo.processes import free_port, sidecar_command

ENTRIES = 24
GRAPH_AT = 8  # one scope of ENTRIES vectors makes a graph, which is what gets saved


class Serve:
    """One ``sidecar serve`` process, stopped by its own PID."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                sidecar_command(config),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "SHUTDOWN_TEST_KEY": "unused"},
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, deadline_s: float) -> re.Match[str]:
        deadline = time.monotonic() + deadline_s
        while True:
            found = re.search(pattern, self.log())
            if found:
                return found
            assert time.monotonic() < deadline, f"never logged {pattern!r}:\n{self.log()}"
            assert self.proc.poll() is None or re.search(pattern, self.log()), self.log()
            time.sleep(0.05)  # polling interval, not a synchronisation

    def wait_ready(self, url: str, deadline_s: float = 120) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"sidecar exited early:\n{self.log()}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling interval while the process starts
        raise AssertionError(f"sidecar not ready after {deadline_s}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def provider() -> Iterator[FakeLLMUpstream]:
    fake = FakeLLMUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def processes() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for proc in started:
        proc.kill()


def write_config(tmp_path: Path, provider: FakeLLMUpstream) -> tuple[Path, int, int]:
    http_port, grpc_port = free_port(), free_port()
    config = {
        "server": {"http_port": http_port, "grpc_port": grpc_port, "shutdown_grace": "5s"},
        "cache": {
            "data_dir": str(tmp_path / "data"),
            "default_cache_key": "shutdown-test",
            "vector_graph_at": GRAPH_AT,
            "vector_drain_s": 60,
            "verifier": "off",
            "pair_model": "off",
        },
        "embedder": {
            "backend": "openai",
            "base_url": f"{provider.url}/v1",
            "api_key_env": "SHUTDOWN_TEST_KEY",
            "model": "fake-embed",
            "timeout": 60,
        },
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, http_port, grpc_port


def questions() -> list[str]:
    return [
        f"{HOLD_MARKER} shutdown question number {i} about topic {i * 7}" for i in range(ENTRIES)
    ]


async def store_all(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        replies = await asyncio.gather(
            *(round_trip(client, chat_body(q), openai_answer(f"answer {q}")) for q in questions())
        )
    for request, stored in replies:
        assert request["action"] == "continue" and stored is not None
        assert stored.get("stored_entry_id"), stored


async def all_exact_hits(url: str) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        replies = await asyncio.gather(*(request_hook(client, chat_body(q)) for q in questions()))
    return [r.json().get("cache", {}).get("status", "") for r in replies]


def grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_the_backlog_saves_the_index_and_exits_zero(
    tmp_path: Path, provider: FakeLLMUpstream, processes: list[Serve], sig: signal.Signals
) -> None:
    config, http_port, grpc_port = write_config(tmp_path, provider)
    url = f"http://127.0.0.1:{http_port}"
    first = Serve(config, tmp_path / "first.log")
    processes.append(first)
    first.wait_ready(url)
    assert grpc_serving(grpc_port)

    provider.hold_embeddings()  # every question's vector waits: all of them sit in the backlog
    asyncio.run(store_all(url))
    readiness = httpx.get(f"{url}/readyz", timeout=5).json()
    assert readiness["vector_backlog"] == ENTRIES, readiness

    os.kill(first.proc.pid, sig)
    first.wait_for_log(rf"{sig.name} received: shutting down", 30)
    # The listeners are closed while the backlog waits for its vectors.
    deadline = time.monotonic() + 30
    while grpc_serving(grpc_port):
        assert time.monotonic() < deadline, "the gRPC listener still serves after the signal"
        time.sleep(0.05)  # polling interval
    assert first.proc.poll() is None, "exited before the backlog drained:\n" + first.log()
    provider.release_embeddings()
    assert first.proc.wait(90) == 0, first.log()
    log = first.log()
    saved = re.findall(r"embedded vector index saved: (\d+) graphs, (\d+) vectors", log)
    assert saved and saved[-1] == ("1", str(ENTRIES)), log
    assert "shut down cleanly" in log
    assert "Traceback" not in log, log

    calls_before = provider.count("/embeddings")
    second = Serve(config, tmp_path / "second.log")
    processes.append(second)
    second.wait_ready(url)
    restored = second.wait_for_log(
        r"embedded vector index: (\d+) vectors loaded from the saved index, (\d+) stale ones "
        r"dropped, (\d+) added from the cache database",
        30,
    )
    assert restored.groups() == (str(ENTRIES), "0", "0"), second.log()
    readiness = httpx.get(f"{url}/readyz", timeout=5).json()
    assert readiness["vector_backlog"] == 0, readiness
    assert all_statuses_hit(asyncio.run(all_exact_hits(url)))
    # Nothing was queued again for a vector: the start-up probe aside, no embedding call.
    assert provider.count("/embeddings") - calls_before <= 1
    os.kill(second.proc.pid, signal.SIGTERM)
    assert second.proc.wait(60) == 0, second.log()


def all_statuses_hit(statuses: list[str]) -> bool:
    assert statuses == ["hit-exact"] * ENTRIES, statuses
    return True


def test_a_signal_during_start_up_still_exits_cleanly(
    tmp_path: Path, provider: FakeLLMUpstream, processes: list[Serve]
) -> None:
    """SIGTERM while the sidecar starts (its stores open, the listeners not yet or just up):
    the process still closes what it opened and exits 0."""
    config, _, _ = write_config(tmp_path, provider)
    proc = Serve(config, tmp_path / "early.log")
    processes.append(proc)
    proc.wait_for_log(r"embedded vector index: ", 60)
    os.kill(proc.proc.pid, signal.SIGTERM)
    code = proc.proc.wait(60)
    log = proc.log()
    assert code == 0, log
    assert "Traceback" not in log, log


def test_a_signal_during_a_first_start_export_stops_at_once(
    tmp_path: Path, processes: list[Serve]
) -> None:
    """A first start with ONNX exports the model in a thread for a minute or more; SIGTERM
    must stop the process then, not once the export is over, and leave no model file half
    written where the next start would take it."""
    onnx_cache = tmp_path / "onnx"
    config = {
        "server": {"http_port": free_port(), "grpc_port": free_port()},
        "cache": {"data_dir": ":memory:", "verifier": "off", "pair_model": "off"},
        "embedder": {"backend": "onnx", "onnx_cache_dir": str(onnx_cache)},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = Serve(path, tmp_path / "serve.log")
    processes.append(serve)
    serve.wait_for_log(r"exporting \S+ to ONNX at", 120)
    os.kill(serve.proc.pid, signal.SIGTERM)
    # An export runs for a minute or more on this machine; 30 s is plenty for a stop.
    assert serve.proc.wait(30) == 0, serve.log()
    log = serve.log()
    assert "stopped during start-up" in log and "Traceback" not in log, log
    assert "done in" not in log, log  # the export was cut short, not waited for
    finished = [p.name for p in onnx_cache.glob("*.onnx") if ".tmp." not in p.name]
    assert not finished, finished
