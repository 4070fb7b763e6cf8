"""Detection quality of the default pattern set on formats and look-alikes."""

from __future__ import annotations

import pytest

from guardrails.pii.check import PresidioCheck, build


@pytest.fixture(scope="module")
def check() -> PresidioCheck:
    return build({})


def detected(check: PresidioCheck, text: str) -> list[tuple[str, str]]:
    return [(d.entity, text[d.start : d.end]) for d in check.detect(text)]


@pytest.mark.parametrize(
    "number",
    [
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+14155550132",
        "0044 20 7946 0958",
        "(415) 555-0132",
        "415-555-0132",
        "415.555.0132",
        "1-415-555-0132",
        "020 7946 0958",
        "030 901820",
        "030/901820",
        "01 23 45 67 89",
        "06.12.34.56.78",
        "98765 43210",
        "(11) 96123-4567",
        "050-234-5678",
        "+34 612 34 56 78",
        "+61 412 345 678",
    ],
)
def test_formatted_phone_numbers_need_no_context_word(check: PresidioCheck, number: str) -> None:
    assert detected(check, f"The number on file is {number} for the Lisbon office.") == [
        ("PHONE_NUMBER", number)
    ]


def test_bare_digits_need_a_context_word_in_the_same_sentence(check: PresidioCheck) -> None:
    assert detected(check, "Please call 4155550132 tomorrow.") == [("PHONE_NUMBER", "4155550132")]
    assert detected(check, "Purchase order 4155550132 was approved.") == []
    assert detected(check, "I will call later. Purchase order 4155550132 was approved.") == []


@pytest.mark.parametrize(
    "text",
    [
        "The job failed at 2024-03-11 14:22:05 on the runner.",
        "Last login 11/03/2024 from the office.",
        "Unix time 1710166925 in the logs.",
        "We upgraded to v2.14.3 and then 10.0.19045.3693.",
        "OID 1.2.840.113549.1.1.11 is sha256WithRSAEncryption.",
        "Invoice INV-2024-00077 and order ORD-2024-118734 are open.",
        "Order 820-5388135-7145076 shipped.",
        "Tracking 1Z999AA10123456784 and JJD157348915592297494.",
        "The terminal printed 4539 1488 0343 6468.",
        "Old account DE00 3704 0044 0532 0130 00 is closed.",
        "Firmware 300.12.4.1 on the routers.",
        "Test ids 000-12-3456, 666-12-3456, 912-78-1234 and 123-45-6789.",
        "The sheet lists (123) 456-7890 and 555-0199.",
        "ISBN 978-3-16-148410-0 is the reference.",
    ],
)
def test_look_alikes_are_not_reported(check: PresidioCheck, text: str) -> None:
    assert detected(check, text) == []


def test_values_next_to_each_other(check: PresidioCheck) -> None:
    text = (
        "card 5555-5555-5555-4444, IBAN GB29 NWBK 6016 1331 9268 19, SSN 536 22 8726, "
        "ip 2001:db8:85a3::8a2e:370:7334, mail ops+alerts@mail.example.org"
    )
    assert detected(check, text) == [
        ("CREDIT_CARD", "5555-5555-5555-4444"),
        ("IBAN_CODE", "GB29 NWBK 6016 1331 9268 19"),
        ("US_SSN", "536 22 8726"),
        ("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
        ("EMAIL_ADDRESS", "ops+alerts@mail.example.org"),
    ]


def test_mastercard_two_series_and_unformatted_ssn_with_context(check: PresidioCheck) -> None:
    assert detected(check, "Charge 2223 0031 2200 3222 today") == [
        ("CREDIT_CARD", "2223 0031 2200 3222")
    ]
    assert detected(check, "SSN 536228726 on the W-2") == [("US_SSN", "536228726")]
    assert detected(check, "Batch 536228726 on the W-2") == []
