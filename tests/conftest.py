"""Shared fixtures: one real embedding model per test session, sidecars on in-memory stores."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy_harness import EnvoyStack, envoy_available
from extproc_scenarios import build_stack
from fakes.upstream import FakeLLMUpstream

from embedders.base import Embedder
from embedders.sentence_tf import SentenceTransformerEmbedder
from sidecar.config import SidecarConfig
from sidecar.services import Sidecar
from sidecar.transports.http import create_app


@pytest.fixture(scope="session")
def embedder() -> Iterator[SentenceTransformerEmbedder]:
    """The real all-MiniLM-L6-v2 model, loaded once (its thread pool is loop-independent)."""
    model = SentenceTransformerEmbedder()
    asyncio.run(model.start())
    yield model
    asyncio.run(model.close())


class FakeClock:
    """A clock the tests move by hand, so TTL tests need no sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pending_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh AES-256 key in SIDECAR_PENDING_KEY: sidecars whose exact store is Redis keep
    pending request contexts there, sealed with it."""
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("SIDECAR_PENDING_KEY", key)
    return key


def make_config(**sections: dict[str, Any]) -> SidecarConfig:
    data: dict[str, Any] = {
        "cache": {"data_dir": ":memory:", "default_cache_key": "test"},
        # Shedding on event-loop lag depends on the machine's load: off in tests of other
        # behaviour (tests/test_overload.py turns it on where it is the subject).
        "server": {
            "shed_loop_lag_ms": 0,
            "shed_store_lag_ms": 0,
            "refuse_streams_lag_ms": 0,
            "refuse_streams_wait_ms": 0,
        },
        # Likewise the embedder's queue budget: a busy test machine must not turn an expected
        # semantic hit into an "overloaded" miss (tests of the budget set it themselves).
        "embedder": {"max_queue_ms": 10_000},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return SidecarConfig.model_validate(data)


@contextlib.asynccontextmanager
async def running_sidecar(
    config: SidecarConfig, embedder: Embedder, **kwargs: Any
) -> AsyncIterator[tuple[Sidecar, httpx.AsyncClient]]:
    sidecar = Sidecar(config, embedder=embedder, **kwargs)
    await sidecar.start()
    app = create_app(sidecar, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            yield sidecar, client
    finally:
        await sidecar.close()


@pytest.fixture
def sidecar_factory(embedder: SentenceTransformerEmbedder) -> Callable[..., Any]:
    def factory(config: SidecarConfig | None = None, **kwargs: Any) -> Any:
        return running_sidecar(config or make_config(), embedder, **kwargs)

    return factory


def rules_sidecar(
    tmp_path: Path, sidecar_factory: Callable[..., Any], rules: str
) -> tuple[Any, Path]:
    """A sidecar running ``rules`` (written to a file) with an audit log: (the factory's
    context manager, the audit log's path). File watching is off."""
    path = tmp_path / "rules.yaml"
    path.write_text(rules)
    audit = tmp_path / "audit.jsonl"
    config = make_config(
        guardrails={"rules": [str(path)], "audit_log": str(audit), "reload_interval": 0}
    )
    return sidecar_factory(config), audit


# ---------------------------------------------------------------- Envoy end-to-end stack
@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeLLMUpstream]:
    fake = FakeLLMUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeLLMUpstream
) -> Iterator[EnvoyStack]:
    """One real Envoy with a listener per scenario (extproc_scenarios.build_stack), shared by
    the Envoy end-to-end test modules."""
    reason = envoy_available()
    if reason is not None:
        pytest.skip(f"Envoy unavailable: {reason}")
    env = build_stack(tmp_path_factory.mktemp("envoy-e2e"), upstream)
    try:
        env.start()
    except Exception:
        env.stop()
        raise
    yield env
    upstream.release_embeddings()
    env.stop()
