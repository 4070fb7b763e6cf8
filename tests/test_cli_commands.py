"""Every sub-command is reachable through the ``sidecar`` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrails.audit import AuditLog
from sidecar.cache.match.features import analyse
from sidecar.cli import build_parser, main


def test_all_commands_are_registered() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"serve", "check-config", "demo", "cache", "secrets", "audit", "bench"} <= set(
        sub.choices  # type: ignore[attr-defined]
    )


def test_audit_verify_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.append({"request_id": "r1", "stage": "input", "rule_id": "x", "action": "block"})
    log.append({"request_id": "r2", "stage": "input", "rule_id": "x", "action": "block"})
    log.close()
    assert main(["audit", "verify", str(path)]) == 0
    assert "OK, 2 records" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["rule_id"] = "tampered"
    path.write_text(json.dumps(record) + "\n" + lines[1] + "\n")
    assert main(["audit", "verify", str(path)]) == 1


def test_secrets_scan_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = "gh" + "p_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z5A"
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": f"token {token} here"}) + "\n")
    assert main(["secrets", "scan", "--jsonl", str(path)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["findings"] and token not in out


def test_hyphenated_name_with_repeated_part_is_analysed() -> None:
    # Regression: "Step-by-step" repeats a part and crashed the verifier's analysis.
    features = analyse("This document has sections such as Introduction, Step-by-step guides")
    assert features.tokens
