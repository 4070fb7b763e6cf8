"""A real ``python -m sidecar serve`` process for multi-replica tests."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from backend_servers import free_port

REPO = Path(__file__).resolve().parent.parent


def new_pending_key() -> str:
    """A fresh AES-256 key (base64) for SIDECAR_PENDING_KEY, shared by a test's replicas."""
    return base64.b64encode(os.urandom(32)).decode()


class Replica:
    """One ``python -m sidecar serve`` process on its own ports, stopped by its PID."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: str,
        name: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        server = {
            # load shedding depends on the machine's load: off here
            "shed_loop_lag_ms": 0,
            "shed_store_lag_ms": 0,
            "refuse_streams_lag_ms": 0,
            "refuse_streams_wait_ms": 0,
            **config.get("server", {}),
            "http_port": self.port,
            "grpc_port": free_port(),
        }
        # the embedder's queue budget too: no "overloaded" skip of an expected semantic hit
        embedder = {"max_queue_ms": 10_000, **config.get("embedder", {})}
        config = {**config, "server": server, "embedder": embedder}
        self.env = env or {}
        self.config_path = Path(workdir) / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = Path(workdir) / f"{name}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "--config", str(self.config_path)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:  # poll /readyz with a deadline (the model loads first)
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica not ready in {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
