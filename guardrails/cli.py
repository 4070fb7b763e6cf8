"""Command-line helpers for guardrails: ``sidecar audit verify FILE``.

The sidecar's main CLI adds these with :func:`add_parser` and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from guardrails.audit import verify_audit_file
from guardrails.rules import validate_rule_files


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``audit`` command to an ``argparse`` subparsers object."""
    audit = subparsers.add_parser("audit", help="guardrail audit log tools")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = actions.add_parser("verify", help="check the hash chain of an audit log")
    verify.add_argument("file", help="audit log (JSONL)")
    audit.set_defaults(func=run)
    parser: argparse.ArgumentParser = audit
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a parsed ``audit`` command. Exit codes: 0 intact, 1 broken, 2 unreadable."""
    stream = out or sys.stdout
    if getattr(args, "audit_command", None) != "verify":
        print(f"unknown audit command: {getattr(args, 'audit_command', None)!r}", file=stream)
        return 2
    try:
        result = verify_audit_file(args.file)
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror or exc}", file=stream)
        return 2
    if result.ok:
        print(f"{args.file}: OK, {result.records} records, hash chain intact", file=stream)
        return 0
    print(
        f"{args.file}: BROKEN at line {result.first_broken_line}: {result.reason} "
        f"({result.records} records verified before it)",
        file=stream,
    )
    return 1


def check_rules(paths: Sequence[str], out: TextIO | None = None) -> int:
    """For ``sidecar check-config --rules FILE``: print every error; 0 when all files are valid."""
    stream = out or sys.stdout
    errors = validate_rule_files(paths)
    for error in errors:
        print(str(error), file=stream)
    if errors:
        print(f"{len(errors)} error(s) in guardrail rule files", file=stream)
        return 1
    print(f"rule files OK: {', '.join(paths) or '(none)'}", file=stream)
    return 0
