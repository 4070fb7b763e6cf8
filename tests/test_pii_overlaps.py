"""Overlap resolution between PII detections: disjoint spans, strongest first, in order."""

from __future__ import annotations

import random
from dataclasses import dataclass

from guardrails.pii.engine import Detection, resolve_overlaps


@dataclass
class _Result:  # the fields of Presidio's RecognizerResult that resolve_overlaps reads
    entity_type: str
    start: int
    end: int
    score: float


def _reference(results: list[_Result]) -> list[Detection]:
    """The obvious quadratic rule: take results strongest (then longest, then leftmost) first,
    skipping any that overlaps one already taken."""
    kept: list[Detection] = []
    for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
        if r.end > r.start and not any(r.start < k.end and k.start < r.end for k in kept):
            kept.append(Detection(r.entity_type, r.start, r.end, r.score))
    return sorted(kept, key=lambda d: d.start)


def test_stronger_detection_wins_an_overlap() -> None:
    iban = _Result("IBAN_CODE", 0, 22, 1.0)
    phone = _Result("PHONE_NUMBER", 4, 14, 0.4)
    email = _Result("EMAIL_ADDRESS", 30, 45, 1.0)
    assert resolve_overlaps([phone, email, iban]) == [
        Detection("IBAN_CODE", 0, 22, 1.0),
        Detection("EMAIL_ADDRESS", 30, 45, 1.0),
    ]


def test_touching_spans_both_kept_and_empty_spans_dropped() -> None:
    a, b, empty = _Result("A", 0, 5, 0.9), _Result("B", 5, 9, 0.9), _Result("C", 7, 7, 1.0)
    assert resolve_overlaps([b, empty, a]) == [Detection("A", 0, 5, 0.9), Detection("B", 5, 9, 0.9)]


def test_matches_the_reference_rule_on_random_spans() -> None:
    rng = random.Random(7)
    for _ in range(300):
        results = []
        for _ in range(rng.randrange(0, 40)):
            start = rng.randrange(0, 200)
            results.append(
                _Result("X", start, start + rng.randrange(0, 25), rng.choice((0.3, 0.6, 0.85, 1.0)))
            )
        assert resolve_overlaps(results) == _reference(results)
