"""The ONNX Runtime backend and the micro-batcher, against the real all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import make_config
from hookclient import chat_body, openai_answer, request_hook, round_trip

from embedders import EmbedderError, build_embedder
from embedders.batching import MicroBatcher, group_by_length
from embedders.onnx_embedder import OnnxEmbedder, logged_step, remove_unfinished_exports
from embedders.sentence_tf import SentenceTransformerEmbedder
from sidecar.cli import main as cli_main
from sidecar.config import ConfigError, load_config
from sidecar.services import Sidecar
from sidecar.transports.http import create_app

SENTENCES = [
    "What is the capital of France?",
    "How do I reset my password?",
    "ok",
    "Is the museum open on Sundays? I would like to visit with two children and a dog.",
    "Explain the difference between a process and a thread in an operating system, with "
    "examples from Linux and Windows, and say when each is the better choice.",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_fp32(onnx_cache: Path) -> Iterator[OnnxEmbedder]:
    model = OnnxEmbedder(cache_dir=str(onnx_cache))
    asyncio.run(model.start())
    yield model
    asyncio.run(model.close())


@pytest.fixture(scope="module")
def onnx_int8(onnx_cache: Path, onnx_fp32: OnnxEmbedder) -> Iterator[OnnxEmbedder]:
    model = OnnxEmbedder(cache_dir=str(onnx_cache), quantize=True)
    asyncio.run(model.start())
    yield model
    asyncio.run(model.close())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


# ---------------------------------------------------------------------------- ONNX backend
async def test_onnx_fp32_agrees_with_sentence_transformers(
    onnx_fp32: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    reference = await embedder.embed(SENTENCES)
    got = await onnx_fp32.embed(SENTENCES)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert onnx_fp32.dimension == 384
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert _cosines(got, reference).min() > 0.99


async def test_onnx_int8_stays_close_to_sentence_transformers(
    onnx_int8: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    reference = await embedder.embed(SENTENCES)
    got = await onnx_int8.embed(SENTENCES)
    assert _cosines(got, reference).min() > 0.95
    assert onnx_int8.onnx_path is not None and onnx_int8.onnx_path.name.endswith(".int8.onnx")


async def test_onnx_batch_rows_match_single_texts(onnx_fp32: OnnxEmbedder) -> None:
    # Padding a short text to a long neighbour must not change its vector.
    together = await onnx_fp32.embed(SENTENCES)
    for i, text in enumerate(SENTENCES):
        alone = await onnx_fp32.embed([text])
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)


async def test_model_ids_keep_fp32_and_int8_indexes_apart(
    onnx_fp32: OnnxEmbedder, onnx_int8: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    assert len({onnx_fp32.model_id, onnx_int8.model_id, embedder.model_id}) == 3


def test_prepare_finds_the_exported_file_without_exporting_again(
    onnx_cache: Path, onnx_int8: OnnxEmbedder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert onnx_int8.onnx_path is not None
    before = os.stat(onnx_int8.onnx_path)
    listing = sorted(p.name for p in onnx_cache.iterdir())
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"embedder:\n  backend: onnx\n  onnx_quantize: true\n  onnx_cache_dir: {onnx_cache}\n"
    )
    assert cli_main(["embedder", "prepare", "--config", str(config)]) == 0
    assert f"ready: {onnx_int8.onnx_path}" in capsys.readouterr().out
    after = os.stat(onnx_int8.onnx_path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in onnx_cache.iterdir()) == listing


def test_prepare_with_torch_has_nothing_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["embedder", "prepare"]) == 0
    assert "nothing to prepare" in capsys.readouterr().out


def test_a_slow_step_is_logged_when_it_starts_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sidecar.embedder"), logged_step("exporting m"):
        pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("exporting m (once per model") and "embedder prepare" in lines[0]
    assert lines[-1].startswith("exporting m: done in ")


def test_a_slow_step_is_shown_at_log_level_warning_too(caplog: pytest.LogCaptureFixture) -> None:
    # log_level: warning hides INFO; a first start that exports must still say so.
    with caplog.at_level(logging.WARNING, logger="sidecar.embedder"), logged_step("exporting m"):
        pass
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == [logging.WARNING, logging.WARNING]
    assert lines[0][1].startswith("exporting m (once per model")
    assert lines[-1][1].startswith("exporting m: done in ")


async def test_export_is_cached_and_reused(onnx_cache: Path, onnx_fp32: OnnxEmbedder) -> None:
    assert onnx_fp32.onnx_path is not None and onnx_fp32.onnx_path.parent == onnx_cache
    before = os.stat(onnx_fp32.onnx_path)
    listing = sorted(p.name for p in onnx_cache.iterdir())
    again = OnnxEmbedder(cache_dir=str(onnx_cache))
    await again.start()
    try:
        assert again.onnx_path == onnx_fp32.onnx_path
        after = os.stat(onnx_fp32.onnx_path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert sorted(p.name for p in onnx_cache.iterdir()) == listing
        np.testing.assert_allclose(
            await again.embed(SENTENCES[:2]), await onnx_fp32.embed(SENTENCES[:2]), atol=1e-6
        )
    finally:
        await again.close()


async def test_corrupt_cached_file_is_named_in_the_error(
    tmp_path: Path, onnx_fp32: OnnxEmbedder
) -> None:
    assert onnx_fp32.onnx_path is not None
    broken = tmp_path / onnx_fp32.onnx_path.name
    broken.write_bytes(b"not an onnx model")
    model = OnnxEmbedder(cache_dir=str(tmp_path))
    with pytest.raises(EmbedderError, match="delete it") as info:
        await model.start()
    assert str(broken) in str(info.value)
    await model.close()


async def test_unusable_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    model = OnnxEmbedder(cache_dir=str(blocker / "onnx"))
    with pytest.raises(EmbedderError, match="onnx_cache_dir"):
        await model.start()
    await model.close()


async def test_embed_before_start_is_refused() -> None:
    model = OnnxEmbedder(cache_dir="/nonexistent-never-created")
    with pytest.raises(EmbedderError, match="before start"):
        await model.embed(["hello"])
    await model.close()


# ---------------------------------------------------------------------------- micro-batcher
async def test_concurrent_callers_get_their_own_rows(onnx_fp32: OnnxEmbedder) -> None:
    batcher = MicroBatcher(onnx_fp32, window=0.002, max_batch=8)
    requests: list[list[str]] = [[s] for s in SENTENCES * 3] + [SENTENCES[:2]]
    singles = [await onnx_fp32.embed(texts) for texts in requests]
    results = await asyncio.gather(*(batcher.embed(texts) for texts in requests))
    for texts, got, alone in zip(requests, results, singles, strict=True):
        assert got.shape == (len(texts), 384)
        np.testing.assert_allclose(got, alone, atol=1e-5)
    # 17 texts queued in one event-loop turn: batches of at most 8 texts, not 16 model calls.
    assert batcher.stats.calls == 16 and batcher.stats.texts == 17
    assert batcher.stats.batches == 3 and batcher.stats.largest_batch == 8


async def test_a_lone_request_completes_in_one_model_call(onnx_fp32: OnnxEmbedder) -> None:
    batcher = MicroBatcher(onnx_fp32, window=0.002, max_batch=32)
    got = await batcher.embed(["What is the capital of France?"])
    np.testing.assert_allclose(
        got, await onnx_fp32.embed(["What is the capital of France?"]), atol=1e-6
    )
    assert (batcher.stats.calls, batcher.stats.batches) == (1, 1)
    # Sequential callers are each served alone, never held back for company.
    await batcher.embed(["second"])
    assert batcher.stats.batches == 2 and batcher.stats.largest_batch == 1


async def test_a_call_larger_than_max_batch_runs_alone(onnx_fp32: OnnxEmbedder) -> None:
    batcher = MicroBatcher(onnx_fp32, window=0.0, max_batch=2)
    big, small = SENTENCES, ["tiny"]
    got_big, got_small = await asyncio.gather(batcher.embed(big), batcher.embed(small))
    assert got_big.shape == (5, 384) and got_small.shape == (1, 384)
    assert batcher.stats.batches == 2 and batcher.stats.largest_batch == 5


async def test_model_errors_reach_every_waiting_caller() -> None:
    unstarted = SentenceTransformerEmbedder()  # embed() before start() raises EmbedderError
    batcher = MicroBatcher(unstarted, window=0.002, max_batch=32)
    try:
        results = await asyncio.gather(
            *(batcher.embed([f"question {i}"]) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, EmbedderError) for r in results), results
        assert all("before start" in str(r) for r in results)
        assert batcher.stats.batches == 1
    finally:
        await unstarted.close()


async def test_a_cancelled_caller_does_not_disturb_the_others(onnx_fp32: OnnxEmbedder) -> None:
    batcher = MicroBatcher(onnx_fp32, window=0.002, max_batch=32)
    tasks = [asyncio.create_task(batcher.embed([s])) for s in SENTENCES[:3]]
    await asyncio.sleep(0)  # let the three enqueue
    tasks[1].cancel()
    first, third = await tasks[0], await tasks[2]
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    np.testing.assert_allclose(first, await onnx_fp32.embed(SENTENCES[:1]), atol=1e-5)
    np.testing.assert_allclose(third, await onnx_fp32.embed(SENTENCES[2:3]), atol=1e-5)


class RecordingModel:
    """The real model, recording the texts of each call it is given (in order)."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner = inner
        self.model_id, self.dimension = inner.model_id, inner.dimension
        self.calls: list[list[str]] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def embed(self, texts: Any) -> np.ndarray:
        self.calls.append(list(texts))
        return await self.inner.embed(texts)


async def test_held_background_work_waits_and_urgent_work_does_not(
    onnx_fp32: OnnxEmbedder,
) -> None:
    model = RecordingModel(onnx_fp32)
    batcher = MicroBatcher(model, window=0.0, max_batch=8)
    loop = asyncio.get_running_loop()
    looks: list[int] = []
    second: list[asyncio.Task[np.ndarray]] = []

    def held() -> bool:
        looks.append(len(model.calls))
        if len(looks) == 2:  # a lookup arrives while the deferred vector is held
            second.append(loop.create_task(batcher.embed(["a second lookup"])))
        return len(looks) < 5  # the hold ends at the fifth look

    batcher.hold_background_while(held)
    waits: list[float] = []
    batcher.on_wait = waits.append  # each urgent text's queue wait (the metric's source)
    deferred = asyncio.create_task(batcher.embed_background(["a deferred vector"]))
    first = await batcher.embed(["a first lookup"])
    vector = await deferred
    await second[0]
    # Both lookups ran at once (the second woke the held lane); the deferred text only once
    # the hold was over, with nothing else queued.
    assert model.calls == [["a first lookup"], ["a second lookup"], ["a deferred vector"]]
    assert looks == [1, 1, 2, 2, 2]
    assert len(waits) == 2 and all(w >= 0 for w in waits)  # the lookups, not the vector
    assert batcher.stats.background_held_s > 0
    np.testing.assert_allclose(first, await onnx_fp32.embed(["a first lookup"]), atol=1e-5)
    np.testing.assert_allclose(vector, await onnx_fp32.embed(["a deferred vector"]), atol=1e-5)


def test_length_groups_bound_the_padding_and_keep_every_index() -> None:
    lengths = [12, 3, 55, 11, 9, 14, 10, 200, 13, 12, 8]
    groups = group_by_length(lengths, max_padding=0.3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        real = sum(lengths[i] for i in group)
        assert max(lengths[i] for i in group) * len(group) <= 1.3 * real
    assert [7] in groups and [2] in groups  # the long outliers are not padded to
    assert group_by_length([]) == []


async def test_mixed_lengths_in_one_batch_keep_their_rows(onnx_fp32: OnnxEmbedder) -> None:
    batcher = MicroBatcher(onnx_fp32, window=0.002, max_batch=32, split_by_length=True)
    texts = ["hi", SENTENCES[4] * 3, "ok then", SENTENCES[3], "a", SENTENCES[4]]
    results = await asyncio.gather(*(batcher.embed([t]) for t in texts))
    for text, got in zip(texts, results, strict=True):
        np.testing.assert_allclose(got, await onnx_fp32.embed([text]), atol=1e-5)
    assert batcher.stats.batches == 1


def test_the_batcher_survives_a_new_event_loop(onnx_fp32: OnnxEmbedder) -> None:
    batcher = MicroBatcher(onnx_fp32, window=0.002, max_batch=32)
    one = asyncio.run(batcher.embed(["first loop"]))
    two = asyncio.run(batcher.embed(["second loop"]))
    assert one.shape == two.shape == (1, 384)


def test_batcher_rejects_bad_settings(onnx_fp32: OnnxEmbedder) -> None:
    with pytest.raises(EmbedderError, match="max_batch"):
        MicroBatcher(onnx_fp32, max_batch=0)
    with pytest.raises(EmbedderError, match="batch_window_ms"):
        MicroBatcher(onnx_fp32, window=-1)


# ---------------------------------------------------------------------------- wiring
def test_build_embedder_wraps_in_the_batcher_unless_disabled(onnx_cache: Path) -> None:
    batched = build_embedder(
        "onnx",
        model="all-MiniLM-L6-v2",
        onnx_cache_dir=str(onnx_cache),
        batch_window_ms=2.0,
        max_batch=16,
    )
    assert isinstance(batched, MicroBatcher) and batched.max_batch == 16
    assert isinstance(batched.inner, OnnxEmbedder)
    assert batched.window == pytest.approx(0.002)
    plain = build_embedder("onnx", model="all-MiniLM-L6-v2", onnx_quantize=True, max_batch=1)
    assert isinstance(plain, OnnxEmbedder) and plain.model_id.startswith("onnx-int8:")
    remote = build_embedder("openai", model="m", base_url="http://127.0.0.1:9", max_batch=8)
    assert isinstance(remote, MicroBatcher) and not remote.split_by_length
    with pytest.raises(EmbedderError, match="unknown embedder backend 'tensorflow'"):
        build_embedder("tensorflow", model="x")


def test_embedder_config_keys_and_their_errors() -> None:
    c = load_config(environ={})
    assert (c.embedder.batch_window_ms, c.embedder.max_batch) == (2.0, 32)
    assert not c.embedder.onnx_quantize and c.embedder.onnx_cache_dir == ""
    c = load_config(
        environ={
            "SIDECAR_EMBEDDER__BACKEND": "onnx",
            "SIDECAR_EMBEDDER__ONNX_QUANTIZE": "true",
            "SIDECAR_EMBEDDER__MAX_BATCH": "1",
        }
    )
    assert (c.embedder.backend, c.embedder.onnx_quantize, c.embedder.max_batch) == ("onnx", True, 1)
    with pytest.raises(ConfigError, match="embedder.max_batch"):
        load_config(environ={"SIDECAR_EMBEDDER__MAX_BATCH": "0"})
    with pytest.raises(ConfigError, match="embedder.backend"):
        load_config(environ={"SIDECAR_EMBEDDER__BACKEND": "tensorflow"})


async def test_sidecar_with_the_onnx_backend_serves_semantic_hits(
    onnx_cache: Path, onnx_fp32: OnnxEmbedder
) -> None:
    # A generous queue budget: a paraphrase right after the store waits (within the budget)
    # for the first question's late vector, and this machine's cores are shared.
    config = make_config(
        embedder={"backend": "onnx", "onnx_cache_dir": str(onnx_cache), "max_queue_ms": 10_000}
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        assert isinstance(sidecar.embedder, MicroBatcher)
        assert sidecar.embedder.model_id == onnx_fp32.model_id
        transport = httpx.ASGITransport(app=create_app(sidecar, manage_lifecycle=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            await round_trip(
                client, chat_body("What is the capital of France?"), openai_answer("Paris.")
            )
            questions = ["What's the capital city of France?", "How do I bake sourdough bread?"]
            replies: list[Any] = await asyncio.gather(
                *(request_hook(client, chat_body(q)) for q in questions)
            )
        statuses = [r.json()["cache"]["status"] for r in replies]
        assert statuses == ["hit-semantic", "miss"]
    finally:
        await sidecar.close()


def test_missing_tokenizer_is_named(tmp_path: Path, onnx_cache: Path) -> None:
    from embedders.sentence_tf import packaged_model_path

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for item in Path(packaged_model_path()).iterdir():
        if item.name != "tokenizer.json":
            (model_dir / item.name).symlink_to(item)
    model = OnnxEmbedder(model_path=str(model_dir), cache_dir=str(onnx_cache))
    with pytest.raises(EmbedderError, match="tokenizer.json"):
        asyncio.run(model.start())
    asyncio.run(model.close())


def test_an_export_cut_short_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    stem = "all-MiniLM-L6-v2-0123abcd"
    unfinished = [tmp_path / f"{stem}.x1y2.tmp.onnx", tmp_path / f"{stem}.int8.z9.tmp.onnx"]
    kept = [tmp_path / f"{stem}.onnx", tmp_path / "other-model.q1.tmp.onnx"]
    for path in unfinished + kept:
        path.write_bytes(b"partial")
    remove_unfinished_exports(tmp_path, stem)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
