"""Context-word score boosting that needs no NLP pipeline.

Presidio's ``LemmaContextAwareEnhancer`` reads lemmas from spaCy tokens: with the ``no_op``
engine there are none, and with a blank spaCy pipeline building the tokens costs more than all
pattern recognizers together. This enhancer reads the words just before a match straight from
the text (lower-cased, stop words skipped), which is what the lemma enhancer does with a
lower-case "lemma" in practice.

Matching is by whole word with simple inflections (``call`` matches ``calls``/``calling``/
``called``, not ``recall``), which avoids Presidio's substring surprises such as ``cell``
inside ``cancelled``.
"""

from __future__ import annotations

import re
from typing import Any

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from spacy.lang.en.stop_words import STOP_WORDS

_WORD = re.compile(r"[^\W\d_]+")
# End of a sentence: terminal punctuation, space, capital letter; or a blank line.
_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z])|\n\s*\n")
_SUFFIXES = ("", "s", "es", "ed", "ing", "er", "ers", "d")
# spaCy lists these as stop words, but they are the context words of several recognizers.
_KEEP = frozenset({"call", "number", "phone"})
_STOP_WORDS = frozenset(w for w in STOP_WORDS if w not in _KEEP)
# Characters read back from a match to find the preceding words; five words fit comfortably.
_WINDOW_CHARS = 100


class WindowContextEnhancer(ContextAwareEnhancer):
    """Raise a result's score when one of its recognizer's context words precedes it.

    A hit sets ``score = min(1, max(score + factor, floor))``. The floor (0.6 by default, above
    the usual ``min_score`` of 0.5) makes a context word sufficient evidence for weak patterns
    such as an unformatted 9-digit SSN after "SSN".
    """

    def __init__(
        self,
        context_similarity_factor: float = 0.35,
        min_score_with_context_similarity: float = 0.6,
        context_prefix_count: int = 5,
        context_suffix_count: int = 0,
    ) -> None:
        super().__init__(
            context_similarity_factor=context_similarity_factor,
            min_score_with_context_similarity=min_score_with_context_similarity,
            context_prefix_count=context_prefix_count,
            context_suffix_count=context_suffix_count,
        )

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: Any,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        # The results are fresh objects built for this call, so they are updated in place
        # (the lemma enhancer deep-copies them, which is a measurable share of its cost).
        by_id = {r.id: r for r in recognizers}
        extra = [w.lower() for w in context or ()]
        for result in raw_results:
            meta = result.recognition_metadata or {}
            if meta.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                continue
            recognizer = by_id.get(meta.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY, ""))
            if recognizer is None or not recognizer.context:
                continue
            words = self.surrounding_words(text, result.start, result.end) + extra
            if any(_word_matches(w, c) for c in recognizer.context for w in words):
                boosted = max(
                    result.score + self.context_similarity_factor,
                    self.min_score_with_context_similarity,
                )
                result.score = min(boosted, self.MAX_SCORE)
        return raw_results

    def surrounding_words(self, text: str, start: int, end: int) -> list[str]:
        window_start = max(0, start - _WINDOW_CHARS)
        # Context words stay within the sentence: "call me at X. Check order Y" must not lend
        # "call" to Y.
        for boundary in _SENTENCE_END.finditer(text, window_start, start):
            window_start = boundary.end()
        before = _WORD.findall(text, window_start, start)
        words = [w.lower() for w in before if w.lower() not in _STOP_WORDS]
        picked = words[-self.context_prefix_count :] if self.context_prefix_count else []
        if self.context_suffix_count:
            after = _WORD.findall(text, end, end + _WINDOW_CHARS)
            picked += [w.lower() for w in after if w.lower() not in _STOP_WORDS][
                : self.context_suffix_count
            ]
        return picked


def _word_matches(word: str, context_word: str) -> bool:
    context_word = context_word.strip().lower()
    if not word.startswith(context_word):
        return False
    return word[len(context_word) :] in _SUFFIXES
