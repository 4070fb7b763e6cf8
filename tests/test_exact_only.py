"""An exact-only cache (``cache.vector_store: none``) loads no embedding model: start-up
neither imports sentence-transformers (nor torch, nor ONNX Runtime for the verifier's models)
nor builds an embedder, and /readyz says the semantic layer is off. Exact hits work as usual."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

ROOT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("sentence_transformers", "torch", "onnxruntime", "transformers")

# Run in a fresh interpreter: the test process itself has loaded these modules long ago.
PROBE = """
import asyncio, json, sys
from sidecar.config import SidecarConfig
from sidecar.services import Sidecar

async def main():
    config = SidecarConfig.model_validate(json.loads(sys.argv[1]))
    sidecar = Sidecar(config)
    await sidecar.start()
    ready, detail = await sidecar.readiness()
    out = {
        "modules": [m for m in sys.argv[2].split(",") if m in sys.modules],
        "embedder": sidecar.embedder is not None,
        "semantic": sidecar.cache.semantic_enabled,
        "detail": detail,
    }
    await sidecar.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def probe(vector_store: str) -> dict[str, object]:
    config = {"cache": {"data_dir": ":memory:", "vector_store": vector_store}}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(config), ",".join(HEAVY_MODULES)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("vector_store", ["none", "None", ""])
def test_no_semantic_layer_imports_no_model(vector_store: str) -> None:
    found = probe(vector_store)
    assert found["modules"] == [], found
    assert found["embedder"] is False and found["semantic"] is False
    detail = found["detail"]
    assert isinstance(detail, dict)
    assert detail["embedder"].startswith("off"), detail
    assert detail["match_head"] == "off" and detail["pair_model"] == "off"


def test_the_probe_sees_a_model_when_one_is_configured() -> None:
    """The same probe with the default semantic layer reports the model: the check above can
    fail."""
    found = probe("embedded")
    assert "sentence_transformers" in found["modules"], found  # type: ignore[operator]
    assert found["embedder"] is True


@pytest.fixture
def exact_only(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = {
        "server": {"http_port": port, "grpc_port": free_port()},
        "cache": {"data_dir": str(tmp_path / "data"), "vector_store": "none"},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ManagedProcess("sidecar", sidecar_command(path), tmp_path / "sidecar.log").start()
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(f"{url}/readyz", 120)
        yield url
    finally:
        proc.stop()


def test_serve_reports_the_semantic_layer_off_and_serves_exact_hits(exact_only: str) -> None:
    detail = httpx.get(f"{exact_only}/readyz", timeout=5).json()
    assert detail["embedder"] == "off (no semantic layer: cache.vector_store is none)", detail
    assert "vector_backlog" not in detail
    body = {"model": "m", "messages": [{"role": "user", "content": "exact only?"}]}
    hook = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": {"x-bf-cache-key": "exact-only"},
        "body": body,
    }
    with httpx.Client(base_url=exact_only, timeout=10) as client:
        first = client.post("/v1/hooks/request", json=hook).json()
        assert first["action"] == "continue"
        answer = {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "yes"},
                    "finish_reason": "stop",
                }
            ]
        }
        stored = client.post(
            "/v1/hooks/response",
            json={
                "request_id": first["request_id"],
                "request_secret": first["request_secret"],
                "status": 200,
                "headers": {"content-type": "application/json"},
                "body": answer,
            },
        ).json()
        assert stored.get("stored_entry_id"), stored
        again = client.post("/v1/hooks/request", json=hook).json()
        assert again["cache"]["status"] == "hit-exact", again
