"""A learned second look at a semantic candidate: "do these two questions ask the same thing?"

Cosine similarity compresses a question pair to one number. The pair's two vectors hold more:
which dimensions agree (``u * v``) and which differ (``|u - v|``). ``DuplicateHead`` is a small
two-layer network over those features, the cosine, and a few cheap text features (word
overlap, and which of the verifier's checks would object at strict settings), trained on
labelled duplicate / non-duplicate question pairs for one embedding model. It answers with a
probability that the pair asks the same question, and the verifier refuses a hit below
``cache.match_head_min``.

It is a few matrix products over vectors the cache already has: the new question's vector
from the lookup and the candidate's vector stored with its entry. No text is re-embedded and
nothing is downloaded. The weights ship with the package (``data/*.npz``, one file per
embedding model, with the model name, dimension and training provenance inside) and are used
only with the model they were trained for. ``benchmarks/train_match_head.py`` rebuilds them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger("sidecar.cache")

DATA_DIR = Path(__file__).resolve().parent / "data"
#: the bundled head for the default embedder's model (all-MiniLM-L6-v2), on torch's vectors
DEFAULT_HEAD = DATA_DIR / "duplicate_head_all-MiniLM-L6-v2.npz"
#: which backend computed the vectors a head sees (``verify.embedder_vectors``)
VectorKind = Literal["torch", "onnx-fp32", "onnx-int8"]


def bundled_head(vectors: VectorKind = "torch") -> Path:
    """The bundled head for vectors from ``vectors``: int8 weights move every vector a little
    (cosine about 0.99 to torch's), and a head trained on torch's vectors refused more true
    duplicates on them (docs/semantic-correctness.md), so int8 has its own file. ONNX fp32
    returns torch's vectors up to rounding and shares torch's head."""
    if vectors == "onnx-int8":
        return DATA_DIR / "duplicate_head_all-MiniLM-L6-v2.onnx-int8.npz"
    return DEFAULT_HEAD


class MatchHeadError(Exception):
    """A head file that cannot be used (missing, malformed, or for another model)."""


def batch_features(
    u: np.ndarray, v: np.ndarray, similarities: np.ndarray, text: np.ndarray
) -> np.ndarray:
    """The head's input, one row per pair (rows of ``u``, ``v`` and ``text``): ``u * v``,
    ``|u - v|``, the cosine, then the pair's text features (``verify.pair_text_features``:
    word overlap and the strict checks)."""
    return np.hstack([u * v, np.abs(u - v), similarities[:, None], text]).astype(np.float32)


@dataclass(frozen=True, slots=True)
class DuplicateHead:
    model: str  # the embedding model whose vectors it was trained on
    dimension: int
    text_features: int  # how many text features follow the vector ones
    w1: np.ndarray  # (2 * dimension + 1 + text_features, hidden)
    b1: np.ndarray
    w2: np.ndarray  # (hidden,)
    b2: float
    info: dict[str, Any]  # training provenance (docs/semantic-correctness.md)

    @classmethod
    def load(cls, path: Path) -> DuplicateHead:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                head = cls(
                    model=str(meta["model"]),
                    dimension=int(meta["dimension"]),
                    text_features=int(meta["text_features"]),
                    w1=_flushed(data["w1"]),
                    b1=_flushed(data["b1"]),
                    w2=_flushed(data["w2"]).reshape(-1),
                    b2=float(np.asarray(data["b2"]).reshape(-1)[0]),
                    info=dict(meta.get("info", {})),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise MatchHeadError(f"cannot load the match head {path}: {exc}") from exc
        inputs = 2 * head.dimension + 1 + head.text_features
        if head.w1.shape != (inputs, head.b1.shape[0]) or (head.w2.shape != head.b1.shape):
            raise MatchHeadError(f"match head {path}: weight shapes do not fit together")
        return head

    def save(self, path: Path) -> None:
        meta = {
            "model": self.model,
            "dimension": self.dimension,
            "text_features": self.text_features,
            "info": self.info,
        }
        np.savez_compressed(
            path,
            w1=self.w1.astype(np.float32),
            b1=self.b1.astype(np.float32),
            w2=self.w2.astype(np.float32),
            b2=np.array([self.b2], dtype=np.float32),
            meta=np.array(json.dumps(meta)),
        )

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
        logits = np.clip(hidden @ self.w2 + self.b2, -50.0, 50.0)
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))

    def score(self, u: np.ndarray, v: np.ndarray, similarity: float, text: np.ndarray) -> float:
        """Probability that the two questions ask the same thing."""
        if u.shape != (self.dimension,) or v.shape != (self.dimension,):
            raise ValueError(
                f"the match head takes {self.dimension}-dimensional vectors, "
                f"got {u.shape} and {v.shape}"
            )
        if text.shape != (self.text_features,):
            raise ValueError(f"the match head takes {self.text_features} text features")
        row = batch_features(u[None, :], v[None, :], np.array([similarity]), text[None, :])
        return float(self.score_batch(row)[0])


def _flushed(weights: np.ndarray) -> np.ndarray:
    """float32 weights with subnormal values set to zero. Regularised training leaves
    thousands of them, and arithmetic on subnormals is slow on x86: one head score took
    0.25 ms instead of 0.01 ms."""
    out = np.array(weights, dtype=np.float32, order="C")
    out[np.abs(out) < np.finfo(np.float32).tiny] = 0.0
    return out


def head_for(
    setting: str, model: str, dimension: int, vectors: VectorKind = "torch"
) -> DuplicateHead | None:
    """The head ``cache.match_head`` asks for, for vectors of ``model`` computed by
    ``vectors``.

    ``off``: none. ``auto``: the bundled head when the embedder is the model it was trained
    for (the file for this backend's vectors when there is one), else none (logged). A path:
    that file, which must match the embedder (an error).
    """
    if setting == "off":
        return None
    path = Path(setting)
    if setting == "auto":
        path = bundled_head(vectors)
        if not path.is_file():
            path = DEFAULT_HEAD
    head = DuplicateHead.load(path)
    fits = _same_model(head.model, model) and head.dimension == dimension
    if fits:
        return head
    if setting == "auto":
        log.info(
            "match head off: the bundled head is for %s, the embedder is %s", head.model, model
        )
        return None
    raise MatchHeadError(
        f"match head {path} was trained on {head.model} ({head.dimension} dimensions); "
        f"the embedder is {model} ({dimension} dimensions)"
    )


def _same_model(a: str, b: str) -> bool:
    """ "sentence-transformers/all-MiniLM-L6-v2" and "all-MiniLM-L6-v2" are one model."""
    return a.rsplit("/", 1)[-1].lower() == b.rsplit("/", 1)[-1].lower()
