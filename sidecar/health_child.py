"""The liveness listener's process (started by ``sidecar/health_listener.py``; standard library
only, run as a script: it must not import the sidecar, whose import alone takes seconds).

Usage: ``python -I -S health_child.py FD HEARTBEAT_FILE STALL_S``. FD is a listening socket
inherited from the sidecar; HEARTBEAT_FILE holds 8 bytes, the sidecar's event loop's last
``time.monotonic()`` (system-wide on Linux). ``GET /healthz`` is 200 while the heartbeat is
younger than STALL_S, else 503.

One thread and a selector: a connection must send its request head within 2 s, at most 32 are
served at once (more are closed at once), and the process exits when its parent is gone.
Written on sockets rather than a web framework because it needs nothing but one fixed answer.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import selectors
import signal
import socket
import struct
import sys
import time

READ_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 32
MAX_HEAD_BYTES = 8192
_BEAT = struct.Struct("d")
_PR_SET_PDEATHSIG = 1


def _reply(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _answer(head: bytes, alive: bool) -> bytes:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
        answer = _reply("405 Method Not Allowed", b'{"error":"GET /healthz only"}')
    elif parts[1].split(b"?", 1)[0] != b"/healthz":
        answer = _reply("404 Not Found", b'{"error":"GET /healthz only"}')
    elif alive:
        answer = _reply("200 OK", b'{"status":"ok"}')
    else:
        answer = _reply("503 Service Unavailable", b'{"status":"stalled"}')
    if parts[0] == b"HEAD":
        answer = answer.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return answer


def _die_with_parent() -> None:
    try:  # Linux: the kernel kills this process when the sidecar dies (even by kill -9)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # elsewhere: the parent check in the loop


def serve(listener: socket.socket, beat: mmap.mmap, stall_s: float, parent: int) -> None:
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    # connection -> (bytes read so far, deadline)
    open_: dict[socket.socket, tuple[bytes, float]] = {}
    while os.getppid() == parent:
        for key, _ in selector.select(timeout=0.5):
            if key.data is None:
                try:
                    conn, _addr = listener.accept()
                except OSError:
                    continue
                if len(open_) >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                conn.setblocking(False)
                open_[conn] = (b"", time.monotonic() + READ_TIMEOUT_S)
                selector.register(conn, selectors.EVENT_READ, "conn")
                continue
            conn = key.fileobj  # type: ignore[assignment]
            data, deadline = open_[conn]
            try:
                chunk = conn.recv(1024)
            except OSError:
                chunk = b""
            data += chunk
            if chunk and b"\r\n\r\n" not in data and len(data) < MAX_HEAD_BYTES:
                open_[conn] = (data, deadline)
                continue
            if chunk:
                alive = time.monotonic() - _BEAT.unpack_from(beat, 0)[0] < stall_s
                try:
                    conn.setblocking(True)
                    conn.settimeout(READ_TIMEOUT_S)
                    conn.sendall(_answer(data, alive))
                except OSError:
                    pass
            selector.unregister(conn)
            del open_[conn]
            conn.close()
        now = time.monotonic()
        for conn, (_data, deadline) in list(open_.items()):
            if now > deadline:  # too slow to send its request head
                selector.unregister(conn)
                del open_[conn]
                conn.close()


def main(argv: list[str]) -> int:
    fd, beat_path, stall_s = int(argv[1]), argv[2], float(argv[3])
    parent = os.getppid()
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(fileno=fd)
    with open(beat_path, "r+b") as f:
        beat = mmap.mmap(f.fileno(), _BEAT.size)
    serve(listener, beat, stall_s, parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
