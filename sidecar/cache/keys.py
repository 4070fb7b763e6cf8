"""How a request becomes a cache plan: its partition, exact key, semantic scope and question.

Every rule about what may answer what lives here:
- The partition (``x-bf-cache-key`` or ``cache.default_cache_key``) is part of every key, so
  entries never cross partitions.
- The exact key hashes the normalised conversation and every parameter except the model (which,
  with the provider, is a separate key part when ``cache_by_model``/``cache_by_provider`` are on).
  Parameters the sidecar does not recognise are hashed too.
- The semantic scope hashes the same parts but the last message: a semantic hit needs the same
  partition, parameters and conversation history, and only the last user turn may differ in
  wording. A follow-up question can therefore never hit an entry from another conversation.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.config import CacheConfig, format_duration, parse_duration
from sidecar.formats import BadRequest, ParsedRequest, RequestType, normalise_text

HEADER_KEY = "x-bf-cache-key"
HEADER_TTL = "x-bf-cache-ttl"
HEADER_THRESHOLD = "x-bf-cache-threshold"
HEADER_TYPE = "x-bf-cache-type"
HEADER_NO_STORE = "x-bf-cache-no-store"

_KEY_VERSION = 1
_MAX_PARTITION_LEN = 256
_PARTITION_OK = re.compile(r"^[\x20-\x7e]+$")  # printable ASCII: safe in Redis keys and logs


def digest(value: Any) -> str:
    """Stable hash of a JSON-able value (keys sorted at every depth)."""
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@dataclass(slots=True)
class CachePlan:
    """What the cache will do for one request, decided before any lookup."""

    bypass_reason: str | None = None
    partition: str = ""
    exact_key: str = ""
    scope: str = ""
    question: str = ""  # text embedded for the semantic layer ("" = no semantic layer)
    ttl: float = 0.0
    threshold: float = 0.0
    use_exact: bool = True
    use_semantic: bool = True
    no_store: bool = False

    @property
    def bypass(self) -> bool:
        return self.bypass_reason is not None


def _header_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise BadRequest(f"invalid {name} header {raw!r}: expected true or false")


def parse_cache_headers(headers: Mapping[str, str], config: CacheConfig) -> CachePlan:
    """Read the x-bf-cache-* headers. Invalid values raise BadRequest naming the header."""
    plan = CachePlan(ttl=config.ttl, threshold=config.threshold)
    partition = headers.get(HEADER_KEY)
    if partition is not None:
        if not partition.strip():
            raise BadRequest(f"invalid {HEADER_KEY} header: empty")
        if len(partition) > _MAX_PARTITION_LEN or not _PARTITION_OK.match(partition):
            raise BadRequest(
                f"invalid {HEADER_KEY} header: use up to {_MAX_PARTITION_LEN} printable "
                "ASCII characters"
            )
    else:
        partition = config.default_cache_key
    plan.partition = partition
    if (raw := headers.get(HEADER_TTL)) is not None:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        try:
            plan.ttl = parse_duration(raw.strip())
        except ValueError as exc:
            raise BadRequest(f"invalid {HEADER_TTL} header {shown!r}: {exc}") from None
        if plan.ttl > config.max_ttl:
            raise BadRequest(
                f"invalid {HEADER_TTL} header {shown!r}: over the maximum "
                f"{format_duration(config.max_ttl)} (cache.max_ttl)"
            )
    if (raw := headers.get(HEADER_THRESHOLD)) is not None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise BadRequest(f"invalid {HEADER_THRESHOLD} header {raw!r}: expected 0..1")
        plan.threshold = value
    if (raw := headers.get(HEADER_TYPE)) is not None:
        kind = raw.strip().lower()
        if kind == "direct":
            plan.use_semantic = False
        elif kind == "semantic":
            plan.use_exact = False
        else:
            raise BadRequest(f"invalid {HEADER_TYPE} header {raw!r}: expected direct or semantic")
    if (raw := headers.get(HEADER_NO_STORE)) is not None:
        plan.no_store = _header_bool(HEADER_NO_STORE, raw)
    return plan


def plan_request(req: ParsedRequest, headers: Mapping[str, str], config: CacheConfig) -> CachePlan:
    """The cache plan for a parsed request. Header errors raise BadRequest."""
    plan = parse_cache_headers(headers, config)
    if not config.enabled:
        plan.bypass_reason = "cache disabled"
        return plan
    if not plan.partition:
        plan.bypass_reason = f"no {HEADER_KEY} header and no default_cache_key"
        return plan
    if req.request_type is RequestType.RESPONSES:
        plan.bypass_reason = "responses API requests are not cached"
        return plan
    conversation = req.canonical
    messages = req.messages
    if config.exclude_system_prompt and req.request_type in (
        RequestType.CHAT,
        RequestType.MESSAGES,
    ):
        keep = [i for i, m in enumerate(messages) if m.role not in ("system", "developer")]
        conversation = [conversation[i] for i in keep]
        messages = [messages[i] for i in keep]
        if not messages:
            plan.bypass_reason = "no messages besides the system prompt"
            return plan
    if len(messages) > config.conversation_history_threshold:
        plan.bypass_reason = (
            f"conversation has {len(messages)} messages, over "
            f"conversation_history_threshold {config.conversation_history_threshold}"
        )
        return plan
    base = {
        "v": _KEY_VERSION,
        "partition": plan.partition,
        "type": req.request_type.value,
        "params": req.params,
        "model": req.model if config.cache_by_model else None,
        "provider": req.provider if config.cache_by_provider else None,
    }
    plan.exact_key = digest({**base, "conversation": conversation})
    if req.request_type is RequestType.EMBEDDINGS:
        plan.use_semantic = False  # embeddings must match input exactly
        return plan
    last = conversation[-1] if conversation else None
    last_text = messages[-1].text if messages else ""
    text_only = isinstance(last, str) or (
        isinstance(last, dict) and isinstance(last.get("content"), str)
    )
    role_ok = not messages or messages[-1].role == "user"
    if text_only and role_ok and last_text.strip():
        plan.question = normalise_text(last_text)
        plan.scope = digest({**base, "history": conversation[:-1]})
    else:
        plan.use_semantic = False  # a tool turn, images, or no text: exact layer only
    return plan
