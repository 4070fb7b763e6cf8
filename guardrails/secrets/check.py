"""The ``secrets`` guardrail check: Gitleaks-compatible secret scanning of text pieces.

Profile configuration (all keys optional)::

    provider: secrets
    config:
      gitleaks_config: gitleaks.toml   # a Gitleaks config instead of the built-in pack
      extend_builtin: true             # ... or in addition to it
      max_decode_depth: 5              # base64/hex/percent decoding passes (0 = off)
      max_matches: 10000               # candidate matches per piece before giving up
      max_span: 1024                   # stream hold-back, in characters

Each secret becomes a ``Finding`` of type ``secret:<rule-id>`` whose span covers only the
secret (the regex group), with replacement ``[SECRET:<rule-id>]``; overlapping findings are
merged so redaction is unambiguous. A piece with more candidate matches than ``max_matches``
gets one span-less ``secret:scan-limit`` finding: it was not scanned to the end.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from guardrails.base import (
    CheckConfigError,
    CheckContext,
    CheckResult,
    Finding,
    Stage,
    TextPiece,
)
from guardrails.secrets.config import builtin_ruleset, combine, load_gitleaks_config
from guardrails.secrets.detect import (
    DEFAULT_MAX_DECODE_DEPTH,
    DEFAULT_MAX_MATCHES,
    SecretFinding,
    SecretScanner,
    non_overlapping,
)

PROVIDER = "secrets"
# Longest secret span we hold back for in a stream. Tokens are < 300 characters; a 4096-bit
# PEM key is ~3,200, so streamed key blocks may be redacted only in part (see docs).
DEFAULT_MAX_SPAN = 1024
SCAN_LIMIT_TYPE = "secret:scan-limit"
_KEYS = ("gitleaks_config", "extend_builtin", "max_decode_depth", "max_matches", "max_span")


def finding_type(rule_id: str) -> str:
    return f"secret:{rule_id}"


def replacement(rule_id: str) -> str:
    return f"[SECRET:{rule_id}]"


class SecretsCheck:
    """Runs a ``SecretScanner`` over each piece (synchronous CPU work: a ``LocalCheck``)."""

    provider = PROVIDER

    def __init__(self, scanner: SecretScanner, *, max_span: int = DEFAULT_MAX_SPAN) -> None:
        self.scanner = scanner
        self._max_span = max_span

    def findings_for(self, piece: TextPiece) -> list[Finding]:
        report = self.scanner.scan_report(piece.text)
        findings = [_to_finding(f, piece.index) for f in non_overlapping(report.findings)]
        if report.truncated:
            findings.append(Finding(type=SCAN_LIMIT_TYPE, piece=piece.index))
        return findings

    async def scan(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        return self.complete(pieces, ctx, self.analyze(pieces, ctx.stage))

    def analyze(self, pieces: Sequence[TextPiece], stage: Stage) -> list[Finding]:
        return [f for piece in pieces for f in self.findings_for(piece)]

    def complete(
        self, pieces: Sequence[TextPiece], ctx: CheckContext, analysis: list[Finding]
    ) -> CheckResult:
        return CheckResult(findings=list(analysis))

    def max_span(self) -> int | None:
        return self._max_span

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"SecretsCheck(rules={len(self.scanner.rule_ids)}, max_span={self._max_span})"


def _to_finding(found: SecretFinding, piece: int) -> Finding:
    return Finding(
        type=finding_type(found.rule_id),
        piece=piece,
        start=found.start,
        end=found.end,
        score=1.0,
        replacement=replacement(found.rule_id),
    )


def _int_option(
    config: Mapping[str, Any], key: str, default: int, lowest: int, highest: int
) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise CheckConfigError(
            f"secrets: config.{key} must be an integer from {lowest} to {highest}, got {value!r}"
        )
    return value


@functools.lru_cache(maxsize=8)
def _builtin_scanner(max_decode_depth: int, max_matches: int) -> SecretScanner:
    # Profiles using the built-in pack share one compiled scanner.
    return SecretScanner(
        builtin_ruleset(), max_decode_depth=max_decode_depth, max_matches=max_matches
    )


def build(config: Mapping[str, Any], *, base_dir: str | None = None) -> SecretsCheck:
    """Build the check from a profile's ``config`` (see the module docstring)."""
    if not isinstance(config, Mapping):
        raise CheckConfigError(f"secrets: config must be a mapping, got {type(config).__name__}")
    for key in config:
        if key not in _KEYS:
            raise CheckConfigError(
                f"secrets: unknown config key {key!r} (known: {', '.join(_KEYS)})"
            )
    depth = _int_option(config, "max_decode_depth", DEFAULT_MAX_DECODE_DEPTH, 0, 10)
    max_matches = _int_option(config, "max_matches", DEFAULT_MAX_MATCHES, 100, 10_000_000)
    max_span = _int_option(config, "max_span", DEFAULT_MAX_SPAN, 16, 1_000_000)
    extend = config.get("extend_builtin", False)
    if not isinstance(extend, bool):
        raise CheckConfigError(
            f"secrets: config.extend_builtin must be true or false, got {extend!r}"
        )
    gitleaks = config.get("gitleaks_config")
    if gitleaks is None:
        if extend:
            raise CheckConfigError(
                "secrets: config.extend_builtin needs config.gitleaks_config to extend with"
            )
        return SecretsCheck(_builtin_scanner(depth, max_matches), max_span=max_span)
    if not isinstance(gitleaks, str) or not gitleaks.strip():
        raise CheckConfigError("secrets: config.gitleaks_config must be a file path")
    path = Path(gitleaks)
    if not path.is_absolute():
        path = Path(base_dir or ".") / path
    ruleset = load_gitleaks_config(path)
    if extend:
        ruleset = combine([builtin_ruleset(), ruleset])
    scanner = SecretScanner(ruleset, max_decode_depth=depth, max_matches=max_matches)
    return SecretsCheck(scanner, max_span=max_span)
