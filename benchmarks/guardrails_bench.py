"""Guardrail checks per 1 KB prompt: regex, secrets and PII alone, and the whole default input
set as the sidecar runs it.

Run: ``python -m benchmarks.guardrails_bench [--quick]``. Writes
``benchmarks/results/guardrails.json``.

* Each check is built through the provider registry (as a rule file builds it) and scans one
  1 KB prompt per call.
* The default input set (``benchmarks/data/default_input_rules.yaml``: secrets block, an
  injection regex block, PII redact) is measured through the pipeline: ``on_request`` of a
  1 KB chat request with the rules loaded, against the same sidecar config without rules, in
  alternating rounds. The difference is what the input guardrails add (target: at most 5 ms
  median). Clean prompts are the common case; prompts with an e-mail address and a phone
  number also exercise redaction. The same rules with ``guardrails.workers: 0`` (checks in
  the sidecar's process, the path before check workers) run in the same rounds, so the cost
  of the worker-aware path on a small prompt (it runs inline) is measured side by side.
Stock Presidio and Yelp detect-secrets on the same kind of prompt are measured by
``pii_bench`` and ``secrets_bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.hook_bench import unique_questions
from benchmarks.proxy_bench import RULES, kilobyte_prompts
from benchmarks.report import SummaryRow, latency_stats, machine, write_result
from benchmarks.stack import chat_body

TARGET_MS = 5.0
CHECKS: dict[str, tuple[str, dict[str, Any]]] = {
    "regex (injection pattern)": (
        "regex",
        {
            "patterns": [
                {
                    "name": "ignore-previous",
                    "pattern": "(?i)ignore (all )?(the )?previous instructions",
                }
            ]
        },
    ),
    "secrets (built-in rules)": ("secrets", {}),
    "PII (presidio, default entities)": ("presidio", {}),
}


def with_pii(prompt: str, i: int) -> str:
    extra = f" Contact jane.doe{i}@example.com or +1 415 555 {1000 + i:04d}."
    return prompt[: 1024 - len(extra)] + extra


async def time_checks(prompts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    from guardrails.base import CheckContext, Stage, TextPiece
    from guardrails.registry import build_check

    checks = {name: build_check(p, cfg) for name, (p, cfg) in CHECKS.items()}
    ctx = CheckContext(stage=Stage.INPUT, request_id="bench", request_type="chat")
    samples: dict[str, list[float]] = {name: [] for name in checks}
    try:
        for check in checks.values():  # warm-up: lazy compilation and caches
            await check.scan([TextPiece(0, prompts[0])], ctx)
        for _ in range(rounds):
            for name, check in checks.items():
                for text in prompts:
                    pieces = [TextPiece(0, text)]
                    started = time.perf_counter()
                    await check.scan(pieces, ctx)
                    samples[name].append(time.perf_counter() - started)
    finally:
        for check in checks.values():
            await check.aclose()
    return {name: latency_stats(s) for name, s in samples.items()}


async def time_input_set(prompts: list[str], rounds: int) -> dict[str, Any]:
    """``on_request`` without rules, and with the default input rules run in process
    (``guardrails.workers: 0``, the code path before check workers existed) and as configured
    by default (check workers on; a 1 KB prompt still runs inline), in alternating rounds
    (cache off: guardrails only)."""
    from sidecar.config import SidecarConfig
    from sidecar.context import HookRequest
    from sidecar.services import Sidecar

    base = {"cache": {"enabled": False, "data_dir": ":memory:"}}
    rules = {"rules": [str(RULES)], "reload_interval": 0, "audit_log": ""}
    configs = {
        "plain": base,
        "guarded_in_process": {**base, "guardrails": {**rules, "workers": 0}},
        "guarded": {**base, "guardrails": rules},
    }
    sidecars = {name: Sidecar(SidecarConfig.model_validate(c)) for name, c in configs.items()}
    for sidecar in sidecars.values():
        await sidecar.start()
    headers = {"content-type": "application/json"}
    times: dict[str, list[float]] = {name: [] for name in sidecars}
    outcomes: dict[str, int] = {}
    try:
        for sidecar in sidecars.values():  # warm-up
            assert sidecar.pipeline is not None
            await sidecar.pipeline.on_request(
                HookRequest("POST", "/v1/chat/completions", headers, chat_body(prompts[0])), "b"
            )
        for _ in range(rounds):
            for name, sidecar in sidecars.items():
                assert sidecar.pipeline is not None
                for text in prompts:
                    req = HookRequest("POST", "/v1/chat/completions", headers, chat_body(text))
                    started = time.perf_counter()
                    _, outcome = await sidecar.pipeline.on_request(req, "bench")
                    times[name].append(time.perf_counter() - started)
                    if name == "guarded":
                        key = "rewritten" if outcome.body is not None else outcome.action
                        outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        for sidecar in sidecars.values():
            await sidecar.close()

    def added(name: str) -> tuple[float, float]:
        pairs = [g - p for g, p in zip(times[name], times["plain"], strict=True)]
        p50 = statistics.median(times[name]) - statistics.median(times["plain"])
        return round(p50 * 1000, 3), round(statistics.median(pairs) * 1000, 3)

    added_p50, added_pairwise = added("guarded")
    before_p50, before_pairwise = added("guarded_in_process")
    return {
        "plain": latency_stats(times["plain"]),
        "guarded": latency_stats(times["guarded"]),
        "guarded_in_process": latency_stats(times["guarded_in_process"]),
        "added_p50_ms": added_p50,
        "added_pairwise_p50_ms": added_pairwise,
        "in_process_added_p50_ms": before_p50,
        "in_process_added_pairwise_p50_ms": before_pairwise,
        "outcomes": outcomes,
    }


async def run_all(quick: bool) -> dict[str, Any]:
    n, rounds = (20, 2) if quick else (40, 5)
    clean = kilobyte_prompts(unique_questions(600), n)
    pii = [with_pii(p, i) for i, p in enumerate(clean)]
    return {
        "benchmark": "guardrails",
        "quick": quick,
        "machine": machine(),
        "prompt_chars": round(statistics.mean(len(p) for p in clean)),
        "rules": str(RULES.name),
        "checks_clean": await time_checks(clean, rounds),
        "checks_with_pii": await time_checks(pii, rounds),
        "input_set_clean": await time_input_set(clean, rounds),
        "input_set_with_pii": await time_input_set(pii, rounds),
    }


def _summary(result: dict[str, Any]) -> list[SummaryRow]:
    g = "guardrails per 1 KB prompt"
    rows = []
    for name, label in (("input_set_clean", "clean"), ("input_set_with_pii", "e-mail + phone")):
        r = result[name]
        rows.append(
            SummaryRow(
                g,
                f"default input set added p50 ({label})",
                r["added_p50_ms"],
                "ms",
                r["plain"]["p50_ms"],
                "request hook without rules",
                f"<= {TARGET_MS:g} ms",
                r["added_p50_ms"] <= TARGET_MS,
                f"guarded p99 {r['guarded']['p99_ms']} ms",
                show_ratio=False,
            )
        )
        rows.append(
            SummaryRow(
                g,
                f"default input set added p50 ({label}), check workers on",
                r["added_p50_ms"],
                "ms",
                r["in_process_added_p50_ms"],
                "checks in process (workers: 0)",
                f"<= {TARGET_MS:g} ms",
                r["added_p50_ms"] <= TARGET_MS,
            )
        )
    for name, stats in result["checks_clean"].items():
        rows.append(
            SummaryRow(
                g,
                f"{name} p50 (clean)",
                stats["p50_ms"],
                "ms",
                note=f"p99 {stats['p99_ms']} ms; with PII "
                f"{result['checks_with_pii'][name]['p50_ms']} ms",
            )
        )
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"guardrails per 1 KB prompt ({result['prompt_chars']} chars, rules {result['rules']})")
    for title in ("checks_clean", "checks_with_pii"):
        for name, s in result[title].items():
            print(f"  {title:16} {name:36} p50 {s['p50_ms']:7.3f} ms  p99 {s['p99_ms']:7.3f} ms")
    for title in ("input_set_clean", "input_set_with_pii"):
        r = result[title]
        print(
            f"  {title:18} added p50 {r['added_p50_ms']:.3f} ms (hook without rules "
            f"{r['plain']['p50_ms']:.3f} ms, with {r['guarded']['p50_ms']:.3f} ms) "
            f"{r['outcomes']}; in process (workers: 0) added p50 "
            f"{r['in_process_added_p50_ms']:.3f} ms"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts and rounds")
    parser.add_argument("--json", help="result file (default benchmarks/results/guardrails.json)")
    args = parser.parse_args(argv)
    result = asyncio.run(run_all(args.quick))
    result["summary"] = [row.to_json() for row in _summary(result)]
    path = write_result("guardrails", result, args.json)
    print_table(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
