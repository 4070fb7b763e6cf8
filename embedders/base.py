"""The embedding interface: texts in, unit-length float32 vectors out."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class EmbedderError(RuntimeError):
    """The embedder cannot load or answer. The message says what to fix."""


class EmbedderOverloaded(EmbedderError):
    """The embedder's queue is longer than the caller's budget: the text was not embedded."""


@runtime_checkable
class Embedder(Protocol):
    #: identifies model and version; part of the vector namespace so models never mix
    model_id: str
    dimension: int

    async def start(self) -> None:
        """Load and warm the model. Raises EmbedderError with a clear message."""
        ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text."""
        ...

    async def close(self) -> None: ...


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


#: how much lower than the event loop the model's threads run (Linux nice steps)
EMBED_THREAD_NICE = 5


def lower_thread_priority(nice: int = EMBED_THREAD_NICE) -> None:
    """Run the calling thread ``nice`` steps below its process (a ``ThreadPoolExecutor``
    initializer). The runtime's own compute threads (torch's OpenMP pool, ONNX Runtime's
    intra-op pool) are created from this thread and inherit the value on Linux, so when the
    cores are busy the event loop answering exact hits runs first and queued embedding work
    takes what is left. Elsewhere (no per-thread nice) this does nothing."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # a sandbox may refuse it: the embedder still works
        logging.getLogger("sidecar.embedder").info("embedder thread priority unchanged: %s", exc)


def idle_thread_priority() -> str:
    """Run the calling thread only when a core has nothing else to run (Linux ``SCHED_IDLE``;
    a ``ThreadPoolExecutor`` initializer for background work). Like the nice value, the policy
    is inherited by the compute threads the runtime creates from this thread (torch's OpenMP
    team for this thread), so a deferred vector's embedding gives way at once to the event
    loop, the proxy and the client instead of taking a share of the cores beside them.
    Returns what it set: ``"idle"``, or ``"nice"`` (lowest nice value) where ``SCHED_IDLE`` is
    not available or refused, or ``"unchanged"``."""
    log = logging.getLogger("sidecar.embedder")
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError as exc:
            log.info("background embedder thread not SCHED_IDLE: %s", exc)
    if not hasattr(os, "setpriority"):
        return "unchanged"
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 19)
        return "nice"
    except OSError as exc:
        log.info("background embedder thread priority unchanged: %s", exc)
        return "unchanged"
