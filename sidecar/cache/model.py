"""Cache entries and the keys that address them.

Stored form (``to_bytes``): one JSON object. Schema versions:

- 1: the first format, without a ``"v"`` field (sidecar releases before the schema version).
- 2: the same fields plus ``"v": 2``; ``from_bytes`` reads 1 and 2, and a store that meets a
  version-1 row rewrites it as version 2 (the embedded store does so at start).
  ``answer.usage`` (the provider's reported tokens, for savings accounting) is an optional
  field of version 2: rows written before it existed lack it and read as ``usage=None``, and
  a sidecar that predates it ignores it, so the version did not change.

``from_bytes`` raises ``UnreadableEntry`` (never TypeError/KeyError) for anything else: a store
logs the id, counts it and skips the row, so one bad row never stops the sidecar.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

#: the schema version ``to_bytes`` writes
SCHEMA_VERSION = 2
#: versions ``from_bytes`` reads (older ones are migrated on write)
READABLE_VERSIONS = (1, 2)


class UnreadableEntry(ValueError):
    """A stored entry that cannot be read. The message says why, never the content."""


def _require(cond: bool, why: str) -> None:
    if not cond:
        raise UnreadableEntry(why)


def _finite_numbers(value: Any) -> bool:
    """A flat list of finite numbers. In numpy: a start-up reads every stored vector, and a
    Python loop over each number was three quarters of the time spent reading a row."""
    if not isinstance(value, list):
        return False
    try:
        numbers = np.array(value)
    except (ValueError, OverflowError):  # ragged nesting
        return False
    # kind: f(loat), i(nt), u(nsigned), b(ool, an int to Python); strings, None, huge ints and
    # nested lists give another kind or another ndim
    if numbers.ndim != 1 or numbers.dtype.kind not in "fiub":
        return False
    return bool(np.isfinite(numbers.astype(np.float64, copy=False)).all())


def _finite(value: Any, name: str) -> float:
    _require(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        f"{name} is not a finite number",
    )
    return float(value)


def _count(value: Any, name: str) -> int:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        f"{name} is not a non-negative integer",
    )
    return int(value)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the provider reported for an answer, and the model that produced it."""

    model: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    @classmethod
    def from_json(cls, data: Any) -> Usage:
        _require(isinstance(data, dict), "answer.usage is not an object")
        _require(isinstance(data.get("model"), str), "answer.usage.model is not a string")
        return cls(
            data["model"],
            _count(data.get("prompt_tokens"), "answer.usage.prompt_tokens"),
            _count(data.get("completion_tokens"), "answer.usage.completion_tokens"),
        )


#: headers of a cached answer worth replaying; hop-by-hop and per-response ones are dropped
REPLAYED_HEADERS = ("content-type", "openai-model", "anthropic-model", "x-request-model")


@dataclass(slots=True)
class CachedAnswer:
    """An answer as the provider gave it. Streamed answers keep their SSE text verbatim."""

    status: int
    headers: dict[str, str]
    body: bytes
    streamed: bool = False
    usage: Usage | None = None  # absent in rows stored before usage was kept

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "headers": self.headers,
            "body": self.body.decode("utf-8"),
            "streamed": self.streamed,
        }
        if self.usage is not None:
            out["usage"] = self.usage.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any) -> CachedAnswer:
        _require(isinstance(data, dict), "answer is not an object")
        status, headers, body = data.get("status"), data.get("headers"), data.get("body")
        _require(isinstance(status, int) and 100 <= status <= 599, "answer.status is invalid")
        _require(
            isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values()),
            "answer.headers is not a mapping of strings",
        )
        _require(isinstance(body, str), "answer.body is not a string")
        usage = data.get("usage")
        return cls(
            status=status,
            headers=dict(headers),
            body=body.encode("utf-8"),
            streamed=bool(data.get("streamed", False)),
            usage=None if usage is None else Usage.from_json(usage),
        )


def replayed_headers(answer: CachedAnswer) -> dict[str, str]:
    """The stored headers a cached answer is replayed with (a new dict), and its content type."""
    headers = {k: v for k, v in answer.headers.items() if k in REPLAYED_HEADERS}
    headers.setdefault(
        "content-type", "text/event-stream" if answer.streamed else "application/json"
    )
    return headers


@dataclass(slots=True)
class CacheEntry:
    """One cached answer.

    ``id`` is the exact key (a hash of scope and normalised conversation), so an exact lookup is
    a get by id. ``scope`` groups entries that may answer each other semantically: same
    partition, model, provider, parameters and conversation history. ``question`` is the
    normalised text that was embedded, kept so a verifier can compare it with a new question.
    """

    id: str
    partition: str
    scope: str
    question: str
    answer: CachedAnswer
    created_at: float
    expires_at: float
    vector: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.expires_at

    def size_bytes(self) -> int:
        # Body dominates; question and vector are counted so the byte bound is honest.
        return len(self.answer.body) + len(self.question) + 4 * len(self.vector or ()) + 256

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "id": self.id,
                "partition": self.partition,
                "scope": self.scope,
                "question": self.question,
                "answer": self.answer.to_json(),
                "created_at": self.created_at,
                "expires_at": self.expires_at,
                "vector": self.vector,
                "meta": self.meta,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> CacheEntry:
        return cls.read(raw)[0]

    @classmethod
    def read(cls, raw: bytes | str) -> tuple[CacheEntry, int]:
        """The entry and the schema version it was stored in. Raises ``UnreadableEntry``."""
        _require(isinstance(raw, bytes | str), "not bytes or text")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UnreadableEntry("not valid JSON") from None
        _require(isinstance(data, dict), "not a JSON object")
        version = data.get("v", 1)
        _require(
            isinstance(version, int) and not isinstance(version, bool),
            "schema version is not an integer",
        )
        if version not in READABLE_VERSIONS:
            raise UnreadableEntry(
                f"schema version {version} (this sidecar reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        # Versions 1 and 2 share their fields; a future migration branches on ``version`` here.
        for name in ("id", "partition", "scope", "question"):
            _require(isinstance(data.get(name), str), f"{name} is not a string")
        vector = data.get("vector")
        _require(
            vector is None or _finite_numbers(vector), "vector is not a list of finite numbers"
        )
        meta = data.get("meta") or {}
        _require(isinstance(meta, dict), "meta is not an object")
        entry = cls(
            id=data["id"],
            partition=data["partition"],
            scope=data["scope"],
            question=data["question"],
            answer=CachedAnswer.from_json(data.get("answer")),
            created_at=_finite(data.get("created_at"), "created_at"),
            expires_at=_finite(data.get("expires_at"), "expires_at"),
            vector=vector,
            meta=meta,
        )
        return entry, version


def entry_id_of(raw: bytes | str) -> str | None:
    """The id in a stored entry, if one can be found without reading the rest (for logs)."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
