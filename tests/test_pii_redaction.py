"""Redaction modes of the ``presidio`` check on the input stage."""

from __future__ import annotations

import re

import pytest

from guardrails.base import Check, CheckContext, CheckResult, Stage, TextPiece
from guardrails.pii.check import PresidioCheck, build
from guardrails.pii.redaction import VAULT_KEY, PlaceholderVault, apply_replacements
from guardrails.registry import build_check

PROMPT = (
    "Please refund card 4539 1488 0343 6467 and email the receipt to dana.keller@example.com. "
    "Call her on +44 20 7946 0958. Her SSN is 536-22-8726 and the VPN gateway is 10.24.8.117. "
    "Pay out to DE89 3704 0044 0532 0130 00, then email dana.keller@example.com again."
)
VALUES = {
    "CREDIT_CARD": "4539 1488 0343 6467",
    "EMAIL_ADDRESS": "dana.keller@example.com",
    "PHONE_NUMBER": "+44 20 7946 0958",
    "US_SSN": "536-22-8726",
    "IP_ADDRESS": "10.24.8.117",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
}


def ctx(stage: Stage = Stage.INPUT) -> CheckContext:
    return CheckContext(stage=stage, request_id="r1", request_type="chat")


async def scan_input(check: PresidioCheck, text: str, c: CheckContext | None = None) -> CheckResult:
    return await check.scan([TextPiece(0, text)], c or ctx())


def redact(text: str, result: CheckResult) -> str:
    return apply_replacements(
        text, [(f.start, f.end, f.replacement or "") for f in result.findings]
    )


async def test_replace_mode_is_default_and_names_the_entity() -> None:
    check = build({})
    result = await scan_input(check, PROMPT)
    found = {(f.type, PROMPT[f.start : f.end]) for f in result.findings}
    for entity, value in VALUES.items():
        assert (entity, value) in found
    redacted = redact(PROMPT, result)
    for entity, value in VALUES.items():
        assert value not in redacted
        assert f"[{entity}]" in redacted
    assert all(f.replacement == f"[{f.type}]" for f in result.findings)


async def test_registry_builds_the_presidio_provider() -> None:
    check = build_check("presidio", {"entities": ["EMAIL_ADDRESS"]})
    result = await check.scan([TextPiece(0, PROMPT)], ctx())
    assert {f.type for f in result.findings} == {"EMAIL_ADDRESS"}
    assert check.provider == "presidio"
    assert isinstance(check, Check)


async def test_mask_mode_keeps_separators_and_last_digits() -> None:
    check = build({"redaction": "mask", "entities": ["CREDIT_CARD", "US_SSN"]})
    result = await scan_input(check, PROMPT)
    by_type = {f.type: f.replacement for f in result.findings}
    assert by_type["CREDIT_CARD"] == "**** **** **** 6467"
    # Short values keep at most a third of their characters.
    assert by_type["US_SSN"] == "***-**-*726"


async def test_mask_char_and_keep_last_are_configurable() -> None:
    check = build({"redaction": "mask", "mask_char": "#", "mask_keep_last": 0})
    result = await scan_input(check, "card 4539 1488 0343 6467")
    assert [f.replacement for f in result.findings] == ["#### #### #### ####"]


async def test_hash_mode_is_salted_and_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PII_SALT_TEST", "deployment-salt-one")
    first = build({"redaction": "hash", "hash_salt_env": "PII_SALT_TEST"})
    second = build({"redaction": "hash", "hash_salt_env": "PII_SALT_TEST"})
    a = await scan_input(first, PROMPT)
    b = await scan_input(second, PROMPT)
    emails = [f.replacement for f in a.findings if f.type == "EMAIL_ADDRESS"]
    assert len(emails) == 2 and emails[0] == emails[1]  # one value, one token
    assert re.fullmatch(r"\[EMAIL_ADDRESS:[0-9a-f]{16}\]", emails[0] or "")
    assert [f.replacement for f in a.findings] == [f.replacement for f in b.findings]

    monkeypatch.setenv("PII_SALT_TEST", "deployment-salt-two")
    other = await scan_input(build({"redaction": "hash", "hash_salt_env": "PII_SALT_TEST"}), PROMPT)
    other_email = next(f.replacement for f in other.findings if f.type == "EMAIL_ADDRESS")
    assert other_email != emails[0]
    assert "dana" not in (other_email or "")


async def test_reversible_mode_numbers_distinct_values_and_keeps_the_vault() -> None:
    check = build({"redaction": "reversible"})
    c = ctx()
    text = "Mail a@example.com, b@example.org and a@example.com again."
    result = await scan_input(check, text, c)
    assert [f.replacement for f in result.findings] == [
        "[EMAIL_ADDRESS_1]",
        "[EMAIL_ADDRESS_2]",
        "[EMAIL_ADDRESS_1]",
    ]
    vault = c.request_state[VAULT_KEY]
    assert isinstance(vault, PlaceholderVault)
    assert dict(vault.mapping) == {
        "[EMAIL_ADDRESS_1]": "a@example.com",
        "[EMAIL_ADDRESS_2]": "b@example.org",
    }
    # Neither the vault nor its mapping shows values when printed or logged.
    assert "example" not in repr(vault) and "example" not in repr(vault.mapping)


async def test_reversible_numbering_spans_pieces_and_skips_placeholders_in_the_text() -> None:
    check = build({"redaction": "reversible"})
    c = ctx()
    pieces = [
        TextPiece(0, "I typed [EMAIL_ADDRESS_1] literally; my address is x@example.com"),
        TextPiece(3, '{"to": "x@example.com", "cc": "y@example.com"}'),
    ]
    result = await check.scan(pieces, c)
    got = [(f.piece, f.replacement) for f in result.findings]
    assert got == [(0, "[EMAIL_ADDRESS_2]"), (3, "[EMAIL_ADDRESS_2]"), (3, "[EMAIL_ADDRESS_3]")]


async def test_allow_list_and_min_score() -> None:
    check = build({"allow_list": ["Support@Example.com"], "entities": ["EMAIL_ADDRESS"]})
    result = await scan_input(check, "write to support@example.com or dana@example.com")
    assert [f.replacement for f in result.findings] == ["[EMAIL_ADDRESS]"]
    # An IP address scores 0.6: a higher threshold drops it.
    strict = build({"min_score": 0.9, "entities": ["IP_ADDRESS"]})
    assert (await scan_input(strict, "host 10.24.8.117 is down")).findings == []


async def test_findings_never_overlap() -> None:
    # The digits of an IBAN could also be read as other things; only the IBAN is reported.
    check = build({})
    text = "IBAN GB29 NWBK 6016 1331 9268 19 and card 5555 5555 5555 4444"
    result = await scan_input(check, text)
    spans = sorted((f.start, f.end) for f in result.findings)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert {f.type for f in result.findings} == {"IBAN_CODE", "CREDIT_CARD"}


async def test_output_stage_in_replace_mode_reports_findings() -> None:
    check = build({})
    result = await check.scan([TextPiece(0, "Contact ops@example.com")], ctx(Stage.OUTPUT))
    assert [f.type for f in result.findings] == ["EMAIL_ADDRESS"]
    assert result.restored == {}
