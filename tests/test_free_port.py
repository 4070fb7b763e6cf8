"""``free_port``: the ports the harnesses hand to servers they start.

A port from binding port 0 lies in the kernel's ephemeral range, where any outbound connection
may take it as its source port before the server binds it (a CI run lost an Envoy test stack
that way): ``free_port`` chooses below that range, and never the same port twice.
"""

from __future__ import annotations

import socket

from sidecar.demo.processes import _ephemeral_range, free_port


def test_ports_are_below_the_ephemeral_range_bindable_and_distinct() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # free, as promised


def test_below_is_respected() -> None:
    assert all(free_port(below=22768) < 22768 for _ in range(50))
