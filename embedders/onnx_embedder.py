"""all-MiniLM-L6-v2 on ONNX Runtime: exported once from the packaged model, then reused.

The export (``torch.onnx.export``, the TorchScript-based exporter) and the optional dynamic
int8 quantisation run on the first start only (12 s of CPU; 88 s of wall time on a 2-core
machine at load average 30), logged with a progress line every 10 s (at WARNING when the log
level hides INFO), or ahead of it with ``sidecar embedder prepare``; the files are
cached under ``cache_dir`` keyed by the model's identity, so later starts load them directly.
Tokenisation uses the model's own ``tokenizer.json`` (``tokenizers``) and the pooling is
sentence-transformers' exactly: mean over the attention mask, then L2 normalisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from embedders.base import EmbedderError, lower_thread_priority
from embedders.batching import group_by_length
from embedders.sentence_tf import DEFAULT_MODEL, resolve_model_path

log = logging.getLogger("sidecar.embedder")

#: bumped when the exported graph changes shape or inputs, so stale cache files are ignored
_EXPORT_FORMAT = 1
_OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/llm-cache-sidecar/onnx`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "llm-cache-sidecar" / "onnx"


def _max_seq_length(model_dir: Path) -> int:
    """The sentence-transformers truncation length (``sentence_bert_config.json``)."""
    import orjson

    config = model_dir / "sentence_bert_config.json"
    try:
        value = orjson.loads(config.read_bytes()).get("max_seq_length")
    except (OSError, orjson.JSONDecodeError):
        value = None
    return int(value) if isinstance(value, int) and value > 0 else 256


def _model_fingerprint(model_dir: Path) -> str:
    """Identity of the weights and of the export format, cheap enough for every start."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"format={_EXPORT_FORMAT};opset={_OPSET}".encode())
    for name in sorted(os.listdir(model_dir)):
        path = model_dir / name
        if path.is_file() and name.endswith((".safetensors", ".bin", ".json")):
            stat = path.stat()
            h.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return h.hexdigest()


def _atomic_target(path: Path) -> Path:
    """A temporary name in the same directory, renamed over ``path`` once complete."""
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def export_onnx(model_dir: Path, target: Path) -> None:
    """Export the transformer (token embeddings out; pooling stays in numpy)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    # Eager attention traces to plain ops; the SDPA path branches on the mask while tracing.
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class KeywordInputs(torch.nn.Module):
        """The exporter passes inputs positionally; BERT's forward wants them by name."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: Any, attention_mask: Any, token_type_ids: Any
        ) -> Any:  # pragma: no cover - traced, not called directly
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    # A padded example, so the traced graph keeps the attention-mask arithmetic.
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.zeros_like(ids)
    tmp = _atomic_target(target)
    try:
        # The tracer's warnings are about branches that are constant for BERT; not actionable.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                KeywordInputs(model),
                (ids, mask, types),
                str(tmp),
                input_names=list(_INPUTS),
                output_names=["token_embeddings"],
                dynamic_axes={
                    **{name: {0: "batch", 1: "sequence"} for name in _INPUTS},
                    "token_embeddings": {0: "batch", 1: "sequence"},
                },
                opset_version=_OPSET,
                dynamo=False,
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class _QuantizerChatter(logging.Filter):
    """ONNX Runtime's quantiser logs a line per tensor at INFO on the root logger (36 lines
    for this model): noise in the sidecar's log at a first start. Its warnings still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        quantiser = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not quantiser or record.levelno >= logging.WARNING


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _atomic_target(target)
    chatter = _QuantizerChatter()
    logging.getLogger().addFilter(chatter)
    try:
        # Per-channel scales keep cosine agreement with fp32 near 0.99 (per-tensor: ~0.97,
        # with short texts down to ~0.87).
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, target)
    finally:
        logging.getLogger().removeFilter(chatter)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def ensure_onnx_file(model_dir: Path, cache_dir: Path, quantize: bool, name: str = "") -> Path:
    """The cached ``.onnx`` for this model, exporting (and quantising) it on first use."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbedderError(
            f"embedder.onnx_cache_dir {str(cache_dir)!r} cannot be created: {exc.strerror or exc}"
        ) from exc
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or model_dir.name))
    stem = f"{label}-{_model_fingerprint(model_dir)}"
    fp32 = cache_dir / f"{stem}.onnx"
    int8 = cache_dir / f"{stem}.int8.onnx"
    wanted = int8 if quantize else fp32
    if wanted.is_file():
        return wanted
    # Sidecars starting together export once: the others wait here, then find the file.
    with _export_lock(cache_dir / f"{stem}.lock"):
        if not wanted.is_file():
            remove_unfinished_exports(cache_dir, stem)
            _export(model_dir, fp32, int8, quantize, label)
    return wanted


def remove_unfinished_exports(cache_dir: Path, stem: str) -> None:
    """Delete the temporary files of exports that were cut short (the process stopped mid-way,
    ``sidecar serve`` on SIGTERM). Called with the export lock held: nobody writes them then."""
    for stale in cache_dir.glob(f"{stem}.*.tmp.onnx"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _export_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent exports still end in an atomic rename
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def logged_step(what: str, every: float = 10.0) -> Iterator[None]:
    """Log ``what`` when it starts, every ``every`` seconds while it runs, and when it ends:
    a first start that exports the model is slow, and must say so rather than look hung."""
    started = time.monotonic()
    done = threading.Event()
    # Shown even at log_level warning: a start that pauses for a minute without a word looks
    # hung, whatever the operator chose to hide.
    level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.WARNING

    def heartbeat() -> None:
        while not done.wait(every):
            log.log(level, "%s: still running, %.0f s so far", what, time.monotonic() - started)

    log.log(
        level,
        "%s (once per model and cache directory; `sidecar embedder prepare` does it ahead of "
        "the first start)",
        what,
    )
    ticker = threading.Thread(target=heartbeat, name="sidecar-onnx-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
    log.log(level, "%s: done in %.1f s", what, time.monotonic() - started)


def _export(model_dir: Path, fp32: Path, int8: Path, quantize: bool, label: str) -> None:
    try:
        if not fp32.is_file():
            # the model's name: the packaged model's directory is just "model"
            with logged_step(f"exporting {label} to ONNX at {fp32}"):
                export_onnx(model_dir, fp32)
        if quantize:
            with logged_step(f"quantising {fp32.name} to int8 at {int8}"):
                quantize_int8(fp32, int8)
    except EmbedderError:
        raise
    except ImportError as exc:
        raise EmbedderError(
            f"exporting the model to ONNX needs {exc.name!r}: pip install torch transformers "
            "onnx (or put an exported file in embedder.onnx_cache_dir)"
        ) from exc
    except Exception as exc:
        raise EmbedderError(f"cannot export {model_dir} to ONNX: {exc}") from exc


def mean_pool_normalised(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' ``Pooling(mean)`` then ``Normalize``, in numpy."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (tokens * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


class OnnxEmbedder:
    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        model_path: str = "",
        cache_dir: str = "",
        quantize: bool = False,
        threads: int = 0,
    ) -> None:
        self._model_name = model
        self._model_path = model_path
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._quantize = quantize
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: tuple[str, ...] = ()
        self.onnx_path: Path | None = None
        self.dimension = 0
        # int8 vectors differ slightly from fp32 ones: keep their index namespaces apart.
        self.model_id = f"onnx{'-int8' if quantize else ''}:{model}"
        # One inference at a time: ONNX Runtime already spreads one batch over the cores.
        # Below the event loop's priority (its compute threads inherit it): exact hits first.
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sidecar-onnx", initializer=lower_thread_priority
        )

    async def start(self) -> None:
        model_dir = Path(resolve_model_path(self._model_name, self._model_path))
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise EmbedderError(f"the ONNX backend needs {tokenizer_file} (a fast tokenizer)")
        # Not in the embedder's own thread, which runs below the process's priority: on a busy
        # host a first-start export there took more than twice as long (nothing is served yet).
        onnx_file = await asyncio.to_thread(
            ensure_onnx_file, model_dir, self._cache_dir, self._quantize, self._model_name
        )
        await asyncio.get_running_loop().run_in_executor(
            self._pool, self._load, model_dir, onnx_file
        )

    def _load(self, model_dir: Path, onnx_file: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer_file = model_dir / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # sentence-transformers truncates at max_seq_length (tokenizer.json says 128 and pads
        # to 128); padding is done per length group in _encode.
        tokenizer.enable_truncation(max_length=_max_seq_length(model_dir))
        tokenizer.no_padding()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning: the sidecar shares its cores with the
        # proxy, and spinning threads measurably slowed both under load.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(onnx_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise EmbedderError(
                f"cannot load {onnx_file}: {exc} (delete it to export it again)"
            ) from exc
        self._input_names = tuple(i.name for i in session.get_inputs())
        self._session, self._tokenizer, self.onnx_path = session, tokenizer, onnx_file
        self.dimension = int(self._encode(["warm up"]).shape[1])

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        parts: list[tuple[list[int], np.ndarray]] = []
        # Texts of similar length run together: padding a short text to a long neighbour
        # costs as much as embedding real tokens (CPU time is linear in batch x length).
        for group in group_by_length([len(e.ids) for e in encodings]):
            width = max(len(encodings[i].ids) for i in group)
            ids = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for row, i in enumerate(group):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            (tokens,) = self._session.run(["token_embeddings"], feeds)
            parts.append((group, mean_pool_normalised(tokens, mask)))
        if len(parts) == 1:
            return parts[0][1][np.argsort(parts[0][0])]
        out = np.empty((len(encodings), parts[0][1].shape[1]), dtype=np.float32)
        for group, vectors in parts:
            out[group] = vectors
        return out

    def encode_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking encode, for tools that run outside an event loop (benchmarks, eval)."""
        if self._session is None:
            raise EmbedderError("embedder used before start()")
        return self._encode(texts)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._session is None:
            raise EmbedderError("embedder used before start()")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, texts)

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
