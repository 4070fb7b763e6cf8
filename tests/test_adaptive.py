"""Adaptive semantic hits (issue 18, docs/adaptive.md): exploration, answer checks, feedback,
stats and metrics, evidence that survives a restart and is shared through Redis, and learned
thresholds that move with evidence. Real sidecars over the HTTP hook, the real embedding model,
the real Redis for the shared part."""

from __future__ import annotations

import itertools
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from backend_servers import delete_prefix, redis_reachable
from conftest import make_config
from hookclient import (
    chat_body,
    openai_answer,
    openai_stream,
    request_hook,
    response_hook,
    round_trip,
)

from sidecar.cache.adaptive import (
    PARTITION_MIN_OBSERVATIONS,
    Adaptive,
    EntryEvidence,
    Observation,
    PartitionEvidence,
    Policy,
    binomial_cdf,
    clopper_pearson_upper,
    learned_threshold,
    tail_bounds_met,
)
from sidecar.config import ConfigError, load_config
from sidecar.metrics import partition_hash

QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"
REQUEST_ID = "x-bf-cache-request-id"


def adaptive_config(**cache: Any) -> Any:
    return make_config(cache={"target_wrong_rate": 0.05, "explore_seed": 7, **cache})


def key(name: str) -> dict[str, str]:
    return {"x-bf-cache-key": name}


async def stats(client: httpx.AsyncClient, partition: str) -> dict[str, Any]:
    reply = await client.get("/v1/cache/stats")
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()["partitions"].get(partition, {})
    return found


async def store_and_ask(
    client: httpx.AsyncClient, partition: str, answer: str = "Paris.", store: bool = True
) -> dict[str, Any]:
    """Store QUESTION's answer, then ask PARAPHRASE: the request hook's reply to it. Without
    ``store``, the paraphrase's own answer (when it goes upstream) is not stored."""
    await round_trip(client, chat_body(QUESTION), openai_answer(answer), headers=key(partition))
    headers = key(partition) if store else {**key(partition), "x-bf-cache-no-store": "true"}
    reply = await request_hook(client, chat_body(PARAPHRASE), headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers[REQUEST_ID] == reply.json()["request_id"]
    data: dict[str, Any] = reply.json()
    return data


# ------------------------------------------------------------------ unset target
async def test_unset_target_runs_no_adaptive_code(sidecar_factory: Any) -> None:
    async with sidecar_factory() as (sidecar, client):
        assert sidecar.cache.adaptive is None
        reply = await store_and_ask(client, "plain")
        assert reply["cache"]["status"] == "hit-semantic"
        assert reply["cache"]["reason"].startswith("similarity ")
        assert reply["response"]["headers"][REQUEST_ID] == reply["request_id"]
        assert (await client.get("/v1/cache/stats")).json() == {"partitions": {}}
        feedback = await client.post(
            "/v1/cache/feedback", json={"request_id": reply["request_id"], "correct": False}
        )
        assert feedback.status_code == 409
        assert "target_wrong_rate" in feedback.json()["error"]["message"]


# ------------------------------------------------------------------ exploration
async def test_explored_hit_goes_upstream_and_agreeing_answer_is_recorded(
    sidecar_factory: Any,
) -> None:
    async with sidecar_factory(adaptive_config(explore_rate=1.0)) as (_, client):
        reply = await store_and_ask(client, "explore-agree")
        assert reply["action"] == "continue"
        assert reply["cache"]["status"] == "miss"
        assert reply["cache"]["reason"].startswith("explore: sampled")
        done = await response_hook(client, reply, openai_answer("paris"))  # normalised: same
        assert done.status_code == 200
        assert done.json()["headers"][REQUEST_ID] == reply["request_id"]
        figures = await stats(client, "explore-agree")
        assert figures["explored"] == 1
        assert figures["observations"] == 1
        assert figures["observed_wrong"] == 0
        assert figures["semantic_hits"] == 0


async def test_explored_hit_with_a_different_answer_stops_the_entry(
    sidecar_factory: Any,
) -> None:
    async with sidecar_factory(adaptive_config(explore_rate=1.0)) as (_, client):
        reply = await store_and_ask(client, "explore-disagree", store=False)
        assert reply["cache"]["reason"].startswith("explore")
        wrong = "Quarterly tax filings for small businesses are due in April and July."
        await response_hook(client, reply, openai_answer(wrong))
        figures = await stats(client, "explore-disagree")
        assert (figures["observations"], figures["observed_wrong"]) == (1, 1)
        # A question as close as the one it was wrong for is refused by this entry now.
        again = await request_hook(client, chat_body(PARAPHRASE), headers=key("explore-disagree"))
        cache = again.json()["cache"]
        assert cache["status"] == "miss"
        assert cache["reason"].startswith("adaptive: below learned threshold"), cache
        assert "(entry: observed wrong" in cache["reason"]


async def test_a_streamed_fresh_answer_is_compared_too(sidecar_factory: Any) -> None:
    async with sidecar_factory(adaptive_config(explore_rate=1.0)) as (_, client):
        reply = await store_and_ask(client, "explore-stream", store=False)
        assert reply["cache"]["reason"].startswith("explore")
        stream = openai_stream(["Par", "is."])
        done = await response_hook(client, reply, stream, content_type="text/event-stream")
        assert done.status_code == 200, done.text
        figures = await stats(client, "explore-stream")
        assert (figures["observations"], figures["observed_wrong"]) == (1, 0)


async def test_answers_between_the_thresholds_are_not_counted(sidecar_factory: Any) -> None:
    config = adaptive_config(explore_rate=1.0, answer_agree_min=0.999, answer_disagree_max=-0.9)
    async with sidecar_factory(config) as (sidecar, client):
        reply = await store_and_ask(client, "explore-unknown")
        await response_hook(client, reply, openai_answer("The capital of France is Paris."))
        figures = await stats(client, "explore-unknown")
        assert figures["explored"] == 1
        assert figures["observations"] == 0
        sample = sidecar.metrics.registry.get_sample_value(
            "sidecar_adaptive_checks_total", {"outcome": "unknown"}
        )
        assert sample == 1.0


async def test_compare_agree_disagree_unknown_with_the_real_model(sidecar_factory: Any) -> None:
    async with sidecar_factory(adaptive_config()) as (sidecar, _):
        adaptive = sidecar.cache.adaptive
        assert await adaptive.compare("Paris.", "  PARIS ") == "agree"
        assert (
            await adaptive.compare(
                "Hugging Face Hub hosts Git-based models, datasets and Spaces.",
                "Hugging Face Hub serves as a repository for Git-based models, datasets, "
                "and Spaces.",
            )
            == "agree"
        )
        assert (
            await adaptive.compare("Paris.", "Quarterly tax filings are due in April and July.")
            == "disagree"
        )


# ------------------------------------------------------------------ feedback
async def test_feedback_validation_and_effect(sidecar_factory: Any) -> None:
    async with sidecar_factory(adaptive_config(explore_rate=0.0)) as (_, client):
        reply = await store_and_ask(client, "feedback")
        assert reply["cache"]["status"] == "hit-semantic", reply["cache"]
        assert "(static)" in reply["cache"]["reason"]
        rid = reply["request_id"]
        entry_id = reply["cache"]["entry_id"]

        bad = [
            (b"not json", "malformed_json"),
            (b"[]", "bad_request"),
            (b'{"request_id": "x"}', "missing_field"),
            (b'{"request_id": "x", "correct": "no"}', "wrong_type"),
            (b'{"request_id": "x", "correct": false, "extra": 1}', "unknown_field"),
            (b'{"request_id": "x", "entry_id": "y", "question": "q", "correct": false}', None),
            (b'{"entry_id": "y", "correct": false}', "missing_field"),
        ]
        for body, kind in bad:
            answer = await client.post("/v1/cache/feedback", content=body)
            assert answer.status_code == 400, (body, answer.text)
            if kind is not None:
                assert answer.json()["error"]["kind"] == kind, answer.text
        unknown = await client.post(
            "/v1/cache/feedback", json={"request_id": "no-such-request", "correct": False}
        )
        assert unknown.status_code == 404
        assert (await stats(client, "feedback"))["observed_wrong"] == 0  # nothing changed

        ok = await client.post("/v1/cache/feedback", json={"request_id": rid, "correct": False})
        assert ok.status_code == 200, ok.text
        assert ok.json()["entry_id"] == entry_id
        assert ok.json()["partition_hash"] == partition_hash("feedback")
        again = await client.post("/v1/cache/feedback", json={"request_id": rid, "correct": False})
        assert again.status_code == 404  # a served hit is reported once
        figures = await stats(client, "feedback")
        assert (figures["observed_wrong"], figures["reported_wrong"]) == (1, 1)

        # The paraphrase is no longer served by that entry; the exact repeat still is.
        para = await request_hook(client, chat_body(PARAPHRASE), headers=key("feedback"))
        assert para.json()["cache"]["status"] == "miss"
        assert "(entry: reported wrong" in para.json()["cache"]["reason"]
        exact = await request_hook(client, chat_body(QUESTION), headers=key("feedback"))
        assert exact.json()["cache"]["status"] == "hit-exact"

        by_entry = await client.post(
            "/v1/cache/feedback",
            json={"entry_id": entry_id, "question": "Capital of France?", "correct": False},
        )
        assert by_entry.status_code == 200, by_entry.text
        assert 0.5 < by_entry.json()["similarity"] <= 1.0
        missing = await client.post(
            "/v1/cache/feedback",
            json={"entry_id": "0" * 64, "question": "Capital of France?", "correct": False},
        )
        assert missing.status_code == 404

        # Deleting the partition drops its evidence with its entries.
        assert (await client.delete("/v1/cache/partitions/feedback")).status_code == 200
        assert (await stats(client, "feedback"))["observations"] == 0


async def test_stats_and_metrics(sidecar_factory: Any) -> None:
    async with sidecar_factory(adaptive_config(explore_rate=0.0)) as (_, client):
        await store_and_ask(client, "figures")
        await request_hook(client, chat_body(QUESTION), headers=key("figures"))
        figures = await stats(client, "figures")
        assert figures["lookups"] == 3
        assert figures["exact_hits"] == 1
        assert figures["semantic_hits"] == 1
        assert figures["explored"] == 0
        assert figures["target_wrong_rate"] == 0.05
        assert figures["learned_threshold"] == 0.7  # no evidence yet: the static threshold
        assert figures["threshold_source"] == "static"
        text = (await client.get("/metrics")).text
        label = partition_hash("figures")
        assert f'sidecar_adaptive_lookups{{partition="{label}"}} 3.0' in text
        assert f'sidecar_adaptive_semantic_hits{{partition="{label}"}} 1.0' in text
        assert "figures" not in text.replace("sidecar_adaptive", "")  # hashes, never names


# ------------------------------------------------------------------ state
async def test_evidence_survives_restart_and_goes_with_its_entry(
    sidecar_factory: Any, tmp_path: Path
) -> None:
    config = adaptive_config(explore_rate=0.0, data_dir=str(tmp_path))
    async with sidecar_factory(config) as (_, client):
        reply = await store_and_ask(client, "restart")
        entry_id = reply["cache"]["entry_id"]
        ok = await client.post(
            "/v1/cache/feedback", json={"request_id": reply["request_id"], "correct": False}
        )
        assert ok.status_code == 200
    async with sidecar_factory(config) as (_, client):
        para = await request_hook(client, chat_body(PARAPHRASE), headers=key("restart"))
        assert "(entry: reported wrong" in para.json()["cache"]["reason"]
        assert (await stats(client, "restart"))["observed_wrong"] == 1
        db = sqlite3.connect(str(tmp_path / "cache.sqlite3"))
        try:
            rows = db.execute("SELECT id FROM adaptive_entries").fetchall()
            assert rows == [(entry_id,)]
            assert (await client.delete(f"/v1/cache/entries/{entry_id}")).status_code == 200
            rows = db.execute("SELECT id FROM adaptive_entries").fetchall()
            assert rows == []
        finally:
            db.close()


async def test_replicas_share_evidence_through_redis(
    sidecar_factory: Any, pending_key: str
) -> None:
    if (why := redis_reachable()) is not None:
        pytest.skip(f"needs the shared Redis: {why}")
    url = "redis://127.0.0.1:6379"
    namespace = f"adapt-{uuid.uuid4().hex[:8]}"
    config = adaptive_config(explore_rate=0.0, exact_store=url, namespace=namespace)
    try:
        async with sidecar_factory(config) as (_, a), sidecar_factory(config) as (_, b):
            reply = await store_and_ask(a, "shared")
            assert reply["cache"]["status"] == "hit-semantic", reply["cache"]
            report = {"request_id": reply["request_id"], "correct": False}
            ok = await b.post("/v1/cache/feedback", json=report)  # the other replica
            assert ok.status_code == 200, ok.text
            assert (await b.post("/v1/cache/feedback", json=report)).status_code == 404
            para = await request_hook(a, chat_body(PARAPHRASE), headers=key("shared"))
            assert "(entry: reported wrong" in para.json()["cache"]["reason"]
            assert (await stats(a, "shared"))["observed_wrong"] == 1
    finally:
        delete_prefix(url, namespace)


# ------------------------------------------------------------------ deciding
def test_clopper_pearson_upper_bound() -> None:
    # Reference values: the 0.95 quantile of Beta(k + 1, n - k) (scipy.stats.beta.ppf).
    assert clopper_pearson_upper(0, 100) == pytest.approx(0.029513, abs=1e-6)
    assert clopper_pearson_upper(1, 100) == pytest.approx(0.046560, abs=1e-6)
    assert clopper_pearson_upper(5, 100) == pytest.approx(0.102253, abs=1e-6)
    assert clopper_pearson_upper(40, 1568) == pytest.approx(0.033079, abs=1e-6)
    assert clopper_pearson_upper(0, 0) == 1.0
    assert clopper_pearson_upper(3, 3) == 1.0
    # By definition: at the bound, k or fewer wrong in n happens with probability 5%.
    assert binomial_cdf(5, 100, clopper_pearson_upper(5, 100)) == pytest.approx(0.05, abs=1e-9)
    assert binomial_cdf(2, 10, 0.3) == pytest.approx(0.382783, abs=1e-6)
    assert binomial_cdf(0, 4000, 0.5) == pytest.approx(0.0, abs=1e-300)  # no underflow error
    # Zero wrong of n: the bound falls under 2% only from n = 149 on.
    assert clopper_pearson_upper(0, 148) > 0.02 >= clopper_pearson_upper(0, 149)


def test_running_tail_test_agrees_with_the_bound() -> None:
    """``tail_bounds_met`` follows the binomial CDF by recurrences, one outcome at a time: at
    every prefix it says what the bound computed afresh says."""
    import random

    rng = random.Random(3)
    for target, rate in ((0.02, 0.01), (0.05, 0.04), (0.01, 0.0), (0.3, 0.2)):
        outcomes = [rng.random() < rate for _ in range(1500)]
        met = tail_bounds_met(outcomes, target, 0.95)
        wrong = 0
        for n, bad in enumerate(outcomes, 1):
            wrong += bad
            if n % 7 == 0:
                bound = clopper_pearson_upper(wrong, n)
                if abs(bound - target) > 1e-9:
                    assert met[n - 1] == (bound <= target), (target, n, wrong, bound)
    assert tail_bounds_met([False] * 3, 1.0, 0.95) == [True] * 3
    assert tail_bounds_met([False] * 3, 0.0, 0.95) == [False] * 3


def test_learned_threshold_moves_with_evidence() -> None:
    # Wrong answers around 0.80, right ones above: the threshold sits above the wrong ones.
    obs = [Observation(0.80 + i * 0.001, False) for i in range(20)]
    obs += [Observation(0.85 + (i % 100) * 0.001, True) for i in range(300)]
    first = learned_threshold(obs, 0.05)
    assert first.threshold is not None and first.threshold > 0.805
    assert first.upper <= 0.05
    # Clean evidence lower down (free observations of rejected candidates) lowers it.
    obs += [Observation(0.72 + (i % 70) * 0.001, True) for i in range(1500)]
    second = learned_threshold(obs, 0.05)
    assert second.threshold is not None and second.threshold < first.threshold
    # A tighter target needs more similarity.
    tight = learned_threshold(obs, 0.003)
    assert tight.threshold is None or tight.threshold > second.threshold
    # Counts, not inverse weights: an explored observation (weight 1 / explore_rate) counts
    # once, like a rejected candidate's (docs/adaptive.md, "Deciding").
    base = [Observation(0.85 + (i % 100) * 0.001, True) for i in range(200)]
    light = learned_threshold([Observation(0.9, False, 1.0), *base], 0.05)
    heavy = learned_threshold([Observation(0.9, False, 10.0), *base], 0.05)
    assert light.threshold == heavy.threshold == 0.85
    assert light.wrong_rate == pytest.approx(1 / 201)
    assert light.upper == pytest.approx(clopper_pearson_upper(1, 201))
    # Equal similarities are admitted together: no threshold splits them.
    tied = [Observation(0.9, True)] * 200 + [Observation(0.9, False)] * 3
    assert learned_threshold(tied, 0.05).threshold == 0.9
    assert learned_threshold(tied, 0.02).threshold is None


def test_learned_threshold_is_the_lowest_whose_tail_bound_meets_the_target() -> None:
    """Brute force over every candidate threshold on random evidence: the learned threshold is
    the lowest observed similarity whose tail (observations at or above it) has a bound at or
    under the target; its figures are that tail's."""
    import random

    rng = random.Random(11)
    for trial in range(30):
        obs = []
        for _ in range(rng.randrange(50, 400)):
            sim = round(rng.uniform(0.7, 1.0), 3)
            wrong_p = 0.3 if sim < 0.85 else 0.1 if sim < 0.95 else 0.005
            obs.append(Observation(sim, rng.random() >= wrong_p))
        target = rng.choice((0.01, 0.02, 0.05, 0.1))
        found = learned_threshold(obs, target)
        best = None
        for t in sorted({o.similarity for o in obs}):
            tail = [o for o in obs if o.similarity >= t]
            wrong = sum(not o.agreed for o in tail)
            if clopper_pearson_upper(wrong, len(tail)) <= target:
                best = (t, len(tail), wrong)
                break
        if best is None:
            assert found.threshold is None, trial
        else:
            assert (found.threshold, found.observations) == best[:2], trial
            assert found.wrong_rate == pytest.approx(best[2] / best[1])
            assert found.upper <= target


def test_decisions_and_their_reasons() -> None:
    config = make_config(cache={"target_wrong_rate": 0.05, "explore_rate": 0.0}).cache
    adaptive = Adaptive(config)
    policy = Policy(0.05, 0.0)
    empty = PartitionEvidence()
    static = adaptive.decide(policy, 0.75, 0.7, None, empty)
    assert static.serve and "(static)" in static.reason
    part = PartitionEvidence()
    for i in range(400):
        part.add(Observation(0.70 + (i % 30) * 0.01, i % 30 >= 15))  # wrong below ~0.85
    below = adaptive.decide(policy, 0.75, 0.7, None, part)
    assert not below.serve and below.observe
    assert below.reason.startswith("adaptive: below learned threshold") and "(partition)" in (
        below.reason
    )
    above = adaptive.decide(policy, 0.95, 0.7, None, part)
    assert above.serve and "(partition)" in above.reason
    entry = EntryEvidence(1.0)
    entry.add(Observation(0.96, False, source="feedback"))
    vetoed = adaptive.decide(policy, 0.95, 0.7, entry, part)
    assert not vetoed.serve and "(entry: reported wrong" in vetoed.reason
    none = PartitionEvidence()
    for _ in range(PARTITION_MIN_OBSERVATIONS):
        none.add(Observation(0.9, False))
    blocked = adaptive.decide(policy, 0.99, 0.7, None, none)
    assert not blocked.serve and blocked.reason.startswith("adaptive: no similarity meets")


def test_exploration_share_never_exceeds_the_configured_rate() -> None:
    """The budget: at every point of the stream, in every seed, explored / would-be hits is at
    most the rate (a plain coin exceeds it in about half of all runs), and still close to it."""
    for seed in range(20):
        config = make_config(
            cache={"target_wrong_rate": 0.05, "explore_rate": 0.1, "explore_seed": seed}
        ).cache
        adaptive = Adaptive(config)
        partition = PartitionEvidence()
        explored = 0
        for n in range(1, 3001):
            decision = adaptive.decide(Policy(0.05, 0.1), 0.9, 0.7, None, partition)
            explored += decision.explored
            assert decision.explored != decision.serve
            assert explored / n <= 0.1, (seed, n, explored)
        assert explored / 3000 > 0.085, (seed, explored)
    # Not periodic: the gaps between explored hits vary (the coin is still tossed).
    adaptive = Adaptive(make_config(cache={"target_wrong_rate": 0.05, "explore_seed": 1}).cache)
    partition = PartitionEvidence()
    picks = [
        i
        for i in range(2000)
        if adaptive.decide(Policy(0.05, 0.1), 0.9, 0.7, None, partition).explored
    ]
    assert len({b - a for a, b in itertools.pairwise(picks)}) > 5
    # Per partition: another partition's exploration does not spend this one's budget.
    other = PartitionEvidence()
    first = [adaptive.decide(Policy(0.05, 0.5), 0.9, 0.7, None, other) for _ in range(400)]
    assert 0 < sum(d.explored for d in first) <= 200
    assert partition.budget.would_be == 2000 and other.budget.would_be == 400
    # Rate 0 explores nothing; rate 1 explores every would-be hit.
    assert not any(
        adaptive.decide(Policy(0.05, 0.0), 0.9, 0.7, None, PartitionEvidence()).explored
        for _ in range(100)
    )
    every = PartitionEvidence()
    assert all(
        adaptive.decide(Policy(0.05, 1.0), 0.9, 0.7, None, every).explored for _ in range(50)
    )


def test_config_validation(tmp_path: Path) -> None:
    def load(text: str) -> Any:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return load_config(path, environ={})

    assert load("cache: {}").cache.target_wrong_rate is None
    cfg = load(
        "cache:\n  target_wrong_rate: 0.02\n  partitions:\n    team-a: {explore_rate: 0.2}\n"
        "    team-b: {target_wrong_rate: null}\n"
    )
    adaptive = Adaptive(cfg.cache)
    assert adaptive.policy("team-a") == Policy(0.02, 0.2)
    assert adaptive.policy("team-b") is None
    assert adaptive.policy("other") == Policy(0.02, 0.1)
    for bad, where in [
        ("cache: {target_wrong_rate: 1.5}", "cache.target_wrong_rate"),
        ("cache: {target_wrong_rate: 0}", "cache.target_wrong_rate"),
        ("cache: {explore_rate: -0.1}", "cache.explore_rate"),
        ("cache: {partitions: {a: {explore_rate: 2}}}", "cache.partitions.a.explore_rate"),
        ("cache: {partitions: {a: {target: 0.1}}}", "cache.partitions.a.target"),
        ("cache: {answer_agree_min: 0.5, answer_disagree_max: 0.6}", "answer_disagree_max"),
    ]:
        with pytest.raises(ConfigError) as err:
            load(bad)
        assert where in str(err.value), (bad, str(err.value))


# ------------------------------------------------------------------ CLI
def test_cache_stats_command_reads_the_endpoint_with_the_token(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from replica import REPO, Replica

    token = uuid.uuid4().hex
    config = {
        "cache": {"target_wrong_rate": 0.05, "data_dir": ":memory:", "default_cache_key": "cli"},
        "server": {"auth_token_env": "ADAPT_TEST_TOKEN", "grpc_enabled": False},
    }
    env = {"ADAPT_TEST_TOKEN": token}
    replica = Replica(config, str(tmp_path), "cli", env)
    auth = {"authorization": f"Bearer {token}"}
    replica.start()
    try:
        deadline = time.monotonic() + 180
        while True:  # poll readiness (with the token) under a deadline
            assert replica.process is not None and replica.process.poll() is None, (
                replica.log_tail()
            )
            try:
                if httpx.get(f"{replica.url}/readyz", headers=auth, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, replica.log_tail()
            time.sleep(0.2)
        assert httpx.get(f"{replica.url}/v1/cache/stats").status_code == 401
        hook = {"method": "POST", "path": "/v1/chat/completions", "body": chat_body(QUESTION)}
        first = httpx.post(f"{replica.url}/v1/hooks/request", json=hook, headers=auth)
        assert first.status_code == 200 and first.headers[REQUEST_ID]
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidecar",
                "cache",
                "stats",
                "--config",
                str(replica.config_path),
            ],
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].split()[:3] == ["partition", "lookups", "exact"]
        assert lines[1].split()[:2] == ["cli", "1"]
        no_token = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidecar",
                "cache",
                "stats",
                "--config",
                str(replica.config_path),
            ],
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "ADAPT_TEST_TOKEN"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert no_token.returncode == 2 and "ADAPT_TEST_TOKEN" in no_token.stderr
    finally:
        replica.stop()


def test_partition_threshold_may_lag_right_checks_but_never_wrong_ones() -> None:
    rng = random.Random(5)
    evidence = PartitionEvidence()
    fresh_count = 0
    for _ in range(3000):
        obs = Observation(similarity=0.7 + 0.3 * rng.random(), agreed=rng.random() > 0.1)
        evidence.add(obs)
        held = evidence.learned(0.05)
        fresh = learned_threshold(evidence.observations, 0.05)
        if not obs.agreed:
            assert held == fresh  # a wrong check is counted at once
            fresh_count += 1
        elif fresh.threshold is not None:
            # lagging only ever keeps a stricter threshold (or none)
            assert held.threshold is None or held.threshold >= fresh.threshold
        else:
            assert held.threshold is None
    assert fresh_count > 100
