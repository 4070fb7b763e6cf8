"""The ``secrets`` check (profile config, findings) and the ``secrets scan`` command."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from secrets_fakes import Fakes, j

from guardrails.base import Check, CheckConfigError, CheckContext, PieceKind, Stage, TextPiece
from guardrails.registry import build_check
from guardrails.secrets import cli
from guardrails.secrets.check import SCAN_LIMIT_TYPE, build

f = Fakes(11)
GHP = j("gh", "p_") + f.mixed(36)
PASSWORD = f.mixed(16)

TEAM_RULES = """
[[rules]]
id = "team-token"
regex = '''\\b(team_[a-z0-9]{20})\\b'''
keywords = ["team_"]
"""


def ctx(stage: Stage = Stage.INPUT) -> CheckContext:
    return CheckContext(stage=stage, request_id="r1", request_type="chat")


def team_token() -> str:
    return "team_" + f.chars("abcdefghijklmnopqrstuvwxyz0123456789", 20)


# --- the check ---------------------------------------------------------------------------------


async def test_builtin_check_reports_secret_spans_with_replacements() -> None:
    check = build({})
    assert isinstance(check, Check)
    assert check.provider == "secrets"
    pieces = [
        TextPiece(0, f"my token is {GHP}, thanks", role="user"),
        TextPiece(1, "nothing to see here", role="user"),
        TextPiece(2, f'{{"dsn": "postgres://app:{PASSWORD}@db/x"}}', kind=PieceKind.TOOL_ARGS),
    ]
    result = await check.scan(pieces, ctx())
    by_piece = {x.piece: x for x in result.findings}
    assert sorted(by_piece) == [0, 2]
    token = by_piece[0]
    assert (token.type, token.replacement) == ("secret:github-pat", "[SECRET:github-pat]")
    assert pieces[0].text[token.start : token.end] == GHP
    dsn = by_piece[2]
    assert dsn.type == "secret:db-connection-string"
    assert pieces[2].text[dsn.start : dsn.end] == PASSWORD  # only the password, not the URL
    assert result.rewritten == {} and result.restored == {}


async def test_output_stage_is_scanned_the_same_way() -> None:
    check = build({})
    result = await check.scan([TextPiece(0, f"Use {GHP}.", PieceKind.ANSWER)], ctx(Stage.OUTPUT))
    assert [x.type for x in result.findings] == ["secret:github-pat"]


async def test_overlapping_findings_are_merged_for_redaction() -> None:
    text = f"GITHUB_TOKEN={GHP}"  # generic-secret and github-pat cover the same token
    result = await build({}).scan([TextPiece(0, text)], ctx())
    assert [(x.type, text[x.start : x.end]) for x in result.findings] == [
        ("secret:github-pat", GHP)
    ]


async def test_gitleaks_config_replaces_or_extends_the_builtin_pack(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "gitleaks.toml").write_text(TEAM_RULES)
    text = f"{team_token()} and {GHP}"
    pieces = [TextPiece(0, text)]

    only_team = build({"gitleaks_config": "rules/gitleaks.toml"}, base_dir=str(tmp_path))
    both = build(
        {"gitleaks_config": "rules/gitleaks.toml", "extend_builtin": True},
        base_dir=str(tmp_path),
    )
    assert [x.type for x in (await only_team.scan(pieces, ctx())).findings] == ["secret:team-token"]
    assert [x.type for x in (await both.scan(pieces, ctx())).findings] == [
        "secret:team-token",
        "secret:github-pat",
    ]


async def test_scan_limit_becomes_a_whole_piece_finding() -> None:
    check = build({"max_matches": 100})
    text = " ".join(f"password={f.mixed(12)}" for _ in range(150))
    [limit] = [
        x
        for x in (await check.scan([TextPiece(3, text)], ctx())).findings
        if x.type == SCAN_LIMIT_TYPE
    ]
    assert (limit.piece, limit.start, limit.end, limit.has_span) == (3, -1, -1, False)


def test_max_span_and_registry() -> None:
    assert build({}).max_span() == 1024
    assert build({"max_span": 4096}).max_span() == 4096
    check = build_check("secrets", {"max_decode_depth": 0})
    assert check.provider == "secrets"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"gitleaks": "x.toml"}, "unknown config key 'gitleaks'"),
        ({"extend_builtin": "yes", "gitleaks_config": "x"}, "extend_builtin must be true or false"),
        ({"extend_builtin": True}, "extend_builtin needs config.gitleaks_config"),
        ({"gitleaks_config": ""}, "gitleaks_config must be a file path"),
        ({"gitleaks_config": "absent.toml"}, "not found"),
        ({"max_decode_depth": 99}, "max_decode_depth must be an integer from 0 to 10"),
        ({"max_span": "big"}, "max_span must be an integer"),
        ({"max_matches": True}, "max_matches must be an integer"),
    ],
)
def test_bad_profile_config(tmp_path: Path, config: dict[str, object], message: str) -> None:
    with pytest.raises(CheckConfigError, match=message):
        build(config, base_dir=str(tmp_path))


def test_bad_gitleaks_file_names_the_rule(tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text("[[rules]]\nid = 'broken'\nregex = '''(x'''\n")
    with pytest.raises(CheckConfigError, match="rule 'broken': invalid regex"):
        build({"gitleaks_config": "g.toml"}, base_dir=str(tmp_path))


def test_check_repr_shows_no_text() -> None:
    assert "SecretsCheck(rules=" in repr(build({}))


# --- the CLI ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sidecar")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse(argv)
    code: int = args.func(args)
    return code


def write_jsonl(tmp_path: Path, items: list[object]) -> Path:
    """Objects become JSON lines; strings are written as they are (for broken lines)."""
    path = tmp_path / "in.jsonl"
    lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
    path.write_text("\n".join(lines) + "\n")
    return path


def outputs(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_scans_jsonl_without_printing_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"token {GHP} end"
    path = write_jsonl(tmp_path, [{"text": text}, {"text": "clean", "id": 7}])
    assert run(["secrets", "scan", "--jsonl", str(path)]) == 0
    captured = capsys.readouterr()
    assert GHP not in captured.out + captured.err
    first, second = [json.loads(line) for line in captured.out.splitlines()]
    [finding] = first["findings"]
    assert finding["rule_id"] == "github-pat"
    assert text[finding["start"] : finding["end"]] == GHP
    assert set(finding) == {"rule_id", "start", "end", "entropy"}
    assert second == {"findings": []}


def test_cli_show_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path, [{"text": f"x {GHP}"}])
    assert run(["secrets", "scan", "--jsonl", str(path), "--show-secrets"]) == 0
    [result] = outputs(capsys)
    assert result["findings"][0]["secret"] == GHP  # type: ignore[index]


def test_cli_reads_stdin_and_uses_a_gitleaks_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gitleaks.toml"
    config.write_text(TEAM_RULES)
    token = team_token()
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"text": f"{token} {GHP}"}) + "\n"))
    assert run(["secrets", "scan", "--config", str(config), "--jsonl", "-"]) == 0
    [result] = outputs(capsys)
    assert [x["rule_id"] for x in result["findings"]] == ["team-token"]  # type: ignore[union-attr]


def test_cli_reports_bad_lines_and_bad_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path, ["not json", {"txt": "wrong key"}, {"text": "ok"}])
    assert run(["secrets", "scan", "--jsonl", str(path)]) == 1
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert "line 1: not valid JSON" in results[0]["error"]
    assert 'line 2: expected a JSON object with a string "text"' in results[1]["error"]
    assert results[2] == {"findings": []}
    assert "line 1" in captured.err

    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]]\nid = 'x'\n")
    assert run(["secrets", "scan", "--config", str(bad), "--jsonl", str(path)]) == 2
    assert "needs a 'regex' or a 'path'" in capsys.readouterr().err
    assert run(["secrets", "scan", "--jsonl", str(tmp_path / "absent.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
