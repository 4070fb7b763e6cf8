"""``sidecar embedder prepare``: build the ONNX file ahead of the first start (install time).

With ``embedder.backend: onnx`` the first start exports the model to ONNX (and quantises it
with ``onnx_quantize``): 12 s of CPU, 1-2 minutes on a busy 2-core machine. Running this once
at install time (in a Dockerfile, a package's post-install step) moves that out of the first
start; the sidecar then finds the file in ``embedder.onnx_cache_dir`` and loads it directly.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from embedders.base import EmbedderError

log = logging.getLogger("sidecar.embedder")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    group = subparsers.add_parser("embedder", help="embedding model tasks")
    sub = group.add_subparsers(dest="embedder_command", required=True)
    prepare = sub.add_parser(
        "prepare",
        help="export (and quantise) the configured ONNX model now, not on the first start",
    )
    prepare.add_argument("--config", help="YAML configuration file (default: built-in defaults)")
    prepare.set_defaults(func=run)
    return group


def run(args: argparse.Namespace) -> int:
    from embedders.onnx_embedder import default_cache_dir, ensure_onnx_file
    from embedders.sentence_tf import resolve_model_path
    from sidecar.config import ConfigError, SidecarConfig, load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config) if args.config else SidecarConfig()
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    embedder = config.embedder
    if embedder.backend != "onnx":
        print(f"embedder.backend is {embedder.backend!r}: nothing to prepare (only onnx exports)")
        return 0
    cache_dir = Path(embedder.onnx_cache_dir).expanduser() if embedder.onnx_cache_dir else None
    try:
        path = ensure_onnx_file(
            Path(resolve_model_path(embedder.model, embedder.model_path)),
            cache_dir or default_cache_dir(),
            embedder.onnx_quantize,
            embedder.model,
        )
    except EmbedderError as exc:
        print(f"error: {exc}")
        return 1
    print(f"ready: {path}")
    return 0
