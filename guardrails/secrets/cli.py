"""``sidecar secrets scan``: scan JSON lines for secrets, for checking rules and benchmarking.

Input: one JSON object per line, ``{"text": "..."}`` (other keys are ignored).
Output: one JSON object per input line, ``{"findings": [{"rule_id", "start", "end",
"entropy"}]}``; offsets are character indices into ``text``. The secret itself is printed
(as ``"secret"``) only with ``--show-secrets``. A line that is not such an object yields
``{"error": ...}`` and the command exits with 1; a bad rule file exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from guardrails.secrets.config import (
    SecretsConfigError,
    builtin_ruleset,
    combine,
    load_gitleaks_config,
)
from guardrails.secrets.detect import DEFAULT_MAX_DECODE_DEPTH, SecretScanner


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``secrets`` (with its ``scan`` sub-command) on an argparse subparsers object."""
    secrets = subparsers.add_parser("secrets", help="secret scanning tools")
    commands = secrets.add_subparsers(dest="secrets_command", required=True)
    scan = commands.add_parser(
        "scan",
        help='scan JSON lines ({"text": ...}) and print findings as JSON lines',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scan.add_argument(
        "--config",
        metavar="GITLEAKS_TOML",
        help="Gitleaks config to use instead of the built-in rule pack",
    )
    scan.add_argument(
        "--extend-builtin",
        action="store_true",
        help="use the --config rules in addition to the built-in pack",
    )
    scan.add_argument(
        "--jsonl",
        default="-",
        metavar="FILE",
        help="input file with one JSON object per line; '-' (default) reads stdin",
    )
    scan.add_argument(
        "--show-secrets",
        action="store_true",
        help="include each secret's text in the output (off by default)",
    )
    scan.add_argument(
        "--max-decode-depth",
        type=int,
        default=DEFAULT_MAX_DECODE_DEPTH,
        help="passes of base64/hex/percent decoding (0 disables decoding)",
    )
    scan.set_defaults(func=run)
    return secrets


def _scanner(args: argparse.Namespace) -> SecretScanner:
    if args.config is None:
        if args.extend_builtin:
            raise SecretsConfigError("--extend-builtin needs --config")
        ruleset = builtin_ruleset()
    else:
        ruleset = load_gitleaks_config(args.config)
        if args.extend_builtin:
            ruleset = combine([builtin_ruleset(), ruleset])
    return SecretScanner(ruleset, max_decode_depth=args.max_decode_depth)


def _read_text(line: str) -> str:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise ValueError('expected a JSON object with a string "text"')
    return item["text"]


def scan_lines(
    scanner: SecretScanner, lines: Iterable[str], out: TextIO, *, show_secrets: bool
) -> int:
    """Scan each JSON line and write one result line per input; returns the bad-line count."""
    bad = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = _read_text(line)
        except ValueError as exc:
            bad += 1
            message = f"line {number}: {exc}"
            print(f"sidecar secrets scan: {message}", file=sys.stderr)
            out.write(json.dumps({"error": message}) + "\n")
            continue
        report = scanner.scan_report(text)
        findings = []
        for found in report.findings:
            item = found.to_dict()
            if show_secrets and found.start >= 0:
                item["secret"] = text[found.start : found.end]
            findings.append(item)
        result: dict[str, Any] = {"findings": findings}
        if report.truncated:
            result["truncated"] = True
        out.write(json.dumps(result) + "\n")
    return bad


def run(args: argparse.Namespace) -> int:
    try:
        scanner = _scanner(args)
    except SecretsConfigError as exc:
        print(f"sidecar secrets scan: {exc}", file=sys.stderr)
        return 2
    try:
        if args.jsonl == "-":
            bad = scan_lines(scanner, sys.stdin, sys.stdout, show_secrets=args.show_secrets)
        else:
            with open(args.jsonl, encoding="utf-8") as handle:
                bad = scan_lines(scanner, handle, sys.stdout, show_secrets=args.show_secrets)
    except OSError as exc:
        print(f"sidecar secrets scan: cannot read {args.jsonl}: {exc.strerror}", file=sys.stderr)
        return 2
    return 1 if bad else 0
