"""Adaptive semantic hits: each entry learns, from checks on live traffic, how close a question
must be before the entry may answer it, so the wrong-hit rate stays under
``cache.target_wrong_rate`` (docs/adaptive.md).

Every adaptive decision and its reason is made here (``Adaptive.decide``); the cache layer
only asks. With no target for a partition, nothing here runs and the cache behaves as before.

How a candidate is judged. A candidate that passed the static threshold (``cache.threshold``
or ``x-bf-cache-threshold``) and the verifier is *eligible*. It serves when its similarity is
at or above the learned threshold of its entry, and, when the entry was ever found wrong, above
the highest similarity at which it was wrong. Otherwise it is a miss (``adaptive: ...``).

Observations. An eligible candidate that would serve (a *would-be hit*) is sampled for
exploration with probability ``explore_rate``, within a budget: per partition, it is explored
only while ``explored + 1 <= explore_rate * would-be hits so far`` (``ExploreBudget``), so the
extra upstream calls never exceed the rate, not merely on average. The request goes upstream
(``explore: sampled ...``), and the fresh answer is compared with the entry's
(``compare_answers``). An eligible candidate that the learned threshold rejects goes upstream
anyway, so it is always observed, at no extra upstream call. Each observation keeps the
probability it was sampled with (as a weight, for the record); the estimate counts
observations (``learned_threshold`` says why that is conservative).

The learned threshold (``learned_threshold``): the lowest similarity t such that, among the
observations at or above t, the one-sided 95% Clopper-Pearson (exact binomial) upper bound of
the wrong share is at most the target. An entry with enough observations of its own uses them;
otherwise its partition's; a partition with fewer than ``PARTITION_MIN_OBSERVATIONS`` uses the
static threshold. A partition with enough observations where no t meets the bound serves no
semantic hits until the evidence allows it.
"""

from __future__ import annotations

import functools
import math
import random
import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sidecar.config import CacheConfig

#: confidence of the one-sided upper bound on the wrong-hit rate
CONFIDENCE = 0.95
#: a partition decides from its own evidence from this many observations on; before: the static
#: threshold. One: the static start lasts only until the first check (about 1 / explore_rate
#: would-be hits); a handful of observations cannot meet any useful target's bound anyway, so a
#: larger minimum only prolonged the unchecked start (20: about 400 would-be hits at 5%)
PARTITION_MIN_OBSERVATIONS = 1
#: an entry's own learned threshold needs this many of its own observations
ENTRY_MIN_OBSERVATIONS = 16
#: observations kept per entry and per partition (the most recent)
ENTRY_MAX_OBSERVATIONS = 64
PARTITION_MAX_OBSERVATIONS = 4000
#: right checks a partition's learned thresholds may lag behind (``PartitionEvidence.add``)
RECOMPUTE_AFTER_RIGHT = 32

Source = Literal["entry", "partition", "static", "reported"]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (no underflow at large n)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    logs = [
        base - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q
        for j in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


def clopper_pearson_upper(wrong: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided exact (Clopper-Pearson) upper confidence bound of a proportion: the p at which
    P(X <= wrong) = 1 - confidence. Its coverage is at least ``confidence`` for every true rate
    and sample size (the Wilson score bound's can fall below it at small rates, the case here)."""
    if n <= 0 or wrong >= n:
        return 1.0
    alpha = 1.0 - confidence
    if wrong == 0:
        return 1.0 - alpha ** (1.0 / n)
    lo, hi = wrong / n, 1.0
    for _ in range(60):  # the CDF falls with p: bisection to ~1e-18
        mid = (lo + hi) / 2
        if binomial_cdf(wrong, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


@functools.lru_cache(maxsize=1024)
def _cached_upper(wrong: int, n: int, confidence: float) -> float:
    return clopper_pearson_upper(wrong, n, confidence) if n else 1.0


def tail_bounds_met(wrong: Sequence[bool], target: float, confidence: float) -> list[bool]:
    """For each prefix of ``wrong`` (n = 1, 2, ...): whether the Clopper-Pearson upper bound of
    its wrong share is at most ``target``. That bound is at most the target exactly when
    P(X <= k) <= 1 - confidence for X ~ Binomial(n, target), and that probability follows each
    added outcome in O(1) by the recurrences of the binomial's CDF and mass:
    a right one: P_{n+1}(X <= k) = P_n(X <= k) - p P_n(X = k);
    a wrong one: P_{n+1}(X <= k+1) = P_n(X <= k) + (1 - p) P_n(X = k+1)."""
    if not 0.0 < target < 1.0:
        return [target >= 1.0] * len(wrong)
    alpha = 1.0 - confidence
    p = target
    log_p, log_q = math.log(p), math.log1p(-p)
    n = k = 0
    log_mass = 0.0  # log P_n(X = k)
    cdf = 1.0  # P_n(X <= k)
    out: list[bool] = []
    for bad in wrong:
        mass = math.exp(log_mass)
        if bad:
            cdf += mass * (n - k) / (k + 1) * p
            log_mass += math.log((n + 1) / (k + 1)) + log_p
            k += 1
        else:
            cdf -= p * mass
            log_mass += math.log((n + 1) / (n + 1 - k)) + log_q
        n += 1
        cdf = min(max(cdf, 0.0), 1.0)
        out.append(k < n and cdf <= alpha)
    return out


@dataclass(slots=True)
class Observation:
    """One check of an entry against a fresh answer (or a user's report)."""

    similarity: float
    agreed: bool
    weight: float = 1.0  # 1 / the probability it was sampled with
    head: float | None = None  # match-head score of the pair, when the head scored it
    pair: float | None = None  # pair-model score, when the pair model scored it
    source: Literal["explore", "feedback"] = "explore"

    def to_json(self) -> list[Any]:
        return [
            round(self.similarity, 6),
            int(self.agreed),
            round(self.weight, 6),
            self.head,
            self.pair,
            self.source[0],
        ]

    @classmethod
    def from_json(cls, data: Any) -> Observation:
        if not isinstance(data, list) or len(data) != 6:
            raise ValueError("observation is not a list of 6 fields")
        sim, agreed, weight, head, pair, source = data
        return cls(
            float(sim),
            bool(agreed),
            float(weight),
            None if head is None else float(head),
            None if pair is None else float(pair),
            "feedback" if source == "f" else "explore",
        )


@dataclass(slots=True)
class EntryEvidence:
    """What is known of one entry (of one stored version: ``created_at``)."""

    created_at: float
    observations: list[Observation] = field(default_factory=list)
    #: the highest similarity at which it served (or would have served) a wrong answer
    wrong_at: float | None = None

    def add(self, obs: Observation) -> None:
        self.observations.append(obs)
        del self.observations[:-ENTRY_MAX_OBSERVATIONS]
        if not obs.agreed:
            self.wrong_at = max(obs.similarity, self.wrong_at or -1.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "c": self.created_at,
            "w": self.wrong_at,
            "o": [o.to_json() for o in self.observations],
        }

    @classmethod
    def from_json(cls, data: Any) -> EntryEvidence:
        if not isinstance(data, dict):
            raise ValueError("entry evidence is not an object")
        wrong = data.get("w")
        return cls(
            float(data["c"]),
            [Observation.from_json(o) for o in data.get("o", [])][-ENTRY_MAX_OBSERVATIONS:],
            None if wrong is None else float(wrong),
        )


@dataclass(frozen=True, slots=True)
class Learned:
    """A learned threshold (None: no similarity meets the target) and the figures behind it."""

    threshold: float | None
    observations: int
    wrong: int  # wrong observations at that threshold (or over all, when None)
    confidence: float = CONFIDENCE

    @property
    def wrong_rate(self) -> float:
        return self.wrong / self.observations if self.observations else 0.0

    @property
    def upper(self) -> float:
        """The wrong share's upper bound. Computed when read (the stats, not the lookups): with
        thousands of observations and hundreds wrong, its bisection over the binomial CDF costs
        tens of milliseconds, and a partition's threshold is recomputed after every new check."""
        return _cached_upper(self.wrong, self.observations, self.confidence)


def learned_threshold(
    observations: Iterable[Observation], target: float, confidence: float = CONFIDENCE
) -> Learned:
    """The lowest similarity t at which the one-sided Clopper-Pearson upper bound of the wrong
    share among the observations at or above t is at most ``target``. One pass over the
    observations sorted by similarity, best first.

    Counts, not weights: the outcome of a check depends on the similarity, never on whether the
    candidate was sampled, and the sampling probability never rises with the similarity (below
    the threshold every candidate is checked, above it a share ``explore_rate``). So within any
    tail the observations over-represent its lower similarities, and when the wrong share does
    not rise with similarity, the tail's observed wrong share is at least the wrong share of the
    hits it would serve: a conservative estimate with the real sample size, where inverse
    weights (Kish's effective size) cut the evidence above a threshold twentyfold."""
    ordered = sorted(observations, key=lambda o: o.similarity, reverse=True)
    if not ordered:
        return Learned(None, 0, 0)
    wrong = [not o.agreed for o in ordered]
    met = tail_bounds_met(wrong, target, confidence)
    best: int | None = None  # the longest prefix that meets the bound
    for i in range(len(ordered) - 1, -1, -1):
        # a threshold admits all observations of equal similarity together
        last_of_its_value = (
            i + 1 == len(ordered) or ordered[i + 1].similarity != ordered[i].similarity
        )
        if met[i] and last_of_its_value:
            best = i
            break
    if best is None:
        return Learned(None, len(ordered), sum(wrong), confidence)
    n, bad = best + 1, sum(wrong[: best + 1])
    return Learned(ordered[best].similarity, n, bad, confidence)


def overall(observations: Sequence[Observation], confidence: float = CONFIDENCE) -> Learned:
    """Every observation's wrong share and its upper bound (no threshold)."""
    wrong = sum(1 for o in observations if not o.agreed)
    n = len(observations)
    if n == 0:
        return Learned(None, 0, 0)
    return Learned(None, n, wrong, confidence)


@dataclass(frozen=True, slots=True)
class Policy:
    target: float
    explore_rate: float


@dataclass(slots=True)
class ExploreBudget:
    """A partition's exploration so far (this process). A would-be hit may be explored only
    while ``(explored + 1) / would_be <= rate``: sampling stays random (a coin of probability
    ``rate``, seeded), but the share never exceeds the rate at any point of the stream. A plain
    coin lands above its rate in about half of all runs. The effective sampling probability is a
    little under ``rate`` (the coin is skipped while the budget is spent), and at the start no
    hit is explored until ``1 / rate`` would-be hits have been seen."""

    would_be: int = 0
    explored: int = 0

    def sample(self, rate: float, rng: random.Random) -> bool:
        """Count a would-be hit; True when it is to be explored."""
        self.would_be += 1
        # Division, not ``explored + 1 <= rate * would_be``: the same arithmetic as the share
        # the stats report (explored / (explored + semantic hits)), so it holds to the last bit.
        if rate <= 0 or (self.explored + 1) / self.would_be > rate:
            return False
        if rng.random() >= rate:
            return False
        self.explored += 1
        return True


@dataclass(slots=True)
class PartitionEvidence:
    observations: deque[Observation] = field(
        default_factory=lambda: deque(maxlen=PARTITION_MAX_OBSERVATIONS)
    )
    #: per process, not shared between replicas: each keeps its own share under the rate, so
    #: their sum is too
    budget: ExploreBudget = field(default_factory=ExploreBudget)
    _learned: dict[float, Learned] = field(default_factory=dict)  # by target, until a change
    _overall: Learned | None = None
    _deferred: int = 0  # right checks added since the thresholds were last computed

    def add(self, obs: Observation) -> None:
        full = len(self.observations) == self.observations.maxlen
        evicted_right = full and self.observations[0].agreed
        self.observations.append(obs)
        self._overall = None
        if obs.agreed and not evicted_right and self._deferred < RECOMPUTE_AFTER_RIGHT:
            # A right check (that pushed no right one out of the window) can only lower the
            # upper bound of every tail, so the threshold in hand is at or above the one a
            # recomputation would give: keeping it a while is on the safe side, and spares the
            # lookups an O(n log n) pass after every check. A wrong one is counted at once.
            self._deferred += 1
            return
        self._deferred = 0
        self._learned.clear()

    def replace(self, observations: Sequence[Observation]) -> None:
        self.observations = deque(observations, maxlen=PARTITION_MAX_OBSERVATIONS)
        self._learned.clear()
        self._overall = None
        self._deferred = 0

    def overall(self) -> Learned:
        if self._overall is None:
            self._overall = overall(self.observations)
        return self._overall

    def learned(self, target: float) -> Learned:
        cached = self._learned.get(target)
        if cached is None:
            cached = self._learned[target] = learned_threshold(self.observations, target)
        return cached


@dataclass(frozen=True, slots=True)
class Ticket:
    """An eligible candidate as the cache saw it: kept on the request (explored or rejected: to
    compare answers in the response hook; served: for feedback)."""

    partition: str
    entry_id: str
    created_at: float
    expires_at: float
    similarity: float
    head: float | None
    pair: float | None
    weight: float


@dataclass(frozen=True, slots=True)
class Decision:
    serve: bool
    reason: str
    threshold: float | None
    source: Source
    explored: bool = False  # a would-be hit sent upstream (an extra upstream call)
    observe: bool = False  # compare the fresh answer with the entry's


def threshold_for(
    entry: EntryEvidence | None, partition: PartitionEvidence, policy: Policy, floor: float
) -> tuple[float | None, Source]:
    """The similarity an entry needs (None: it may not serve semantically) and whose evidence
    set it. Never below the static floor: observations exist only at or above it."""
    learned: float | None
    source: Source
    own = (
        entry.observations
        if entry is not None and len(entry.observations) >= ENTRY_MIN_OBSERVATIONS
        else None
    )
    own_learned = learned_threshold(own, policy.target) if own is not None else None
    if own_learned is not None and own_learned.threshold is not None:
        learned, source = own_learned.threshold, "entry"
    elif len(partition.observations) >= PARTITION_MIN_OBSERVATIONS:
        learned, source = partition.learned(policy.target).threshold, "partition"
    else:
        learned, source = floor, "static"
    if learned is not None:
        learned = max(learned, floor)
    return learned, source


#: the same two questions score a similarity this far apart across embedding calls (a batch vs
#: a single call: ~1e-7 with torch on CPU), so an entry reported wrong at a similarity is still
#: refused when the same question comes back a few units in the last place higher
SAME_SIMILARITY = 1e-5


class Adaptive:
    """The decisions. Evidence lives in an ``EvidenceStore`` (sidecar/cache/adaptive_store.py)."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.rng = random.Random(config.explore_seed)

    def policy(self, partition: str) -> Policy | None:
        cfg = self.config
        override = cfg.partitions.get(partition)
        target = cfg.target_wrong_rate
        explore = cfg.explore_rate
        if override is not None:
            if "target_wrong_rate" in override.model_fields_set:
                target = override.target_wrong_rate
            if override.explore_rate is not None:
                explore = override.explore_rate
        return None if target is None else Policy(target, explore)

    def decide(
        self,
        policy: Policy,
        similarity: float,
        floor: float,
        entry: EntryEvidence | None,
        partition: PartitionEvidence,
    ) -> Decision:
        threshold, source = threshold_for(entry, partition, policy, floor)
        if (
            entry is not None
            and entry.wrong_at is not None
            and similarity <= entry.wrong_at + SAME_SIMILARITY
        ):
            reported = any(o.source == "feedback" for o in entry.observations)
            return Decision(
                False,
                f"adaptive: below learned threshold {entry.wrong_at:.4f} (entry: "
                f"{'reported' if reported else 'observed'} wrong at that similarity)",
                entry.wrong_at,
                "entry",
                observe=True,
            )
        if threshold is None:
            return Decision(
                False,
                f"adaptive: no similarity meets target {policy.target:g} yet ({source}, "
                f"{len(partition.observations)} observations)",
                None,
                source,
                observe=True,
            )
        if similarity < threshold:
            return Decision(
                False,
                f"adaptive: below learned threshold {threshold:.4f} ({source})",
                threshold,
                source,
                observe=True,
            )
        if partition.budget.sample(policy.explore_rate, self.rng):
            return Decision(
                False,
                f"explore: sampled (similarity {similarity:.4f} >= threshold {threshold:.4f}, "
                f"{source}; rate {policy.explore_rate:g})",
                threshold,
                source,
                explored=True,
                observe=True,
            )
        return Decision(
            True,
            f"similarity {similarity:.4f} >= learned threshold {threshold:.4f} ({source})",
            threshold,
            source,
        )


# ---------------------------------------------------------------------- answers
_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = " \t\n.!?,;:'\"()[]"


def normalise_answer(text: str) -> str:
    """Case, Unicode form, runs of whitespace and edge punctuation do not make answers differ."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip(_EDGE_PUNCT)


Agreement = Literal["agree", "disagree", "unknown"]


def agreement(cosine: float, agree_min: float, disagree_max: float) -> Agreement:
    if cosine >= agree_min:
        return "agree"
    if cosine <= disagree_max:
        return "disagree"
    return "unknown"
