"""CPU that guardrail work burns under adversarial load: checks in the sidecar's process
(``guardrails.workers: 0``, as before) against checks in killable worker processes (default).

Run: ``python -m benchmarks.guardrails_cpu_bench [--quick]``. Writes
``benchmarks/results/guardrails_cpu.json``.

* Load: ``--concurrency`` (8) copies of a 1 MB adversarial prompt sent at once through the
  request hook's pipeline (``on_request``) with the default input rules
  (``benchmarks/data/default_input_rules.yaml``: secrets block, injection regex block, PII
  redact; 1 s rule timeouts, ``on_error: block``). The prompt is ordinary text behind a dense
  160 KB run of e-mail addresses, on which Presidio spends about 3 s of CPU.
* Measured per mode: CPU seconds of the whole process tree (this process, the fork server and
  its workers, live and reaped: ``guardrails.workers.process_tree_cpu_s``) from the first
  request until the last answer, and then until the tree is idle again (CPU still burning
  after the answers is work that outlived its deadline); wall time to the last answer; the
  answers' statuses.
* Inline bound: the largest inline cost of each local check on adversarial inputs of
  ``inline_max_chars`` (4096) characters, the figure behind running small inputs inline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import string
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.proxy_bench import RULES
from benchmarks.report import SummaryRow, machine, write_result
from benchmarks.stack import chat_body

PROMPT_CHARS = 1_000_000
DENSE_CHARS = 160_000
IDLE_WINDOW_S = 0.5
IDLE_CPU_S = 0.05  # less CPU than this over IDLE_WINDOW_S: the tree is idle


def adversarial_prompt(i: int) -> str:
    dense = " ".join(f"a{i}x{n}@b{n}.com" for n in range(DENSE_CHARS // 8))[:DENSE_CHARS]
    filler = "The quarterly report covers revenue, churn and hiring plans for next year. "
    return (dense + " " + filler * (PROMPT_CHARS // len(filler) + 1))[:PROMPT_CHARS]


def inline_inputs(size: int) -> dict[str, str]:
    """Adversarial families at the inline limit: dense matches of what each check looks for."""
    rnd = random.Random(7)
    alnum = string.ascii_letters + string.digits

    def fill(unit: Any) -> str:
        out, n = [], 0
        while n < size:
            piece = unit(n)
            out.append(piece)
            n += len(piece)
        return "".join(out)[:size]

    return {
        "e-mails": fill(lambda n: f"a{n}@b{n}.com "),
        "phone numbers": fill(lambda n: f"+1 415 555 {n % 10000:04d} "),
        "key=value tokens": fill(lambda n: "api_key=" + "".join(rnd.choices(alnum, k=32)) + " "),
        "base64 run": "".join(rnd.choices(alnum + "+/", k=size)),
        "credit cards": fill(lambda n: "4111 1111 1111 1111 "),
    }


async def inline_bound(size: int, rounds: int) -> dict[str, Any]:
    from benchmarks.guardrails_bench import CHECKS
    from guardrails.base import LocalCheck, Stage, TextPiece
    from guardrails.registry import build_check

    result: dict[str, Any] = {}
    for name, (provider, config) in CHECKS.items():
        check = build_check(provider, config)
        assert isinstance(check, LocalCheck)
        per_input = {}
        for label, text in inline_inputs(size).items():
            pieces = [TextPiece(0, text)]
            check.analyze(pieces, Stage.INPUT)  # warm-up
            best = []
            for _ in range(rounds):
                started = time.thread_time()
                check.analyze(pieces, Stage.INPUT)
                best.append(time.thread_time() - started)
            per_input[label] = round(max(best) * 1000, 2)
        await check.aclose()
        result[name] = {"worst_input": max(per_input, key=per_input.__getitem__), **per_input}
        result[name]["max_ms"] = max(per_input.values())
    return result


async def wait_idle(cpu: Any, limit_s: float) -> tuple[float, float]:
    """Wait until the process tree stops using CPU; returns (cpu, monotonic time) then."""
    deadline = time.monotonic() + limit_s
    last = cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(IDLE_WINDOW_S)
        now = cpu()
        if now - last < IDLE_CPU_S:
            return now, time.monotonic()
        last = now
    return cpu(), time.monotonic()


async def load_run(workers: str | int, concurrency: int, idle_limit_s: float) -> dict[str, Any]:
    from guardrails.workers import process_tree_cpu_s
    from sidecar.config import SidecarConfig
    from sidecar.context import HookRequest
    from sidecar.services import Sidecar

    config = {
        "cache": {"enabled": False, "data_dir": ":memory:"},
        "server": {"max_body_bytes": 8 * PROMPT_CHARS},
        "guardrails": {
            "rules": [str(RULES)],
            "reload_interval": 0,
            "audit_log": "",
            "workers": workers,
        },
    }
    sidecar = Sidecar(SidecarConfig.model_validate(config))
    await sidecar.start()
    assert sidecar.pipeline is not None and sidecar.engine is not None
    pool = sidecar.engine.workers
    pipeline = sidecar.pipeline
    headers = {"content-type": "application/json"}
    bodies = [chat_body(adversarial_prompt(i)) for i in range(concurrency)]
    try:
        if pool is not None:
            await pool.start()
        await sidecar.pipeline.on_request(  # warm-up
            HookRequest("POST", "/v1/chat/completions", headers, chat_body("hello")), "warm"
        )
        await wait_idle(process_tree_cpu_s, idle_limit_s)
        cpu0, t0 = process_tree_cpu_s(), time.monotonic()
        latencies: list[float] = []
        statuses: dict[str, int] = {}

        async def one(i: int) -> None:
            req = HookRequest("POST", "/v1/chat/completions", headers, bodies[i])
            started = time.monotonic()
            _, outcome = await pipeline.on_request(req, f"r{i}")
            latencies.append(time.monotonic() - started)
            answer = outcome.response
            key = outcome.action
            if answer is not None:
                # "Request blocked by guardrail rule 'x' (error:timeout)": rule and kind only
                reason = re.search(rb"guardrail rule '[^']*' \([^)]*\)", answer.body)
                key = f"{answer.status} " + (reason.group().decode() if reason else "")
            statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(one(i) for i in range(concurrency)))
        cpu1, t1 = process_tree_cpu_s(), time.monotonic()
        cpu2, t2 = await wait_idle(process_tree_cpu_s, idle_limit_s)
        stats = pool.stats if pool is not None else None
    finally:
        await sidecar.close()
    return {
        "workers": workers,
        "concurrency": concurrency,
        "wall_to_last_answer_s": round(t1 - t0, 2),
        "cpu_to_last_answer_s": round(cpu1 - cpu0, 2),
        "cpu_after_answers_s": round(cpu2 - cpu1, 2),
        "wall_until_idle_s": round(t2 - t0, 2),
        "cpu_total_s": round(cpu2 - cpu0, 2),
        "cores_busy_until_idle": round((cpu2 - cpu0) / max(t2 - t0, 1e-9), 2),
        "max_answer_latency_s": round(max(latencies), 2),
        "answers": statuses,
        "worker_kills": dict(stats.kills) if stats is not None else None,
    }


async def run_all(quick: bool, concurrency: int) -> dict[str, Any]:
    idle_limit = 120.0 if quick else 600.0
    rounds = 3 if quick else 10
    from guardrails.local_checks import DEFAULT_INLINE_MAX_CHARS

    return {
        "benchmark": "guardrails_cpu",
        "quick": quick,
        "machine": machine(),
        "rules": str(RULES.name),
        "prompt_chars": PROMPT_CHARS,
        "dense_email_chars": DENSE_CHARS,
        "inline_max_chars": DEFAULT_INLINE_MAX_CHARS,
        "inline_rounds": rounds,
        "inline_bound_ms": await inline_bound(DEFAULT_INLINE_MAX_CHARS, rounds),
        "before_in_process": await load_run(0, concurrency, idle_limit),
        "after_workers": await load_run("auto", concurrency, idle_limit),
    }


def _summary(result: dict[str, Any]) -> list[SummaryRow]:
    g = "guardrails under adversarial load"
    before, after = result["before_in_process"], result["after_workers"]
    n = after["concurrency"]
    worst = max(v["max_ms"] for v in result["inline_bound_ms"].values())
    return [
        SummaryRow(
            g,
            f"CPU s for {n} concurrent 1 MB adversarial prompts, until idle",
            after["cpu_total_s"],
            "s",
            before["cpu_total_s"],
            "checks in the sidecar's process",
            note=f"wall {after['wall_until_idle_s']} s vs {before['wall_until_idle_s']} s",
        ),
        SummaryRow(
            g,
            "CPU s burnt after the last answer",
            after["cpu_after_answers_s"],
            "s",
            before["cpu_after_answers_s"],
            "checks in the sidecar's process",
            show_ratio=False,
        ),
        SummaryRow(
            g,
            f"worst inline cost at {result['inline_max_chars']} chars",
            worst,
            "ms",
            note="largest of regex, secrets, presidio on dense adversarial inputs",
        ),
    ]


def print_table(result: dict[str, Any]) -> None:
    rounds = result["inline_rounds"]
    print(f"inline cost at {result['inline_max_chars']} chars (worst of {rounds}, ms):")
    for name, row in result["inline_bound_ms"].items():
        print(f"  {name:36} max {row['max_ms']:7.2f} ms ({row['worst_input']})")
    keys = (
        "wall_to_last_answer_s",
        "cpu_to_last_answer_s",
        "cpu_after_answers_s",
        "wall_until_idle_s",
        "cpu_total_s",
        "cores_busy_until_idle",
        "max_answer_latency_s",
        "answers",
        "worker_kills",
    )
    before, after = result["before_in_process"], result["after_workers"]
    print(f"{'':28} {'in process (before)':>24} {'worker processes':>24}")
    for key in keys:
        print(f"{key:28} {before[key]!s:>24} {after[key]!s:>24}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer inline rounds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--json", help="result file (default benchmarks/results/guardrails_cpu.json)"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(run_all(args.quick, args.concurrency))
    result["summary"] = [row.to_json() for row in _summary(result)]
    path = write_result("guardrails_cpu", result, args.json)
    print_table(result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
