"""What the semantic layer offers its verifier: candidates (a cached question, its similarity
and both vectors), the verifier's interface and its null object, and the similarity bars a
candidate must reach to be offered. Split from layer.py, which decides with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: below the threshold, a candidate this similar is still offered when the verifier finds it
#: to be the same question but for typos (MatchVerifier.near_repeat): misspelt words move a
#: question's vector (to 0.44-0.7 on typo'd repeats), not its meaning
NEAR_REPEAT_FLOOR = 0.4
#: how far an approximate similarity (Neighbour.exact False: the embedded graphs' i8 vectors)
#: may fall short of the exact one, so a candidate that might reach the bar is still fetched
#: and re-scored; the quantisation error of unit vectors is a few thousandths
APPROXIMATE_SLACK = 0.02


def cosine(a: np.ndarray, b: Sequence[float]) -> float:
    other = np.asarray(b, dtype=np.float32)
    norms = float(np.linalg.norm(a)) * float(np.linalg.norm(other))
    return float(np.dot(a, other)) / norms if norms > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    accept: bool
    reason: str = ""
    #: the match head's and the pair model's scores, when they scored the pair (adaptive
    #: observations record them)
    head_score: float | None = None
    pair_score: float | None = None


#: the new question's vector and the candidate's stored one
VectorPair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A cached question offered to the verifier: its text, cosine and the two vectors."""

    question: str
    similarity: float
    vectors: VectorPair | None = None


class MatchVerifier(Protocol):
    """Second opinion on semantic candidates: may the cached answer serve the new question?"""

    def verify(
        self,
        question: str,
        candidate: str,
        similarity: float,
        vectors: VectorPair | None = None,
    ) -> Verdict: ...

    def verify_batch(self, question: str, candidates: Sequence[Candidate]) -> list[Verdict]:
        """One verdict per candidate (best first). All candidates are judged together, so a
        model stage can score them in one batch."""
        ...

    def near_repeat(self, question: str, candidate: str) -> bool:
        """Is ``candidate`` the same question but for typos? Then the cache offers it even
        below the similarity threshold (down to ``NEAR_REPEAT_FLOOR``), still to be verified."""
        ...


class AcceptAll:
    """The null verifier: the similarity threshold alone decides."""

    def verify(
        self,
        question: str,
        candidate: str,
        similarity: float,
        vectors: VectorPair | None = None,
    ) -> Verdict:
        return Verdict(True)

    def verify_batch(self, question: str, candidates: Sequence[Candidate]) -> list[Verdict]:
        return [Verdict(True) for _ in candidates]

    def near_repeat(self, question: str, candidate: str) -> bool:
        return False  # without a verifier the threshold alone decides
