"""The hash-chained audit log: chaining, resuming, tamper detection, and no matched text."""

from __future__ import annotations

import argparse
import io
import json
import textwrap
import threading
from pathlib import Path

import pytest

from guardrails.audit import GENESIS, AuditLog, record_hash, verify_audit_file
from guardrails.base import CheckContext, Stage, TextPiece
from guardrails.cli import add_parser, run
from guardrails.engine import GuardrailEngine, RuleEnv
from guardrails.reload import RuleSetHolder


def decision(i: int) -> dict[str, object]:
    return {
        "request_id": f"req-{i}",
        "stage": "input",
        "rule_id": "r",
        "profiles": ["p"],
        "action": "block",
        "findings": {"regex:x": i},
        "latency_ms": 0.25 * i,
        "outcome": "blocked",
        "error": None,
    }


def lines_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_log(path: Path, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append(decision(i))
    log.close()


def test_records_are_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "log.jsonl"  # the directory is created
    write_log(path, 3)
    records = lines_of(path)
    assert records[0]["prev"] == GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after["prev"] == before["hash"]
    for record in records:
        assert record["hash"] == record_hash(record) and isinstance(record["ts"], float)
    assert verify_audit_file(path).ok and verify_audit_file(path).records == 3


def test_resumes_the_chain_from_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 2)
    last = lines_of(path)[-1]["hash"]
    log = AuditLog(path)
    assert log.last_hash == last
    log.append(decision(9))
    log.close()
    assert lines_of(path)[-1]["prev"] == last
    result = verify_audit_file(path)
    assert result.ok and result.records == 3


def tamper(path: Path, line_no: int, edit: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[line_no - 1])
    if edit == "field":
        record["outcome"] = "pass"
    elif edit == "field+rehash":
        record["outcome"] = "pass"
        record["hash"] = record_hash(record)
    if edit == "delete":
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = json.dumps(record, sort_keys=True) + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    ("edit", "broken_line", "reason"),
    [
        ("field", 3, "hash does not match"),
        ("field+rehash", 4, "prev does not match"),  # the next record no longer links
        ("delete", 3, "prev does not match"),
    ],
)
def test_tampering_is_detected_at_the_right_line(
    tmp_path: Path, edit: str, broken_line: int, reason: str
) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 5)
    tamper(path, 3, edit)
    result = verify_audit_file(path)
    assert not result.ok
    assert result.first_broken_line == broken_line and reason in (result.reason or "")
    assert result.records == broken_line - 1


def test_torn_last_line_is_reported_and_chained_onto(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, 2)
    with open(path, "ab") as fh:
        fh.write(b'{"request_id": "half')
    result = verify_audit_file(path)
    assert (result.ok, result.first_broken_line) == (False, 3)
    log = AuditLog(path)  # resumes without crashing; the damage stays visible
    log.append(decision(3))
    log.close()
    assert verify_audit_file(path).first_broken_line == 3


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = AuditLog(path)
    threads = [
        threading.Thread(target=lambda: [log.append(decision(i)) for i in range(50)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    result = verify_audit_file(path)
    assert result.ok and result.records == 400


def test_refuses_fields_that_could_carry_text(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "log.jsonl")
    for key in ("text", "matched", "prev", "hash"):
        with pytest.raises(ValueError, match=key):
            log.append({**decision(1), key: "x"})
    log.close()


async def test_engine_records_decisions_without_matched_text(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            profiles:
              email: {provider: regex, config: {patterns: [{name: email, pattern: '\\S+@\\S+'}]}}
              card: {provider: regex, config: {patterns: [{name: card, pattern: '[0-9]{16}'}]}}
            rules:
              - {id: redact-email, apply_to: both, profiles: [email], action: redact, priority: 1}
              - {id: block-card, apply_to: input, profiles: [card], action: block, priority: 2}
            """
        )
    )
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    engine = GuardrailEngine(RuleSetHolder([str(rules)]), audit)
    context = CheckContext(Stage.INPUT, "req-42", "chat")
    text = "mail alice.secret@example.com card 4111111111111111"
    result = await engine.run_stage(Stage.INPUT, [TextPiece(0, text)], RuleEnv(), context)
    assert result.blocked is not None and result.blocked.rule_id == "block-card"
    out = CheckContext(Stage.OUTPUT, "req-42", "chat")
    await engine.run_stage(Stage.OUTPUT, [TextPiece(0, "hi bob@example.org")], RuleEnv(), out)
    audit.close()

    raw = path.read_text()
    for secret in ("alice.secret", "example.com", "4111111111111111", "bob@", "example.org"):
        assert secret not in raw
    records = lines_of(path)
    summary = [(r["stage"], r["rule_id"], r["outcome"], r["findings"]) for r in records]
    assert summary == [
        ("input", "redact-email", "redacted", {"regex:email": 1}),
        ("input", "block-card", "blocked", {"regex:card": 1}),
        ("output", "redact-email", "redacted", {"regex:email": 1}),
    ]
    assert all(r["request_id"] == "req-42" and r["profiles"] for r in records)
    assert verify_audit_file(path).ok


def test_cli_verify(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="sidecar")
    add_parser(parser.add_subparsers(dest="command"))
    path = tmp_path / "log.jsonl"
    write_log(path, 4)

    def run_cli(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = run(parser.parse_args(list(argv)), out)
        return code, out.getvalue()

    code, text = run_cli("audit", "verify", str(path))
    assert code == 0 and "4 records" in text
    tamper(path, 2, "field")
    code, text = run_cli("audit", "verify", str(path))
    assert code == 1 and "line 2" in text and "hash does not match" in text
    code, text = run_cli("audit", "verify", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in text
