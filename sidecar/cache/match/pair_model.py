"""The pair model: a small cross-encoder that reads the new question and a cached one together.

A sentence vector pools a question into one point and loses word order, so "a list to a
string" and "a string to a list" look alike, and a misspelt word moves the point. A
cross-encoder attends across both questions at once and sees which words moved. This one is
the packaged all-MiniLM-L6-v2 cut to its first two layers and trained here on CPU (Quora pairs
plus synthetic traps and paraphrases: ``benchmarks/train_pair_model.py``). It runs on ONNX
Runtime, int8, from files inside the package; nothing is downloaded.

Cost: it runs only on candidates that passed the threshold and the rule checks, all of them in
one batch, and never on exact hits. Questions are truncated so a pair has at most the
manifest's ``max_len`` tokens.

The directory holds ``manifest.json`` (model, tokenizer, input signature, provenance, the
training command), the ONNX file and ``tokenizer.json``. ``PairModel.load`` checks all three
against each other and fails with a ``PairModelError`` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger("sidecar.cache")

DEFAULT_PAIR_MODEL = Path(__file__).resolve().parent / "data" / "pair_model"
MANIFEST = "manifest.json"
FORMAT = 1
#: the input signature this runtime feeds (names, order, int64 [batch, tokens])
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "logits"
_ONNX_INT64 = "tensor(int64)"


class PairModelError(Exception):
    """A pair-model directory that cannot be used; the message names the file and problem."""


@dataclass(frozen=True, slots=True)
class PairModel:
    """Probability that the answer cached for one question is right for the other."""

    directory: Path
    manifest: dict[str, Any]
    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any  # tokenizers.Tokenizer
    max_len: int

    @property
    def name(self) -> str:
        return str(self.manifest.get("model", "pair-model"))

    @classmethod
    def load(cls, location: str | Path, threads: int = 2) -> PairModel:
        """Load a pair-model directory (or its ``manifest.json``) and check it fits."""
        path = Path(location)
        directory = path.parent if path.name == MANIFEST else path
        manifest_path = directory / MANIFEST
        manifest = _read_manifest(manifest_path)
        model_file = directory / str(manifest["file"])
        tokenizer_spec = manifest["tokenizer"]
        tokenizer_file = directory / str(tokenizer_spec["file"])
        for file, digest in (
            (model_file, manifest.get("sha256")),
            (tokenizer_file, tokenizer_spec.get("sha256")),
        ):
            _check_digest(file, digest, manifest_path)
        tokenizer = _load_tokenizer(tokenizer_file, int(manifest["max_len"]))
        session = _load_session(model_file, threads)
        _check_signature(session, manifest, model_file)
        return cls(directory, manifest, session, tokenizer, int(manifest["max_len"]))

    def score(self, question: str, candidates: Sequence[str]) -> np.ndarray:
        """One probability per candidate, all scored in one batch."""
        return self.score_pairs([(question, c) for c in candidates])

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One probability per (new question, cached question), in one batch."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(pairs))
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (logits,) = self.session.run([OUTPUT], feed)
        logits = np.clip(np.asarray(logits, dtype=np.float32).reshape(-1), -50.0, 50.0)
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise PairModelError(f"pair model manifest {path}: cannot read: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise PairModelError(f"pair model manifest {path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise PairModelError(f"pair model manifest {path}: expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise PairModelError(
            f"pair model manifest {path}: format {manifest.get('format')!r}, this sidecar "
            f"reads format {FORMAT}"
        )
    for key in ("model", "file", "tokenizer", "inputs", "output", "max_len"):
        if key not in manifest:
            raise PairModelError(f"pair model manifest {path}: {key!r} is missing")
    tokenizer = manifest["tokenizer"]
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("file"), str):
        raise PairModelError(f"pair model manifest {path}: 'tokenizer.file' is missing")
    inputs = manifest["inputs"]
    if not isinstance(inputs, dict) or tuple(inputs) != INPUTS:
        named = list(inputs) if isinstance(inputs, dict) else inputs
        raise PairModelError(
            f"pair model manifest {path}: inputs {named} do not match the runtime's {list(INPUTS)}"
        )
    if not isinstance(manifest["output"], dict) or OUTPUT not in manifest["output"]:
        raise PairModelError(f"pair model manifest {path}: the output must be {OUTPUT!r}")
    max_len = manifest["max_len"]
    if not isinstance(max_len, int) or not 8 <= max_len <= 512:
        raise PairModelError(f"pair model manifest {path}: max_len {max_len!r} not in 8..512")
    return dict(manifest)


def _check_digest(file: Path, expected: object, manifest: Path) -> None:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise PairModelError(f"pair model file {file}: cannot read: {exc}") from exc
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise PairModelError(
            f"pair model file {file}: sha256 {actual[:12]}... does not match {manifest} "
            f"({str(expected)[:12]}...): a corrupt or replaced file"
        )


def _load_tokenizer(file: Path, max_len: int) -> Any:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise PairModelError(f"pair model tokenizer {file}: cannot load: {exc}") from exc
    tokenizer.enable_truncation(max_length=max_len, strategy="longest_first")
    tokenizer.enable_padding()
    probe = tokenizer.encode("a", "b")
    if len(set(probe.type_ids)) != 2:
        raise PairModelError(
            f"pair model tokenizer {file}: does not mark the second question of a pair "
            "(no pair template with token type ids)"
        )
    return tokenizer


def _load_session(file: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error types for bad graphs
        raise PairModelError(f"pair model file {file}: not a usable ONNX model: {exc}") from exc


def _check_signature(session: Any, manifest: dict[str, Any], file: Path) -> None:
    inputs = [(i.name, i.type, len(i.shape)) for i in session.get_inputs()]
    wanted = [(name, _ONNX_INT64, 2) for name in INPUTS]
    if inputs != wanted:
        raise PairModelError(
            f"pair model file {file}: inputs {inputs} do not match the manifest's "
            f"{[name for name in manifest['inputs']]} (int64 [batch, tokens])"
        )
    outputs = [o.name for o in session.get_outputs()]
    if outputs != [OUTPUT]:
        raise PairModelError(f"pair model file {file}: outputs {outputs}, expected [{OUTPUT!r}]")


def pair_model_for(setting: str) -> PairModel | None:
    """The pair model ``cache.pair_model`` asks for: ``off`` none, ``auto`` the bundled one,
    or a path to a pair-model directory (or its manifest). A bad file fails start-up."""
    if setting == "off":
        return None
    location = DEFAULT_PAIR_MODEL if setting == "auto" else Path(setting)
    return _loaded(str(location.resolve()))


@lru_cache(maxsize=4)
def _loaded(location: str) -> PairModel:
    """One session per model file per process: sidecars built in one process (tests, eval and
    calibrate) share it; an ONNX Runtime session may run from several threads."""
    model = PairModel.load(location)
    log.info("pair model %s loaded from %s", model.name, model.directory)
    return model
