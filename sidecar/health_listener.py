"""The liveness probe on a port of its own, answered by a small child process
(``server.health_port``).

``GET /healthz`` on the hook port is answered by the event loop, behind every request queued
there: under an overload or a connection flood a probe waits as long as they do. A thread of
the sidecar would not escape either: it needs the GIL, and on a busy machine the thread holding
it can be descheduled while it does. So this listener is a separate process running only the
standard library (``sidecar/health_child.py``, no sidecar import): its latency is the kernel's
scheduling, nothing else.

It still reports the sidecar: the load governor's probe ticks every 10 ms on the event loop and
writes the time into a shared 8-byte heartbeat; when it is older than ``stall_s`` the answer is
503 (a stuck loop is a dead sidecar). The child dies with the sidecar (``PR_SET_PDEATHSIG`` on
Linux, and it watches its parent everywhere).

The sidecar binds the socket (a port in use fails start-up, as for the other listeners) and
hands it to the child. Plain HTTP/1.1, no token: like ``/healthz`` on the hook port it is open
for probes and reveals nothing (``{"status": "ok"}`` or ``{"status": "stalled"}``).
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.services import Sidecar

log = logging.getLogger("sidecar")

_CHILD = Path(__file__).with_name("health_child.py")
_BEAT = struct.Struct("d")


class HealthListener:
    """``start`` binds and starts the child; ``beat`` records a live event loop; ``close``
    stops the child."""

    def __init__(self, host: str, port: int, stall_s: float) -> None:
        self.stall_s = stall_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
            self._socket.listen(64)
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        # /dev/shm where there is one: the heartbeat never touches a disk
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self._beat_path = tempfile.mkstemp(prefix="sidecar-health-", dir=shm)
        os.write(fd, _BEAT.pack(time.monotonic()))
        self._beat_map = mmap.mmap(fd, _BEAT.size)
        os.close(fd)
        self._child: subprocess.Popen[bytes] | None = None

    def beat(self) -> None:
        """The event loop is alive now (called by the governor's probe)."""
        _BEAT.pack_into(self._beat_map, 0, time.monotonic())

    def start(self) -> None:
        fd = self._socket.fileno()
        self._child = subprocess.Popen(
            # -I -S: isolated, no site packages: the child imports only the standard library
            [sys.executable, "-I", "-S", str(_CHILD), str(fd), self._beat_path, str(self.stall_s)],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
        )
        self._socket.close()  # the child owns it now

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.terminate()  # our own child, by its handle
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        self._socket.close()
        self._beat_map.close()
        try:
            os.unlink(self._beat_path)
        except OSError:
            pass


def start_health_listener(sidecar: Sidecar) -> HealthListener:
    """The ``server.health_port`` listener of ``sidecar serve``, serving (OSError: cannot bind)."""
    server = sidecar.config.server
    listener = HealthListener(server.http_host, server.health_port, server.health_stall_s)
    listener.start()
    sidecar.governor.on_tick = listener.beat
    log.info(
        "liveness probe on http://%s:%d/healthz (own process)", server.http_host, listener.port
    )
    return listener
