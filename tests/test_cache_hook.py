"""The dual-layer cache through the HTTP hook, with the real model and embedded stores."""

from __future__ import annotations

from typing import Any

from conftest import make_config
from hookclient import (
    anthropic_answer,
    anthropic_stream,
    chat_body,
    openai_answer,
    openai_stream,
    request_hook,
    round_trip,
)


async def test_repeat_is_exact_hit_and_paraphrase_is_semantic_hit(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        body = chat_body("What is the capital of France?")
        first, stored = await round_trip(client, body, openai_answer("Paris."))
        assert first["action"] == "continue"
        assert first["cache"]["status"] == "miss"
        assert stored is not None and stored["headers"]["x-bf-cache-status"] == "miss"
        entry_id = stored["stored_entry_id"]

        again = (await request_hook(client, body)).json()
        assert again["action"] == "respond"
        assert again["cache"] == {**again["cache"], "status": "hit-exact", "entry_id": entry_id}
        response = again["response"]
        assert response["status"] == 200
        assert response["body"]["choices"][0]["message"]["content"] == "Paris."
        assert response["headers"]["x-bf-cache-status"] == "hit-exact"
        assert response["headers"]["x-bf-cache-entry-id"] == entry_id

        para = (await request_hook(client, chat_body("What's the capital city of France?"))).json()
        assert para["cache"]["status"] == "hit-semantic", para["cache"]["reason"]
        assert 0.8 <= para["cache"]["similarity"] < 1.0
        assert float(para["response"]["headers"]["x-bf-cache-similarity"]) >= 0.8
        assert para["response"]["body"]["choices"][0]["message"]["content"] == "Paris."


async def test_unrelated_question_misses(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        await round_trip(
            client, chat_body("What is the capital of France?"), openai_answer("Paris.")
        )
        other = (await request_hook(client, chat_body("How do I bake sourdough bread?"))).json()
        assert other["action"] == "continue"
        assert other["cache"]["status"] == "miss"
        assert "threshold" in other["cache"]["reason"]


async def test_partitions_never_share_entries(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        body = chat_body("What is the capital of France?")
        await round_trip(client, body, openai_answer("Paris."), headers={"x-bf-cache-key": "a"})
        hit = (await request_hook(client, body, headers={"x-bf-cache-key": "a"})).json()
        assert hit["cache"]["status"] == "hit-exact"
        other = (await request_hook(client, body, headers={"x-bf-cache-key": "b"})).json()
        assert other["cache"]["status"] == "miss"
        default = (await request_hook(client, body)).json()  # default_cache_key "test"
        assert default["cache"]["status"] == "miss"


async def test_no_cache_key_bypasses(sidecar_factory: Any) -> None:
    config = make_config(cache={"default_cache_key": ""})
    async with sidecar_factory(config) as (sidecar, client):
        body = chat_body("What is the capital of France?")
        req, resp = await round_trip(client, body, openai_answer("Paris."))
        assert req["cache"]["status"] == "bypass"
        assert "x-bf-cache-key" in req["cache"]["reason"]
        assert resp is not None and resp["headers"]["x-bf-cache-status"] == "bypass"
        assert "stored_entry_id" not in resp
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0
        keyed = (await request_hook(client, body, headers={"x-bf-cache-key": "k"})).json()
        assert keyed["cache"]["status"] == "miss"


async def test_ttl_header_and_expiry(sidecar_factory: Any, clock: Any) -> None:
    async with sidecar_factory(clock=clock) as (_, client):
        body = chat_body("What is the capital of France?")
        await round_trip(client, body, openai_answer("Paris."), headers={"x-bf-cache-ttl": "10s"})
        clock.advance(9)
        assert (await request_hook(client, body)).json()["cache"]["status"] == "hit-exact"
        clock.advance(2)
        expired = (await request_hook(client, body)).json()
        assert expired["cache"]["status"] == "miss"
        # The semantic layer must not serve the expired entry either.
        para = (await request_hook(client, chat_body("What's the capital city of France?"))).json()
        assert para["cache"]["status"] == "miss"


async def test_default_ttl_from_config(sidecar_factory: Any, clock: Any) -> None:
    async with sidecar_factory(make_config(cache={"ttl": "1m"}), clock=clock) as (_, client):
        body = chat_body("What is the capital of France?")
        await round_trip(client, body, openai_answer("Paris."))
        clock.advance(59)
        assert (await request_hook(client, body)).json()["cache"]["status"] == "hit-exact"
        clock.advance(1)
        assert (await request_hook(client, body)).json()["cache"]["status"] == "miss"


async def test_threshold_header(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        await round_trip(
            client, chat_body("What is the capital of France?"), openai_answer("Paris.")
        )
        para = chat_body("What's the capital city of France?")
        strict = await request_hook(client, para, headers={"x-bf-cache-threshold": "0.99"})
        assert strict.json()["cache"]["status"] == "miss"
        loose = await request_hook(client, para, headers={"x-bf-cache-threshold": "0.5"})
        assert loose.json()["cache"]["status"] == "hit-semantic"


async def test_cache_type_header(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        body = chat_body("What is the capital of France?")
        await round_trip(client, body, openai_answer("Paris."))
        para = chat_body("What's the capital city of France?")
        direct = await request_hook(client, para, headers={"x-bf-cache-type": "direct"})
        assert direct.json()["cache"]["status"] == "miss"
        direct_same = await request_hook(client, body, headers={"x-bf-cache-type": "direct"})
        assert direct_same.json()["cache"]["status"] == "hit-exact"
        semantic = await request_hook(client, body, headers={"x-bf-cache-type": "semantic"})
        assert semantic.json()["cache"]["status"] == "hit-semantic"
        assert semantic.json()["cache"]["similarity"] > 0.99


async def test_no_store_header_serves_but_never_writes(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (sidecar, client):
        body = chat_body("What is the capital of France?")
        _, resp = await round_trip(
            client, body, openai_answer("Paris."), headers={"x-bf-cache-no-store": "true"}
        )
        assert resp is not None and "stored_entry_id" not in resp
        assert (await request_hook(client, body)).json()["cache"]["status"] == "miss"
        await round_trip(client, body, openai_answer("Paris."))
        hit = await request_hook(client, body, headers={"x-bf-cache-no-store": "true"})
        assert hit.json()["cache"]["status"] == "hit-exact"
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 1


async def test_invalid_headers_are_400_naming_the_header(sidecar_factory: Any) -> None:
    cases = {
        "x-bf-cache-ttl": "soon",
        "x-bf-cache-threshold": "1.5",
        "x-bf-cache-type": "fuzzy",
        "x-bf-cache-no-store": "maybe",
        "x-bf-cache-key": "bad\nkey",
    }
    async with sidecar_factory() as (sidecar, client):
        for name, value in cases.items():
            res = await request_hook(client, chat_body("hello there"), headers={name: value})
            assert res.status_code == 400, name
            assert name in res.json()["error"]["message"]
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0
        assert (await sidecar.pending.stats()).items == 0


async def test_conversation_history_threshold_bypasses(sidecar_factory: Any) -> None:
    long_chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "what is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
    }
    async with sidecar_factory() as (sidecar, client):
        req, resp = await round_trip(client, long_chat, openai_answer("6"))
        assert req["cache"]["status"] == "bypass"
        assert "conversation_history_threshold" in req["cache"]["reason"]
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0
    three = {"model": "m", "messages": long_chat["messages"][2:]}
    async with sidecar_factory() as (_, client):
        req, _ = await round_trip(client, three, openai_answer("6"))
        assert req["cache"]["status"] == "miss"


async def test_exclude_system_prompt_changes_count_and_key(sidecar_factory: Any) -> None:
    def with_system(system: str) -> dict[str, Any]:
        return {
            "model": "m",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
        }

    async with sidecar_factory() as (_, client):
        req, _ = await round_trip(client, with_system("be terse"), openai_answer("x"))
        assert req["cache"]["status"] == "bypass"  # 4 messages > 3
    config = make_config(cache={"exclude_system_prompt": True})
    async with sidecar_factory(config) as (_, client):
        req, _ = await round_trip(client, with_system("be terse"), openai_answer("x"))
        assert req["cache"]["status"] == "miss"
        other = (await request_hook(client, with_system("be verbose"))).json()
        assert other["cache"]["status"] == "hit-exact"


async def test_system_prompt_is_part_of_the_key_by_default(sidecar_factory: Any) -> None:
    def body(system: str) -> dict[str, Any]:
        return {
            "model": "m",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "Summarise our refund policy"},
            ],
        }

    async with sidecar_factory() as (_, client):
        await round_trip(client, body("Answer in French."), openai_answer("..."))
        other = (await request_hook(client, body("Answer in English."))).json()
        assert other["cache"]["status"] == "miss"


async def test_parameters_and_model_split_entries(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        q = "What is the capital of France?"
        await round_trip(client, chat_body(q, temperature=0), openai_answer("Paris."))
        for variant in (
            chat_body(q, temperature=1),
            chat_body(q, temperature=0, max_tokens=5),
            chat_body(q, temperature=0, seed=7),
            chat_body(q, temperature=0, some_new_param="x"),
            chat_body(q, model="gpt-4o", temperature=0),
        ):
            res = (await request_hook(client, variant)).json()
            assert res["cache"]["status"] == "miss", variant
        assert (await request_hook(client, chat_body(q, temperature=0))).json()["cache"][
            "status"
        ] == "hit-exact"
    config = make_config(cache={"cache_by_model": False})
    async with sidecar_factory(config) as (_, client):
        await round_trip(client, chat_body("Capital of France?", model="a"), openai_answer("P"))
        res = (await request_hook(client, chat_body("Capital of France?", model="b"))).json()
        assert res["cache"]["status"] == "hit-exact"


async def test_normalisation_keeps_case_and_inner_whitespace(sidecar_factory: Any) -> None:
    async with sidecar_factory(make_config(cache={"threshold": 1.0})) as (_, client):
        await round_trip(client, chat_body("print(x)\n  return y"), openai_answer("a"))
        padded = (await request_hook(client, chat_body("  print(x)\n  return y  \n"))).json()
        assert padded["cache"]["status"] == "hit-exact"  # outer whitespace only
        indented = (await request_hook(client, chat_body("print(x)\nreturn y"))).json()
        assert indented["cache"]["status"] != "hit-exact"
        blocks = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "print(x)\n  return y"}]}
            ],
        }
        assert (await request_hook(client, blocks)).json()["cache"]["status"] == "hit-exact"


async def test_follow_up_never_hits_another_conversation(sidecar_factory: Any) -> None:
    def convo(first: str, follow: str) -> dict[str, Any]:
        return {
            "model": "m",
            "messages": [
                {"role": "user", "content": first},
                {"role": "assistant", "content": "..."},
                {"role": "user", "content": follow},
            ],
        }

    async with sidecar_factory() as (_, client):
        await round_trip(
            client,
            convo("What does the basic plan cost?", "And for premium?"),
            openai_answer("$30"),
        )
        res = (
            await request_hook(
                client, convo("How many seats does the basic plan have?", "And for premium?")
            )
        ).json()
        assert res["cache"]["status"] == "miss"
        same = (
            await request_hook(client, convo("What does the basic plan cost?", "and for premium?"))
        ).json()
        assert same["cache"]["status"] == "hit-semantic"


async def test_non_2xx_and_bad_streams_are_not_stored(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (sidecar, client):
        body = chat_body("What is the capital of France?")
        _, resp = await round_trip(client, body, {"error": {"message": "overloaded"}}, status=529)
        assert resp is not None and "stored_entry_id" not in resp
        sbody = chat_body("Tell me a joke", stream=True)
        truncated = openai_stream(["Why", " did"]).replace("data: [DONE]\n\n", "")
        _, resp = await round_trip(client, sbody, truncated, content_type="text/event-stream")
        assert resp is not None and "stored_entry_id" not in resp
        errored = openai_stream(["Why"]).replace(
            "data: [DONE]", 'data: {"error": {"message": "upstream died"}}\n\ndata: [DONE]'
        )
        _, resp = await round_trip(client, sbody, errored, content_type="text/event-stream")
        assert resp is not None and "stored_entry_id" not in resp
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 0


async def test_openai_stream_is_stored_and_replayed(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        body = chat_body("Tell me a joke", stream=True)
        stream = openai_stream(["Why did ", "the chicken ", "cross?"])
        _, resp = await round_trip(client, body, stream, content_type="text/event-stream")
        assert resp is not None and resp.get("stored_entry_id")
        hit = (await request_hook(client, body)).json()
        assert hit["cache"]["status"] == "hit-exact"
        assert hit["response"]["headers"]["content-type"] == "text/event-stream"
        assert hit["response"]["body"] == stream  # every event, in order, with [DONE]
        # A non-streamed request never gets the stream's entry (stream is in the key).
        plain = (await request_hook(client, chat_body("Tell me a joke"))).json()
        assert plain["cache"]["status"] == "miss"


async def test_anthropic_messages_and_stream(sidecar_factory: Any) -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the capital of France?"}],
            }
        ],
    }
    async with sidecar_factory() as (_, client):
        req, resp = await round_trip(client, body, anthropic_answer("Paris."), path="/v1/messages")
        assert req["cache"]["status"] == "miss" and resp is not None
        hit = (await request_hook(client, body, path="/v1/messages")).json()
        assert hit["cache"]["status"] == "hit-exact"
        assert hit["response"]["body"]["content"][0]["text"] == "Paris."
        para = {
            **body,
            "messages": [{"role": "user", "content": "What's the capital city of France?"}],
        }
        sem = (await request_hook(client, para, path="/v1/messages")).json()
        assert sem["cache"]["status"] == "hit-semantic"
        # The OpenAI endpoint with the same text is a different partition of the key space.
        other = (await request_hook(client, chat_body("What is the capital of France?"))).json()
        assert other["cache"]["status"] == "miss"

        sbody = {**body, "stream": True}
        stream = anthropic_stream(["Par", "is."])
        _, resp = await round_trip(
            client, sbody, stream, path="/v1/messages", content_type="text/event-stream"
        )
        assert resp is not None and resp.get("stored_entry_id")
        replay = (await request_hook(client, sbody, path="/v1/messages")).json()
        assert replay["response"]["body"] == stream
        assert replay["response"]["headers"]["content-type"] == "text/event-stream"


async def test_legacy_completions_and_embeddings(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        comp = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello", "max_tokens": 5}
        answer = {
            "id": "cmpl",
            "object": "text_completion",
            "choices": [{"index": 0, "text": "Hello", "finish_reason": "stop"}],
        }
        await round_trip(client, comp, answer, path="/v1/completions")
        hit = (await request_hook(client, comp, path="/v1/completions")).json()
        assert hit["cache"]["status"] == "hit-exact"
        assert hit["response"]["body"]["choices"][0]["text"] == "Hello"

        emb = {"model": "text-embedding-3-small", "input": "hello world"}
        vector = {"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2]}]}
        await round_trip(client, emb, vector, path="/v1/embeddings")
        assert (await request_hook(client, emb, path="/v1/embeddings")).json()["cache"][
            "status"
        ] == "hit-exact"
        near = {**emb, "input": "hello world!"}
        res = (await request_hook(client, near, path="/v1/embeddings")).json()
        assert res["cache"]["status"] == "miss"  # never semantic for embeddings


async def test_other_paths_and_methods_bypass(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        res = (await request_hook(client, {"x": 1}, path="/v1/models")).json()
        assert res == {**res, "action": "continue"}
        assert res["cache"]["status"] == "bypass"
        get = (
            await client.post(
                "/v1/hooks/request", json={"method": "GET", "path": "/v1/models", "headers": {}}
            )
        ).json()
        assert get["cache"]["status"] == "bypass"
        responses = (
            await request_hook(client, {"model": "m", "input": "hi"}, path="/v1/responses")
        ).json()
        assert responses["cache"]["status"] == "bypass"


async def test_eviction_keeps_the_bound_lru(sidecar_factory: Any) -> None:
    config = make_config(cache={"max_entries": 2})
    async with sidecar_factory(config) as (sidecar, client):
        qs = [
            "What is the capital of France?",
            "How do I bake bread?",
            "Which planet is the largest?",
        ]
        await round_trip(client, chat_body(qs[0]), openai_answer("1"))
        await round_trip(client, chat_body(qs[1]), openai_answer("2"))
        # Touch the first so the second is least recently used.
        assert (await request_hook(client, chat_body(qs[0]))).json()["cache"][
            "status"
        ] == "hit-exact"
        await round_trip(client, chat_body(qs[2]), openai_answer("3"))
        assert sidecar.cache is not None and await sidecar.cache.exact.count() == 2
        assert (await request_hook(client, chat_body(qs[1]))).json()["cache"]["status"] == "miss"
        assert (await request_hook(client, chat_body(qs[0]))).json()["cache"][
            "status"
        ] == "hit-exact"
        metrics = (await client.get("/metrics")).text
        assert "sidecar_cache_evictions_total 1.0" in metrics


async def test_byte_bound_evicts(sidecar_factory: Any) -> None:
    config = make_config(cache={"max_bytes": 4096})
    async with sidecar_factory(config) as (sidecar, client):
        big = "x" * 1500
        for i in range(4):
            await round_trip(client, chat_body(f"question number {i}"), openai_answer(big))
        assert sidecar.cache is not None
        store: Any = sidecar.cache.exact
        assert store.bytes_used <= 4096
        assert await store.count() < 4


async def test_persistence_across_restart(sidecar_factory: Any, tmp_path: Any) -> None:
    config = make_config(cache={"data_dir": str(tmp_path / "data")})
    body = chat_body("What is the capital of France?")
    async with sidecar_factory(config) as (_, client):
        await round_trip(client, body, openai_answer("Paris."))
    async with sidecar_factory(config) as (_, client):
        assert (await request_hook(client, body)).json()["cache"]["status"] == "hit-exact"
        para = await request_hook(client, chat_body("What's the capital city of France?"))
        assert para.json()["cache"]["status"] == "hit-semantic"


async def test_invalidation_by_id_and_partition(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (_, client):
        body = chat_body("What is the capital of France?")
        _, resp = await round_trip(client, body, openai_answer("Paris."))
        assert resp is not None
        entry_id = resp["stored_entry_id"]
        assert (await client.delete(f"/v1/cache/entries/{entry_id}")).status_code == 200
        assert (await client.delete(f"/v1/cache/entries/{entry_id}")).status_code == 404
        assert (await request_hook(client, body)).json()["cache"]["status"] == "miss"
        para = await request_hook(client, chat_body("What's the capital city of France?"))
        assert para.json()["cache"]["status"] == "miss"

        for key in ("p1", "p2"):
            await round_trip(client, body, openai_answer("Paris."), headers={"x-bf-cache-key": key})
        res = await client.delete("/v1/cache/partitions/p1")
        assert res.json() == {"partition": "p1", "deleted": 1}
        p1 = await request_hook(client, body, headers={"x-bf-cache-key": "p1"})
        assert p1.json()["cache"]["status"] == "miss"
        p2 = await request_hook(client, body, headers={"x-bf-cache-key": "p2"})
        assert p2.json()["cache"]["status"] == "hit-exact"
