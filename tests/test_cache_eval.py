"""``sidecar cache eval`` and ``sidecar cache calibrate`` on a subset of the project's trap set,
through the real command line, the real model and the production cache path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.cache.eval_cli import THRESHOLD_GRID, eval_config
from sidecar.cli import main
from sidecar.config import SidecarConfig

TRAP_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "trap_pairs.jsonl"
PER_CATEGORY = 6


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first few pairs of every category of the trap set."""
    taken: dict[str, int] = {}
    lines = []
    for line in TRAP_FILE.read_text().splitlines():
        row = json.loads(line)
        if taken.get(row["category"], 0) < PER_CATEGORY:
            taken[row["category"]] = taken.get(row["category"], 0) + 1
            lines.append(line)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(tmp_path: Path, name: str, cache: str) -> Path:
    path = tmp_path / name
    path.write_text(f"cache:\n{cache}")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if captured.out.strip() else None
    return code, out, captured.err


def test_eval_reports_rates_and_the_verifier_lowers_wrong_hits(
    pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traps = write_config(tmp_path, "traps.yaml", "  threshold: 0.8\n  verifier: traps\n")
    off = write_config(tmp_path, "off.yaml", "  threshold: 0.8\n  verifier: off\n")
    code, with_verifier, _ = run_cli(
        capsys, "cache", "eval", "--pairs", str(pairs_file), "--config", str(traps)
    )
    assert code == 0
    code, without, _ = run_cli(
        capsys, "cache", "eval", "--pairs", str(pairs_file), "--config", str(off)
    )
    assert code == 0
    for result in (with_verifier, without):
        assert {"pairs", "good_hit_rate", "wrong_hit_rate", "precision", "threshold"} <= set(result)
        assert result["pairs"] == 9 * PER_CATEGORY
        assert result["threshold"] == 0.8
        assert set(result["categories"]) == {
            "negation",
            "antonym",
            "number",
            "datetime",
            "unit",
            "entity",
            "scope",
            "paraphrase",
            "near_repeat",
        }
        for rates in result["categories"].values():
            assert 0.0 <= rates["hit_rate"] <= 1.0
    # The production path ran the verifier: candidates were refused only when it was on.
    assert with_verifier["refused_by_verifier"] > 0
    assert without["refused_by_verifier"] == 0
    assert with_verifier["wrong_hit_rate"] < without["wrong_hit_rate"]
    assert with_verifier["wrong_hit_rate"] <= 0.05
    assert with_verifier["precision"] > without["precision"]
    # Identical texts are exact hits whatever the verifier says.
    assert with_verifier["categories"]["near_repeat"]["good_hit_rate"] >= 0.8


def test_calibrate_meets_the_target_and_validates_it(
    pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = run_cli(
        capsys,
        "cache",
        "calibrate",
        "--json",
        "--pairs",
        str(pairs_file),
        "--target-wrong-rate",
        "0.02",
    )
    assert code == 0
    assert result["met"] is True
    point = result["operating_point"]
    assert point["threshold"] in THRESHOLD_GRID
    assert point["wrong_hit_rate"] <= 0.02
    assert result["validated"]["wrong_hit_rate"] <= 0.02
    assert result["validated"]["threshold"] == point["threshold"]
    assert result["config"]["cache"]["threshold"] == point["threshold"]
    settings = {(a["verifier"], a["verifier_strictness"]) for a in result["alternatives"]}
    assert ("traps", "balanced") in settings
    # The match head's minimum is swept too, and the chosen one is part of the advice.
    head_mins = {a["match_head_min"] for a in result["alternatives"] if a["verifier"] == "traps"}
    assert len(head_mins) >= 2 and None not in head_mins
    assert result["config"]["cache"]["match_head_min"] == point["match_head_min"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": "x", "b": "y", "same": true}\nnot json\n', "pairs.jsonl:2: not valid JSON"),
        ('{"a": "x", "b": "y"}\n', "pairs.jsonl:1: 'same' must be true or false"),
        ('{"a": "", "b": "y", "same": false}\n', "pairs.jsonl:1: 'a' must be a non-empty"),
        ('["a", "b"]\n', "pairs.jsonl:1: expected an object"),
        ("\n", "no pairs"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_bad_pairs_files_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str, command: str
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    extra = ["--target-wrong-rate", "0.02"] if command == "calibrate" else []
    code, out, err = run_cli(capsys, "cache", command, "--pairs", str(path), *extra)
    assert code == 2 and out is None
    assert message in err


def test_missing_file_and_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "cache", "eval", "--pairs", str(tmp_path / "absent.jsonl"))
    assert code == 2 and "cannot read" in err
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": "x", "b": "y", "same": true}\n')
    code, _, err = run_cli(
        capsys, "cache", "calibrate", "--pairs", str(path), "--target-wrong-rate", "1.5"
    )
    assert code == 2 and "--target-wrong-rate" in err


def test_wilson_interval_and_pairs_needed() -> None:
    from sidecar.cache.calibrate_report import pairs_needed, sample_support, wilson_interval

    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(0, 2)  # type: ignore[misc]
    assert low == 0.0 and abs(high - 0.6577) < 1e-3
    low, high = wilson_interval(5, 100)  # type: ignore[misc]
    assert abs(low - 0.0215) < 1e-3 and abs(high - 0.1118) < 1e-3
    assert pairs_needed(0.05) == 73
    validated = {"pairs": 200, "good_hits": 80, "wrong_hits": 0}
    assert sample_support(validated, 100, 0.05)["supported"] is True  # 0 of 100: <= 3.7%
    assert "warning" in sample_support(validated, 150, 0.05)  # 0 of 50: up to 7.1%


def test_the_evaluation_sidecar_never_sheds_lookups() -> None:
    # A lookup skipped because a busy machine delayed the event loop is a miss that says
    # nothing about quality: under load it halved the development set's good hits.
    config = SidecarConfig()
    assert config.server.shed_loop_lag_ms > 0 and config.server.shed_store_lag_ms > 0
    evaluated = eval_config(config)
    assert evaluated.server.shed_loop_lag_ms == 0 and evaluated.server.shed_store_lag_ms == 0
    assert evaluated.cache.data_dir == ":memory:"
    assert config.server.shed_loop_lag_ms > 0  # the caller's configuration is left alone
