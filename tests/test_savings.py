"""Savings accounting through the HTTP hook: each hit adds the usage its stored answer reported
(OpenAI and Anthropic, streamed and not), priced from the bundled table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from hookclient import chat_body, request_hook, round_trip
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cache.model import CachedAnswer, CacheEntry, Usage
from sidecar.pricing import PricingError, load_prices


def _openai(model: str, text: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def _openai_stream(model: str, text: str, prompt: int, completion: int) -> str:
    def chunk(**fields: Any) -> str:
        return "data: " + json.dumps({"id": "s", "object": "chat.completion.chunk", **fields})

    return (
        "\n\n".join(
            [
                chunk(model=model, choices=[{"index": 0, "delta": {"content": text}}]),
                chunk(model=model, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                # stream_options.include_usage: a last chunk with no choices and the usage
                chunk(
                    model=model,
                    choices=[],
                    usage={"prompt_tokens": prompt, "completion_tokens": completion},
                ),
                "data: [DONE]",
            ]
        )
        + "\n\n"
    )


def _anthropic(model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": usage,
    }


def _anthropic_stream(model: str, text: str, prompt: int, completion: int) -> str:
    def ev(name: str, payload: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"

    message = {"id": "m", "type": "message", "role": "assistant", "model": model, "content": []}
    return "".join(
        [
            ev(
                "message_start",
                {"message": {**message, "usage": {"input_tokens": prompt, "output_tokens": 1}}},
            ),
            ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}),
            ev("content_block_stop", {"index": 0}),
            ev(
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": completion}},
            ),
            ev("message_stop", {}),
        ]
    )


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _anthropic_body(question: str, model: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": question}],
    }


async def test_savings_equal_the_usage_of_answers_served_from_cache(
    sidecar_factory: Any,
) -> None:
    prices = load_prices()
    gpt, claude, local = "gpt-4o-mini", "claude-sonnet-4-5", "my-local-llm"
    assert prices.price(gpt) and prices.price(claude) and prices.price(local) is None
    # (request body, path, answer, content type, usage the answer reported, exact hits)
    workload: list[tuple[dict[str, Any], str, Any, str, tuple[str, int, int], int]] = [
        (
            chat_body("What is the capital of France?", model=gpt),
            "/v1/chat/completions",
            _openai(gpt, "Paris.", 11, 7),
            "application/json",
            (gpt, 11, 7),
            3,
        ),
        (
            chat_body("How many legs does a spider have?", model=gpt, stream=True),
            "/v1/chat/completions",
            _openai_stream(gpt, "Eight.", 13, 9),
            "text/event-stream",
            (gpt, 13, 9),
            2,
        ),
        (
            _anthropic_body("Which planet is known as the red planet?", claude),
            "/v1/messages",
            _anthropic(
                claude,
                "Mars.",
                {"input_tokens": 20, "cache_read_input_tokens": 4, "output_tokens": 6},
            ),
            "application/json",
            (claude, 24, 6),
            1,
        ),
        (
            _anthropic_body("Who wrote the novel Moby Dick?", claude, stream=True),
            "/v1/messages",
            _anthropic_stream(claude, "Herman Melville.", 8, 12),
            "text/event-stream",
            (claude, 8, 12),
            2,
        ),
        (
            chat_body("What is the boiling point of water at sea level?", model=local),
            "/v1/chat/completions",
            _openai(local, "100 degrees Celsius.", 3, 4),
            "application/json",
            (local, 3, 4),
            2,
        ),
    ]
    expected_tokens: dict[str, float] = {}
    expected_cost: dict[str, float] = {}
    async with sidecar_factory() as (sidecar, client):
        for body, path, answer, ctype, (model, p, c), hits in workload:
            first, stored = await round_trip(client, body, answer, path=path, content_type=ctype)
            assert first["cache"]["status"] == "miss"
            assert stored is not None and "stored_entry_id" in stored, stored
            for _ in range(hits):
                again = (await request_hook(client, body, path=path)).json()
                assert again["cache"]["status"] == "hit-exact"
                expected_tokens[model] = expected_tokens.get(model, 0) + p + c
                cost = prices.cost(model, p, c)
                if cost is not None:
                    expected_cost[model] = expected_cost.get(model, 0.0) + cost
        # one semantic hit: a paraphrase served the first answer
        para = (
            await request_hook(client, chat_body("What's the capital city of France?", model=gpt))
        ).json()
        assert para["cache"]["status"] == "hit-semantic"
        metrics = (await client.get("/metrics")).text

    tokens = _samples(metrics, "sidecar_tokens_saved_total")
    exact_tokens = {dict(k)["model"]: v for k, v in tokens.items() if dict(k)["layer"] == "exact"}
    assert exact_tokens == expected_tokens
    assert tokens[(("layer", "semantic"), ("model", gpt))] == 18
    cost = _samples(metrics, "sidecar_cost_saved_usd_total")
    exact_cost = {dict(k)["model"]: v for k, v in cost.items() if dict(k)["layer"] == "exact"}
    assert exact_cost.keys() == expected_cost.keys() == {gpt, claude}
    for model, value in expected_cost.items():
        assert exact_cost[model] == pytest.approx(value, rel=1e-9)
    assert cost[(("layer", "semantic"), ("model", gpt))] == pytest.approx(
        prices.cost(gpt, 11, 7), rel=1e-9
    )
    # the unknown model: tokens counted, no cost series, its hits marked unknown
    assert _samples(metrics, "sidecar_cost_unknown_hits_total") == {(("model", local),): 2}


async def test_answer_without_usage_counts_as_unknown_usage(sidecar_factory: Any) -> None:
    answer = _openai("gpt-4o-mini", "Paris.", 1, 1)
    del answer["usage"]
    async with sidecar_factory() as (_, client):
        body = chat_body("What is the capital of France?")
        await round_trip(client, body, answer)
        assert (await request_hook(client, body)).json()["cache"]["status"] == "hit-exact"
        metrics = (await client.get("/metrics")).text
    assert _samples(metrics, "sidecar_usage_unknown_hits_total") == {(("layer", "exact"),): 1}
    assert _samples(metrics, "sidecar_tokens_saved_total") == {}


def test_stored_usage_round_trips_and_older_rows_read_without_it() -> None:
    answer = CachedAnswer(200, {}, b"{}", False, Usage("gpt-4o", 3, 4))
    entry = CacheEntry("id", "p", "s", "q", answer, 1.0, 2.0)
    read, version = CacheEntry.read(entry.to_bytes())
    assert version == 2 and read.answer.usage == Usage("gpt-4o", 3, 4)
    row = json.loads(entry.to_bytes())
    del row["answer"]["usage"]  # a version-2 row written before usage was kept
    old, version = CacheEntry.read(json.dumps(row))
    assert version == 2 and old.answer.usage is None


def test_pricing_file_overrides_the_bundled_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "source": "ours",
                "models": {
                    "my-local-llm": {"input_cost_per_token": 0.5, "output_cost_per_token": 1}
                },
            }
        )
    )
    table = load_prices(str(path))
    assert table.cost("my-local-llm", 2, 3) == 4.0 and table.price("gpt-4o") is None
    path.write_text(json.dumps({"models": {"m": {"input_cost_per_token": "cheap"}}}))
    with pytest.raises(PricingError, match="models.m.input_cost_per_token"):
        load_prices(str(path))
    assert make_config(pricing={"file": str(path)}).pricing.file == str(path)


def test_check_config_names_a_broken_pricing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sidecar.cli import main

    prices = tmp_path / "prices.json"
    prices.write_text('{"models": {"m": {"input_cost_per_token": -1}}}')
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"pricing: {{file: {prices}}}\n")
    assert main(["check-config", "--config", str(config)]) == 1
    assert "models.m.input_cost_per_token must be a non-negative number" in capsys.readouterr().err
