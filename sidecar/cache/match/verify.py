"""The match verifier: refuses a semantic hit when two close questions need different answers.

Sentence embeddings score "Is the clinic open on Sundays?" and "... closed on Sundays?" as
near-duplicates, so no similarity threshold separates them. ``AnswerChangeVerifier`` compares
the structure of the new question and the cached one and refuses the hit when they differ in
something that changes an answer:

- negation: one side is negated ("not", "never", "without", "can't", ...);
- antonym: the sides sit on opposite poles ("open"/"closed", "enable"/"disable",
  "lock"/"unlock", "upload"/"download", "cheapest"/"most expensive");
- number: the numbers differ ("2 tickets" vs "4 tickets"; "two" and "2" are the same);
- unit: same numbers, other units or currencies ("5 kg" vs "5 lb", "USD" vs "EUR");
- datetime: other days, months, dates, times or periods ("2pm" and "14:00" are the same);
- entity: another name, product, code identifier or version ("Salesforce" vs "HubSpot");
- scope: other quantifiers ("all" vs "some") or a downward comparative ("less", "fewest");
- order: the same words in swapped roles ("from Friday to Sunday" vs the reverse,
  "X better than Y" vs "Y better than X", "a list to a string" vs "a string to a list");
- focus: the questions ask for different things ("why" vs "how many");
- edit: the questions are the same but for one or two words, and a replaced word is not a
  synonym, an inflection or a typo of its counterpart ("create" vs "delete a volume").

Every check first reads the two questions with their typos repaired (``words.repair_typos``):
a misspelt word counts as the word of the other question it misspells ("chagne" / "change"),
unless both are real, different words ("form" / "from").

Everything is cheap token structure: a question is analysed once (cached by text) and a
comparison costs tens of microseconds. Refusal reasons name the check and the kind of
difference, never the user's words, because reasons reach traces and metrics.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from sidecar.cache.candidates import Candidate, MatchVerifier, VectorPair, Verdict
from sidecar.cache.match import lexicon as lex
from sidecar.cache.match.features import QuestionFeatures, analyse
from sidecar.cache.match.head import DuplicateHead, VectorKind, head_for
from sidecar.cache.match.pair_model import PairModel, pair_model_for
from sidecar.cache.match.words import (
    close_spelling,
    english_words,
    repair_typos,
    spelling_repeat,
)
from sidecar.config import CacheConfig, EmbedderConfig, VerifierCheck, VerifierStrictness

ALL_CHECKS: tuple[VerifierCheck, ...] = get_args(VerifierCheck)
#: the pair model's score that serves a slip onto another real word ("rest" / "reset")
SLIP_MIN = 0.5
#: the checks whose strict verdicts the match head was trained on (its 14 text features)
HEAD_CHECKS: tuple[VerifierCheck, ...] = ALL_CHECKS[:9]


# -------------------------------------------------------------------- comparing
def _differ(a: Collection[object], b: Collection[object], one_sided: bool) -> bool:
    """True on a substitution (each side has something the other lacks); on one side only
    if ``one_sided``."""
    sa, sb = set(a), set(b)
    if sa == sb:
        return False
    return bool(sa - sb and sb - sa) or one_sided


def _edit_distance_at_most_one(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or swap of neighbours ("Zuckerberg"/"-burg")."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 2 and diff[1] == diff[0] + 1:
            i = diff[0]
            return a[i] == b[i + 1] and a[i + 1] == b[i]
        return len(diff) <= 1
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1 :]


def _has_form(forms: frozenset[str], name: str) -> bool:
    if name in forms or name + "s" in forms or (name.endswith("s") and name[:-1] in forms):
        return True
    if len(name) < 5 or not name.isalpha():
        return False
    for form in forms:
        if len(form) < 5 or form[0] != name[0]:
            continue
        # "India"/"Indian", "Canada"/"Canadian": a long shared start names the same thing
        common = 0
        for x, y in zip(name, form, strict=False):
            if x != y:
                break
            common += 1
        if common >= 5 and common >= 0.8 * min(len(name), len(form)):
            return True
        if len(name) >= 6 and len(form) >= 6 and _edit_distance_at_most_one(name, form):
            return True  # a typo, not another name
    return False


def _morph_opposite(a: QuestionFeatures, b: QuestionFeatures) -> bool:
    """ "lock" vs "unlock", "upload" vs "download": a prefix turns a word into its opposite."""
    ta, tb = a.token_set, b.token_set
    return any(other in tb and other not in ta and word not in tb for word, other in a.prefixed)


def _tightly_replaced(a: QuestionFeatures, b: QuestionFeatures, positions: set[int]) -> bool:
    """Is a name of ``a`` swapped for one or two other content words of ``b``
    ("Roth IRA" vs "traditional IRA")?"""
    matcher = difflib.SequenceMatcher(None, a.tokens, b.tokens, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "replace" or i2 - i1 > 2 or j2 - j1 > 2:
            continue
        if positions.intersection(range(i1, i2)) and any(
            t not in lex.STOPWORDS for t in b.tokens[j1:j2]
        ):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Comparison:
    a: QuestionFeatures
    b: QuestionFeatures
    strictness: VerifierStrictness

    @property
    def balanced(self) -> bool:
        return self.strictness != "lenient"

    @property
    def strict(self) -> bool:
        return self.strictness == "strict"

    def negation(self) -> str | None:
        na, nb = self.a.negations, self.b.negations
        if (na > 0) != (nb > 0):
            return "one question is negated"
        if self.strict and na != nb:
            return "different number of negations"
        return None

    def antonym(self) -> str | None:
        pb = self.b.poles
        if any(pb.get(axis) == -pole for axis, pole in self.a.poles.items()):
            return "opposite words"
        if _morph_opposite(self.a, self.b) or _morph_opposite(self.b, self.a):
            return "a prefix makes the opposite word"
        return None

    def number(self) -> str | None:
        a, b = self.a.values, self.b.values
        if a == b:
            return None
        only_a, only_b = a - b, b - a
        # "one glass" and "1 glass" are the same; a bare "one" is often a pronoun
        if only_a == {"1"} and not only_b and self.b.has_one:
            return None
        if only_b == {"1"} and not only_a and self.a.has_one:
            return None
        if only_a and only_b:
            return "different numbers"
        if self.balanced and not (self.strictness == "balanced" and _years(only_a | only_b)):
            return "a number on one side only"
        return None

    def unit(self) -> str | None:
        a, b = self.a, self.b
        units_a = {(v, u) for v, u in a.quantities if u}
        units_b = {(v, u) for v, u in b.quantities if u}
        for value, unit in units_a - units_b:
            # the same number with another unit on the other side; a unit left out is no conflict
            if any(v == value and u != unit for v, u in units_b):
                return "same numbers in different units"
        if _differ(a.units, b.units, one_sided=self.strict):
            return "different units or currencies"
        return None

    def datetime(self) -> str | None:
        a, b = self.a, self.b
        if _differ(a.times | a.periods, b.times | b.periods, one_sided=False):
            return "different days, dates or times"
        if _differ(a.times, b.times, one_sided=self.balanced):
            return "a day, date or time on one side only"
        if self.strict and a.periods != b.periods:
            return "a time reference on one side only"
        return None

    def entity(self) -> str | None:
        only_a = {n: j for n, j in self.a.entities.items() if not _has_form(self.b.forms, n)}
        only_b = {n: j for n, j in self.b.entities.items() if not _has_form(self.a.forms, n)}
        if only_a and only_b:
            return "different names"
        if not (only_a or only_b):
            return None
        if self.balanced and (
            _tightly_replaced(self.a, self.b, set(only_a.values()))
            or _tightly_replaced(self.b, self.a, set(only_b.values()))
        ):
            return "a name replaced by other words"
        if self.strict:
            return "a name on one side only"
        return None

    def scope(self) -> str | None:
        a, b = self.a, self.b
        if _differ(a.scope, b.scope, one_sided=False):
            return "different quantifiers"
        if self.balanced and a.downward != b.downward:
            return "a comparative in the opposite direction"
        if self.strict and a.restrictors != b.restrictors:
            return "a restriction on one side only"
        if self.strict and (a.comparatives != b.comparatives or a.scope != b.scope):
            return "a comparative or quantifier on one side only"
        return None

    def order(self) -> str | None:
        a, b = self.a, self.b
        (from_a, to_a), (from_b, to_b) = a.moves, b.moves
        if from_a and to_a and from_a != to_a and (from_a, to_a) == (to_b, from_b):
            return "from and to swapped"
        if (
            a.than
            and b.than
            and a.than != b.than
            and a.than in b.before_than
            and b.than in a.before_than
        ):
            return "the two sides of a comparison swapped"
        (sources_a, targets_a), (sources_b, targets_b) = a.directions, b.directions
        # a word that is only a source on one side and only a target on the other, and one
        # the other way round: "a list to a string" / "a string to a list"
        if (sources_a - targets_a) & (targets_b - sources_b) and (targets_a - sources_a) & (
            sources_b - targets_b
        ):
            return "source and target swapped"
        return None

    def edit(self) -> str | None:
        """A minimal edit (at most two words changed, the rest shared) may only swap a word
        for a synonym, an inflection or a typo; and never for a near-spelling that is another
        real word ("form" / "from")."""
        if not self.balanced:
            return None
        a, b = self.a.tokens, self.b.tokens
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        opcodes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
        changed = sum(max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in opcodes)
        if not opcodes or changed > 2 or len(a) - changed < 3:
            return None
        for op, i1, i2, j1, j2 in opcodes:
            if op != "replace":
                continue
            side_a, side_b = a[i1:i2], b[j1:j2]
            content_a = [t for t in side_a if _content_word(t)]
            content_b = [t for t in side_b if _content_word(t)]
            if content_a and content_b:
                if not _same_phrase(side_a, side_b, self.a, self.b):
                    return "a word replaced by a different word"
            elif len(side_a) == len(side_b) == 1 and close_spelling(side_a[0], side_b[0]):
                return "a word replaced by a similar-looking word"
        return None

    def focus(self) -> str | None:
        fa, fb = self.a.focus, self.b.focus
        if fa == fb:
            return None
        if (fa and fb) or (self.strict and (fa or fb)):
            return "the questions ask for different things"
        return None


_SUFFIXES = (
    "ations",
    "ation",
    "ings",
    "ing",
    "ies",
    "ied",
    "ers",
    "er",
    "est",
    "ed",
    "es",
    "ly",
    "s",
    "e",
    "y",
)


def _root(word: str) -> str:
    """A crude stem for inflections ("deleting"/"delete", "copies"/"copy", "running"/"run")."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]  # "runn" -> "run"
    return word


def _content_word(token: str) -> bool:
    return token.isalpha() and token not in lex.STOPWORDS and token not in lex.UNITS


def _same_phrase(
    side_a: Sequence[str], side_b: Sequence[str], a: QuestionFeatures, b: QuestionFeatures
) -> bool:
    """Is one replaced stretch a synonym ("set up" / "configure"), an inflection or another
    spelling of the other?"""
    groups_a = lex.SYNONYM_GROUPS.get(" ".join(side_a), frozenset())
    if groups_a & lex.SYNONYM_GROUPS.get(" ".join(side_b), frozenset()):
        return True
    return all(
        any(_interchangeable(x, y, a, b) for y in side_b) for x in side_a if _content_word(x)
    ) and all(any(_interchangeable(y, x, b, a) for x in side_a) for y in side_b if _content_word(y))


def _interchangeable(x: str, y: str, a: QuestionFeatures, b: QuestionFeatures) -> bool:
    """May ``x`` (of ``a``) stand for ``y`` (of ``b``) without changing the answer?"""
    if x == y or _root(x) == _root(y):
        return True  # an inflection
    if lex.SYNONYM_GROUPS.get(x, frozenset()) & lex.SYNONYM_GROUPS.get(y, frozenset()):
        return True
    if not (x.isalpha() and y.isalpha()):
        return True  # numbers, versions and identifiers: their own checks compare them
    # a name spelt another way ("postgresql"/"postgres"): the entity check compares names
    return _has_form(b.forms, x) or _has_form(a.forms, y)


def _years(values: frozenset[str] | set[str]) -> bool:
    """Only years: "the 2016 election" and "the election" usually mean the same one."""
    return bool(values) and all(v.isdigit() and 1900 <= int(v) <= 2100 for v in values)


class AnswerChangeVerifier:
    """Refuses a semantic hit when the questions differ in something that changes the answer.

    ``checks`` picks the comparisons (see ``ALL_CHECKS``); ``strictness`` decides whether a
    difference present on one side only ("book tickets" vs "book 2 tickets") counts.
    """

    def __init__(
        self,
        strictness: VerifierStrictness = "balanced",
        checks: Sequence[VerifierCheck] = ALL_CHECKS,
        head: DuplicateHead | None = None,
        head_min: float = 0.5,
        pair_model: PairModel | None = None,
        pair_min: float = 0.5,
        pair_rescue: float = 1.01,
    ) -> None:
        unknown = [c for c in checks if c not in ALL_CHECKS]
        if unknown:
            raise ValueError(f"unknown verifier checks {unknown}: choose from {list(ALL_CHECKS)}")
        if strictness not in get_args(VerifierStrictness):
            raise ValueError(f"unknown verifier strictness {strictness!r}")
        self.strictness: VerifierStrictness = strictness
        self.checks: tuple[VerifierCheck, ...] = tuple(c for c in ALL_CHECKS if c in checks)
        self.head = head
        self.head_min = head_min
        self.pair_model = pair_model
        self.pair_min = pair_min
        self.pair_rescue = pair_rescue  # above 1: never overrides the head

    def refusals(self, question: str, candidate: str, first_only: bool = False) -> list[str]:
        """Every check that refuses (``check: kind of difference``), or only the first."""
        if question == candidate:
            return []
        question, candidate = repair_typos(question, candidate)
        comparison = _Comparison(analyse(question), analyse(candidate), self.strictness)
        out: list[str] = []
        for check in self.checks:
            why: str | None = getattr(comparison, check)()
            if why is not None:
                out.append(f"{check}: {why}")
                if first_only:
                    break
        return out

    def verify(
        self,
        question: str,
        candidate: str,
        similarity: float,
        vectors: VectorPair | None = None,
    ) -> Verdict:
        return self.verify_batch(question, [Candidate(candidate, similarity, vectors)])[0]

    def near_repeat(self, question: str, candidate: str) -> bool:
        """Is ``candidate`` the same question but for slips of the keyboard
        (``words.spelling_repeat``)? The cache offers such a candidate even below the
        similarity threshold: a misspelt word moves the vector, not the question."""
        return spelling_repeat(question, candidate)

    def verify_batch(self, question: str, candidates: Sequence[Candidate]) -> list[Verdict]:
        """The rule checks and the match head per candidate; then the pair model on the
        candidates still standing, all in one batch. A rule refusal is final, with one
        exception: a near-repeat by spelling whose only objection (``edit``) is a word swapped
        for a real word a letter or two away ("rest my password" / "reset") is a slip or a
        real change, and the pair model decides (at ``SLIP_MIN``; without the model the
        refusal stands). A near-repeat by spelling skips the match head (a typo moves the
        vectors). The pair model refuses a candidate below ``pair_min``, and overrides a
        refusal of the match head at ``pair_rescue`` or above (a typo or a reworded
        paraphrase the vectors drift on)."""
        first = [self._first_stage(question, c) for c in candidates]
        verdicts = [verdict for verdict, _ in first]
        if self.pair_model is None:
            return verdicts
        standing = [i for i, (verdict, route) in enumerate(first) if verdict.accept or route]
        if not standing:
            return verdicts
        scores = pair_model_scores(
            self.pair_model, [(question, candidates[i].question) for i in standing]
        )
        for i, score in zip(standing, scores, strict=True):
            head, pair = verdicts[i].head_score, float(score)
            route = first[i][1]
            minimum = max(self.pair_min, SLIP_MIN) if route == "slip" else self.pair_min
            if score < minimum:
                verdicts[i] = Verdict(
                    False,
                    f"pair_model: same-answer score {score:.2f} < {minimum:.2f}",
                    head,
                    pair,
                )
            elif route == "slip" or (route == "head" and score >= self.pair_rescue):
                # the pair model overrides the head or the slip
                verdicts[i] = Verdict(True, "", head, pair)
            else:
                verdicts[i] = Verdict(verdicts[i].accept, verdicts[i].reason, head, pair)
        return verdicts

    def _first_stage(self, question: str, candidate: Candidate) -> tuple[Verdict, str]:
        """The rules' and the head's verdict, and what the pair model may still do about a
        refusal: "head" (only the head refused), "slip" (a near-repeat by spelling that only
        the ``edit`` check refused: a word swapped for a real word a letter or two away) or
        "" (final)."""
        text = candidate.question
        refused = self.refusals(question, text, first_only=True)
        near = question != text and spelling_repeat(question, text)
        if refused:
            # spelling_repeat holds: the replaced words are all within a letter or two
            slip = near and refused[0].startswith("edit:")
            return Verdict(False, refused[0]), "slip" if slip else ""
        if self.head is not None and candidate.vectors is not None and question != text:
            if near:
                return Verdict(True), ""  # a typo moves the vectors: the head cannot judge it
            u, v = candidate.vectors
            features = pair_text_features(question, text)
            score = self.head.score(u, v, candidate.similarity, features)
            if score < self.head_min:
                reason = f"match_head: duplicate score {score:.2f} < {self.head_min:.2f}"
                return Verdict(False, reason, float(score)), "head"
            return Verdict(True, "", float(score)), ""
        return Verdict(True), ""


def pair_model_scores(model: PairModel, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The pair model's score of each (new question, cached question), in one batch, as the
    verifier uses it: it reads the texts with their typos repaired, as the rules do; texts
    that are then the same words (case, punctuation, a typo apart) score 1 without a call."""
    scores = np.ones(len(pairs), dtype=np.float32)
    repaired = [repair_typos(q, c) for q, c in pairs]
    todo = [i for i, (q, c) in enumerate(repaired) if analyse(q).tokens != analyse(c).tokens]
    if todo:
        scores[todo] = model.score_pairs([repaired[i] for i in todo])
    return scores


def _stem(token: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            return token[: -len(suffix)]
    return token


def _content(features: QuestionFeatures) -> set[str]:
    return {_stem(t) for t in features.tokens if t not in lex.STOPWORDS}


def pair_text_features(question: str, candidate: str) -> np.ndarray:
    """The match head's text features (``match_head.features``), in training order: the fewer
    and the more words only one side has, word overlap (Jaccard), the relative length
    difference, same first word; then one flag per check (``ALL_CHECKS`` order) that objects
    at strict settings."""
    a, b = analyse(question), analyse(candidate)
    ca, cb = _content(a), _content(b)
    only_a, only_b = len(ca - cb), len(cb - ca)
    longest = max(len(a.tokens), len(b.tokens), 1)
    overlap = [
        float(min(only_a, only_b)),
        float(max(only_a, only_b)),
        len(ca & cb) / max(1, len(ca | cb)),
        abs(len(a.tokens) - len(b.tokens)) / longest,
        float(a.tokens[:1] == b.tokens[:1]),
    ]
    strict = _Comparison(a, b, "strict")
    flags = [
        0.0 if question == candidate or getattr(strict, c)() is None else 1.0 for c in HEAD_CHECKS
    ]
    return np.array(overlap + flags, dtype=np.float32)


def build_verifier(
    config: CacheConfig, embedder: EmbedderConfig | None = None, dimension: int = 0
) -> MatchVerifier | None:
    """The verifier the cache configuration asks for (None: the threshold alone decides).

    The learned match head joins when ``cache.match_head`` allows it and ``embedder`` is
    the model it was trained for (see ``match_head.head_for``). The pair model reads text, so
    it does not depend on the embedder: ``cache.pair_model`` alone decides
    (``pair_model.pair_model_for``).
    """
    if config.verifier == "off":
        return None
    english_words()  # read the word list at start-up, not on the first lookup
    head = None
    if embedder is not None and dimension:
        head = head_for(
            config.match_head, embedder_identity(embedder), dimension, embedder_vectors(embedder)
        )
    return AnswerChangeVerifier(
        config.verifier_strictness,
        config.verifier_checks,
        head,
        config.match_head_min,
        pair_model_for(config.pair_model, config.pair_model_spin),
        config.pair_model_min,
        config.pair_model_rescue,
    )


def embedder_vectors(embedder: EmbedderConfig) -> VectorKind:
    """Which backend computes the vectors (the bundled head has one file per kind)."""
    if embedder.backend == "onnx":
        return "onnx-int8" if embedder.onnx_quantize else "onnx-fp32"
    return "torch"


def embedder_identity(embedder: EmbedderConfig) -> str:
    """The model whose vectors the embedder returns, as far as configuration tells: a local
    ``model_path`` is some other model unless proven otherwise, and so is a remote server's
    model of the same name (its pooling and normalisation are not ours to know)."""
    if embedder.model_path:
        return f"local:{embedder.model_path}"
    if embedder.backend == "openai":
        return f"remote:{embedder.model}"
    return embedder.model
