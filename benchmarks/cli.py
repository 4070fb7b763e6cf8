"""``sidecar bench`` / ``python -m benchmarks``: run every benchmark, print one table.

Each ``benchmarks/*_bench.py`` module runs in its own process (``python -m benchmarks.X``,
with ``--quick`` when asked and the module accepts it), writes
``benchmarks/results/<name>.json``, and its output goes to ``results/<name>.log``. The rows of
the table come from each result's ``summary`` list (see ``benchmarks.report.SummaryRow``):
every figure printed beside the baseline or peer it was measured against in the same run.
The table always covers the latest result of every module (``--only`` reruns some of them;
each run's time is kept in ``runs``) and is written to ``benchmarks/results/summary.json``;
``--write-docs`` also renders ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.report import RESULTS_DIR, machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS = ROOT / "docs" / "benchmarks.md"
#: the order of the table; modules not listed run afterwards, alphabetically
ORDER = (
    "proxy",
    "miss",
    "hook",
    "embedding",
    "guardrails",
    "secrets",
    "pii",
    "peers",
    "semcache",
    "pair_model",
    "backends",
)
#: quick arguments for modules without ``--quick``
QUICK_FALLBACK = {"pii": ["--rounds", "1"], "pair_model": ["--repeats", "50"]}
TIMEOUT_S = 1800.0


def discover() -> list[str]:
    names = sorted(p.stem.removesuffix("_bench") for p in HERE.glob("*_bench.py"))
    ranked = [n for n in ORDER if n in names]
    return ranked + [n for n in names if n not in ranked]


def module_args(name: str, quick: bool) -> list[str]:
    if not quick:
        return []
    source = (HERE / f"{name}_bench.py").read_text(encoding="utf-8")
    if '"--quick"' in source:
        return ["--quick"]
    return QUICK_FALLBACK.get(name, [])


def run_module(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log = RESULTS_DIR / f"{name}.log"
    command = [sys.executable, "-m", f"benchmarks.{name}_bench", *module_args(name, quick)]
    started = time.time()
    print(f"[bench] {name}: {' '.join(command[1:])}", flush=True)
    with log.open("wb") as out:
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            code: int | str = done.returncode
        except subprocess.TimeoutExpired:  # subprocess.run kills the child on timeout
            code = f"timed out after {timeout:g} s"
    seconds = round(time.time() - started, 1)
    result = RESULTS_DIR / f"{name}.json"
    fresh = result.is_file() and result.stat().st_mtime >= started
    print(f"[bench] {name}: exit {code} in {seconds} s", flush=True)
    return {"exit": code, "seconds": seconds, "fresh_result": fresh, "log": str(log)}


# ---------------------------------------------------------------------------- rows
def _row(
    group: str,
    metric: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    label: str = "",
    target: str = "",
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    return {
        "group": group,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_label": label,
        "target": target,
        "met": met,
        "note": note,
    }


def _pii_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``pii_bench`` writes no summary list: its 1 KB latency against stock Presidio."""
    engines = data.get("latency_1kb", {}).get("engines", {})
    ours = engines.get("ours, default pattern set")
    stock = engines.get("stock no_op, all recognizers")
    rows = []
    if ours and stock:
        rows.append(
            _row(
                "guardrails per 1 KB prompt",
                "PII check p50 (CPU, pinned core)",
                ours["cpu_p50_ms"],
                "ms",
                stock["cpu_p50_ms"],
                "stock Presidio (no_op NLP, all recognizers)",
                note=f"wall p50 {ours['wall_p50_ms']} vs {stock['wall_p50_ms']} ms",
            )
        )
    accuracy = data.get("accuracy", {})
    for name, acc in accuracy.items():
        if name.startswith("ours"):
            rows.append(
                _row(
                    "guardrails per 1 KB prompt",
                    f"PII recall ({name})",
                    100 * acc["recall"],
                    "%",
                    note=f"precision {100 * acc['precision']:.1f}%",
                )
            )
            break
    return rows


ADAPTERS = {"pii": _pii_rows}


def rows_for(name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    summary = data.get("summary")
    if isinstance(summary, list) and summary:
        return [r for r in summary if isinstance(r, dict) and "metric" in r]
    if name in ADAPTERS:
        return ADAPTERS[name](data)
    if data.get("skipped"):
        return [_row(name, "skipped", math.nan, "", note=str(data["skipped"]))]
    return [_row(name, "no summary rows", math.nan, "", note=f"see benchmarks/results/{name}.json")]


def grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one group together, groups in order of first appearance."""
    order: dict[str, int] = {}
    for row in rows:
        order.setdefault(row["group"], len(order))
    return sorted(rows, key=lambda r: order[r["group"]])  # sorted() is stable


def collect(names: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in names:
        path = RESULTS_DIR / f"{name}.json"
        if not path.is_file():
            continue
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            rows.append(_row(name, "unreadable result", math.nan, "", note=str(exc)))
            continue
        for row in rows_for(name, data):
            rows.append({**row, "source": name})
    return rows


# ---------------------------------------------------------------------------- rendering
def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _ratio(row: dict[str, Any]) -> str:
    value, base = row.get("value"), row.get("baseline")
    if not row.get("show_ratio", True):
        return ""
    if not isinstance(value, int | float) or not isinstance(base, int | float) or not base:
        return ""
    if math.isnan(value) or math.isnan(base):
        return ""
    return f"{value / base:.2f}x"


def _met(row: dict[str, Any]) -> str:
    met = row.get("met")
    return "" if met is None else ("yes" if met else "NO")


def render_text(rows: list[dict[str, Any]]) -> str:
    lines = []
    group = None
    header = (
        f"  {'measured':58} {'value':>10} {'unit':6} {'beside':>10}  {'ratio':>7}  "
        f"{'target':24} {'met':4} baseline / peer"
    )
    for row in rows:
        if row["group"] != group:
            group = row["group"]
            lines += ["", f"== {group}", header]
        lines.append(
            f"  {row['metric'][:58]:58} {_num(row['value']):>10} {row['unit'][:6]:6} "
            f"{_num(row.get('baseline')):>10}  {_ratio(row):>7}  {row.get('target', '')[:24]:24} "
            f"{_met(row):4} {row.get('baseline_label', '')}"
            + (f"  ({row['note']})" if row.get("note") else "")
        )
    return "\n".join(lines)


def render_markdown(rows: list[dict[str, Any]]) -> str:
    out = []
    group = None
    for row in rows:
        if row["group"] != group:
            group = row["group"]
            out += [
                "",
                f"### {group}",
                "",
                "| measured | value | beside (baseline / peer) | ratio | target | met | note |",
                "|---|---|---|---|---|---|---|",
            ]
        beside = (
            f"{_num(row.get('baseline'))} {row['unit']} {row.get('baseline_label', '')}"
            if row.get("baseline") is not None
            else ""
        )
        out.append(
            f"| {row['metric']} | {_num(row['value'])} {row['unit']} | {beside.strip()} | "
            f"{_ratio(row)} | {row.get('target', '')} | {_met(row)} | {row.get('note', '')} |"
        )
    return "\n".join(out)


def write_docs(summary: dict[str, Any]) -> Path:
    m = summary["machine"]
    cpu = m.get("Model name", "unknown CPU")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `sidecar bench --write-docs` (or `python -m benchmarks --write-docs`) on "
        f"{summary['generated_at']}{' (quick mode)' if summary['quick'] else ''}. "
        "Every figure stands beside the baseline or peer it was measured against **in the same "
        "run**; on a shared machine absolute times drift between runs, ratios much less. "
        "Raw results: `benchmarks/results/*.json`.",
        "",
        "## Machine",
        "",
        f"- CPU: {cpu}, {m.get('CPU(s)', m.get('cpus'))} CPUs "
        f"({m.get('Thread(s) per core', '?')} thread(s) per core), "
        f"hypervisor {m.get('Hypervisor vendor', 'none')}",
        f"- Python {m.get('python')}, {m.get('platform')}",
        f"- load average (1 min) when the run started: {m.get('load_average_1m')} "
        "(other jobs shared the machine)",
        "",
        "## Results",
        render_markdown(summary["rows"]),
        "",
    ]
    notes = HERE / "data" / "benchmarks_notes.md"
    if notes.is_file():
        lines += [notes.read_text(encoding="utf-8")]
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text("\n".join(lines), encoding="utf-8")
    return DOCS


# ---------------------------------------------------------------------------- commands
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    bench: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="run the benchmarks and print the comparison table"
    )
    _add_arguments(bench)
    bench.set_defaults(func=run)
    return bench


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark (repeatable), e.g. embedding, proxy",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="do not run anything; rebuild the table from the last results",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="also write docs/benchmarks.md from the table"
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="seconds allowed per benchmark module"
    )


def run(args: argparse.Namespace) -> int:
    available = discover()
    selected = available
    if args.only:
        wanted = [n.removesuffix("_bench") for n in args.only]
        unknown = [n for n in wanted if n not in available]
        if unknown:
            print(
                f"unknown benchmark(s): {', '.join(unknown)} (available: {', '.join(available)})",
                file=sys.stderr,
            )
            return 2
        selected = wanted
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    host = machine()
    quick = bool(args.quick)
    runs: dict[str, Any] = {}
    previous = RESULTS_DIR / "summary.json"
    last = orjson.loads(previous.read_bytes()) if previous.is_file() else {}
    if args.report_only and not last and not any(RESULTS_DIR.glob("*.json")):
        print(
            f"no results yet in {RESULTS_DIR}; run `sidecar bench` (or `sidecar bench --quick`)",
            file=sys.stderr,
        )
        return 1
    if args.report_only and last:
        # The table describes the run that produced the results, not this rebuild.
        started, host, quick = last["generated_at"], last["machine"], last["quick"]
    # The table covers every module's latest result; --only reruns some of them.
    runs = {k: v for k, v in last.get("runs", {}).items() if k in available}
    if not args.report_only:
        for name in selected:
            runs[name] = {**run_module(name, args.quick, args.timeout), "at": started}
    rows = collect(available)
    for name, info in runs.items():
        if info["exit"] != 0 or not info["fresh_result"]:
            rows.append(
                {
                    **_row(
                        name,
                        "benchmark failed",
                        math.nan,
                        "",
                        note=f"exit {info['exit']}; log {info['log']}",
                    ),
                    "source": name,
                }
            )
    rows = grouped(rows)
    summary = {
        "generated_at": started,
        "quick": quick,
        "machine": host,
        "runs": runs,
        "rows": rows,
    }
    path = RESULTS_DIR / "summary.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(render_text(rows))
    print(f"\nwrote {path}")
    if args.write_docs:
        print(f"wrote {write_docs(summary)}")
    failed = [n for n in selected if n in runs and runs[n]["exit"] != 0]
    return 1 if failed and not args.report_only else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    _add_arguments(parser)
    return run(parser.parse_args(argv))
