"""Bounded metric labels: the first N values keep their label, the rest are ``other``."""

from __future__ import annotations

from conftest import make_config
from hookclient import chat_body
from prometheus_client.parser import text_string_to_metric_families

from sidecar.labels import OTHER, BoundedLabels
from sidecar.metrics import Metrics, partition_hash
from sidecar.pipeline import HookRequest, Pipeline


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
