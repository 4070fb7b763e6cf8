"""The pair model (second-stage cross-encoder): loading checks, batch scoring, the verifier.

The bundled model is loaded once per test session (it is a real ONNX Runtime session over the
shipped file). Broken copies are made in a temporary directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sidecar.cache.candidates import Candidate
from sidecar.cache.match.pair_model import (
    DEFAULT_PAIR_MODEL,
    PairModel,
    PairModelError,
    pair_model_for,
)
from sidecar.cache.match.verify import AnswerChangeVerifier, build_verifier
from sidecar.config import CacheConfig


@pytest.fixture(scope="session")
def model() -> PairModel:
    loaded = pair_model_for("auto")
    assert loaded is not None
    return loaded


@pytest.fixture()
def copy(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "pair_model"
    shutil.copytree(DEFAULT_PAIR_MODEL, target)
    yield target


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    manifest = orjson.loads(path.read_bytes())
    manifest.update(changes)
    path.write_bytes(orjson.dumps(manifest))


def test_the_bundled_manifest_describes_the_files_and_their_provenance(model: PairModel) -> None:
    manifest = model.manifest
    assert (DEFAULT_PAIR_MODEL / manifest["file"]).is_file()
    assert list(manifest["inputs"]) == ["input_ids", "attention_mask", "token_type_ids"]
    assert "train_pair_model" in manifest["training"]["command"]
    assert "never_used" in manifest["training"]
    assert (DEFAULT_PAIR_MODEL / manifest["file"]).stat().st_size < 40_000_000


def test_scores_every_candidate_in_one_batch(model: PairModel) -> None:
    scores = model.score(
        "How do I undo my last commit in git?",
        [
            "How do I undo my lsat commit in git?",
            "How do I undo my last commit in git?",
            "How do I push my last commit in git?",
        ],
    )
    assert scores.shape == (3,)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[2] and scores[1] > scores[2]
    assert model.score("anything", []).shape == (0,)


def test_long_questions_are_truncated_to_the_manifest_length(model: PairModel) -> None:
    long_question = "Why does my build fail? " * 200
    encoding = model.tokenizer.encode(long_question, long_question)
    assert len(encoding.ids) == model.max_len
    assert model.score(long_question, [long_question + " again"]).shape == (1,)


def test_pairs_are_encoded_as_the_tokenizer_encodes_them(model: PairModel) -> None:
    # the runtime assembles [CLS] a [SEP] b [SEP] from each text's cached pieces; the ids,
    # types and mask must be what the model was trained on (the tokenizer's pair encoding)
    texts = [
        "How do I undo my last commit in git?",
        "Why does my build fail? " * 9,
        "Why does my build fail? " * 40,
        "Résumé tips for a café job — naïve question",
        "x",
        "How do I undo my last commit in git? " * 3,
        "短い質問ですか？ and some English words after it",
    ]
    pairs = [(a, b) for a in texts for b in texts]
    batch = model.encode_pairs(pairs)
    width = batch["input_ids"].shape[1]
    assert width <= model.max_len
    for row, (a, b) in enumerate(pairs):
        expected = model.tokenizer.encode(a, b)
        n = sum(expected.attention_mask)
        assert batch["input_ids"][row, :n].tolist() == expected.ids[:n]
        assert batch["token_type_ids"][row, :n].tolist() == expected.type_ids[:n]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)


def test_the_pieces_cache_is_bounded(model: PairModel) -> None:
    for i in range(model.pieces.size + 50):
        model.pieces(f"question number {i}")
    assert len(model.pieces.entries) == model.pieces.size
    huge = "word " * 100_000  # cut to 8 x max_len words before tokenising
    ids, count = model.pieces(huge)
    assert len(ids) == model.max_len and count == 8 * model.max_len


@pytest.mark.parametrize(
    ("question", "cached"),
    [
        ("Convert a tuple into a dictionary", "Convert a dictionary into a tuple"),
        (
            "How do I remove the last row of a dataframe?",
            "How do I remove every row of a dataframe?",
        ),
    ],
)
def test_swaps_the_rules_do_not_name_are_refused_by_the_pair_model(
    model: PairModel, question: str, cached: str
) -> None:
    verifier = AnswerChangeVerifier(pair_model=model, pair_min=CacheConfig().pair_model_min)
    verdict = verifier.verify_batch(question, [Candidate(cached, 0.95)])[0]
    assert not verdict.accept
    assert verdict.reason.startswith(("pair_model:", "order:", "scope:", "edit:"))


def test_a_candidate_the_rules_refuse_is_not_scored(model: PairModel) -> None:
    verifier = AnswerChangeVerifier(pair_model=model, pair_min=0.0)
    verdicts = verifier.verify_batch(
        "Is the shop open on Sunday?",
        [
            Candidate("Is the shop not open on Sunday?", 0.95),
            Candidate("Is the shop open on Sunday?", 0.99),
        ],
    )
    assert verdicts[0].reason.startswith("negation:")
    assert verdicts[1].accept  # the same text: accepted without a score


def test_off_and_auto(model: PairModel) -> None:
    assert pair_model_for("off") is None
    assert pair_model_for("auto") is model  # loaded once per process


def test_a_manifest_with_other_inputs_fails_naming_the_file(copy: Path) -> None:
    _edit_manifest(copy, inputs={"input_ids": ["batch", "tokens", "int64"]})
    with pytest.raises(PairModelError, match=r"manifest.json: inputs \['input_ids'\] do not match"):
        PairModel.load(copy)


def test_a_manifest_of_another_format_fails(copy: Path) -> None:
    _edit_manifest(copy, format=99)
    with pytest.raises(PairModelError, match="manifest.json: format 99"):
        PairModel.load(copy)


def test_a_corrupt_model_file_fails_naming_the_file(copy: Path) -> None:
    onnx = copy / orjson.loads((copy / "manifest.json").read_bytes())["file"]
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with pytest.raises(PairModelError, match=rf"{onnx.name}: sha256 .* corrupt or replaced"):
        PairModel.load(copy)
    _edit_manifest(copy, sha256=None)  # no digest to compare: the graph itself is unusable
    with pytest.raises(PairModelError, match=rf"{onnx.name}: not a usable ONNX model"):
        PairModel.load(copy)


def test_a_replaced_tokenizer_fails_naming_the_file(copy: Path) -> None:
    (copy / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(PairModelError, match=r"tokenizer.json: sha256"):
        PairModel.load(copy)
    manifest = orjson.loads((copy / "manifest.json").read_bytes())
    manifest["tokenizer"]["sha256"] = None
    (copy / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(PairModelError, match=r"tokenizer.json: cannot load"):
        PairModel.load(copy)


def test_a_missing_directory_fails_start_up_through_the_config(tmp_path: Path) -> None:
    config = CacheConfig(pair_model=str(tmp_path / "nowhere"))
    with pytest.raises(PairModelError, match=r"nowhere/manifest.json: cannot read"):
        build_verifier(config)
