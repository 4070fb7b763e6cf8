"""Building a Presidio ``AnalyzerEngine`` that starts and runs with no network.

``AnalyzerEngine()`` with no arguments downloads ``en_core_web_lg``; the stock e-mail
recognizer fetches the Public Suffix List. Here:

* the NLP engine is Presidio's ``no_op`` engine (presidio-analyzer >= 2.2.366) unless a spaCy
  NER model is configured, and a configured model is loaded only from an installed package or
  a local path, never downloaded;
* e-mail domains are checked against tldextract's bundled snapshot
  (:func:`guardrails.pii.recognizers.offline_suffix_extractor`);
* context words are read from the text by :class:`WindowContextEnhancer`, so no tokens or
  lemmas are needed.

:class:`PiiAnalyzer` wraps the engine with the profile's entity list, threshold, allow-list and
overlap resolution, and returns plain :class:`Detection` values.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NlpEngine, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import SpacyRecognizer

from guardrails.base import CheckConfigError
from guardrails.pii.config import NER_ENTITIES, PresidioConfig
from guardrails.pii.context import WindowContextEnhancer
from guardrails.pii.recognizers import build_recognizers


class _RedactLogArguments(logging.Filter):
    """Presidio logs some matched text (the IBAN recognizer logs values it cannot validate);
    personal data must not reach logs, so string arguments of its records are replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple("<redacted>" if isinstance(a, str) else a for a in record.args)
        return True


_PRESIDIO_LOGGER = logging.getLogger("presidio-analyzer")
if not any(isinstance(f, _RedactLogArguments) for f in _PRESIDIO_LOGGER.filters):
    _PRESIDIO_LOGGER.addFilter(_RedactLogArguments())


@dataclass(frozen=True, slots=True)
class Detection:
    entity: str
    start: int
    end: int
    score: float


class LocalSpacyNlpEngine(SpacyNlpEngine):
    """``SpacyNlpEngine`` that loads the given package or path and never downloads."""

    def load(self) -> None:
        import spacy

        loaded = {m["lang_code"]: spacy.load(m["model_name"]) for m in self.models}
        self.nlp = loaded  # type: ignore[assignment]  # the base class declares it as None


def resolve_nlp_model(name: str, base_dir: str | None) -> str:
    """A spaCy model reference that loads offline: an existing path, or an installed package."""
    import spacy.util

    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.is_dir():
        return str(path)
    if spacy.util.is_package(name):
        return name
    raise CheckConfigError(
        f"nlp_model: {name!r} is neither an installed spaCy model package nor a model "
        "directory; models are never downloaded at run time (see docs/pii.md)"
    )


def build_nlp_engine(config: PresidioConfig, base_dir: str | None) -> NlpEngine:
    if config.nlp_model is None:
        engine: NlpEngine = NoOpNlpEngine(
            models=[{"lang_code": config.language, "model_name": "no_op"}]
        )
    else:
        model = resolve_nlp_model(config.nlp_model, base_dir)
        engine = LocalSpacyNlpEngine(models=[{"lang_code": config.language, "model_name": model}])
    try:
        engine.load()
    except (OSError, ValueError, ImportError) as exc:
        raise CheckConfigError(f"nlp_model: cannot load {config.nlp_model!r}: {exc}") from exc
    return engine


class _Registry(RecognizerRegistry):
    """Presidio's registry, remembering which recognizers serve a request's entities: it
    filters the whole list for every entity on every call (a fifth of a clean 1 KB text's
    analysis). The key holds the list's identity and length, so recognizers added or removed
    later are seen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._picked: dict[tuple[Any, ...], list[EntityRecognizer]] = {}

    def get_recognizers(
        self,
        language: str,
        entities: list[str] | None = None,
        all_fields: bool = False,
        ad_hoc_recognizers: list[EntityRecognizer] | None = None,
    ) -> list[EntityRecognizer]:
        if ad_hoc_recognizers:
            return list(super().get_recognizers(language, entities, all_fields, ad_hoc_recognizers))
        known = cast("list[EntityRecognizer]", self.recognizers)  # a list, typed Iterable
        key = (
            language,
            None if entities is None else tuple(entities),
            all_fields,
            id(known),
            len(known),
        )
        picked = self._picked.get(key)
        if picked is None:
            picked = list(super().get_recognizers(language, entities, all_fields))
            if len(self._picked) >= 64:  # one key per profile in practice; bounded anyway
                self._picked.clear()
            self._picked[key] = picked
        return list(picked)


class _AnalyzerEngine(AnalyzerEngine):
    def _enhance_using_context(
        self, text: str, raw_results: list[RecognizerResult], *args: Any, **kwargs: Any
    ) -> list[RecognizerResult]:
        # Nothing found (most texts): no context to weigh. Presidio would still walk every
        # recognizer twice over the empty list (a tenth of a clean 1 KB text's analysis).
        if not raw_results:
            return []
        enhanced: list[RecognizerResult] = super()._enhance_using_context(
            text, raw_results, *args, **kwargs
        )
        return enhanced


def build_analyzer_engine(config: PresidioConfig, base_dir: str | None = None) -> AnalyzerEngine:
    nlp_engine = build_nlp_engine(config, base_dir)
    registry = _Registry(supported_languages=[config.language])
    for recognizer in build_recognizers(config):
        registry.add_recognizer(recognizer)
    ner_entities = [e for e in config.entities if e in NER_ENTITIES]
    if config.nlp_model is not None and ner_entities:
        registry.add_recognizer(
            SpacyRecognizer(supported_language=config.language, supported_entities=ner_entities)
        )
    return _AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=[config.language],
        context_aware_enhancer=WindowContextEnhancer(),
    )


class PiiAnalyzer:
    """The profile's view of Presidio: ``detect(text)`` -> non-overlapping detections."""

    def __init__(self, config: PresidioConfig, base_dir: str | None = None) -> None:
        self.config = config
        self.engine = build_analyzer_engine(config, base_dir)
        self._entities = list(config.all_entities)
        self._allowed = frozenset(v.strip().casefold() for v in config.allow_list)

    def detect(self, text: str) -> list[Detection]:
        if not text:
            return []
        results: list[RecognizerResult] = self.engine.analyze(
            text,
            language=self.config.language,
            entities=self._entities,
            score_threshold=self.config.min_score,
        )
        if self._allowed:
            results = [
                r for r in results if text[r.start : r.end].strip().casefold() not in self._allowed
            ]
        return resolve_overlaps(results)


def resolve_overlaps(results: list[Any]) -> list[Detection]:
    """Keep the strongest of overlapping results (then the longest), ordered by position.

    Presidio removes contained duplicates of one entity type only; two types can claim the same
    digits (an IBAN and a phone number inside it), and a redaction needs disjoint spans.
    The kept spans are disjoint, so they stay sorted by start and a candidate only needs its two
    neighbours checked (bisect): linear-logarithmic, where comparing against every kept span
    made a text dense with e-mail addresses quadratic (4,000 addresses: 1.2 s).
    """
    ranked = sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start))
    starts: list[int] = []
    kept: list[Detection] = []  # sorted by start, parallel to ``starts``
    for r in ranked:
        if r.end <= r.start:
            continue
        at = bisect.bisect_left(starts, r.start)
        if at > 0 and kept[at - 1].end > r.start:
            continue
        if at < len(kept) and kept[at].start < r.end:
            continue
        starts.insert(at, r.start)
        kept.insert(at, Detection(r.entity_type, r.start, r.end, float(r.score)))
    return kept
