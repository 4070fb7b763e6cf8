"""Custom recognizers declared in YAML: regexes, context words, checksums."""

from __future__ import annotations

from pathlib import Path

import yaml

from guardrails.base import CheckContext, Stage, TextPiece
from guardrails.pii.check import PresidioCheck, build
from guardrails.pii.recognizers import iban_valid, luhn_valid, mod97_valid

RECOGNIZERS_YAML = """
recognizers:
  - name: employee-id
    entity: EMPLOYEE_ID
    regex: '\\bEMP-\\d{6}\\b'
    score: 0.7
  - name: loyalty-card
    entity: LOYALTY_CARD
    patterns:
      - regex: '\\b\\d{4} \\d{4} \\d{4}\\b'
        score: 0.3
    validation: luhn
  - name: ticket-code
    entity: TICKET_CODE
    regex: '\\bT\\d{7}\\b'
    score: 0.2
    context: [ticket, case]
  - name: account-ref
    entity: ACCOUNT_REF
    regex: '\\bAR[0-9A-Z]{10}\\b'
    validation: mod97
    case_sensitive: true
"""


async def findings(check: PresidioCheck, text: str) -> list[tuple[str, str]]:
    ctx = CheckContext(stage=Stage.INPUT, request_id="r", request_type="chat")
    result = await check.scan([TextPiece(0, text)], ctx)
    return [(f.type, text[f.start : f.end]) for f in result.findings]


def mod97_example() -> str:
    # AR + 8 characters + two check digits chosen so the whole value is 1 mod 97.
    body = "AR1234567X"
    for check in range(100):
        candidate = f"{body}{check:02d}"
        if mod97_valid(candidate):
            return candidate
    raise AssertionError("no check digits found")


async def test_custom_recognizers_from_a_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "pii-recognizers.yaml").write_text(RECOGNIZERS_YAML)
    check = build(
        {"entities": ["EMAIL_ADDRESS"], "custom_recognizers_file": "pii-recognizers.yaml"},
        base_dir=str(tmp_path),
    )
    account = mod97_example()
    text = (
        f"EMP-004211 asked about loyalty card 4539 1488 0340 and ticket T1234567. "
        f"Unrelated: 4539 1488 0344, T7654321 and EMP-12. Account {account}, not "
        f"{account[:-1]}{(int(account[-1]) + 1) % 10} nor {account.lower()}."
    )
    assert await findings(check, text) == [
        ("EMPLOYEE_ID", "EMP-004211"),
        ("LOYALTY_CARD", "4539 1488 0340"),  # Luhn-valid; the next one is not
        ("TICKET_CODE", "T1234567"),  # weak pattern lifted by the context word "ticket"
        ("ACCOUNT_REF", account),
    ]


async def test_inline_custom_recognizer_with_reversible_placeholder() -> None:
    config = yaml.safe_load(
        """
        redaction: reversible
        entities: [EMAIL_ADDRESS]
        custom_recognizers:
          - entity: EMPLOYEE_ID
            regex: '\\bEMP-\\d{6}\\b'
        """
    )
    check = build(config)
    ctx = CheckContext(stage=Stage.INPUT, request_id="r", request_type="chat")
    text = "EMP-004211 and EMP-004212 mailed hr@example.com"
    result = await check.scan([TextPiece(0, text)], ctx)
    assert [f.replacement for f in result.findings] == [
        "[EMPLOYEE_ID_1]",
        "[EMPLOYEE_ID_2]",
        "[EMAIL_ADDRESS_1]",
    ]


def test_checksums() -> None:
    assert luhn_valid("4539 1488 0343 6467") and not luhn_valid("4539 1488 0343 6468")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE88370400440532013000")
    assert iban_valid("GB29NWBK60161331926819")
    assert mod97_valid(mod97_example())
