"""What ``sidecar cache calibrate`` can claim from its sample, and its readable table.

A wrong-hit rate measured on a few dozen pairs says little: 0 wrong hits among 4
different-answer pairs is compatible with a true rate of 50%. Each rate gets a 95% Wilson score
interval (written here: a few lines of arithmetic, better behaved than the normal approximation
at rates near 0 and small samples), and the result says whether the interval's upper bound is
within the target, i.e. whether the sample supports the figure.
"""

from __future__ import annotations

import math
from typing import Any

#: two-sided 95%
Z95 = 1.959964


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes / trials``; None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def pairs_needed(target: float, z: float = Z95) -> int:
    """Different-answer pairs needed for the upper bound to reach ``target`` with no wrong hit
    (the Wilson upper bound at 0 successes is z²/(n+z²))."""
    if target <= 0:
        return 0  # no sample supports a zero rate; callers say so
    return math.ceil(z * z * (1 - target) / target)


def sample_support(validated: dict[str, Any], pairs_same: int, target: float) -> dict[str, Any]:
    """Intervals of the validated rates and whether the sample supports the target."""
    n_diff = int(validated["pairs"]) - pairs_same
    wrong = wilson_interval(int(validated["wrong_hits"]), n_diff)
    good = wilson_interval(int(validated["good_hits"]), pairs_same)
    supported = wrong is not None and wrong[1] <= target
    out: dict[str, Any] = {
        "different_answer_pairs": n_diff,
        "same_answer_pairs": pairs_same,
        "wrong_hit_rate_ci95": None if wrong is None else [round(wrong[0], 4), round(wrong[1], 4)],
        "good_hit_rate_ci95": None if good is None else [round(good[0], 4), round(good[1], 4)],
        "supported": supported,
    }
    if not supported and wrong is not None:
        need = pairs_needed(target)
        out["warning"] = (
            f"the sample is too small to support the figure: with {n_diff} different-answer "
            f"pairs the wrong-hit rate could be as high as {100 * wrong[1]:.1f}% (95% upper "
            f"bound), above the target {100 * target:g}%"
            + (
                f"; about {need} different-answer pairs (with no wrong hit) are needed"
                if need
                else "; no sample supports a target of 0"
            )
        )
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _interval(bounds: list[float] | None) -> str:
    return "" if bounds is None else f"[{_pct(bounds[0])}, {_pct(bounds[1])}]"


def render_table(result: dict[str, Any]) -> str:
    """The calibration result for a person (``--json`` prints the machine form)."""
    target = result["target_wrong_rate"]
    lines = [f"calibration on {result['pairs']} pairs, target wrong-hit rate {100 * target:g}%"]
    point = result.get("operating_point")
    if point is None:
        lines += ["", f"target NOT met: {result.get('reason', 'no operating point')}"]
        return "\n".join(lines)
    support = result.get("sample", {})
    validated = result["validated"]
    head = point["match_head_min"]
    lines += [
        "",
        f"chosen: threshold {point['threshold']}, verifier {point['verifier']}"
        + (f" ({point['verifier_strictness']})" if point["verifier"] == "traps" else "")
        + (f", match head min {head}" if head is not None else ""),
        "",
        f"  {'measured (production path)':28} {'value':>8}   95% interval",
        f"  {'good-hit rate':28} {_pct(validated['good_hit_rate']):>8}   "
        f"{_interval(support.get('good_hit_rate_ci95'))}",
        f"  {'wrong-hit rate':28} {_pct(validated['wrong_hit_rate']):>8}   "
        f"{_interval(support.get('wrong_hit_rate_ci95'))}",
        f"  {'precision':28} {_pct(validated['precision']):>8}",
        f"  {'pairs (same / different)':28} "
        f"{support.get('same_answer_pairs', '?')} / {support.get('different_answer_pairs', '?')}",
        "",
        "target met: "
        + ("yes" if result["met"] else "NO")
        + (" (supported by the sample)" if support.get("supported") else " (point estimate)"),
    ]
    if "warning" in support:
        lines.append(f"WARNING: {support['warning']}")
    lines += ["", "settings to use:", "  cache:"]
    lines += [f"    {k}: {v}" for k, v in result["config"]["cache"].items()]
    lines += [
        "",
        "per setting, the lowest threshold within the target (sweep, before validation):",
        f"  {'verifier':9} {'strictness':10} {'head min':>8} {'threshold':>9} "
        f"{'good':>7} {'wrong':>7} {'precision':>9}",
    ]
    for alt in result["alternatives"]:
        minimum = "-" if alt["match_head_min"] is None else f"{alt['match_head_min']:g}"
        strictness = alt["verifier_strictness"] if alt["verifier"] == "traps" else "-"
        lines.append(
            f"  {alt['verifier']:9} {strictness:10} {minimum:>8} {alt['threshold']:>9g} "
            f"{_pct(alt['good_hit_rate']):>7} {_pct(alt['wrong_hit_rate']):>7} "
            f"{_pct(alt['precision']):>9}"
        )
    return "\n".join(lines)
