"""Real processes for the Envoy end-to-end tests: sidecars (``sidecar serve`` subprocesses),
in-process ext_proc servers (for failure-policy tests), and one Envoy with a listener per
scenario. Everything binds 127.0.0.1 on free ports, readiness is polled with a deadline,
and every process is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from fakes.upstream import FakeLLMUpstream

from sidecar.demo.envoy import (
    ExtProcListener,
    bootstrap,
    envoy_binary,
    envoy_command,
    write_bootstrap,
)
from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command
from sidecar.transports.extproc import ExtProcServer, FailureMode, Processor

T = TypeVar("T")
SIDECAR_START_DEADLINE_S = 180.0  # loading the embedding model on a busy 2-core machine
ENVOY_START_DEADLINE_S = 60.0


def envoy_available() -> str | None:
    """None when Envoy can run here, else the reason to skip."""
    try:
        envoy_binary()
    except FileNotFoundError as exc:
        return str(exc)
    return None


class BackgroundLoop:
    """An asyncio loop in a thread, for gRPC servers living in the test process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class SidecarProcess:
    name: str
    http_port: int
    grpc_port: int
    process: ManagedProcess
    #: the bearer token its HTTP and gRPC listeners need (server.auth_token_env), or None
    token: str | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"authorization": f"Bearer {self.token}"}

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """What Envoy sends to this sidecar (grpc_service.initial_metadata)."""
        return tuple(self.headers.items())

    def shed_total(self, work: str) -> float:
        """``sidecar_overload_shed_total`` for ``work`` (all causes), read from /metrics."""
        text = httpx.get(f"{self.http_url}/metrics", headers=self.headers, timeout=10).text
        label = f'work="{work}"'
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("sidecar_overload_shed_total{") and label in line
        )


class EnvoyStack:
    def __init__(self, workdir: Path, upstream_port: int) -> None:
        self.workdir = workdir
        self.upstream_port = upstream_port
        self.sidecars: dict[str, SidecarProcess] = {}
        self.listeners: dict[str, ExtProcListener] = {}
        self.admin_port = free_port()
        self.envoy: ManagedProcess | None = None
        self._loop: BackgroundLoop | None = None
        self._grpc_servers: list[ExtProcServer] = []

    # ------------------------------------------------------------------ building
    def add_sidecar(
        self, name: str, config: dict[str, Any], token: str | None = None
    ) -> SidecarProcess:
        """A ``sidecar serve`` process; with ``token`` it requires that bearer token (given to
        it in an environment variable named by server.auth_token_env)."""
        http_port, grpc_port = free_port(), free_port()
        # Load shedding depends on the machine's load: off unless a test sets it.
        server = {
            "shed_loop_lag_ms": 0,
            "shed_store_lag_ms": 0,
            "refuse_streams_lag_ms": 0,
            "refuse_streams_wait_ms": 0,
            **config.get("server", {}),
            "http_port": http_port,
            "grpc_port": grpc_port,
        }
        env = None
        if token is not None:
            token_env = f"SIDECAR_E2E_TOKEN_{name.upper()}"
            server["auth_token_env"] = token_env
            env = {token_env: token}
        path = self.workdir / f"sidecar-{name}.yaml"
        # ... and so does the embedder's queue budget (an expected semantic hit must not be
        # skipped as overloaded on a busy machine).
        embedder = {"max_queue_ms": 10_000, **config.get("embedder", {})}
        path.write_text(
            yaml.safe_dump({**config, "server": server, "embedder": embedder}), encoding="utf-8"
        )
        process = ManagedProcess(
            f"sidecar {name}", sidecar_command(path), self.workdir / f"sidecar-{name}.log", env
        )
        self.sidecars[name] = SidecarProcess(name, http_port, grpc_port, process, token)
        return self.sidecars[name]

    def add_inprocess_extproc(
        self, new_processor: Callable[[], Processor], failure_mode: FailureMode
    ) -> int:
        """An ext_proc server in this process (its processor is test code); returns its port."""
        if self._loop is None:
            self._loop = BackgroundLoop()
        server = ExtProcServer(new_processor, port=0, failure_mode=failure_mode)
        port = self._loop.run(server.start())
        self._grpc_servers.append(server)
        return port

    def add_listener(
        self,
        name: str,
        grpc_port: int,
        failure_mode_allow: bool = False,
        message_timeout: float = 20.0,
        allow_mode_override: bool = True,
        response_body_mode: str = "BUFFERED",
        single_message: bool = False,
        initial_metadata: tuple[tuple[str, str], ...] = (),
        request_time: bool = False,
        max_streams: int | None = None,
    ) -> str:
        spec = ExtProcListener(
            name,
            free_port(),
            grpc_port,
            failure_mode_allow,
            message_timeout,
            allow_mode_override,
            response_body_mode,
            single_message,
            initial_metadata,
            request_time,
            max_streams,
        )
        self.listeners[name] = spec
        return self.url(name)

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.listeners[listener].port}"

    def stat(self, name: str) -> int:
        """One Envoy counter from the admin endpoint (0 before Envoy first counts it)."""
        reply = httpx.get(
            f"http://127.0.0.1:{self.admin_port}/stats",
            params={"filter": f"^{re.escape(name)}$", "format": "json"},
            timeout=10,
        )
        reply.raise_for_status()
        for stat in reply.json().get("stats", []):
            if stat.get("name") == name:
                return int(stat.get("value", 0))
        return 0

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        for sidecar in self.sidecars.values():  # started together: model loads overlap
            sidecar.process.start()
        for sidecar in self.sidecars.values():
            sidecar.process.wait_ready(
                f"{sidecar.http_url}/readyz", SIDECAR_START_DEADLINE_S, headers=sidecar.headers
            )
        config = bootstrap(self.admin_port, self.upstream_port, list(self.listeners.values()))
        path = write_bootstrap(self.workdir / "envoy.yaml", config)
        self.envoy = ManagedProcess("envoy", envoy_command(path), self.workdir / "envoy.log")
        self.envoy.start()
        self.envoy.wait_ready(f"http://127.0.0.1:{self.admin_port}/ready", ENVOY_START_DEADLINE_S)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        for sidecar in self.sidecars.values():
            sidecar.process.stop()
        if self._loop is not None:
            for server in self._grpc_servers:
                self._loop.run(server.stop(grace=1.0))
            self._loop.close()

    def logs(self) -> str:
        parts = [f"--- {s.name}\n{s.process.log_tail(40)}" for s in self.sidecars.values()]
        if self.envoy is not None:
            parts.append(f"--- envoy\n{self.envoy.log_tail(40)}")
        return "\n".join(parts)


#: one Envoy, one sidecar and the fake provider behind them (``overload_stack``)
OverloadStack = tuple[EnvoyStack, SidecarProcess, FakeLLMUpstream]


@contextlib.contextmanager
def overload_stack(
    workdir: Path, name: str, server: dict[str, Any], listeners: dict[str, dict[str, Any]]
) -> Iterator[OverloadStack]:
    """The overload tests' stack: an exact-only in-memory sidecar called ``name`` with the
    ``server`` settings (its shedding and refusal marks) over the harness defaults, one
    Envoy listener per entry of ``listeners`` (``add_listener``'s options), the fake
    provider upstream. Skips the test where Envoy is not available."""
    reason = envoy_available()
    if reason is not None:
        pytest.skip(f"Envoy unavailable: {reason}")
    upstream = FakeLLMUpstream().start()
    env = EnvoyStack(workdir, upstream.port)
    sidecar = env.add_sidecar(
        name,
        {
            "server": server,
            "cache": {"data_dir": ":memory:", "default_cache_key": "e2e", "vector_store": "none"},
        },
    )
    for listener, options in listeners.items():
        env.add_listener(listener, sidecar.grpc_port, **options)
    try:
        env.start()
        yield env, sidecar, upstream
    finally:
        env.stop()
        upstream.stop()


def assert_shed_requests_reach_the_provider(
    env: EnvoyStack,
    listener: str,
    sidecar: SidecarProcess,
    upstream: FakeLLMUpstream,
    body: Any,
    work: str = "extproc_stream",
    warm_up: Callable[[int], Any] | None = None,
) -> None:
    """Through ``listener`` once the sidecar sheds ``work`` (a bounded wait for the first
    shed, sending ``warm_up(attempt)``, or ``body``): two more requests of ``body`` are
    answered by the provider without the sidecar, each shed counted. ``extproc_stream``: the
    stream was refused (the sidecar never saw the request, even one the cache may hold);
    ``store``: the stream ended after the request (the answer never passed the sidecar, and
    was not stored: both went to the provider)."""
    path = "/v1/chat/completions"
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=env.url(listener), timeout=30) as client:
        attempt = 0
        while sidecar.shed_total(work) == 0:
            assert time.monotonic() < deadline, env.logs()
            attempt += 1
            warm = body if warm_up is None else warm_up(attempt)
            assert client.post(path, json=warm).status_code == 200
        before, calls = sidecar.shed_total(work), upstream.count()
        answers = [client.post(path, json=body) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 200, env.logs()
        assert answer.json()["choices"][0]["message"]["content"]  # the provider's answer
        assert "x-bf-cache-status" not in answer.headers  # it did not pass the sidecar
    assert upstream.count() == calls + 2
    assert sidecar.shed_total(work) == before + 2
