"""The exact-hit fast path (``sidecar/hit_path.py``) answers as the slow path would.

Two sidecars side by side, one with the memo off (``cache.hit_memo_bytes: 0``: every request
through the slow path), get the same requests as raw bytes (as ext_proc hands them over);
their answers, headers, contexts, metric deltas and dashboard decision records must be the
same, and the fast one must have served its repeated hits from the memo. Then what must make
the fast path step aside: an expired entry, a deleted one, another partition, headers that
change the plan, guardrail rules loaded at run time, an observer that needs stage timings.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import FakeClock, make_config, running_sidecar
from hookclient import chat_body, openai_answer, openai_stream

from embedders.sentence_tf import SentenceTransformerEmbedder
from sidecar.cache.keys import plan_request
from sidecar.context import HookRequest, RequestContext, RequestOutcome
from sidecar.formats import parse_request
from sidecar.hit_path import PLAN_HEADERS
from sidecar.services import Sidecar

CHAT = "/v1/chat/completions"
TRANSPORT = "extproc"
INPUT_BLOCK = """
profiles:
  words:
    provider: regex
    config: {patterns: [{name: banned, pattern: 'pelican'}]}
rules:
  - id: no-pelicans
    when: 'true'
    apply_to: input
    profiles: [words]
    action: block
"""


@contextlib.asynccontextmanager
async def pair(
    embedder: SentenceTransformerEmbedder, **sections: dict[str, Any]
) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    """(slow, fast): the same config but for the memo."""
    cache = sections.pop("cache", {})
    slow_config = make_config(cache={**cache, "hit_memo_bytes": 0}, **sections)
    fast_config = make_config(cache=cache, **sections)
    async with (
        running_sidecar(slow_config, embedder) as (slow, _),
        running_sidecar(fast_config, embedder) as (fast, _),
    ):
        assert slow.pipeline is not None and slow.pipeline.hit_path is None
        assert fast.pipeline is not None and fast.pipeline.hit_path is not None
        yield slow, fast


def request(
    question: str, request_id: str, headers: Mapping[str, str] | None = None, **params: Any
) -> HookRequest:
    return HookRequest(
        method="POST",
        path=CHAT,
        headers={"content-type": "application/json", **(headers or {})},
        body=orjson.dumps(chat_body(question, **params)),
        request_id=request_id,
    )


async def ask(
    sidecar: Sidecar, req: HookRequest, answer: bytes | None = None
) -> tuple[RequestContext, RequestOutcome]:
    """``on_request``; a request that goes upstream gets ``answer`` (stored if storable)."""
    assert sidecar.pipeline is not None
    # Each sidecar its own copy: the pipeline keeps the header dict in its context.
    own = HookRequest(req.method, req.path, dict(req.headers), req.body, req.request_id)
    ctx, outcome = await sidecar.pipeline.on_request(own, TRANSPORT)
    if outcome.action == "continue" and answer is not None:
        streamed = answer.startswith(b"data:")
        kind = "text/event-stream" if streamed else "application/json"
        await sidecar.pipeline.on_response(ctx, 200, {"content-type": kind}, answer)
    return ctx, outcome


def answer_of(question: str, model: str | None = None, usage: bool = True) -> bytes:
    """``model``: another model than the (priced) default; ``usage``: False leaves it out."""
    answer = openai_answer(f"answer to {question}")
    if model is not None:
        answer["model"] = model
    if not usage:
        del answer["usage"]
    return orjson.dumps(answer)


def counts(sidecar: Sidecar) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and every histogram's count (not times: they differ run to run)."""
    out = {}
    for family in sidecar.metrics.registry.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def decisions(sidecar: Sidecar) -> list[tuple[Any, ...]]:
    assert sidecar.dashboard is not None
    rows = sidecar.dashboard.decisions.latest(1000)
    return [(r.transport, r.partition, r.status, r.reason, r.blocked, r.rules) for r in rows]


def seen(ctx: RequestContext, outcome: RequestOutcome) -> dict[str, Any]:
    """What a request's handling shows: its answer byte for byte, its context, its outcome."""
    lookup = ctx.lookup
    response = outcome.response
    return {
        "action": outcome.action,
        "cache": outcome.cache.to_json(),
        "request_id": outcome.cache.request_id,
        "response": None
        if response is None
        else (response.status, list(response.headers.items()), response.body),
        "body": outcome.body,
        "answer_needed": outcome.answer_needed,
        "trace": ctx.trace,
        "plan": ctx.plan,
        "parsed": ctx.parsed,
        "lookup": None
        if lookup is None
        else (lookup.status, lookup.reason, lookup.similarity, lookup.entry is not None),
        "entry_id": None if lookup is None or lookup.entry is None else lookup.entry.id,
        "ctx": (ctx.request_id, ctx.transport, ctx.method, ctx.path, ctx.blocked, ctx.fired),
    }


def requests() -> Iterator[tuple[HookRequest, bytes]]:
    """A mix: misses that store, repeated exact hits in two partitions, a streamed answer,
    headers that change the plan (no-store, ttl, semantic only), an unparsable body, answers
    of an unpriced model and without usage (each counts its savings its own way)."""
    n = 0

    def rid() -> str:
        nonlocal n
        n += 1
        return f"req-{n}"

    questions = ["What is the capital of France?", "How tall is Mount Everest?"]
    for _round in range(3):
        for q in questions:
            yield request(q, rid()), answer_of(q)
            yield request(q, rid(), {"x-bf-cache-key": "tenant-b"}), answer_of(q + " (b)")
            yield request(q, rid(), {"x-bf-cache-no-store": "true"}), answer_of(q)
            yield request(q, rid(), {"x-bf-cache-ttl": "10m"}), answer_of(q)
            yield request(q, rid(), {"x-bf-provider": "azure"}), answer_of(q)
        stream_q = "Tell me a short story about a lighthouse"
        stream = openai_stream(["Once", " upon"]).encode()
        yield request(stream_q, rid(), stream=True), stream
        yield request(questions[0], rid(), {"x-bf-cache-type": "semantic"}), answer_of("s")
        yield request(questions[1], rid(), {"x-bf-cache-type": "direct"}), answer_of("d")
        yield request(questions[0], rid(), {"x-bf-cache-ttl": "forever"}), answer_of("x")
        unpriced = "Which model wrote this?"
        yield request(unpriced, rid()), answer_of(unpriced, model="unpriced-model-x")
        no_usage = "Which answer has no usage?"
        yield request(no_usage, rid()), answer_of(no_usage, usage=False)
        bad = HookRequest("POST", CHAT, {}, b'{"messages": 3}', rid())
        yield bad, answer_of("bad")


async def test_the_fast_path_serves_what_the_slow_path_serves(
    embedder: SentenceTransformerEmbedder,
) -> None:
    async with pair(embedder) as (slow, fast):
        before = (counts(slow), counts(fast))
        for req, answer in requests():
            results = []
            for sidecar in (slow, fast):
                try:
                    results.append(seen(*await ask(sidecar, req, answer)))
                except Exception as exc:  # a bad request: both must refuse it alike
                    results.append({"error": (type(exc).__name__, str(exc))})
            assert results[0] == results[1], req
        after = (counts(slow), counts(fast))
        deltas = [
            {k: v - b.get(k, 0.0) for k, v in a.items() if v != b.get(k, 0.0)}
            for a, b in zip(after, before, strict=True)
        ]
        assert deltas[0] == deltas[1]
        assert deltas[1][("sidecar_cache_hits_total", (("hit_type", "exact"),))] >= 10
        # each way a hit counts its savings was taken by the fast path too
        counted = {name for name, _ in deltas[1]}
        assert {
            "sidecar_tokens_saved_total",
            "sidecar_cost_saved_usd_total",
            "sidecar_cost_unknown_hits_total",
            "sidecar_usage_unknown_hits_total",
            "sidecar_partition_requests_total",
        } <= counted, counted
        assert decisions(slow) == decisions(fast)
        assert fast.pipeline is not None and fast.pipeline.hit_path is not None
        # Every repeated exact hit but each request's first came from the memo.
        assert fast.pipeline.hit_path.served >= 10


async def test_an_expired_entry_is_a_miss(
    embedder: SentenceTransformerEmbedder, clock: FakeClock
) -> None:
    config = make_config(cache={"ttl": "1m"})
    async with running_sidecar(config, embedder, clock=clock) as (sidecar, _):
        q = "What is the boiling point of water?"
        for n in range(3):  # miss and store, slow hit (remembered), fast hit
            _, outcome = await ask(sidecar, request(q, f"r{n}"), answer_of(q))
        assert outcome.cache.status.value == "hit-exact"
        hit_path = sidecar.pipeline.hit_path  # type: ignore[union-attr]
        assert hit_path is not None and hit_path.served == 1
        clock.advance(61)
        ctx, outcome = await ask(sidecar, request(q, "r3"))
        assert outcome.cache.status.value == "miss" and hit_path.served == 1
        assert ctx.trace[-1].startswith("cache miss")


async def test_a_deleted_partition_is_a_miss(embedder: SentenceTransformerEmbedder) -> None:
    async with running_sidecar(make_config(), embedder) as (sidecar, client):
        q = "Who wrote Hamlet?"
        for n in range(3):
            await ask(sidecar, request(q, f"r{n}"), answer_of(q))
        assert sidecar.pipeline is not None and sidecar.pipeline.hit_path is not None
        assert sidecar.pipeline.hit_path.served == 1
        assert sidecar.cache is not None
        await sidecar.cache.delete_partition("test")
        _, outcome = await ask(sidecar, request(q, "r3"))
        assert outcome.cache.status.value == "miss"


async def test_another_partition_never_gets_the_remembered_entry(
    embedder: SentenceTransformerEmbedder,
) -> None:
    async with running_sidecar(make_config(), embedder) as (sidecar, _):
        q = "How many legs does a spider have?"
        for n in range(3):
            await ask(sidecar, request(q, f"a{n}", {"x-bf-cache-key": "tenant-a"}), answer_of(q))
        other = request(q, "b0", {"x-bf-cache-key": "tenant-b"})
        ctx, outcome = await ask(sidecar, other)
        assert outcome.cache.status.value == "miss"
        assert ctx.plan is not None and ctx.plan.partition == "tenant-b"


async def test_rules_loaded_at_run_time_take_the_request_back(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    config = make_config(guardrails={"rules": [str(rules)], "reload_interval": 0, "workers": 0})
    async with running_sidecar(config, embedder) as (sidecar, _):
        q = "Do pelicans migrate?"
        for n in range(3):
            _, outcome = await ask(sidecar, request(q, f"r{n}"), answer_of(q))
        hit_path = sidecar.pipeline.hit_path  # type: ignore[union-attr]
        assert hit_path is not None and hit_path.served == 1 and len(hit_path) == 1
        rules.write_text(INPUT_BLOCK)
        assert sidecar.rules is not None and sidecar.rules.reload()
        ctx, outcome = await ask(sidecar, request(q, "r3"))
        assert ctx.blocked and outcome.response is not None
        assert outcome.response.status == 403 and hit_path.served == 1
        assert len(hit_path) == 0  # forgotten: no lookups while rules are in force
        rules.write_text("rules: []\n")
        assert sidecar.rules.reload()
        for n in range(4, 6):  # remembered again, then served from the memo
            _, outcome = await ask(sidecar, request(q, f"r{n}"))
            assert outcome.cache.status.value == "hit-exact"
        assert hit_path.served == 2


async def test_stage_observers_turn_the_fast_path_off(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    config = make_config(server={"access_log": str(tmp_path / "access.jsonl")})
    async with running_sidecar(config, embedder) as (sidecar, _):
        assert sidecar.pipeline is not None and sidecar.pipeline.hit_path is None


async def test_the_memo_stays_within_its_bytes(embedder: SentenceTransformerEmbedder) -> None:
    config = make_config(cache={"hit_memo_bytes": 20_000})
    async with running_sidecar(config, embedder) as (sidecar, _):
        hit_path = sidecar.pipeline.hit_path  # type: ignore[union-attr]
        assert hit_path is not None
        for i in range(12):
            q = f"Question number {i}: what is {i} squared?"
            for n in range(2):
                await ask(sidecar, request(q, f"r{i}-{n}"), answer_of(q))
            assert 0 < hit_path.bytes <= 20_000
        assert 0 < len(hit_path) < 12


class _Recording(dict[str, str]):
    """Headers that note every name read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self.read.add("*every header*")
        return super().__iter__()

    def items(self) -> Any:
        self.read.add("*every header*")
        return super().items()


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-bf-cache-key": "p", "x-bf-cache-ttl": "5m", "x-bf-provider": "azure"}],
)
def test_the_plan_reads_no_header_the_memo_key_leaves_out(headers: dict[str, str]) -> None:
    """The memo's key holds the path, the body and ``PLAN_HEADERS``: if parsing or planning
    read another header, two requests differing only in it could share a plan."""
    recording = _Recording({"content-type": "application/json", "x-other": "1", **headers})
    config = make_config()
    body = chat_body("What is the capital of Peru?", temperature=0.2)
    parsed = parse_request(CHAT, body, recording)
    assert parsed is not None
    plan_request(parsed, recording, config.cache)
    assert recording.read <= set(PLAN_HEADERS)
