"""``sidecar secrets scan``: scan files, standard input or JSON lines for secrets.

Plain text (``sidecar secrets scan FILE...``, or standard input with no FILE or ``-``): one line
per finding, ``FILE:LINE:COLUMN: RULE-ID (entropy E)``, LINE and COLUMN counted from 1 (the
column in characters). The secret is never printed; ``--redact`` adds the line it was found
on, the secret replaced by ``REDACTED`` (Gitleaks' ``--redact``). Exit status 1 when a secret
was found (as Gitleaks), 0 when none, 2 for a bad rule file or an unreadable input.

JSON lines (``--jsonl FILE``, ``-`` for standard input): one object per line,
``{"text": "..."}``; output is one JSON object per input line, ``{"findings": [{"rule_id",
"start", "end", "entropy"}]}`` with offsets as character indices into ``text``. The secret is
printed (as ``"secret"``) only with ``--show-secrets``. A line that is not such an object
yields ``{"error": ...}`` and the command exits with 1; a bad rule file exits with 2.
"""

from __future__ import annotations

import argparse
import bisect
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
        help="scan files or standard input (or JSON lines) and print where each secret is",
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
        "files",
        nargs="*",
        metavar="FILE",
        help="plain-text files to scan; none or '-' reads standard input",
    )
    scan.add_argument(
        "--jsonl",
        default=None,
        metavar="FILE",
        help="input with one JSON object ({\"text\": ...}) per line; '-' reads stdin",
    )
    scan.add_argument(
        "--redact",
        action="store_true",
        help="plain text: also print each finding's line with the secret replaced by REDACTED",
    )
    scan.add_argument(
        "--show-secrets",
        action="store_true",
        help="--jsonl only: include each secret's text in the output (off by default)",
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


REDACTED = "REDACTED"


def _line_starts(text: str) -> list[int]:
    starts = [0]
    at = text.find("\n")
    while at >= 0:
        starts.append(at + 1)
        at = text.find("\n", at + 1)
    return starts


def scan_text(scanner: SecretScanner, text: str, name: str, out: TextIO, *, redact: bool) -> int:
    """Scan one plain text and print ``name:line:column: rule-id`` per finding; returns the
    number of findings. The secret is never printed."""
    report = scanner.scan_report(text)
    if not report.findings:
        return 0
    starts = _line_starts(text)
    for found in report.findings:
        entropy = f" (entropy {found.entropy:.2f})" if found.entropy else ""
        if found.start < 0:  # a path-only rule: no position in the text
            out.write(f"{name}: {found.rule_id}{entropy}\n")
            continue
        line = bisect.bisect_right(starts, found.start) - 1
        column = found.start - starts[line] + 1
        out.write(f"{name}:{line + 1}:{column}: {found.rule_id}{entropy}\n")
        if redact:
            line_end = text.find("\n", found.start)
            line_end = len(text) if line_end < 0 else line_end
            masked = text[starts[line] : found.start] + REDACTED
            # a secret spanning lines (a PEM block) ends the shown line at the mask
            if found.end <= line_end:
                masked += text[found.end : line_end]
            out.write(f"    {masked.rstrip()}\n")
    if report.truncated:
        out.write(f"{name}: scan stopped at the match limit (more findings may exist)\n")
    return len(report.findings)


def _run_plain(args: argparse.Namespace, scanner: SecretScanner) -> int:
    found = 0
    for name in args.files or ["-"]:
        if name == "-":
            found += scan_text(scanner, sys.stdin.read(), "<stdin>", sys.stdout, redact=args.redact)
            continue
        try:
            with open(name, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            print(f"sidecar secrets scan: cannot read {name}: {exc.strerror}", file=sys.stderr)
            return 2
        found += scan_text(scanner, text, name, sys.stdout, redact=args.redact)
    print(f"{found} secret(s) found", file=sys.stderr)
    return 1 if found else 0


def run(args: argparse.Namespace) -> int:
    if args.jsonl is not None and args.files:
        print("sidecar secrets scan: give FILE arguments or --jsonl, not both", file=sys.stderr)
        return 2
    if args.show_secrets and args.jsonl is None:
        print(
            "sidecar secrets scan: --show-secrets works with --jsonl only; plain-text output "
            "never prints secrets (--redact shows their lines masked)",
            file=sys.stderr,
        )
        return 2
    try:
        scanner = _scanner(args)
    except SecretsConfigError as exc:
        print(f"sidecar secrets scan: {exc}", file=sys.stderr)
        return 2
    if args.jsonl is None:
        return _run_plain(args, scanner)
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
