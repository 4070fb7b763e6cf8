"""Invalid profile configuration gives a CheckConfigError naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guardrails.base import CheckConfigError
from guardrails.pii.check import build
from guardrails.registry import build_check

CASES: list[tuple[dict[str, Any], str]] = [
    ({"entitys": ["EMAIL_ADDRESS"]}, "entitys: unknown field"),
    ({"entities": "EMAIL_ADDRESS"}, "entities: expected a list"),
    ({"entities": []}, "entities: must name at least one"),
    ({"entities": ["EMAIL"]}, "entities[0]: unknown entity 'EMAIL'"),
    ({"entities": ["PERSON"]}, "entities[0]: PERSON needs a spaCy NER model"),
    ({"min_score": 1.5}, "min_score: must be between 0 and 1"),
    ({"min_score": "high"}, "min_score: expected a number"),
    ({"redaction": "encrypt"}, "redaction: must be one of replace, mask, hash, reversible"),
    ({"redaction": "hash"}, "hash_salt_env: redaction 'hash' needs a salt"),
    (
        {"redaction": "hash", "hash_salt_env": "PII_TEST_SALT_UNSET"},
        "hash_salt_env: environment variable PII_TEST_SALT_UNSET is not set",
    ),
    ({"hash_salt_env": "not a name"}, "hash_salt_env: not an environment variable name"),
    ({"redaction": "hash", "hash_salt": "short"}, "hash_salt: expected a string of at least 8"),
    ({"language": "english"}, "language: expected an ISO 639-1 code"),
    ({"allow_list": "x"}, "allow_list: expected a list of strings"),
    ({"phone_regions": ["XX"]}, "phone_regions[0]: unknown region code 'XX'"),
    ({"mask_char": "**"}, "mask_char: expected a single character"),
    ({"mask_keep_last": 20}, "mask_keep_last: expected an integer from 0 to 8"),
    ({"nlp_model": 3}, "nlp_model: expected a non-empty string"),
    ({"custom_recognizers": {"entity": "X"}}, "custom_recognizers: expected a list"),
    (
        {"custom_recognizers": [{"entity": "employee", "regex": "x"}]},
        "custom_recognizers[0].entity: expected an upper-case entity name",
    ),
    (
        {"custom_recognizers": [{"entity": "EMP_ID"}]},
        "custom_recognizers[0].regex: a recognizer needs 'regex' or 'patterns'",
    ),
    (
        {"custom_recognizers": [{"entity": "EMP_ID", "regex": "EMP-(\\d+"}]},
        "custom_recognizers[0].regex: invalid regex",
    ),
    (
        {"custom_recognizers": [{"entity": "EMP_ID", "regex": "\\d*"}]},
        "custom_recognizers[0].regex: regex matches the empty string",
    ),
    (
        {"custom_recognizers": [{"entity": "EMP_ID", "regex": "E\\d", "validation": "crc"}]},
        "custom_recognizers[0].validation: must be one of none, luhn, mod97, iban",
    ),
    (
        {"custom_recognizers": [{"entity": "EMP_ID", "patterns": [{"regex": "E\\d", "score": 2}]}]},
        "custom_recognizers[0].patterns[0].score: must be between 0 and 1",
    ),
    (
        {"custom_recognizers": [{"entity": "EMP_ID", "regex": "E\\d", "context": ["staff id"]}]},
        "custom_recognizers[0].context[0]: context entries are single words",
    ),
    (
        {"custom_recognizers": [{"entity": "EMP_ID", "regex": "E\\d", "flags": "i"}]},
        "custom_recognizers[0].flags: unknown field",
    ),
    (
        {
            "custom_recognizers": [
                {"name": "a", "entity": "EMP_ID", "regex": "E\\d"},
                {"name": "a", "entity": "EMP_ID2", "regex": "F\\d"},
            ]
        },
        "custom_recognizers[1].name: duplicate recognizer name 'a'",
    ),
    ({"custom_recognizers_file": "missing.yaml"}, "custom_recognizers_file: cannot read"),
]


@pytest.mark.parametrize(("config", "message"), CASES, ids=[m.split(":")[0] for _, m in CASES])
def test_invalid_config_names_the_field(
    config: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PII_TEST_SALT_UNSET", raising=False)
    with pytest.raises(CheckConfigError) as info:
        build(config)
    assert message in str(info.value)


def test_registry_reports_config_errors_too() -> None:
    with pytest.raises(CheckConfigError, match="redaction: must be one of"):
        build_check("presidio", {"redaction": "scramble"})


def test_recognizer_file_that_is_not_a_list(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("entity: EMP_ID\n")
    with pytest.raises(CheckConfigError, match="custom_recognizers_file: .* must hold a list"):
        build({"custom_recognizers_file": "bad.yaml"}, base_dir=str(tmp_path))


def test_salt_literal_never_appears_in_repr() -> None:
    check = build({"redaction": "hash", "hash_salt": "very-secret-salt"})
    assert "very-secret-salt" not in repr(check.config)
