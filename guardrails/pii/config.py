"""Profile configuration of the ``presidio`` check, parsed into typed values.

Every error is a :class:`CheckConfigError` whose message starts with the offending field, so a
rule-file author can find the line to fix (``custom_recognizers[1].regex: ...``).
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from guardrails.base import CheckConfigError

# The example profile; pattern and checksum recognizers only, so no NER model is needed.
DEFAULT_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
)
# Entities a spaCy NER model adds (see docs/pii.md); only accepted when ``nlp_model`` is set.
NER_ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "ORGANIZATION")
# The stock phone recognizer's regions; national formats are tried against these.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")

_ENTITY_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


class RedactionMode(enum.StrEnum):
    REPLACE = "replace"
    MASK = "mask"
    HASH = "hash"
    REVERSIBLE = "reversible"


class Validation(enum.StrEnum):
    NONE = "none"
    LUHN = "luhn"
    MOD97 = "mod97"  # ISO 7064 MOD 97-10 over the value as written (letters count 10..35)
    IBAN = "iban"  # MOD 97-10 after moving the first four characters to the end


@dataclass(frozen=True, slots=True)
class PatternSpec:
    regex: str
    score: float
    name: str


@dataclass(frozen=True, slots=True)
class CustomRecognizerSpec:
    entity: str
    name: str
    patterns: tuple[PatternSpec, ...]
    context: tuple[str, ...] = ()
    validation: Validation = Validation.NONE
    case_sensitive: bool = False


@dataclass(frozen=True, slots=True)
class PresidioConfig:
    entities: tuple[str, ...] = DEFAULT_ENTITIES
    min_score: float = 0.5
    allow_list: tuple[str, ...] = ()
    language: str = "en"
    redaction: RedactionMode = RedactionMode.REPLACE
    custom_recognizers: tuple[CustomRecognizerSpec, ...] = ()
    nlp_model: str | None = None
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    mask_char: str = "*"
    mask_keep_last: int = 4
    # Never printed: the dataclass repr hides it (see field below).
    hash_salt: bytes | None = field(default=None, repr=False)

    @property
    def all_entities(self) -> tuple[str, ...]:
        """Configured entities plus those of custom recognizers, in a stable order."""
        extra = [s.entity for s in self.custom_recognizers if s.entity not in self.entities]
        return self.entities + tuple(dict.fromkeys(extra))


_KNOWN_FIELDS = frozenset(
    {
        "entities",
        "min_score",
        "allow_list",
        "language",
        "redaction",
        "custom_recognizers",
        "custom_recognizers_file",
        "nlp_model",
        "phone_regions",
        "mask_char",
        "mask_keep_last",
        "hash_salt",
        "hash_salt_env",
    }
)


def parse_config(
    config: Mapping[str, Any],
    *,
    base_dir: str | None = None,
    known_entities: frozenset[str] = frozenset(),
    env: Mapping[str, str] | None = None,
) -> PresidioConfig:
    """Validate a profile's ``config`` mapping.

    ``known_entities`` are the entity names the built-in recognizers can detect; an entity that
    neither they, a custom recognizer nor a configured NER model provides is an error.
    """
    if not isinstance(config, Mapping):
        raise CheckConfigError(f"config: expected a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - _KNOWN_FIELDS)
    if unknown:
        raise CheckConfigError(
            f"{unknown[0]}: unknown field (known: {', '.join(sorted(_KNOWN_FIELDS))})"
        )
    environ = os.environ if env is None else env

    customs = _custom_recognizers(config, base_dir)
    nlp_model = _optional_str(config, "nlp_model")
    entities = _entities(config, known_entities, customs, nlp_model is not None)
    redaction = _redaction(config)
    salt = _hash_salt(config, environ, redaction)
    return PresidioConfig(
        entities=entities,
        min_score=_score(config.get("min_score", 0.5), "min_score"),
        allow_list=_str_list(config, "allow_list"),
        language=_language(config),
        redaction=redaction,
        custom_recognizers=customs,
        nlp_model=nlp_model,
        phone_regions=_phone_regions(config),
        mask_char=_mask_char(config),
        mask_keep_last=_mask_keep_last(config),
        hash_salt=salt,
    )


def _str_list(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = config.get(key, [])
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise CheckConfigError(f"{key}: expected a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise CheckConfigError(f"{key}[{i}]: expected a non-empty string")
    return tuple(value)


def _optional_str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CheckConfigError(f"{key}: expected a non-empty string or null")
    return value.strip()


def _score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckConfigError(f"{where}: expected a number between 0 and 1, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise CheckConfigError(f"{where}: must be between 0 and 1, got {value!r}")
    return float(value)


def _entities(
    config: Mapping[str, Any],
    known: frozenset[str],
    customs: tuple[CustomRecognizerSpec, ...],
    has_ner: bool,
) -> tuple[str, ...]:
    if "entities" not in config or config["entities"] is None:
        return DEFAULT_ENTITIES
    entities = _str_list(config, "entities")
    if not entities:
        raise CheckConfigError("entities: must name at least one entity")
    available = set(known) | {c.entity for c in customs}
    if has_ner:
        available |= set(NER_ENTITIES)
    for i, name in enumerate(entities):
        if name in NER_ENTITIES and not has_ner:
            raise CheckConfigError(
                f"entities[{i}]: {name} needs a spaCy NER model; set nlp_model (see docs/pii.md)"
            )
        if name not in available:
            raise CheckConfigError(
                f"entities[{i}]: unknown entity {name!r} (known: {', '.join(sorted(available))})"
            )
    return tuple(dict.fromkeys(entities))


def _redaction(config: Mapping[str, Any]) -> RedactionMode:
    value = config.get("redaction", "replace")
    try:
        return RedactionMode(value)
    except ValueError:
        modes = ", ".join(m.value for m in RedactionMode)
        raise CheckConfigError(f"redaction: must be one of {modes}, got {value!r}") from None


def _hash_salt(
    config: Mapping[str, Any], environ: Mapping[str, str], mode: RedactionMode
) -> bytes | None:
    literal = config.get("hash_salt")
    env_name = config.get("hash_salt_env")
    if literal is not None and env_name is not None:
        raise CheckConfigError("hash_salt: give either hash_salt or hash_salt_env, not both")
    if env_name is not None:
        if not isinstance(env_name, str) or not _ENV_NAME.match(env_name):
            raise CheckConfigError(f"hash_salt_env: not an environment variable name: {env_name!r}")
        value = environ.get(env_name, "")
        if not value and mode is RedactionMode.HASH:
            raise CheckConfigError(f"hash_salt_env: environment variable {env_name} is not set")
        return value.encode() if value else None
    if literal is not None:
        if not isinstance(literal, str) or len(literal) < 8:
            raise CheckConfigError("hash_salt: expected a string of at least 8 characters")
        return literal.encode()
    if mode is RedactionMode.HASH:
        raise CheckConfigError(
            "hash_salt_env: redaction 'hash' needs a salt; name an environment variable that "
            "holds it (or give hash_salt)"
        )
    return None


def _language(config: Mapping[str, Any]) -> str:
    value = config.get("language", "en")
    if not isinstance(value, str) or not _LANGUAGE.match(value):
        raise CheckConfigError(f"language: expected an ISO 639-1 code such as 'en', got {value!r}")
    return value


def _phone_regions(config: Mapping[str, Any]) -> tuple[str, ...]:
    if "phone_regions" not in config:
        return DEFAULT_PHONE_REGIONS
    import phonenumbers  # local: only needed when the field is given

    regions = _str_list(config, "phone_regions")
    for i, region in enumerate(regions):
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise CheckConfigError(f"phone_regions[{i}]: unknown region code {region!r}")
    return regions


def _mask_char(config: Mapping[str, Any]) -> str:
    value = config.get("mask_char", "*")
    if not isinstance(value, str) or len(value) != 1:
        raise CheckConfigError(f"mask_char: expected a single character, got {value!r}")
    return value


def _mask_keep_last(config: Mapping[str, Any]) -> int:
    value = config.get("mask_keep_last", 4)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 8:
        raise CheckConfigError(f"mask_keep_last: expected an integer from 0 to 8, got {value!r}")
    return value


def _custom_recognizers(
    config: Mapping[str, Any], base_dir: str | None
) -> tuple[CustomRecognizerSpec, ...]:
    inline = config.get("custom_recognizers")
    file_name = config.get("custom_recognizers_file")
    items: list[tuple[str, Any]] = []
    if inline is not None:
        if not isinstance(inline, list):
            raise CheckConfigError("custom_recognizers: expected a list")
        items += [(f"custom_recognizers[{i}]", item) for i, item in enumerate(inline)]
    if file_name is not None:
        loaded = _load_recognizer_file(file_name, base_dir)
        items += [(f"custom_recognizers_file[{i}]", item) for i, item in enumerate(loaded)]
    specs = tuple(_custom_recognizer(where, item) for where, item in items)
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise CheckConfigError(f"{items[i][0]}.name: duplicate recognizer name {name!r}")
    return specs


def _load_recognizer_file(file_name: Any, base_dir: str | None) -> list[Any]:
    if not isinstance(file_name, str) or not file_name:
        raise CheckConfigError("custom_recognizers_file: expected a file path")
    path = Path(file_name)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckConfigError(f"custom_recognizers_file: cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CheckConfigError(f"custom_recognizers_file: {path} is not valid YAML: {exc}") from exc
    if isinstance(data, Mapping) and "recognizers" in data:
        data = data["recognizers"]
    if not isinstance(data, list):
        raise CheckConfigError(
            f"custom_recognizers_file: {path} must hold a list (or a 'recognizers' list)"
        )
    return data


_RECOGNIZER_FIELDS = frozenset(
    {"name", "entity", "regex", "patterns", "score", "context", "validation", "case_sensitive"}
)


def _custom_recognizer(where: str, item: Any) -> CustomRecognizerSpec:
    import regex  # the engine Presidio's PatternRecognizer compiles with

    if not isinstance(item, Mapping):
        raise CheckConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(item) - _RECOGNIZER_FIELDS)
    if unknown:
        raise CheckConfigError(f"{where}.{unknown[0]}: unknown field")
    entity = item.get("entity")
    if not isinstance(entity, str) or not _ENTITY_NAME.match(entity):
        raise CheckConfigError(
            f"{where}.entity: expected an upper-case entity name such as EMPLOYEE_ID, "
            f"got {entity!r}"
        )
    name = item.get("name", entity.lower())
    if not isinstance(name, str) or not name:
        raise CheckConfigError(f"{where}.name: expected a non-empty string")
    default_score = _score(item.get("score", 0.6), f"{where}.score")
    raw_patterns: list[tuple[str, Any]] = []
    if "regex" in item:
        raw_patterns.append((f"{where}.regex", {"regex": item["regex"]}))
    if "patterns" in item:
        pats = item["patterns"]
        if not isinstance(pats, list):
            raise CheckConfigError(f"{where}.patterns: expected a list")
        raw_patterns += [(f"{where}.patterns[{i}]", p) for i, p in enumerate(pats)]
    if not raw_patterns:
        raise CheckConfigError(f"{where}.regex: a recognizer needs 'regex' or 'patterns'")
    patterns: list[PatternSpec] = []
    for pwhere, pat in raw_patterns:
        if not isinstance(pat, Mapping) or not isinstance(pat.get("regex"), str):
            raise CheckConfigError(f"{pwhere}: expected a regex string")
        text = pat["regex"]
        if not text:
            raise CheckConfigError(f"{pwhere}: empty regex")
        try:
            compiled = regex.compile(text)
        except regex.error as exc:
            raise CheckConfigError(f"{pwhere}: invalid regex: {exc}") from exc
        if compiled.match(""):
            raise CheckConfigError(f"{pwhere}: regex matches the empty string")
        score = _score(pat.get("score", default_score), f"{pwhere}.score")
        patterns.append(PatternSpec(regex=text, score=score, name=f"{name}#{len(patterns)}"))
    context_raw = item.get("context", [])
    if not isinstance(context_raw, list) or not all(
        isinstance(w, str) and w.strip() for w in context_raw
    ):
        raise CheckConfigError(f"{where}.context: expected a list of words")
    for i, word in enumerate(context_raw):
        if len(word.split()) != 1:
            raise CheckConfigError(
                f"{where}.context[{i}]: context entries are single words, got {word!r}"
            )
    validation_raw = item.get("validation", "none")
    try:
        validation = Validation(validation_raw)
    except ValueError:
        names = ", ".join(v.value for v in Validation)
        raise CheckConfigError(
            f"{where}.validation: must be one of {names}, got {validation_raw!r}"
        ) from None
    case_sensitive = item.get("case_sensitive", False)
    if not isinstance(case_sensitive, bool):
        raise CheckConfigError(f"{where}.case_sensitive: expected true or false")
    return CustomRecognizerSpec(
        entity=entity,
        name=name,
        patterns=tuple(patterns),
        context=tuple(w.strip().lower() for w in context_raw),
        validation=validation,
        case_sensitive=case_sensitive,
    )
