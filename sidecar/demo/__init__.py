"""``sidecar demo`` (work in progress)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="run a scripted workload through Envoy")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("sidecar demo: not ready yet")
    return 1
