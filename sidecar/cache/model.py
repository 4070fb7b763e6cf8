"""Cache entries and the keys that address them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class CachedAnswer:
    """An answer as the provider gave it. Streamed answers keep their SSE text verbatim."""

    status: int
    headers: dict[str, str]
    body: bytes
    streamed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": self.headers,
            "body": self.body.decode("utf-8"),
            "streamed": self.streamed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachedAnswer:
        return cls(
            status=int(data["status"]),
            headers=dict(data["headers"]),
            body=str(data["body"]).encode("utf-8"),
            streamed=bool(data["streamed"]),
        )


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
        data = orjson.loads(raw)
        return cls(
            id=data["id"],
            partition=data["partition"],
            scope=data["scope"],
            question=data["question"],
            answer=CachedAnswer.from_json(data["answer"]),
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
            vector=data.get("vector"),
            meta=data.get("meta") or {},
        )
