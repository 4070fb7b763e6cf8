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


def idle_thread_name(tid: int | None = None) -> str:
    """The OS name of a thread that runs background embeddings (``tid``: its native id; the
    calling thread's by default). The compute threads it creates inherit the name, which is
    how ``idle_compute_threads`` finds them; the id keeps two embedders' threads apart."""
    return f"embed-i{threading.get_native_id() if tid is None else tid}"


def name_thread(name: str) -> None:
    """Give the calling thread an OS name (Linux, 15 bytes at most; seen in top and py-spy).
    Threads it creates afterwards inherit the name. Elsewhere this does nothing."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        return


def idle_compute_threads(include_self: bool = False) -> int:
    """Put the threads named after the calling one (``idle_thread_name``: those it created
    after ``name_thread(idle_thread_name())``), except itself, at Linux ``SCHED_IDLE``: they
    then run only when a core has nothing else to run, and give way at once when anything
    else wakes. Returns how many were set. ``include_self``: the calling thread too.

    Meant for the compute threads a runtime created from a background thread (torch's OpenMP
    team; they inherit its name): they never hold the GIL, so starving them cannot stall the
    event loop. The calling thread itself runs the model's Python code, holding the GIL
    between operations: at ``SCHED_IDLE`` on busy cores it could wait long for a core while
    holding it, and the loop with it, so it keeps its nice value. Lowering a thread's policy
    needs no privilege."""
    if not hasattr(os, "SCHED_IDLE") or not os.path.isdir("/proc/self/task"):
        return 0
    own = threading.get_native_id()
    name = idle_thread_name(own)
    done = 0
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        if tid == own and not include_self:
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != name[:15]:
                    continue
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            done += 1
        except OSError as exc:  # gone meanwhile, or a sandbox refuses it
            logging.getLogger("sidecar.embedder").info("thread %d not SCHED_IDLE: %s", tid, exc)
    return done
