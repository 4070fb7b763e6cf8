"""Configuration: one YAML file, overridden by ``SIDECAR_<SECTION>__<KEY>`` environment variables.

Unknown keys are errors. Every field has a default, so ``sidecar serve`` runs with no file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

#: what the semantic-hit verifier compares (see sidecar/cache/match/verify.py)
VerifierCheck = Literal[
    "negation", "antonym", "number", "unit", "datetime", "entity", "scope", "order", "focus", "edit"
]
VerifierStrictness = Literal["lenient", "balanced", "strict"]


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``300``, ``"300"``, ``"5m"``, ``"1h"``, ``"1.5s"``. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        # Go-style compound durations ("1h30m") are accepted too.
        text = value.strip()
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
        if parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
        else:
            match = _DURATION.match(text)
            if not match:
                raise ValueError(f"invalid duration {value!r} (use seconds or e.g. 30s, 5m, 1h)")
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Section):
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    #: serve Envoy's ext_proc protocol next to the HTTP hook
    grpc_enabled: bool = True
    #: ext_proc on the sidecar's own errors: ``open`` answers CONTINUE unmodified, ``closed``
    #: ends the stream with an error (Envoy answers 500); ``auto``: closed with guardrail rules
    grpc_failure_mode: Literal["auto", "open", "closed"] = "auto"
    #: requests and answers larger than this are refused (HTTP hook) or passed uncached (ext_proc)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    #: how long the request hook's context waits for its response hook
    pending_ttl: float = 300.0
    #: bound on request contexts waiting for their response hook (oldest dropped first)
    max_pending: int = Field(10000, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: the event loop of ``sidecar serve``: ``uvloop`` (faster gRPC and HTTP handling),
    #: ``asyncio`` (the standard loop), ``auto``: uvloop when it is installed
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    @field_validator("pending_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> float:
        return parse_duration(v)


class CacheConfig(_Section):
    enabled: bool = True
    default_cache_key: str = ""
    ttl: float = 300.0
    #: cosine similarity a semantic candidate needs (x-bf-cache-threshold overrides it per
    #: request); the verifier and its match head then decide: docs/semantic-correctness.md
    threshold: float = Field(0.7, ge=0.0, le=1.0)
    conversation_history_threshold: int = Field(3, ge=1)
    exclude_system_prompt: bool = False
    cache_by_model: bool = True
    cache_by_provider: bool = True
    exact_store: str = "embedded"
    vector_store: str = "embedded"
    data_dir: str = ".sidecar-data"
    max_entries: int = Field(100_000, ge=1)
    max_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    #: nearest candidates checked against the threshold (and the verifier) on a semantic lookup
    candidates: int = Field(3, ge=1, le=50)
    #: second opinion on semantic candidates: "traps" refuses a hit when the questions differ in
    #: negation, antonyms, numbers, units, dates, names, scope or order; "off" trusts the threshold
    verifier: Literal["off", "traps"] = "traps"
    #: lenient: only substitutions; balanced: also a number, date or restrictor on one side;
    #: strict: also a name or comparative on one side
    verifier_strictness: VerifierStrictness = "balanced"
    verifier_checks: list[VerifierCheck] = Field(
        default_factory=lambda: list(get_args(VerifierCheck))
    )
    #: learned duplicate-question score over the two vectors (sidecar/cache/match/head.py):
    #: "auto" uses the bundled head when the embedder is the model it was trained for,
    #: "off" none, or a path to a head file; part of the verifier (off with verifier: off)
    match_head: str = "auto"
    #: the score a candidate needs from the match head
    match_head_min: float = Field(0.74, ge=0.0, le=1.0)
    #: second-stage cross-encoder over both questions (sidecar/cache/match/pair_model.py):
    #: "auto" the bundled one, "off" none, or a path to a pair-model directory; it scores the
    #: candidates that passed the threshold, the rules and the head, in one batch
    pair_model: str = "auto"
    #: the same-answer probability a candidate needs from the pair model
    pair_model_min: float = Field(0.1, ge=0.0, le=1.0)
    #: a pair-model probability this high overrides a refusal of the match head (never one
    #: of the rule checks); above 1 turns the override off
    pair_model_rescue: float = Field(0.95, ge=0.0, le=1.01)
    #: namespace prefix for shared backends (Redis key prefix, collection name)
    namespace: str = "sidecar"
    #: single-flight: identical concurrent misses wait for the first one's answer (see
    #: docs/backends.md); shared across replicas when the exact store is Redis
    single_flight: bool = True
    #: longest a request waits for an identical in-flight request before going upstream itself
    lock_wait_ms: int = Field(3000, ge=0, le=600_000)
    #: lifetime of a miss lock whose owner never answers (crashed, response hook never called)
    lock_ttl_ms: int = Field(30_000, ge=100, le=3_600_000)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("verifier", mode="before")
    @classmethod
    def _verifier(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class EmbedderConfig(_Section):
    backend: Literal["sentence-transformers", "onnx", "openai"] = "sentence-transformers"
    model: str = "all-MiniLM-L6-v2"
    #: a local directory with the model; empty means the packaged all-MiniLM-L6-v2
    model_path: str = ""
    #: for backend ``openai``: base URL of an OpenAI-compatible API (``.../v1``)
    base_url: str = ""
    #: for backend ``openai``: name of the environment variable holding the API key
    api_key_env: str = "OPENAI_API_KEY"
    #: for backend ``openai``: vector size the model returns (checked at start-up)
    dimension: int = Field(0, ge=0)
    timeout: float = 10.0
    #: for backend ``onnx``: int8 dynamic quantisation (about 2x faster, cosine ~0.99 to fp32)
    onnx_quantize: bool = False
    #: for backend ``onnx``: where the exported model is cached; empty means
    #: ``~/.cache/llm-cache-sidecar/onnx`` (exported on the first start only)
    onnx_cache_dir: str = ""
    #: concurrent embeddings arriving within this window share one model call
    batch_window_ms: float = Field(2.0, ge=0, le=1000)
    #: most texts per model call; 1 disables micro-batching
    max_batch: int = Field(32, ge=1, le=1024)


class GuardrailsConfig(_Section):
    rules: list[str] = Field(default_factory=list)
    #: empty: ``<data_dir>/audit.jsonl`` (or no audit log when data_dir is ``:memory:``)
    audit_log: str = ""
    #: seconds between checks of rule files for changes; 0 disables watching (SIGHUP still works)
    reload_interval: float = Field(2.0, ge=0)
    block_status: int = Field(403, ge=400, le=599)
    #: salt for ``hash`` redaction; empty means a random salt per process
    hash_salt_env: str = "SIDECAR_HASH_SALT"


class SidecarConfig(_Section):
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()

    @property
    def persistent(self) -> bool:
        return self.cache.data_dir != ":memory:"


class ConfigError(ValueError):
    """Invalid configuration. ``errors`` lists every problem with its location."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))


ENV_PREFIX = "SIDECAR_"


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    sections = set(SidecarConfig.model_fields)
    out: dict[str, Any] = {}
    errors: list[str] = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in sections:
            errors.append(f"{name}: unknown section {section!r}")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        # Strings such as "embedded" or a URL must stay strings; YAML only types scalars.
        if isinstance(value, dict):
            value = raw
        out.setdefault(section, {})[key] = value
    return out, errors


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Load YAML (if given), apply environment overrides, validate. Raises ConfigError."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"{source}: not valid YAML: {exc}"]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{source}: the top level must be a mapping of sections"])
        data = loaded
    overrides, errors = _env_overrides(os.environ if environ is None else environ)
    for section, values in overrides.items():
        current = data.get(section)
        if current is None:
            current = {}
        if not isinstance(current, dict):
            errors.append(f"{source}: section {section!r} must be a mapping")
            continue
        data[section] = {**current, **values}
    if errors:
        raise ConfigError(errors)
    try:
        return SidecarConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [f"{source}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        ) from exc
