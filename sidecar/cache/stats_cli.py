"""``sidecar cache stats``: the adaptive cache's per-partition figures, read from a running
sidecar's ``GET /v1/cache/stats`` with the admin token (docs/adaptive.md)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx
import orjson

from sidecar.config import ConfigError, load_config

_COLUMNS = (
    ("lookups", "lookups"),
    ("exact_hits", "exact"),
    ("semantic_hits", "semantic"),
    ("explored", "explored"),
    ("observations", "observed"),
    ("observed_wrong", "wrong"),
    ("estimated_wrong_rate", "est. rate"),
    ("wrong_rate_upper_bound", "upper 95%"),
    ("learned_threshold", "threshold"),
    ("target_wrong_rate", "target"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML configuration file (address and token variable)")
    parser.add_argument("--url", help="the sidecar's admin address (default: from the config)")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def run_stats(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sidecar cache stats: {exc}", file=sys.stderr)
        return 2
    server = config.server
    scheme = "https" if server.tls_cert_file else "http"
    port = server.admin_port or server.http_port
    url = args.url or f"{scheme}://{server.http_host}:{port}"
    headers = {}
    if server.auth_token_env:
        token = os.environ.get(server.auth_token_env, "").split(",")[0].strip()
        if not token:
            print(
                f"sidecar cache stats: environment variable {server.auth_token_env} "
                "(server.auth_token_env) holds no token",
                file=sys.stderr,
            )
            return 2
        headers["authorization"] = f"Bearer {token}"
    try:
        reply = httpx.get(f"{url.rstrip('/')}/v1/cache/stats", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"sidecar cache stats: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if reply.status_code != 200:
        print(f"sidecar cache stats: {url} answered {reply.status_code}", file=sys.stderr)
        return 1
    data = reply.json()
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    partitions: dict[str, dict[str, Any]] = data.get("partitions", {})
    if not partitions:
        print("no partition figures (is cache.target_wrong_rate set?)")
        return 0
    rows = [["partition", *(title for _, title in _COLUMNS)]]
    for name, figures in partitions.items():
        rows.append([name, *(_cell(figures.get(key)) for key, _ in _COLUMNS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("upper 95%: one-sided 95% Clopper-Pearson upper bound of the wrong-hit rate")
    return 0
