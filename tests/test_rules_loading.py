"""Rule files: loading, and every validation error reported at once with file/rule/position."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from guardrails.base import CheckConfigError, CheckContext, Stage, TextPiece
from guardrails.cli import check_rules
from guardrails.regex_check import build as build_regex
from guardrails.rules import (
    Action,
    ApplyTo,
    OnError,
    Redaction,
    RuleError,
    RuleFileError,
    load_rule_files,
    validate_rule_files,
)

GOOD = """\
profiles:
  injection:
    provider: regex
    config:
      patterns: [{name: ignore-previous, pattern: '(?i)ignore (all )?previous instructions'}]
  email:
    provider: regex
    config: {patterns: [{name: email, pattern: '[a-z]+@[a-z]+\\.com'}]}
    redaction: mask
rules:
  - id: block-injection
    when: 'request_type == "chat" && !("x-trusted" in headers)'
    apply_to: input
    profiles: [injection]
    action: block
    sampling_rate: 100
    timeout_ms: 500
    on_error: block
    priority: 10
  - id: redact-email
    description: emails never reach the provider
    apply_to: both
    profiles: [email, injection]
    action: redact
    on_error: allow
    priority: 5
    block_status: 451
  - id: disabled-rule
    enabled: false
    apply_to: output
    profiles: [email]
    action: detect_only
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def errors_for(tmp_path: Path, text: str, name: str = "rules.yaml") -> list[RuleError]:
    return validate_rule_files([write(tmp_path, name, text)])


def one_error(tmp_path: Path, text: str) -> RuleError:
    errors = errors_for(tmp_path, text)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


RULE_TAIL = """\
    apply_to: input
    profiles: [p]
    action: block
"""
PROFILE = """\
profiles:
  p: {provider: regex, config: {patterns: [{name: x, pattern: 'x+'}]}}
rules:
"""


def test_good_file_loads_with_defaults_and_priority_order(tmp_path: Path) -> None:
    ruleset = load_rule_files([write(tmp_path, "good.yaml", GOOD)])
    assert [r.id for r in ruleset.rules] == ["redact-email", "block-injection", "disabled-rule"]
    redact, block, off = ruleset.rules
    assert block.apply_to is ApplyTo.INPUT and block.action is Action.BLOCK
    assert block.timeout_ms == 500 and block.on_error is OnError.BLOCK
    assert block.variables == frozenset({"request_type", "headers"})
    assert redact.block_status == 451 and redact.on_error is OnError.ALLOW
    assert redact.profiles == ("email", "injection")
    assert off.enabled is False and off.timeout_ms == 1000 and off.sampling_rate == 100.0
    assert ruleset.profiles["email"].redaction is Redaction.MASK
    assert ruleset.profiles["injection"].redaction is Redaction.REPLACE
    # disabled rules are validated but never run
    assert [r.id for r in ruleset.rules_for(Stage.OUTPUT)] == ["redact-email"]
    assert [r.id for r in ruleset.rules_for(Stage.INPUT)] == ["redact-email", "block-injection"]


def test_no_files_means_no_rules() -> None:
    ruleset = load_rule_files([])
    assert ruleset.rules == () and not ruleset.rules_for(Stage.INPUT)


def test_all_errors_reported_at_once_with_positions(tmp_path: Path) -> None:
    text = """\
    profiles:
      p: {provider: regex, config: {patterns: [{name: x, pattern: '(a'}]}}
      q: {provider: regex, config: {patterns: [{name: y, pattern: 'y'}]}, colour: red}
    rules:
      - id: r1
        when: 'model + 1 == 2'
        apply_to: inptu
        profiles: [q, missing]
        action: blok
      - id: r1
        when: 'true &&'
        apply_to: input
        profiles: [q]
        action: block
    """
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(RuleFileError) as info:
        load_rule_files([path])
    errors = info.value.errors
    rendered = [str(e) for e in errors]
    expected = [
        (2, "profile 'p'", "invalid regular expression"),
        (3, "profile 'q'", "unknown key 'colour'"),
        (6, "rule 'r1'", "CEL type error"),
        (7, "rule 'r1'", "'inptu' is not one of input, output, both"),
        (8, "rule 'r1'", "unknown profile 'missing'"),
        (9, "rule 'r1'", "'blok' is not one of block, redact, detect_only"),
        (10, "rule 'r1'", "duplicate rule id"),
        (11, "rule 'r1'", "CEL syntax error"),
    ]
    assert len(errors) == len(expected), rendered
    for error, (line, subject, fragment) in zip(errors, expected, strict=True):
        assert error.file == path
        assert error.line == line, str(error)
        assert error.subject == subject, str(error)
        assert fragment in error.message, str(error)
    # str() of the exception lists every error with file:line:column
    message = str(info.value)
    assert message.startswith("8 error(s)")
    assert f"{path}:8:19: rule 'r1': unknown profile 'missing'" in message


def test_cli_check_rules_reports_and_exits_nonzero(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", PROFILE + "  - id: a\n    action: nope\n" + RULE_TAIL[:-19])
    good = write(tmp_path, "good.yaml", GOOD)
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

    assert check_rules([good], Out()) == 0  # type: ignore[arg-type]
    lines.clear()
    assert check_rules([good, bad], Out()) == 1  # type: ignore[arg-type]
    output = "".join(lines)
    assert f"{bad}:5:13: rule 'a': action: 'nope' is not one of" in output


@pytest.mark.parametrize(
    ("rule", "line", "column", "fragment"),
    [
        ("  - id: a\n    colour: red\n" + RULE_TAIL, 5, 5, "unknown key 'colour'"),
        (
            "  - id: a\n    apply_to: input\n    action: block\n",
            4,
            5,
            "missing required key 'profiles'",
        ),
        (
            "  - id: a\n    profiles: [p]\n    action: block\n",
            4,
            5,
            "missing required key 'apply_to'",
        ),
        (
            "  - id: a\n    apply_to: input\n    profiles: [p]\n",
            4,
            5,
            "missing required key 'action'",
        ),
        ("  - apply_to: input\n    profiles: [p]\n    action: block\n", 4, 5, "'id'"),
        ("  - id: 'bad id!'\n" + RULE_TAIL, 4, 9, "id: expected 1-128"),
        ("  - id: off\n" + RULE_TAIL, 4, 9, "got False"),  # YAML 1.1 reads `off` as false
        ("  - id: a\n    when: 'size(1) == 1'\n" + RULE_TAIL, 5, 11, "CEL type error"),
        ("  - id: a\n    when: 'model'\n" + RULE_TAIL, 5, 11, "must evaluate to a bool"),
        (
            "  - id: a\n    when: 'nosuch == 1'\n" + RULE_TAIL,
            5,
            11,
            "unknown CEL variable(s) nosuch",
        ),
        ("  - id: a\n    when: '(('\n" + RULE_TAIL, 5, 11, "CEL syntax error"),
        ("  - id: a\n    when: 42\n" + RULE_TAIL, 5, 11, "expected a CEL expression string"),
        ("  - id: a\n    sampling_rate: 101\n" + RULE_TAIL, 5, 20, "expected a number 0-100"),
        ("  - id: a\n    sampling_rate: yes\n" + RULE_TAIL, 5, 20, "expected a number 0-100"),
        ("  - id: a\n    timeout_ms: 0\n" + RULE_TAIL, 5, 17, "must be between 1 and"),
        ("  - id: a\n    timeout_ms: 1.5\n" + RULE_TAIL, 5, 17, "expected an integer"),
        ("  - id: a\n    priority: high\n" + RULE_TAIL, 5, 15, "expected an integer"),
        ("  - id: a\n    on_error: ignore\n" + RULE_TAIL, 5, 15, "not one of block, allow"),
        ("  - id: a\n    block_status: 200\n" + RULE_TAIL, 5, 19, "between 400 and 499"),
        ("  - id: a\n    enabled: maybe\n" + RULE_TAIL, 5, 14, "expected true or false"),
        ("  - id: a\n    description: [1]\n" + RULE_TAIL, 5, 18, "expected a string"),
        (
            "  - id: a\n    apply_to: input\n    profiles: []\n    action: block\n",
            6,
            15,
            "non-empty",
        ),
        (
            "  - id: a\n    apply_to: input\n    profiles: [p, p]\n    action: block\n",
            6,
            19,
            "twice",
        ),
        ("  - id: a\n    id: b\n" + RULE_TAIL, 5, 5, "duplicate key 'id'"),
        ("  - just a string\n", 4, 5, "a rule must be a mapping"),
    ],
)
def test_each_rule_error(tmp_path: Path, rule: str, line: int, column: int, fragment: str) -> None:
    error = one_error(tmp_path, PROFILE + rule)
    assert (error.line, error.column) == (line, column), str(error)
    assert fragment in error.message, str(error)
    assert error.file.endswith("rules.yaml")


@pytest.mark.parametrize(
    ("profiles", "line", "fragment"),
    [
        ("  p: {provider: nosuch}\n", 2, "unknown provider 'nosuch'"),
        ("  p: {config: {}}\n", 2, "missing required key 'provider'"),
        ("  p: {provider: regex, config: [1]}\n", 2, "config: expected a mapping"),
        ("  p: {provider: regex, config: {patterns: [{name: x, pattern: '[z'}]}}\n", 2, "[z"),
        ("  p: {provider: regex, config: {patterns: []}}\n", 2, "'patterns' must be a non-empty"),
        (
            "  p: {provider: regex, redaction: blur,\n"
            "      config: {patterns: [{name: x, pattern: x}]}}\n",
            2,
            "'blur' is not one of replace, mask, hash",
        ),
    ],
)
def test_each_profile_error(tmp_path: Path, profiles: str, line: int, fragment: str) -> None:
    error = one_error(tmp_path, "profiles:\n" + profiles + "rules: []\n")
    assert error.line == line and error.subject == "profile 'p'", str(error)
    assert fragment in error.message, str(error)


def test_file_level_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    [error] = validate_rule_files([missing])
    assert error.file == missing and error.line == 0 and "cannot read" in error.message
    error = one_error(tmp_path, "profiles: {}\nrules: [\n")
    assert error.message.startswith("YAML error") and error.line >= 2
    error = one_error(tmp_path, "profiles: {}\nrulez: []\n")
    assert (error.line, error.column) == (2, 1) and "unknown key 'rulez'" in error.message
    error = one_error(tmp_path, "- 1\n")
    assert "top level must be a mapping" in error.message
    error = one_error(tmp_path, "# only a comment\n")
    assert error.line == 0 and "rule file is empty" in error.message
    assert validate_rule_files([write(tmp_path, "none.yaml", "rules: []\n")]) == []


def test_profiles_and_rule_ids_span_files(tmp_path: Path) -> None:
    profiles = write(tmp_path, "profiles.yaml", PROFILE.replace("rules:\n", ""))
    rules = write(tmp_path, "rules.yaml", "rules:\n  - id: a\n" + RULE_TAIL)
    ruleset = load_rule_files([profiles, rules])
    assert [r.id for r in ruleset.rules] == ["a"] and ruleset.rules[0].file == rules
    dup = write(tmp_path, "dup.yaml", PROFILE + "  - id: a\n" + RULE_TAIL)
    errors = validate_rule_files([profiles, rules, dup])
    assert [(e.file, e.line, e.subject) for e in errors] == [
        (dup, 2, "profile 'p'"),
        (dup, 4, "rule 'a'"),
    ]
    assert "already defined in" in errors[0].message and profiles in errors[0].message
    assert "duplicate rule id" in errors[1].message


def test_regex_check_builds_scans_and_bounds_spans() -> None:
    check = build_regex(
        {
            "patterns": [
                {"name": "word", "pattern": "secret", "flags": "i"},
                {"name": "code", "pattern": "[A-Z]{3}-[0-9]{2,4}"},
            ]
        }
    )
    assert check.max_span() == 8  # exact: the longest possible match of both patterns
    ctx = CheckContext(Stage.INPUT, "r", "chat")
    text = "un SECRET: ABC-123 é secret"
    result = asyncio.run(check.scan([TextPiece(4, text)], ctx))
    found = [(f.type, f.piece, text[f.start : f.end]) for f in result.findings]
    assert found == [
        ("regex:word", 4, "SECRET"),
        ("regex:word", 4, "secret"),
        ("regex:code", 4, "ABC-123"),
    ]
    unbounded = {"patterns": [{"name": "n", "pattern": "[0-9]+"}]}
    assert build_regex(unbounded).max_span() == 512
    assert build_regex({**unbounded, "max_match_chars": 64}).max_span() == 64
    assert build_regex({**unbounded, "max_match_chars": None}).max_span() is None
    for bad, fragment in [
        ({"patterns": [{"name": "n", "pattern": "(?<=a)b"}]}, "pattern 'n': invalid"),
        ({"patterns": [{"name": "n", "pattern": "a", "flags": "x"}]}, "'flags'"),
        ({"patterns": [{"name": "n", "pattern": "a"}, {"name": "n", "pattern": "b"}]}, "duplicate"),
        ({"patterns": [{"pattern": "a"}]}, "'name'"),
        ({"patterns": [{"name": "n", "pattern": "a", "kind": 1}]}, "unknown key"),
        ({"patterns": [{"name": "n", "pattern": "a"}], "max_match_chars": 0}, "max_match_chars"),
        ({"pattern": "a"}, "unknown key"),
    ]:
        with pytest.raises(CheckConfigError, match=fragment):
            build_regex(bad)
