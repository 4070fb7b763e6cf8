"""Configuration: one YAML file, overridden by ``SIDECAR_<SECTION>__<KEY>`` environment variables.

Unknown keys are errors. Every field has a default, so ``sidecar serve`` runs with no file.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

#: what the semantic-hit verifier compares (see sidecar/cache/match/verify.py)
VerifierCheck = Literal[
    "negation", "antonym", "number", "unit", "datetime", "entity", "scope", "order", "focus", "edit"
]
VerifierStrictness = Literal["lenient", "balanced", "strict"]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_duration(seconds: float) -> str:
    """``2592000`` -> ``"30d"``; the largest whole unit, else seconds."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


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
                raise ValueError(
                    f"invalid duration {_short(value)} (use seconds or e.g. 30s, 5m, 1h)"
                )
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    # float() turns 400 digits into inf (and YAML has .inf/.nan): never a usable lifetime.
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be a finite number of seconds, got {_short(value)}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


class _Section(BaseModel):
    # allow_inf_nan=False: YAML's .inf/.nan are never a valid timeout, size or threshold.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    #: bound on request contexts waiting for their response hook; beyond it (or beyond
    #: max_pending_bytes) new requests get 503 and waiting contexts are never dropped
    max_pending: int = Field(10000, ge=1)
    #: bound on the estimated bytes of waiting request contexts (their bodies, metadata,
    #: headers); with the Redis pending store, the sealed bytes across all replicas
    max_pending_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024)
    #: where waiting request contexts live: ``memory`` (this process), a Redis URL, or
    #: ``auto``: Redis at cache.exact_store when that is a Redis URL, else memory
    pending_store: str = "auto"
    #: environment variable with the AES-256-GCM key (base64 of 32 bytes) that seals contexts
    #: kept in Redis; required when the pending store is Redis
    pending_key_env: str = "SIDECAR_PENDING_KEY"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: NAME of the environment variable holding the bearer token(s) that hooks, admin calls and
    #: the ext_proc stream must present; several tokens separated by commas are all accepted
    #: (rotation). Empty: no authentication (then only loopback binds, see ``allow_insecure``)
    auth_token_env: str = ""
    #: wrong or missing tokens one client address may send within ``auth_failure_window``
    #: seconds before it is refused (429, ``Retry-After``) until the window ends; 0: no limit
    auth_max_failures: int = Field(20, ge=0)
    auth_failure_window: float = Field(60.0, gt=0)
    #: listen beyond loopback without a token (``sidecar serve --insecure-no-auth``)
    allow_insecure: bool = False
    #: PEM certificate chain and private key: both listeners speak TLS (HTTPS, gRPC over TLS)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: a separate HTTP listener for the admin API (/readyz, /metrics, deletes, /openapi.json) on
    #: ``http_host``; 0: the admin API shares the hook port
    admin_port: int = Field(0, ge=0, le=65535)
    #: a connection must send its complete request headers within this time or is closed
    header_timeout: float = 10.0
    #: a request body that stops arriving for this long closes the connection
    body_timeout: float = 30.0
    #: an idle keep-alive connection is closed after this time
    keepalive_timeout: float = 5.0
    #: open HTTP connections per listener; beyond it new connections are closed at once
    max_connections: int = Field(1024, ge=1)
    #: at SIGTERM/SIGINT, how long requests and ext_proc streams in progress may take to
    #: finish before the listeners close them (the vector backlog then drains, bounded by
    #: cache.vector_drain_s, and the embedded index is saved)
    shutdown_grace: float = 5.0
    #: ext_proc gRPC listener (Envoy multiplexes each HTTP request's stream over a few HTTP/2
    #: connections). Connections at once; beyond it a new connection is closed at once
    grpc_max_connections: int = Field(1024, ge=1)
    #: ext_proc streams in progress at once (one per HTTP request in flight), all connections
    #: together; beyond it a new stream is refused at once with RESOURCE_EXHAUSTED, which Envoy
    #: handles by its failure mode (fail open: passed through; closed: 500)
    grpc_max_concurrent_streams: int = Field(10_000, ge=1)
    #: a connection must finish its handshake (TLS, HTTP/2 settings) within this time
    grpc_handshake_timeout: float = 10.0
    #: the server pings a connection after this long without traffic; a peer that does not
    #: answer within ``grpc_keepalive_timeout`` is closed (half-open connections do not pile up)
    grpc_keepalive_time: float = 60.0
    grpc_keepalive_timeout: float = 20.0
    #: a connection without streams for this long is closed with GOAWAY (Envoy reconnects on
    #: its next request); 0: never
    grpc_max_connection_idle: float = 300.0
    #: a connection older than this is asked to go away (GOAWAY) and closed once its streams
    #: end or ``grpc_max_connection_age_grace`` has passed; 0: never
    grpc_max_connection_age: float = 0.0
    grpc_max_connection_age_grace: float = 30.0
    #: the event loop of ``sidecar serve``: ``uvloop`` (faster gRPC and HTTP handling),
    #: ``asyncio`` (the standard loop), ``auto``: uvloop when it is installed
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    #: while the event loop runs its timers later than this, optional work (semantic lookups,
    #: early embeddings) is skipped and counted so exact hits keep their latency; 0: never
    #: (docs/overload.md)
    shed_loop_lag_ms: float = Field(10.0, ge=0, le=10_000)
    #: while the lag stays over this, misses are not stored either (counted; ext_proc then
    #: ends the stream after the request, halving a miss's cost on the loop); 0: never
    shed_store_lag_ms: float = Field(40.0, ge=0, le=10_000)
    #: while the lag stays over this (failing open: after one probe that late), new ext_proc
    #: streams are refused at once (fail open: the stream closes cleanly and Envoy goes on
    #: without the sidecar, uncached; fail closed: RESOURCE_EXHAUSTED, Envoy's
    #: failure_mode_allow decides), counted; below Envoy's
    #: message_timeout (200 ms by default) so requests are refused before they time out;
    #: 0: never (docs/overload.md)
    refuse_streams_lag_ms: float = Field(100.0, ge=0, le=10_000)
    #: failing open, an ext_proc stream that waited longer than this in the gRPC transport
    #: before the sidecar took it up (Envoy's ``request.time`` attribute, which Envoy must be
    #: configured to send: docs/envoy.md) is refused the same way, counted; a wait that lasts
    #: sheds lookups and stores like a lagging loop. 0: never (docs/overload.md)
    refuse_streams_wait_ms: float = Field(50.0, ge=0, le=10_000)
    #: also read the ext_proc round trip (headers reply until the body arrives, small bodies)
    #: as lag: it sees a backed-up gRPC transport, but also clients that send their body late
    #: (``Expect: 100-continue``); false: the event loop's lag only
    shed_on_extproc_round_trip: bool = True
    #: a liveness listener (plain HTTP, GET /healthz only, no token) on ``http_host`` answered
    #: from its own thread, so probes do not queue behind requests on the event loop; it
    #: answers 503 once the loop has not run for ``health_stall_s``. 0: off (docs/overload.md)
    health_port: int = Field(0, ge=0, le=65535)
    health_stall_s: float = Field(10.0, gt=0, le=3600)
    #: a path: one JSON line per request (ids, partition hash, status, reason, timings, rules
    #: fired; never user text). Empty: off
    access_log: str = ""

    @field_validator(
        "pending_ttl",
        "header_timeout",
        "body_timeout",
        "keepalive_timeout",
        "grpc_handshake_timeout",
        "grpc_keepalive_time",
        "grpc_keepalive_timeout",
        "grpc_max_connection_age_grace",
        "shutdown_grace",
        mode="before",
    )
    @classmethod
    def _ttl(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("grpc_max_connection_idle", "grpc_max_connection_age", mode="before")
    @classmethod
    def _duration_or_never(cls, v: Any) -> float:
        if v in (0, "0", "off", "never"):
            return 0.0
        return parse_duration(v)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self


class PartitionPolicy(_Section):
    """Per-partition overrides of the adaptive settings (``cache.partitions``)."""

    #: as ``cache.target_wrong_rate``; an explicit null turns the target off for the partition
    target_wrong_rate: float | None = Field(None, gt=0.0, lt=1.0)
    explore_rate: float | None = Field(None, ge=0.0, le=1.0)


class CacheConfig(_Section):
    enabled: bool = True
    default_cache_key: str = ""
    ttl: float = 300.0
    #: the longest lifetime an entry may get; a larger ``ttl`` or ``x-bf-cache-ttl`` is refused
    max_ttl: float = 30 * 86400.0
    #: answers are stored only when every finish reason (OpenAI ``finish_reason``, Anthropic
    #: ``stop_reason``) is in this list: truncated (``length``, ``max_tokens``) or filtered
    #: (``content_filter``) answers are passed through but never replayed
    storable_finish_reasons: list[str] = Field(
        default_factory=lambda: [
            "stop",
            "tool_calls",
            "function_call",
            "end_turn",
            "stop_sequence",
            "tool_use",
        ]
    )
    #: answers are stored as the model produced them, personal data included, unless an output
    #: rule redacts it (a redacted answer is never stored). Off: an answer in which any output
    #: rule found something, even a ``detect_only`` one, is passed through but not stored
    store_flagged_answers: bool = True
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
    #: ONNX Runtime's idle threads spin-wait during a pair-model call: faster on a quiet
    #: machine (3 candidates of 64 tokens: ~3.8 vs ~5.2 ms here); false on a crowded host,
    #: where the spin takes CPU other work needs
    pair_model_spin: bool = True
    #: namespace prefix for shared backends (Redis key prefix, collection name)
    namespace: str = "sidecar"
    #: single-flight: identical concurrent misses wait for the first one's answer (see
    #: docs/backends.md); shared across replicas when the exact store is Redis
    single_flight: bool = True
    #: longest a request waits for an identical in-flight request before going upstream itself
    lock_wait_ms: int = Field(3000, ge=0, le=600_000)
    #: lifetime of a miss lock whose owner never answers (crashed, response hook never called)
    lock_ttl_ms: int = Field(30_000, ge=100, le=3_600_000)
    #: stored entries whose vectors wait to be computed (off the request path), at most
    vector_backlog: int = Field(10_000, ge=1, le=10_000_000)
    #: ... and at most this many question bytes; beyond either bound a vector is dropped
    #: (counted in sidecar_cache_vector_drops): the entry still serves exact hits
    vector_backlog_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: at shutdown, how long to wait for the backlog's vectors before reporting the rest lost
    vector_drain_s: float = Field(10.0, ge=0, le=3600)
    #: embedded vector index: a scope is searched by brute force up to this many vectors, then
    #: through an HNSW graph (the graphs are what is saved at shutdown and loaded at start)
    vector_graph_at: int = Field(2048, ge=2, le=10_000_000)
    #: ... whose vectors it keeps as i8 (a quarter of f32's memory, faster to build and
    #: search), f16 or f32; candidates are re-scored with their float32 vectors before any
    #: decision, so this changes speed, memory and recall, not the threshold's meaning.
    #: A saved graph keeps the type it was built with until it is rebuilt
    vector_graph_dtype: Literal["i8", "f16", "f32"] = "i8"
    #: exact hits of requests seen before skip parsing and planning: each such request's
    #: parsed form and cache plan are remembered, within this many bytes (an estimate; the
    #: entry itself is still read from the store every time). 0: off. docs/envoy.md
    hit_memo_bytes: int = Field(8 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)

    #: adaptive semantic hits (docs/adaptive.md): the share of served semantic hits that may be
    #: wrong, bounded with 95% confidence from checks on live traffic; null: the static
    #: threshold and verifier alone decide (no adaptive code runs)
    target_wrong_rate: float | None = Field(None, gt=0.0, lt=1.0)
    #: with a target: the share of would-be semantic hits sent upstream anyway to check them
    explore_rate: float = Field(0.1, ge=0.0, le=1.0)
    #: seed of the exploration sampling (reproducible runs); null: random
    explore_seed: int | None = None
    #: two answers whose embeddings' cosine is at least this agree (exploration); calibrated
    #: by benchmarks/calibrate_answer_agreement.py
    answer_agree_min: float = Field(0.63, ge=-1.0, le=1.0)
    #: ... at most this: they disagree; in between the check is not counted
    answer_disagree_max: float = Field(0.57, ge=-1.0, le=1.0)
    #: per partition (an x-bf-cache-key value): ``{target_wrong_rate: .., explore_rate: ..}``
    partitions: dict[str, PartitionPolicy] = Field(default_factory=dict)
    #: served semantic hits remembered for feedback (POST /v1/cache/feedback), at most ...
    feedback_max_hits: int = Field(100_000, ge=1, le=10_000_000)
    #: ... and for this long
    feedback_window: float = 3600.0

    @field_validator("ttl", "max_ttl", "feedback_window", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _answer_band(self) -> CacheConfig:
        if self.answer_disagree_max >= self.answer_agree_min:
            raise ValueError(
                f"cache.answer_disagree_max {self.answer_disagree_max} must be below "
                f"cache.answer_agree_min {self.answer_agree_min}"
            )
        return self

    @model_validator(mode="after")
    def _ttl_within_max(self) -> CacheConfig:
        if self.ttl > self.max_ttl:
            raise ValueError(
                f"cache.ttl {format_duration(self.ttl)} is over cache.max_ttl "
                f"{format_duration(self.max_ttl)}"
            )
        return self

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
    #: for backend ``onnx``: int8 dynamic quantisation (a quarter of torch's CPU per query,
    #: fp32 ONNX half; cosine ~0.994 to torch's vectors). The match head has a file per kind of
    #: vectors (``head.bundled_head``); docs/semantic-correctness.md "Default embedder"
    onnx_quantize: bool = False
    #: for backend ``onnx``: where the exported model is cached; empty means
    #: ``~/.cache/llm-cache-sidecar/onnx`` (exported on the first start only)
    onnx_cache_dir: str = ""
    #: concurrent embeddings arriving within this window share one model call
    batch_window_ms: float = Field(2.0, ge=0, le=1000)
    #: most texts per model call; 1 disables micro-batching
    max_batch: int = Field(32, ge=1, le=1024)
    #: longest a lookup may queue for the embedder; a lookup that would wait longer skips
    #: the semantic layer (miss, reason "overloaded: semantic lookup skipped"). Well below
    #: Envoy's ext_proc message timeout (200 ms by default). Needs micro-batching (max_batch > 1)
    max_queue_ms: float = Field(50.0, gt=0, le=600_000)
    #: most semantic lookups waiting for the embedder at once; one more skips the semantic
    #: layer at once (same reason, counted in sidecar_overload_shed_total), so a burst never
    #: piles up requests on the event loop (docs/overload.md)
    max_inflight_lookups: int = Field(64, ge=1, le=100_000)
    #: sentence-transformers: the deferred vectors' lane (docs/overload.md). ``normal``: a
    #: thread at the request lane's nice value (+5); ``low``: at nice 19 (a small share of busy
    #: cores, so slow under load, never stopped); ``idle-compute``: its compute threads at
    #: SCHED_IDLE; ``idle``: its GIL-holding thread too. The idle lanes interfere less with
    #: requests on spare cores, but starve while other work keeps every core busy, and a
    #: lookup waits behind the batch they hold
    background_priority: Literal["normal", "low", "idle-compute", "idle"] = "normal"
    #: sentence-transformers: torch threads of the deferred vectors' lane; 0 means 1 with
    #: ``normal`` and ``low`` (a backlog then keeps at most one core busy, the other stays for
    #: requests) and as many as the request lane with the idle lanes
    background_threads: int = Field(0, ge=0, le=256)


class GuardrailsConfig(_Section):
    rules: list[str] = Field(default_factory=list)
    #: empty: ``<data_dir>/audit.jsonl`` (or no audit log when data_dir is ``:memory:``)
    audit_log: str = ""
    #: seconds between checks of rule files for changes; 0 disables watching (SIGHUP still works)
    reload_interval: float = Field(2.0, ge=0)
    block_status: int = Field(403, ge=400, le=599)
    #: salt for ``hash`` redaction; empty means a random salt per process
    hash_salt_env: str = "SIDECAR_HASH_SALT"
    #: worker processes for local checks on large inputs (killed at the deadline);
    #: ``auto``: min(2, cores); 0: none (checks run in the sidecar's process, unstoppable)
    workers: int | Literal["auto"] = "auto"
    #: requests that may wait for a busy worker; beyond that, ``error:workers_busy``
    worker_queue: int = Field(64, ge=1, le=100_000)
    #: inputs up to this many characters run local checks inline (bounded cost, no IPC)
    inline_max_chars: int = Field(4096, ge=0, le=1_000_000)
    #: CPU one request's local checks may use in workers, both stages together; 0: no budget
    cpu_budget_ms: int = Field(1000, ge=0, le=600_000)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 0 <= v <= 64:
            raise ValueError("workers must be 'auto' or 0-64")
        return v


class MetricsConfig(_Section):
    #: labels fed from traffic (partition, rule, model) keep the first N distinct values seen
    #: for the life of the process; later values are reported as ``other``
    max_label_values: int = Field(100, ge=1, le=100_000)


class PricingConfig(_Section):
    #: a JSON price table overriding the bundled snapshot (sidecar/data/model_prices.json),
    #: same shape: ``{"models": {"<name>": {"input_cost_per_token": .., ...}}}``
    file: str = ""


class TelemetryConfig(_Section):
    #: OTLP/HTTP traces endpoint (e.g. ``http://collector:4318/v1/traces``); empty: off
    otlp_endpoint: str = ""
    #: share of requests traced (parent-based: a sampled caller's trace is always continued)
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    service_name: str = "llm-cache-sidecar"


class UiConfig(_Section):
    #: the dashboard at ``/ui`` (on the admin listener); with ``server.auth_token_env`` set it
    #: asks for the token once and keeps a session cookie
    enabled: bool = True
    #: recent decisions the dashboard's table can show (time, partition hash, status, reason,
    #: latency, rules fired; never user text), bounded in count and in bytes
    recent_decisions: int = Field(10_000, ge=1, le=1_000_000)
    recent_decisions_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    #: how often the dashboard's time series takes a sample of the counters, and how many
    #: samples it keeps (720 x 5 s: the last hour)
    sample_interval: float = 5.0
    history_points: int = Field(720, ge=2, le=100_000)
    #: a login session's lifetime, and the most sessions held at once (the oldest goes first)
    session_ttl: float = 8 * 3600.0
    max_sessions: int = Field(1000, ge=1, le=100_000)

    @field_validator("sample_interval", "session_ttl", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class SidecarConfig(_Section):
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()
    metrics: MetricsConfig = MetricsConfig()
    pricing: PricingConfig = PricingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    ui: UiConfig = UiConfig()

    @property
    def persistent(self) -> bool:
        return self.cache.data_dir != ":memory:"


class ConfigError(ValueError):
    """Invalid configuration. ``errors`` lists every problem with its location."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))


ENV_PREFIX = "SIDECAR_"


def _nearest(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section_fields(section: str) -> list[str]:
    field = SidecarConfig.model_fields.get(section)
    model = field.annotation if field is not None else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _env_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], list[str], dict[tuple[str, str], str]]:
    """(values by section, errors, the variable each (section, key) came from)."""
    sections = list(SidecarConfig.model_fields)
    out: dict[str, Any] = {}
    errors: list[str] = []
    origin: dict[tuple[str, str], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in sections:
            errors.append(f"{name}: unknown section {section!r}{_nearest(section, sections)}")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        # Strings such as "embedded" or a URL must stay strings; YAML only types scalars.
        if isinstance(value, dict):
            value = raw
        out.setdefault(section, {})[key] = value
        origin[(section, key)] = name
    return out, errors, origin


def _yaml_error(source: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"{source}: not valid YAML: {problem}"
    return f"{source}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _validation_errors(
    exc: ValidationError, source: str, origin: Mapping[tuple[str, str], str]
) -> list[str]:
    """One line per problem, naming where the value came from (the file, or the variable)."""
    out: list[str] = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        where = source
        if len(loc) >= 2 and (loc[0], loc[1]) in origin:
            where = f"environment variable {origin[(loc[0], loc[1])]}"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            known = _section_fields(loc[0]) if len(loc) == 2 else list(SidecarConfig.model_fields)
            message = f"unknown key{_nearest(loc[-1], known)}"
        out.append(f"{where}: {'.'.join(loc)}: {message}")
    return out


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
            raise ConfigError([_yaml_error(source, exc)]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{source}: the top level must be a mapping of sections"])
        data = loaded
    overrides, errors, origin = _env_overrides(os.environ if environ is None else environ)
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
        raise ConfigError(_validation_errors(exc, source, origin)) from exc
