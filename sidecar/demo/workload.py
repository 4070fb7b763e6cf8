"""The scripted workload of ``sidecar demo`` and the table it prints."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from sidecar.demo.upstream import FakeLLMUpstream

#: a made-up key in the shape of a provider API key (never a real secret)
FAKE_SECRET = "sk-demo-4f9c2a7b1e8d6c3a5f0b9e7d"
SECRET_RULES = """\
profiles:
  api-key:
    provider: regex
    config: {patterns: [{name: api-key, pattern: 'sk-[A-Za-z0-9-]{20,}'}]}
rules:
  - id: redact-api-keys
    description: API keys in prompts never reach the provider
    apply_to: input
    profiles: [api-key]
    action: redact
"""


@dataclass(frozen=True, slots=True)
class Step:
    label: str
    prompt: str
    stream: bool = False


@dataclass(slots=True)
class Outcome:
    step: Step
    status: int
    cache_status: str
    similarity: str
    upstream_called: bool
    latency_ms: float
    note: str = ""


def workload(with_secret: bool) -> list[Step]:
    steps = [
        Step("question", "What is the capital of France?"),
        Step("same question again", "What is the capital of France?"),
        Step("paraphrase", "Tell me the capital city of France."),
        Step("streamed question", "Write a haiku about the sea.", stream=True),
        Step("same stream again", "Write a haiku about the sea.", stream=True),
    ]
    if with_secret:
        steps.append(Step("prompt with a secret", f"Why does my key {FAKE_SECRET} not work?"))
    return steps


def run_workload(
    base_url: str, upstream: FakeLLMUpstream, steps: list[Step], model: str = "gpt-4o-mini"
) -> list[Outcome]:
    outcomes = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for step in steps:
            before = upstream.count()
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": step.prompt}],
                "stream": step.stream,
            }
            started = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.read()
            latency = (time.perf_counter() - started) * 1000
            called = upstream.count() > before
            note = ""
            if called and FAKE_SECRET in step.prompt:
                sent = upstream.calls_to("/chat/completions")[-1].body.decode("utf-8", "replace")
                note = "secret kept" if FAKE_SECRET in sent else "secret redacted before upstream"
            outcomes.append(
                Outcome(
                    step,
                    response.status_code,
                    response.headers.get("x-bf-cache-status", "-"),
                    response.headers.get("x-bf-cache-similarity", "-"),
                    called,
                    latency,
                    note,
                )
            )
    return outcomes


def render_table(outcomes: list[Outcome]) -> str:
    header = ("#", "request", "stream", "status", "cache", "similarity", "upstream", "latency")
    rows = [
        (
            str(i),
            o.step.label + (f" ({o.note})" if o.note else ""),
            "yes" if o.step.stream else "no",
            str(o.status),
            o.cache_status,
            o.similarity,
            "called" if o.upstream_called else "not called",
            f"{o.latency_ms:.1f} ms",
        )
        for i, o in enumerate(outcomes, 1)
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        cells_out = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "  ".join(cells_out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
