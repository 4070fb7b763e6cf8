"""Question classes and a frozen question stream for the adaptive-cache simulation (issue 18).

A *class* is a set of paraphrases that share one answer: the connected components of the
duplicate (label 1) pairs of a labelled question-pair set. A question that is only in
non-duplicate (label 0) pairs is a class of its own. A *trap* is a non-duplicate pair whose
two questions look alike (high embedding similarity, computed by the caller) and so belong to
different classes: a cache that serves one's answer to the other serves a wrong answer.

``generate_stream`` draws a seeded sequence of requests from the classes: new questions,
exact repeats of earlier ones, paraphrases of earlier classes and traps next to earlier
questions. Ground truth is the class: a served answer is right when it was written for a
question of the same class. The same classes, traps, length, mix and seed give the same
stream (``stream_digest``).

``drop_near_twins`` makes the clean variant: without one question of each unlabelled
near-twin pair across classes, so that a different class means a different question.

No I/O and no model here, so the generator's invariants are tested on a tiny inline fixture
(tests/test_adaptive_stream.py); ``benchmarks/adaptive_bench.py`` feeds it the Quora pairs.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

KINDS = ("new", "repeat", "paraphrase", "trap")
#: default share of each kind of request (the rest of the stream once the cache has content)
DEFAULT_MIX: dict[str, float] = {"new": 0.30, "repeat": 0.35, "paraphrase": 0.20, "trap": 0.15}
#: of the new questions: from classes with paraphrases, with a trap question, the rest
DEFAULT_NEW_CLASS_SHARES = (0.6, 0.3, 0.1)


def trap_world(trap_share: float) -> tuple[dict[str, float], tuple[float, float, float]]:
    """The mix and new-class shares of a world whose requests are ``trap_share`` traps (the
    share of the mix; fewer when no trap is armed). The other kinds keep their proportions;
    classes with a trap question keep their default ratio to the trap share (twice it) among
    new questions, the freed share going to classes without either, so that traps do not come
    back as new questions next to their look-alike. ``DEFAULT_MIX`` is ``trap_share`` 0.15."""
    if not 0.0 <= trap_share <= 0.45:
        raise ValueError(f"trap share must be between 0 and 0.45, got {trap_share}")
    if trap_share == DEFAULT_MIX["trap"]:
        return dict(DEFAULT_MIX), DEFAULT_NEW_CLASS_SHARES  # exactly: the same streams as before
    rest = {k: v for k, v in DEFAULT_MIX.items() if k != "trap"}
    scale = (1.0 - trap_share) / sum(rest.values())
    mix = {k: v * scale for k, v in rest.items()} | {"trap": trap_share}
    with_paraphrases, with_traps, _ = DEFAULT_NEW_CLASS_SHARES
    trap_classes = with_traps / DEFAULT_MIX["trap"] * trap_share
    return mix, (with_paraphrases, trap_classes, 1.0 - with_paraphrases - trap_classes)


@dataclass(frozen=True, slots=True)
class LabelledPair:
    text_a: str
    text_b: str
    duplicate: bool


def question_key(text: str) -> str:
    """Questions that differ only in surrounding or repeated white space are one question."""
    return " ".join(text.split())


@dataclass(slots=True)
class Classes:
    """Every question's class. ``members[c]`` lists class ``c``'s questions in first-seen
    order; ``class_of`` maps a question (``question_key``) to its class."""

    members: list[list[str]] = field(default_factory=list)
    class_of: dict[str, int] = field(default_factory=dict)
    #: non-duplicate pairs dropped because duplicates joined both questions into one class
    conflicting_pairs: int = 0

    def paraphrase_classes(self) -> list[int]:
        return [c for c, m in enumerate(self.members) if len(m) > 1]


def build_classes(pairs: Iterable[LabelledPair]) -> tuple[Classes, list[tuple[str, str]]]:
    """The classes (connected components of the duplicate pairs) and the non-duplicate pairs
    whose questions ended in different classes (candidates for traps), both in input order.

    Union-find written here: a few dozen lines, and no graph library is otherwise needed."""
    parent: dict[str, str] = {}
    order: list[str] = []

    def find(x: str) -> str:
        if x not in parent:
            parent[x] = x
            order.append(x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    different: list[tuple[str, str]] = []
    for pair in pairs:
        a, b = question_key(pair.text_a), question_key(pair.text_b)
        if not a or not b:
            continue
        ra, rb = find(a), find(b)
        if pair.duplicate:
            if ra != rb:
                parent[rb] = ra
        elif a != b:
            different.append((a, b))
    classes = Classes()
    root_class: dict[str, int] = {}
    for question in order:
        root = find(question)
        if root not in root_class:
            root_class[root] = len(classes.members)
            classes.members.append([])
        classes.members[root_class[root]].append(question)
        classes.class_of[question] = root_class[root]
    across = []
    for a, b in different:
        if classes.class_of[a] == classes.class_of[b]:
            classes.conflicting_pairs += 1
        else:
            across.append((a, b))
    return classes, across


def select_traps(
    candidates: Sequence[tuple[str, str]],
    similarity: Callable[[Sequence[tuple[str, str]]], Sequence[float]],
    min_similarity: float,
) -> list[tuple[str, str, float]]:
    """The candidate pairs at or above ``min_similarity`` (``similarity`` scores a batch of
    pairs, e.g. the cosine of their embeddings), with their similarity."""
    scores = similarity(candidates)
    return [
        (a, b, round(float(s), 4))
        for (a, b), s in zip(candidates, scores, strict=True)
        if s >= min_similarity
    ]


# ---------------------------------------------------------------------------- clean variant
# QQP labels only the pairs it lists: two questions of different classes that were never paired
# may ask the same thing, and then the "wrong" answer a cache serves for one is right in truth.
# The clean variant drops one question of every such near-twin pair, so that a different class
# means a different question; labelled non-duplicates (the traps) stay, whatever their
# similarity, since their ground truth is a person's judgement.
_WORD = re.compile(r"\w+")


def word_key(text: str) -> str:
    """The question's words, case-folded, without punctuation, as a sorted multiset: two
    questions with the same key use the same words (in any order)."""
    return " ".join(sorted(_WORD.findall(text.casefold())))


def same_words_twins(classes: Classes) -> list[tuple[str, str]]:
    """Pairs of questions of different classes with the same ``word_key``."""
    by_key: dict[str, list[str]] = {}
    for members in classes.members:
        for question in members:
            by_key.setdefault(word_key(question), []).append(question)
    out = []
    for group in by_key.values():
        for i, a in enumerate(group):
            out += [(a, b) for b in group[i + 1 :] if classes.class_of[a] != classes.class_of[b]]
    return out


def near_twin_pairs(
    questions: Sequence[str],
    vectors: Any,
    classes: Classes,
    min_cosine: float,
    block: int = 1024,
) -> list[tuple[str, str, float]]:
    """Pairs of questions of different classes whose unit vectors (``vectors[i]`` is the
    embedding of ``questions[i]``) have a cosine of at least ``min_cosine``, each pair once.
    Blocked all-pairs products: memory stays at ``block`` x len(questions) floats."""
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.shape[0] != len(questions):
        raise ValueError(f"{matrix.shape[0]} vectors for {len(questions)} questions")
    ids = np.array([classes.class_of[question_key(q)] for q in questions])
    out: list[tuple[str, str, float]] = []
    for start in range(0, len(questions), block):
        sims = matrix[start : start + block] @ matrix.T
        rows, cols = np.nonzero(sims >= min_cosine)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if c > i and ids[i] != ids[c]:
                out.append((questions[i], questions[c], round(float(sims[r, c]), 4)))
    return out


@dataclass(frozen=True, slots=True)
class Cleaned:
    classes: Classes
    traps: list[tuple[str, str, float]]
    dropped: list[str]  # in the order they were dropped
    twin_pairs: int  # near-twin pairs across classes that were not labelled traps


def drop_near_twins(
    classes: Classes,
    traps: Sequence[tuple[str, str, float]],
    twins: Iterable[tuple[str, str]],
) -> Cleaned:
    """``classes`` without one question of each near-twin pair (``twins``: pairs of questions
    of different classes that look alike) unless the pair is a labelled trap. Of a pair, the
    question that is not in a trap goes, else the one of the smaller class, else the later in
    text order: deterministic, and it keeps traps and paraphrase classes where it can. Empty
    classes disappear and classes are renumbered in their old order; traps that lost a
    question are dropped."""
    trap_pairs = {frozenset((a, b)) for a, b, _ in traps}
    in_trap = {q for a, b, _ in traps for q in (a, b)}
    dropped: set[str] = set()
    order: list[str] = []
    count = 0
    for a, b in sorted({tuple(sorted((question_key(a), question_key(b)))) for a, b in twins}):
        if a == b or frozenset((a, b)) in trap_pairs:
            continue
        if classes.class_of[a] == classes.class_of[b]:
            continue
        count += 1
        if a in dropped or b in dropped:
            continue

        def rank(q: str) -> tuple[bool, int, str]:
            # the question to drop sorts last: not in a trap, small class, later text
            return (q not in in_trap, -len(classes.members[classes.class_of[q]]), q)

        victim = max((a, b), key=rank)
        dropped.add(victim)
        order.append(victim)
    kept = Classes(conflicting_pairs=classes.conflicting_pairs)
    for members in classes.members:
        rest = [q for q in members if q not in dropped]
        if rest:
            for q in rest:
                kept.class_of[q] = len(kept.members)
            kept.members.append(rest)
    kept_traps = [t for t in traps if t[0] not in dropped and t[1] not in dropped]
    return Cleaned(kept, kept_traps, order, count)


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    text: str
    class_id: int
    kind: str  # one of KINDS


class _Weighted:
    """Items with fixed weights, drawn in O(log n): a cumulative sum grows with each add."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.cumulative: list[float] = []

    def add(self, item: str, weight: float) -> None:
        self.items.append(item)
        self.cumulative.append((self.cumulative[-1] if self.cumulative else 0.0) + weight)

    def draw(self, rng: random.Random) -> str:
        point = rng.random() * self.cumulative[-1]
        return self.items[bisect.bisect_right(self.cumulative, point)]


def generate_stream(
    classes: Classes,
    traps: Sequence[tuple[str, str, float]],
    length: int,
    seed: int,
    mix: dict[str, float] | None = None,
    popularity_alpha: float = 1.2,
    new_class_shares: tuple[float, float, float] = DEFAULT_NEW_CLASS_SHARES,
) -> list[Request]:
    """``length`` requests drawn with ``random.Random(seed)``.

    * ``new``: the first question of a class not asked yet, drawn from classes with
      paraphrases, classes with a trap question and the rest in ``new_class_shares``;
    * ``repeat``: a question asked before, word for word; each question gets a popularity
      (Pareto, ``popularity_alpha``) when first asked, and repeats follow it;
    * ``paraphrase``: a question not asked yet of a class asked before;
    * ``trap``: the first question of an unasked class that forms a trap pair with a question
      asked before (``traps``: pairs of different classes that look alike).

    A kind that has nothing to draw from at that point (no trap armed yet) gives a ``new``
    request instead, so the shares are what the stream could offer: see ``kind_counts``."""
    shares = dict(mix or DEFAULT_MIX)
    unknown = set(shares) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown request kind(s) in the mix: {sorted(unknown)}")
    if length < 0:
        raise ValueError(f"stream length must be >= 0, got {length}")
    rng = random.Random(seed)
    kinds = list(shares)
    weights = [shares[k] for k in kinds]

    trap_partners: dict[str, list[str]] = {}
    for a, b, _ in traps:
        trap_partners.setdefault(a, []).append(b)
        trap_partners.setdefault(b, []).append(a)
    # New classes come from three pools: classes with paraphrases (so that paraphrases can
    # follow), classes with a trap question (so that traps can follow), the rest.
    with_paraphrases = classes.paraphrase_classes()
    with_traps = sorted({classes.class_of[q] for q in trap_partners} - set(with_paraphrases))
    others = sorted(set(range(len(classes.members))) - set(with_paraphrases) - set(with_traps))
    pools = [with_paraphrases, with_traps, others]
    for pool in pools:
        rng.shuffle(pool)

    asked_classes: set[int] = set()
    unasked_members: dict[int, list[str]] = {}
    open_paraphrase_classes: list[int] = []  # asked classes with members not asked yet
    armed_traps: list[str] = []  # questions of unasked classes next to an asked question
    popular = _Weighted()
    out: list[Request] = []

    def ask_class(question: str, kind: str) -> None:
        class_id = classes.class_of[question]
        asked_classes.add(class_id)
        rest = [m for m in classes.members[class_id] if m != question]
        rng.shuffle(rest)
        unasked_members[class_id] = rest
        if rest:
            open_paraphrase_classes.append(class_id)
        record(question, class_id, kind)

    def record(question: str, class_id: int, kind: str) -> None:
        out.append(Request(len(out), question, class_id, kind))
        if kind != "repeat":
            popular.add(question, rng.paretovariate(popularity_alpha))
            for partner in trap_partners.get(question, ()):
                if classes.class_of[partner] not in asked_classes:
                    armed_traps.append(partner)

    def next_new_class() -> int | None:
        draw = rng.random()
        first = 0 if draw < new_class_shares[0] else 1 if draw < sum(new_class_shares[:2]) else 2
        for source in (pools[first], *(p for i, p in enumerate(pools) if i != first)):
            while source:
                class_id = source.pop()
                if class_id not in asked_classes:
                    return class_id
        return None

    while len(out) < length:
        kind = rng.choices(kinds, weights)[0] if out else "new"
        if kind == "repeat" and popular.items:
            question = popular.draw(rng)
            record(question, classes.class_of[question], "repeat")
            continue
        if kind == "paraphrase":
            while open_paraphrase_classes:
                slot = rng.randrange(len(open_paraphrase_classes))
                class_id = open_paraphrase_classes[slot]
                rest = unasked_members[class_id]
                if rest:
                    record(rest.pop(), class_id, "paraphrase")
                    break
                open_paraphrase_classes[slot] = open_paraphrase_classes[-1]
                open_paraphrase_classes.pop()
            else:
                kind = "new"
            if kind == "paraphrase":
                continue
        if kind == "trap":
            while armed_traps:
                slot = rng.randrange(len(armed_traps))
                question = armed_traps[slot]
                armed_traps[slot] = armed_traps[-1]
                armed_traps.pop()
                if classes.class_of[question] not in asked_classes:
                    ask_class(question, "trap")
                    break
            else:
                kind = "new"
            if kind == "trap":
                continue
        new_class = next_new_class()
        if new_class is None:
            raise ValueError(
                f"the classes ran out after {len(out)} of {length} requests: "
                "give more question pairs or a shorter stream"
            )
        ask_class(rng.choice(classes.members[new_class]), "new")
    return out


def kind_counts(stream: Sequence[Request]) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for request in stream:
        counts[request.kind] += 1
    return counts


def stream_digest(stream: Sequence[Request]) -> str:
    """SHA-256 over the stream (text, class, kind): equal digests, equal streams."""
    payload = orjson.dumps([(r.text, r.class_id, r.kind) for r in stream])
    return hashlib.sha256(payload).hexdigest()
