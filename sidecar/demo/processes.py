"""Child processes for local runs: start, wait for a readiness URL with a deadline, stop by PID.

Only the processes started here are ever signalled, each by its own PID.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

#: ports handed out by this process: never twice, though each is closed again at once
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(below: int = 65536) -> int:
    """A port free on 127.0.0.1 right now (the caller binds it soon after), below ``below``.

    Chosen at random *below* the kernel's ephemeral range, not by binding port 0: a port the
    kernel hands out that way is closed again before the caller binds it, and meanwhile any
    outbound connection on the machine (Envoy's, a Redis client's) may take it as its source
    port; a fresh-clone CI run lost a whole Envoy test stack to that (``address already in
    use``). Ports below the range are never picked by the kernel for outbound connections."""
    low, _ = _ephemeral_range()
    top = min(low, below)
    bottom = max(1024, top - 12_000)
    for _ in range(500):
        port = random.randrange(bottom, top)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port on 127.0.0.1 in {bottom}-{top - 1}")


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
