"""The adaptive simulation's table rows and plots, from ``benchmarks/results/adaptive.json``.

Run on a result file: ``python -m benchmarks.adaptive_report [RESULT] [--plot-dir DIR]``
rebuilds the plots (matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.report import RESULTS_DIR, SummaryRow

GROUP = "adaptive cache (simulation)"
#: what each line of a plot shows, in drawing order
PLOTTED = ("defaults", "target-0.05", "target-0.02", "target-0.01")


def _share(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def summary_rows(data: dict[str, Any]) -> list[SummaryRow]:
    lanes = data["lanes"]
    settings = data["settings"]
    span = (
        f"requests {settings['warmup']:,}-{settings['warmup'] + settings['evaluated_requests']:,}"
    )
    checks = data["checks"]
    rows: list[SummaryRow] = []
    base_lane = lanes.get("defaults") or lanes.get("main-defaults")
    base = base_lane["after_warmup"] if base_lane else {"wrong_hit_rate": None, "hit_rate": None}
    for name in [n for n in lanes if n.startswith("target-")]:
        f = lanes[name]["after_warmup"]
        target = float(name.removeprefix("target-"))
        rows.append(
            SummaryRow(
                GROUP,
                f"wrong-hit rate, target {target:g} ({span})",
                _share(f["wrong_hit_rate"]),
                "share",
                _share(base["wrong_hit_rate"]),
                "static defaults, same stream",
                target=f"<= {target:g}",
                met=(f["wrong_hit_rate"] or 0.0) <= target,
                note=f"{f['wrong_semantic_hits']} wrong of {f['semantic_hits']} semantic hits; "
                f"hit rate {f['hit_rate']} (defaults {base['hit_rate']})",
            )
        )
    hit = checks.get("hit_rate_vs_best_static")
    if hit:
        rows.append(
            SummaryRow(
                GROUP,
                "hit rate, target 0.02, beside the best static threshold in hindsight",
                _share(hit["measured"]),
                "share",
                _share(hit["best_static"]),
                _static_label(hit["best_static_threshold"]),
                target=">= 0.9x",
                met=hit["met"],
            )
        )
    elif "best_static_in_hindsight" in checks:
        rows.append(
            SummaryRow(
                GROUP,
                "hit rate, target 0.02, beside the best static threshold in hindsight",
                _share(lanes.get("target-0.02", {}).get("after_warmup", {}).get("hit_rate")),
                "share",
                note="no static threshold of the sweep reached a wrong-hit rate <= 0.02",
            )
        )
    for name, share in checks.get("explore_share", {}).items():
        rows.append(
            SummaryRow(
                GROUP,
                f"explored share of would-be semantic hits, {name}",
                _share(share["measured"]),
                "share",
                share["configured"],
                "cache.explore_rate",
                target="<= explore_rate",
                met=share["met"],
                note=f"{share['explored']} of {share['would_be_semantic_hits']} (extra upstream "
                "calls)",
                show_ratio=False,
            )
        )
    same = checks.get("unset_target_same_as_baseline")
    if same:
        rows.append(
            SummaryRow(
                GROUP,
                "unset target: requests decided differently from main's defaults",
                same["different"],
                "requests",
                target="0",
                met=same["met"],
                note=f"of {same['compared']:,} (status and answer served, request by request)",
            )
        )
    if not data.get("adaptive_available"):
        rows.append(
            SummaryRow(
                GROUP,
                "adaptive lanes",
                float("nan"),
                "",
                note="not run: this checkout has no cache.target_wrong_rate yet",
            )
        )
    return rows


def _static_label(threshold: float) -> str:
    if threshold >= 1.0:
        return "semantic layer off: exact hits only (computed from the stream)"
    return f"static threshold {threshold:.2f} (wrong-hit rate <= 0.02)"


def plot(data: dict[str, Any], directory: Path) -> list[str] | str:
    """Wrong-hit rate and hit rate per window, cumulative exploration calls, per lane."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install -e .[bench])"
    lanes = data["lanes"]
    settings = data["settings"]
    directory.mkdir(parents=True, exist_ok=True)
    shown = [n for n in PLOTTED if n in lanes]
    best = data["checks"].get("best_static_in_hindsight")
    if best is not None:
        name = "defaults" if best["threshold"] == 0.7 else f"static-{best['threshold']:.2f}"
        # the computed exact-only point has no lane to draw over time
        if name in lanes and name not in shown:
            shown.append(name)
    # one colour per lane in both plots
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys([*shown, *lanes]))}
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    for name in shown:
        w = lanes[name]["windows"]
        ends = [x["end"] for x in w]
        style = "--" if name.startswith("static") else "-"
        label = f"{name} (best static in hindsight)" if name.startswith("static") else name
        # a window without semantic hits served none wrong
        wrong = [0.0 if not x["semantic_hits"] else _share(x["wrong_hit_rate"]) for x in w]
        colour = colours[name]
        axes[0].plot(ends, wrong, style, marker=".", label=label, color=colour)
        axes[1].plot(ends, [_share(x["hit_rate"]) for x in w], style, label=label, color=colour)
        axes[2].plot(ends, [x["running_explored"] for x in w], style, label=label, color=colour)
    for target in settings.get("targets", []):
        axes[0].axhline(target, color="grey", linewidth=0.6, linestyle=":")
    for ax in axes:
        ax.axvline(settings["warmup"], color="black", linewidth=0.6, linestyle=":")
        ax.grid(alpha=0.3)
    exact = data.get("exact_only")
    if exact and exact.get("hit_rate") is not None:
        axes[1].axhline(exact["hit_rate"], color="grey", linewidth=0.8, linestyle="--")
        axes[1].annotate(
            "exact hits only (after the warm-up)",
            (settings["warmup"], exact["hit_rate"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axes[0].set_ylabel("wrong-hit rate per window\n(wrong / served semantic hits)")
    axes[1].set_ylabel(f"hit rate per {settings['window']:,} requests")
    axes[2].set_ylabel("extra upstream calls\n(explored, cumulative)")
    axes[2].set_xlabel("requests (dotted: end of the warm-up)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Adaptive semantic cache on a simulated Quora stream", fontsize=11)
    fig.tight_layout()
    path = directory / "adaptive_over_time.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    sweep = data["checks"].get("hindsight_sweep", {})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # no semantic hit served: no wrong one either (the exact-only limit of the sweep)
    xs = [0.0 if not f["semantic_hits"] else _share(f["wrong_hit_rate"]) for f in sweep.values()]
    ys = [_share(f["hit_rate"]) for f in sweep.values()]
    ax.plot(xs, ys, "o-", color="grey", label="static thresholds (hindsight sweep)")
    for t, x, y in zip(sweep, xs, ys, strict=True):
        text = "1.00 (exact only)" if t == "1.00" else t
        ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for name in [n for n in lanes if n.startswith("target-")]:
        f = lanes[name]["after_warmup"]
        x = 0.0 if not f["semantic_hits"] else _share(f["wrong_hit_rate"])
        ax.plot(x, _share(f["hit_rate"]), "*", markersize=12, label=name, color=colours[name])
    ax.set_xlabel("wrong-hit rate after the warm-up")
    ax.set_ylabel("hit rate after the warm-up")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    trade = directory / "adaptive_tradeoff.png"
    fig.savefig(trade, dpi=90)
    plt.close(fig)
    return [str(path), str(trade)]


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def markdown(data: dict[str, Any]) -> str:
    """The results section of docs/adaptive_benchmark.md, from a result file."""
    settings = data["settings"]
    first, n = settings["warmup"], settings["evaluated_requests"]
    variant = "Clean" if data.get("stream_variant") == "clean" else "QQP"
    if data.get("trap_share") is not None:
        variant += f" (trap share {data['trap_share']:g})"
    lines = [
        f"{variant} stream of "
        f"{data['stream']['requests']:,} requests (digest "
        f"`{data['stream']['digest'][:12]}`), figures over requests {first:,} to {first + n:,} "
        f"({n:,} after the warm-up). Machine: {data['machine'].get('cpus')} cores shared with "
        f"other jobs, load average {data['machine'].get('load_average_1m')} when the analysis "
        "ran (decisions do not depend on load).",
        "",
        "| lane | hit rate | semantic hits | wrong | wrong-hit rate | explored (share) | "
        "reported | requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, lane in data["lanes"].items():
        f = lane["after_warmup"]
        lines.append(
            f"| {name} | {_pct(f['hit_rate'])} | {f['semantic_hits']} | "
            f"{f['wrong_semantic_hits']} | {_pct(f['wrong_hit_rate'])} | {f['explored']} "
            f"({_pct(f['explore_share'])}) | {f['reported']} | {f['requests']:,} |"
        )
    exact = data.get("exact_only")
    if exact:
        lines.append(
            f"| exact hits only (computed) | {_pct(exact['hit_rate'])} | 0 | 0 | - | 0 | 0 | "
            f"{exact['requests']:,} |"
        )
    checks = data["checks"]
    lines += ["", "Checks:", ""]
    wrong = checks.get("target_wrong_rate")
    if wrong:
        lines.append(
            f"- target 0.02, wrong-hit rate: {_pct(wrong['measured'])} "
            f"({'met' if wrong['met'] else 'NOT met'})"
        )
    hit = checks.get("hit_rate_vs_best_static")
    if hit:
        lines.append(
            f"- target 0.02, hit rate {_pct(hit['measured'])} beside the best static point in "
            f"hindsight ({_static_label(hit['best_static_threshold'])}) "
            f"{_pct(hit['best_static'])}: {hit['ratio']:.2f}x "
            f"({'met' if hit['met'] else 'NOT met'}, needs 0.90x)"
        )
    for name, share in checks.get("explore_share", {}).items():
        lines.append(
            f"- {name}, explored share of would-be semantic hits: {_pct(share['measured'], 2)} "
            f"({share['explored']} of {share['would_be_semantic_hits']}, "
            f"{share.get('over', 'after the warm-up')}), configured "
            f"{_pct(share['configured'])} ({'met' if share['met'] else 'NOT met'})"
            + (
                f"; after the warm-up {_pct(share['after_warmup'], 2)} "
                f"({share['after_warmup_explored']} of {share['after_warmup_would_be']})"
                if "after_warmup" in share
                else ""
            )
        )
    same = checks.get("unset_target_same_as_baseline")
    if same:
        lines.append(
            f"- unset target: {same['different']} of {same['compared']:,} requests decided "
            f"differently from main ({'met' if same['met'] else 'NOT met'})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plots of an adaptive simulation result")
    parser.add_argument("result", nargs="?", default=str(RESULTS_DIR / "adaptive.json"))
    parser.add_argument("--plot-dir", default=str(Path(__file__).resolve().parents[1] / "docs/img"))
    parser.add_argument("--markdown", action="store_true", help="print the results section")
    args = parser.parse_args(argv)
    data = orjson.loads(Path(args.result).read_bytes())
    if args.markdown:
        print(markdown(data))
        return 0
    print(plot(data, Path(args.plot_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
