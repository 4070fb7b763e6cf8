"""The pair model: a small cross-encoder that reads the new question and a cached one together.

A sentence vector pools a question into one point and loses word order, so "a list to a
string" and "a string to a list" look alike, and a misspelt word moves the point. A
cross-encoder attends across both questions at once and sees which words moved. This one is
the packaged all-MiniLM-L6-v2 cut to its first two layers and trained here on CPU (Quora pairs
plus synthetic traps and paraphrases: ``benchmarks/train_pair_model.py``). It runs on ONNX
Runtime, int8, from files inside the package; nothing is downloaded.

Cost: it runs only on candidates that passed the threshold and the rule checks, all of them in
one batch, and never on exact hits. Questions are truncated so a pair has at most the
manifest's ``max_len`` tokens. Each text is tokenised once (the new question once per batch,
not once per candidate; a cached question's word pieces are kept in a small LRU), and the
pairs are assembled here, truncated exactly as the tokenizer's own ``longest_first`` pair
encoding would. ONNX Runtime runs with full graph optimisation; its idle threads spin-wait
by default (``cache.pair_model_spin``): on a quiet 2-core machine that takes 3 candidates of
64 tokens from ~5.2 to ~3.8 ms median, while on a crowded one the spin burns CPU another
process needs, so it can be turned off (pair_model_bench measures both).

The directory holds ``manifest.json`` (model, tokenizer, input signature, provenance, the
training command), the ONNX file and ``tokenizer.json``. ``PairModel.load`` checks all three
against each other and fails with a ``PairModelError`` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from threading import Lock
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
#: word pieces of this many recently seen texts are kept (a few hundred bytes each)
PIECES_CACHE = 2048


class PairModelError(Exception):
    """A pair-model directory that cannot be used; the message names the file and problem."""


class _Pieces:
    """Word pieces of a text (no special tokens): the first ``keep`` of them and how many the
    text has, counted up to ``8 * keep`` (the count decides which question of a pair gives
    way); LRU-cached.

    A text is first cut to ``8 * keep`` words and ``100`` characters per word: every word
    gives at least one word piece, so the pieces kept are the same, and a huge question
    costs no more than a long one. (A small LRU of our own rather than
    ``functools.lru_cache``: the bound must hold per model, and the key is the cut text.)"""

    def __init__(self, tokenizer: Any, keep: int, size: int = PIECES_CACHE) -> None:
        self.tokenizer = tokenizer
        self.keep = keep
        self.words = 8 * keep
        self.size = size
        self.entries: OrderedDict[str, tuple[tuple[int, ...], int]] = OrderedDict()
        self.lock = Lock()

    def __call__(self, text: str) -> tuple[tuple[int, ...], int]:
        key = " ".join(text.split(maxsplit=self.words)[: self.words])[: 100 * self.words]
        with self.lock:
            found = self.entries.get(key)
            if found is not None:
                self.entries.move_to_end(key)
                return found
        ids = self.tokenizer.encode(key, add_special_tokens=False).ids
        entry = (tuple(ids[: self.keep]), len(ids))
        with self.lock:
            self.entries[key] = entry
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return entry


def truncate_pair(first: int, second: int, room: int) -> tuple[int, int]:
    """How many word pieces of each question a pair keeps, with ``room`` for both: the
    tokenizer's ``longest_first`` rule (the shorter one whole when it fits in half; otherwise
    half each, the odd piece to the longer, to the second on a tie)."""
    if first + second <= room:
        return first, second
    swap = first > second
    short, long_ = (second, first) if swap else (first, second)
    long_ = short if short > room else max(short, room - short)
    if short + long_ > room:
        short = room // 2
        long_ = short + room % 2
    return (long_, short) if swap else (short, long_)


@dataclass(frozen=True, slots=True)
class PairModel:
    """Probability that the answer cached for one question is right for the other."""

    directory: Path
    manifest: dict[str, Any]
    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any  # tokenizers.Tokenizer
    max_len: int
    pieces: _Pieces
    specials: tuple[int, int, int]  # [CLS], [SEP], [PAD]

    @property
    def name(self) -> str:
        return str(self.manifest.get("model", "pair-model"))

    @classmethod
    def load(cls, location: str | Path, threads: int = 2, spinning: bool = False) -> PairModel:
        """Load a pair-model directory (or its ``manifest.json``) and check it fits.
        (``spinning`` lets ONNX Runtime's idle threads spin-wait: for the benchmark.)"""
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
        max_len = int(manifest["max_len"])
        tokenizer = _load_tokenizer(tokenizer_file, max_len)
        specials = _special_ids(tokenizer, tokenizer_file)
        session = _load_session(model_file, threads, spinning)
        _check_signature(session, manifest, model_file)
        pieces = _Pieces(_load_tokenizer(tokenizer_file, None), max_len)
        return cls(directory, manifest, session, tokenizer, max_len, pieces, specials)

    def score(self, question: str, candidates: Sequence[str]) -> np.ndarray:
        """One probability per candidate, all scored in one batch."""
        return self.score_pairs([(question, c) for c in candidates])

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """The model's inputs for ``[CLS] a [SEP] b [SEP]`` per pair, padded to the longest,
        each pair at most ``max_len`` pieces: the same ids the tokenizer's pair encoding gives
        (``tests/test_pair_model.py`` compares them), except that for two questions of over
        ``8 * max_len`` pieces each the odd piece may go to the other one."""
        cls_id, sep_id, pad_id = self.specials
        room = self.max_len - 3
        rows: list[tuple[list[int], int]] = []
        for a, b in pairs:
            (ids_a, count_a), (ids_b, count_b) = self.pieces(a), self.pieces(b)
            keep_a, keep_b = truncate_pair(count_a, count_b, room)
            ids = [cls_id, *ids_a[:keep_a], sep_id, *ids_b[:keep_b], sep_id]
            rows.append((ids, keep_a + 2))
        width = max(len(ids) for ids, _ in rows)
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for row, (ids, first) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
            types[row, first : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": types}

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One probability per (new question, cached question), in one batch."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        (logits,) = self.session.run([OUTPUT], self.encode_pairs(pairs))
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


def _load_tokenizer(file: Path, max_len: int | None) -> Any:
    """The pair tokenizer, truncating pairs to ``max_len`` and padding; with ``None``, plain
    (it counts every piece of a text)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise PairModelError(f"pair model tokenizer {file}: cannot load: {exc}") from exc
    if max_len is None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
    else:
        tokenizer.enable_truncation(max_length=max_len, strategy="longest_first")
        tokenizer.enable_padding()
    probe = tokenizer.encode("a", "b")
    if len(set(probe.type_ids)) != 2:
        raise PairModelError(
            f"pair model tokenizer {file}: does not mark the second question of a pair "
            "(no pair template with token type ids)"
        )
    return tokenizer


def _special_ids(tokenizer: Any, file: Path) -> tuple[int, int, int]:
    ids = [tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]", "[PAD]")]
    if any(i is None for i in ids):
        raise PairModelError(f"pair model tokenizer {file}: no [CLS], [SEP] or [PAD] token")
    return ids[0], ids[1], ids[2]


def _load_session(file: Path, threads: int, spinning: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning: idle threads spin-wait for the next parallel section (faster on a quiet
    # machine); off, they sleep, leaving the CPU to other work on a crowded one
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
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


def pair_model_for(setting: str, spinning: bool = True) -> PairModel | None:
    """The pair model ``cache.pair_model`` asks for: ``off`` none, ``auto`` the bundled one,
    or a path to a pair-model directory (or its manifest). A bad file fails start-up.
    ``spinning``: ``cache.pair_model_spin``."""
    if setting == "off":
        return None
    location = DEFAULT_PAIR_MODEL if setting == "auto" else Path(setting)
    return _loaded(str(location.resolve()), spinning)


@lru_cache(maxsize=4)
def _loaded(location: str, spinning: bool) -> PairModel:
    """One session per model file per process: sidecars built in one process (tests, eval and
    calibrate) share it; an ONNX Runtime session may run from several threads."""
    model = PairModel.load(location, spinning=spinning)
    log.info("pair model %s loaded from %s", model.name, model.directory)
    return model
