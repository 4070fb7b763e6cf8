"""First use, as a new user meets it: each command run as a process (``python -m sidecar``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]


def sidecar(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_bench_report_only_without_results(tmp_path: Path) -> None:
    done = sidecar("bench", "--report-only", env={"SIDECAR_BENCH_RESULTS": str(tmp_path / "r")})
    assert done.returncode == 1
    assert "no results yet" in done.stderr and "run `sidecar bench`" in done.stderr
    assert "Traceback" not in done.stderr


def test_bench_report_only_rebuilds_the_table(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    row = {"group": "g", "metric": "a figure", "value": 2.0, "unit": "ms", "baseline": 4.0}
    (results / "hook.json").write_bytes(orjson.dumps({"summary": [row]}))
    done = sidecar("bench", "--report-only", env={"SIDECAR_BENCH_RESULTS": str(results)})
    assert done.returncode == 0, done.stderr
    assert "a figure" in done.stdout and "0.50x" in done.stdout
    assert (results / "summary.json").is_file()


def test_bench_data_defaults_next_to_the_checkout() -> None:
    code = "from benchmarks.report import SHARED_DATA; print(SHARED_DATA)"
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_BENCH_DATA"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert Path(done.stdout.strip()) == ROOT.parent / "shared" / "data"
    env["SIDECAR_BENCH_DATA"] = "/elsewhere/data"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "/elsewhere/data"
