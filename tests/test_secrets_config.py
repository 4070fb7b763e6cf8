"""Loading Gitleaks TOML configs: merging rules, and clear errors for broken files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from guardrails.base import CheckConfigError
from guardrails.secrets import (
    SecretScanner,
    SecretsConfigError,
    builtin_ruleset,
    load_gitleaks_config,
    parse_gitleaks_toml,
)

RULE = """
[[rules]]
id = "demo"
regex = '''demo_[a-z0-9]{8}'''
keywords = ["demo_"]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, "gitleaks.toml", text)
    with pytest.raises(SecretsConfigError) as info:
        SecretScanner(load_gitleaks_config(path))
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[rules]\nid = 'x'", "not valid TOML"),
        ("[[rules]]\nregex = 'a'\n", "rule #1 has no 'id'"),
        ("[[rules]]\nid = 'nothing'\n", "rule 'nothing' needs a 'regex' or a 'path'"),
        ("[[rules]]\nid = 'bad'\nregex = '''a(b'''\n", "rule 'bad': invalid regex"),
        (
            "[[rules]]\nid = 'grp'\nregex = '''(a)b'''\nsecretGroup = 2\n",
            "rule 'grp': secretGroup 2 but the regex has only 1 group(s)",
        ),
        (
            "[[rules]]\nid = 'e'\nregex = 'a'\nentropy = 'high'\n",
            "rule 'e': field 'entropy' must be a non-negative number",
        ),
        (
            "[[rules]]\nid = 'k'\nregex = 'a'\nkeywords = 'a'\n",
            "rule 'k': field 'keywords' must be a list of strings",
        ),
        (RULE + RULE, "rule id 'demo' is defined twice"),
        (
            RULE + "[[rules.allowlists]]\nregexTarget = 'word'\nregexes = ['x']\n",
            "field 'regexTarget' must be",
        ),
        (
            RULE + "[[rules.allowlists]]\ncondition = 'XOR'\nregexes = ['x']\n",
            "field 'condition' must be",
        ),
        (RULE + "[[rules.allowlists]]\ndescription = 'empty'\n", "an allowlist needs at least"),
        (
            RULE + "[[rules.allowlists]]\nregexes = ['ok', '(unclosed']\n",
            "rule 'demo' allowlist #1 regex #2: invalid regex",
        ),
        (
            "[allowlist]\nregexes = ['a']\n[[allowlists]]\nregexes = ['b']\n" + RULE,
            "use either the [allowlist] table or [[allowlists]]",
        ),
        (
            "[[allowlists]]\ntargetRules = ['nope']\nregexes = ['b']\n" + RULE,
            "global allowlist targets unknown rule 'nope'",
        ),
        (
            RULE + "[[rules.required]]\nid = 'missing'\n",
            "rule 'demo' requires unknown rule 'missing'",
        ),
        (
            "[extend]\nuseDefault = true\npath = 'x.toml'\n" + RULE,
            "[extend] sets both 'useDefault' and 'path'",
        ),
    ],
)
def test_invalid_configs_get_clear_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in load_error(tmp_path, text)


def test_errors_are_check_config_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckConfigError, match="not found"):
        load_gitleaks_config(tmp_path / "absent.toml")


def test_rule_fields_are_read(tmp_path: Path) -> None:
    text = """
title = "team rules"
[[rules]]
id = "r1"
description = "demo"
regex = '''(x)(y)'''
secretGroup = 2
entropy = 1.5
keywords = ["AbC"]
path = '''\\.env$'''
tags = ["t"]
[rules.allowlist]
regexTarget = "line"
condition = "and"
regexes = ["a"]
stopwords = ["MiXeD"]
"""
    ruleset = load_gitleaks_config(write(tmp_path, "g.toml", text))
    [rule] = ruleset.rules
    assert ruleset.title == "team rules"
    assert (rule.secret_group, rule.entropy, rule.keywords, rule.path) == (
        2,
        1.5,
        ("abc",),
        r"\.env$",
    )
    [allowlist] = rule.allowlists  # the legacy single-table form
    assert (allowlist.regex_target, allowlist.match_all, allowlist.stopwords) == (
        "line",
        True,
        ("mixed",),
    )


def test_extend_path_merges_rules(tmp_path: Path) -> None:
    write(
        tmp_path,
        "base.toml",
        """
[allowlist]
stopwords = ["basestop"]

[[rules]]
id = "shared"
regex = '''sh_[a-z]{6}'''
keywords = ["sh_"]
entropy = 1.0

[[rules]]
id = "dropped"
regex = '''dr_[a-z]{6}'''
""",
    )
    child = write(
        tmp_path,
        "child.toml",
        """
[extend]
path = "base.toml"
disabledRules = ["dropped"]

[[rules]]
id = "shared"
entropy = 2.0
keywords = ["extra"]
[[rules.allowlists]]
stopwords = ["child"]

[[rules]]
id = "own"
regex = '''own_[a-z]{6}'''
""",
    )
    ruleset = load_gitleaks_config(child)
    assert ruleset.rule_ids() == ["shared", "own"]
    shared = ruleset.rules[0]
    assert shared.regex == "sh_[a-z]{6}"  # kept from the base
    assert shared.entropy == 2.0  # overridden
    assert shared.keywords == ("sh_", "extra")  # appended
    assert len(shared.allowlists) == 1
    assert [a.stopwords for a in ruleset.allowlists] == [("basestop",)]
    s = SecretScanner(ruleset)
    assert [x.rule_id for x in s.scan("sh_qwerty own_abcdef dr_qwerty")] == ["shared", "own"]
    assert s.scan("sh_childx") == []


def test_extend_use_default_means_the_builtin_pack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "g.toml", "[extend]\nuseDefault = true\n" + RULE)
    with caplog.at_level(logging.WARNING):
        ruleset = load_gitleaks_config(path)
    assert "built-in rule pack" in caplog.text
    builtin_ids = {r.id for r in builtin_ruleset().rules}
    assert builtin_ids < set(ruleset.rule_ids())
    assert "demo" in ruleset.rule_ids()


def test_extend_chain_is_limited(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[extend]\npath = 'b.toml'\n")
    write(tmp_path, "b.toml", "[extend]\npath = 'c.toml'\n")
    write(tmp_path, "c.toml", "[extend]\npath = 'd.toml'\n")
    write(tmp_path, "d.toml", RULE)
    with pytest.raises(SecretsConfigError, match="deeper than 2"):
        load_gitleaks_config(tmp_path / "a.toml")


def test_extended_file_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "g.toml", "[extend]\npath = 'missing.toml'\n")
    with pytest.raises(SecretsConfigError, match="missing.toml"):
        load_gitleaks_config(path)


def test_git_only_fields_are_accepted(tmp_path: Path) -> None:
    text = RULE + "[[rules.allowlists]]\ncommits = ['abc123']\npaths = ['''vendor/''']\n"
    ruleset = load_gitleaks_config(write(tmp_path, "g.toml", text))
    s = SecretScanner(ruleset)
    assert [x.rule_id for x in s.scan("demo_abcdefgh")] == ["demo"]
    assert s.scan("demo_abcdefgh", path="vendor/lib.go") == []


def test_parse_from_string_and_builtin_pack_loads() -> None:
    assert parse_gitleaks_toml(RULE).rule_ids() == ["demo"]
    ids = builtin_ruleset().rule_ids()
    assert len(ids) == len(set(ids)) >= 40
    SecretScanner(builtin_ruleset())  # every built-in regex compiles under RE2
