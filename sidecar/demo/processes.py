"""Child processes for local runs: start, wait for a readiness URL with a deadline, stop by PID.

Only the processes started here are ever signalled, each by its own PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    def __init__(
        self, name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> ManagedProcess:
        log = self.log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self._env or {})},
            )
        finally:
            log.close()
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(
        self,
        url: str,
        deadline_s: float,
        expect: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Poll ``url`` until it answers ``expect``; fail early if the process exits.
        ``headers``: e.g. the bearer token a sidecar's /readyz needs."""
        deadline = time.monotonic() + deadline_s
        with httpx.Client(timeout=2.0, headers=headers) as client:
            while time.monotonic() < deadline:
                if not self.running():
                    raise ProcessFailed(f"{self.name} exited early:\n{self.log_tail()}")
                try:
                    if client.get(url).status_code == expect:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)  # polling interval while the process starts, not a sync point
        raise ProcessFailed(
            f"{self.name} not ready at {url} after {deadline_s}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def sidecar_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "sidecar", "serve", "--config", str(config_path)]
