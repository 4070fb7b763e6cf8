"""Bounded metric labels: the first N values keep their label, the rest are ``other``."""

from __future__ import annotations

from pathlib import Path

from conftest import make_config
from hookclient import chat_body
from observed_rules import RULES
from prometheus_client.parser import text_string_to_metric_families

from guardrails.base import Stage
from guardrails.engine import Outcome, RuleDecision
from guardrails.rules import Action
from sidecar.context import HookRequest
from sidecar.labels import OTHER, BoundedLabels
from sidecar.metrics import Metrics, partition_hash
from sidecar.pipeline import Pipeline
from sidecar.services import Sidecar


def test_first_values_keep_their_label_for_the_life_of_the_process() -> None:
    labels = BoundedLabels(3)
    assert [labels(v) for v in ("a", "b", "a", "c", "d", "b")] == ["a", "b", "a", "c", OTHER, "b"]
    assert labels("d") == OTHER and labels("c") == "c"
    assert len(labels) == 3


def _series(metrics: Metrics) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
    return out


async def test_ten_thousand_partitions_give_at_most_n_plus_one_series() -> None:
    n = 25
    metrics = Metrics(max_label_values=n)
    # The transport-free core, no cache: every request is planned (partition known), bypassed.
    pipeline = Pipeline(make_config(cache={"enabled": False}), None, metrics)
    for i in range(10_000):
        req = HookRequest(
            "POST", "/v1/chat/completions", {"x-bf-cache-key": f"tenant-{i}"}, chat_body("hi")
        )
        await pipeline.on_request(req, "http")
    series = _series(metrics)["sidecar_partition_requests_total"]
    assert len(series) == n + 1
    partitions = {dict(labels)["partition"] for labels in series}
    assert OTHER in partitions
    # the first N partitions seen keep their (hashed) label; raw keys never appear
    assert partition_hash("tenant-0") in partitions
    assert partition_hash(f"tenant-{n - 1}") in partitions
    assert partition_hash(f"tenant-{n}") not in partitions
    assert not any(p.startswith("tenant-") for p in partitions)
    total = sum(
        s.value
        for f in text_string_to_metric_families(metrics.render().decode())
        for s in f.samples
        if s.name == "sidecar_partition_requests_total"
    )
    assert total == 10_000


def test_ten_thousand_rule_ids_give_at_most_n_plus_one_series(tmp_path: Path) -> None:
    """Rule files are reloaded while the sidecar runs, so rule ids are not a fixed set: the
    guardrail metrics label them through the sidecar's bounded rule label."""
    n = 25
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = make_config(
        metrics={"max_label_values": n},
        guardrails={"rules": [str(rules)], "reload_interval": 0, "audit_log": ""},
    )
    sidecar = Sidecar(config)
    assert sidecar.engine is not None
    decisions = [
        RuleDecision(f"rule-{i}", ("p",), Action.BLOCK, Outcome.BLOCKED, {}, 0.1)
        for i in range(10_000)
    ]
    sidecar.engine.record(decisions, Stage.INPUT, "r-1")
    families = list(text_string_to_metric_families(sidecar.metrics.render().decode()))
    totals = [s for f in families for s in f.samples if s.name == "guardrail_decisions_total"]
    assert len(totals) == n + 1
    assert {s.labels["rule"] for s in totals} >= {"rule-0", f"rule-{n - 1}", OTHER}
    assert f"rule-{n}" not in {s.labels["rule"] for s in totals}
    assert sum(s.value for s in totals) == 10_000
    latency = {
        s.labels["rule"]
        for f in families
        for s in f.samples
        if s.name == "guardrail_rule_latency_seconds_count"
    }
    assert len(latency) == n + 1
