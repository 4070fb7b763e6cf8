"""The embedding interface: texts in, unit-length float32 vectors out."""

from __future__ import annotations

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
