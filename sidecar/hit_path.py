"""The exact-hit fast path: a request seen before, whose exact entry is still stored, is
answered without parsing its body or planning its lookup again.

An exact hit through the slow path (``Pipeline._request``) decodes the JSON body, parses it
(``parse_request``), plans the lookup (``plan_request``: partition, key digest), then gets
the entry and builds its answer. For a request already seen, all but the get are the same
work with the same result: ``parse_request`` is a function of the path, the decoded body and
the ``x-bf-provider`` header; ``plan_request`` of the parsed request, the ``x-bf-cache-*``
headers it reads and ``cache`` config; none reads anything else (``tests/test_hit_path.py``
checks the headers they read). So a memo keyed on exactly those inputs (path, body bytes,
``PLAN_HEADERS``' values) and holding the parsed request and its plan gives what the slow
path would compute, as long as:

- the ``cache`` config is the one the plan was made with: the memo belongs to one pipeline,
  built with its config, which nothing changes afterwards (a new config means a new
  pipeline, and a new, empty memo);
- no guardrail rule can act on the request: input rules may rewrite the body (then the plan
  is the rewritten body's), output rules may block or rewrite the cached answer. The memo
  keeps only plans made while no input rule was active, and serves only while the
  ``Guardrails`` port reports neither stage active (rules reload at any time: asked on every
  request; the engine's answer is per stage, the rule set being empty or not);
- no observer needs stage timings (the access log, traces): the fast path records none, so
  the pipeline does not build it then.

The entry itself is never memoised: every request gets it from the exact store, which checks
its expiry (TTL), and a deletion, eviction or partition purge is seen at once. The partition
is part of the memo key (its header) and of the plan, so one partition's request never maps
to another's key. Anything short of a served hit (no memo, rules, an expired or missing
entry, a store error) returns None before any counting, and the slow path runs as if the
fast path did not exist: it repeats the get and decides (a second get of a missing entry
finds it missing; of a failing store, fails). The pipeline then does its usual accounting
(metrics, adaptive counts, savings, observers) on the context and outcome returned here,
which hold what the slow path's would: ``tests/test_hit_path.py`` runs the same requests
through both and compares answers, headers, metric deltas and decision records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from guardrails.base import Stage
from sidecar.cache.keys import (
    HEADER_KEY,
    HEADER_NO_STORE,
    HEADER_THRESHOLD,
    HEADER_TTL,
    HEADER_TYPE,
    CachePlan,
)
from sidecar.cache.layer import EXACT_MATCHED, CacheStatus, DualCache, Lookup
from sidecar.cache.model import CacheEntry, Usage, replayed_headers
from sidecar.config import CacheConfig
from sidecar.context import (
    CacheInfo,
    Guardrails,
    HookRequest,
    HttpAnswer,
    RequestContext,
    RequestOutcome,
    new_request_id,
)
from sidecar.deferred_metrics import PendingCounts
from sidecar.formats import ParsedRequest
from sidecar.metrics import Metrics

#: the request headers ``parse_request`` and ``plan_request`` read, besides the path and body
PLAN_HEADERS = (
    "x-bf-provider",
    HEADER_KEY,
    HEADER_TTL,
    HEADER_THRESHOLD,
    HEADER_TYPE,
    HEADER_NO_STORE,
)
#: the trace line of an exact hit (``Pipeline._request``: "cache <status>: <reason>")
HIT_NOTE = f"cache {CacheStatus.HIT_EXACT.value}: {EXACT_MATCHED}"
#: what a remembered request costs beyond its body and key: the parsed request (decoded JSON,
#: messages, canonical form, text pieces) is a few times the body; the plan and the dict slot
_PARSED_PER_BODY_BYTE = 8
_OVERHEAD = 2048

MemoKey = tuple[Any, ...]
#: a served context's cache info until the pipeline sets the hit's (never read before)
_PENDING = CacheInfo(CacheStatus.BYPASS)


@dataclass(slots=True)
class _Remembered:
    parsed: ParsedRequest
    plan: CachePlan
    size: int
    #: the entry ``headers`` were built for (the embedded store hands out the same object
    #: while it stays in memory); another entry object, and they are built again
    entry: CacheEntry | None = None
    headers: dict[str, str] | None = None
    #: what a hit of ``entry`` through ``transport`` counts (``RequestCounts.exact_hit_counts``),
    #: built with headers (another transport's hit builds them again)
    counts: PendingCounts | None = None
    transport: str = ""


class ExactHitPath:
    """The memo (bounded in bytes; oldest first out) and the fast path over it."""

    def __init__(
        self,
        config: CacheConfig,
        cache: DualCache,
        metrics: Metrics,
        guardrails: Guardrails | None,
        max_bytes: int,
        hit_counts: Callable[[CachePlan, Usage | None, str], PendingCounts],
        max_body: int = 64 * 1024,
    ) -> None:
        """``hit_counts``: the metric increments of an exact hit of a plan whose entry holds
        the given usage, through the given transport; resolved once per remembered entry,
        added per hit by the caller."""
        self.config = config
        self._hit_counts = hit_counts
        self.max_bytes = max_bytes
        self.max_body = max_body
        self._exact = cache.exact
        # The same deferred child DualCache.lookup observes
        self._exact_timer = metrics.exact_lookup_timer
        self._guardrails = guardrails
        self._memo: dict[MemoKey, _Remembered] = {}
        self.bytes = 0
        self.served = 0  # hits answered here (tests; no metric: /metrics stays as it was)

    def __len__(self) -> int:
        return len(self._memo)

    def key(self, req: HookRequest) -> MemoKey | None:
        """What the request's plan is made from, or None when it cannot be remembered (a
        decoded JSON body, as the HTTP hook hands over, or one over ``max_body``)."""
        body = req.body
        if type(body) is not bytes or len(body) > self.max_body:
            return None
        return (req.path, body, *map(req.headers.get, PLAN_HEADERS))

    def remember(self, key: MemoKey, parsed: ParsedRequest, plan: CachePlan) -> None:
        """After a slow-path exact hit planned from the request as received (no input rule
        was active), with the ``cache`` config of this memo."""
        size = _OVERHEAD + len(key[1]) * (1 + _PARSED_PER_BODY_BYTE) + len(key[0])
        if size > self.max_bytes:
            return
        old = self._memo.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        while self._memo and self.bytes + size > self.max_bytes:
            oldest = next(iter(self._memo))
            self.bytes -= self._memo.pop(oldest).size
        self._memo[key] = _Remembered(parsed, plan, size)
        self.bytes += size

    def forget(self, key: MemoKey) -> None:
        old = self._memo.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    async def serve(
        self, key: MemoKey, req: HookRequest, transport: str
    ) -> tuple[RequestContext, RequestOutcome, PendingCounts] | None:
        """The exact hit the slow path would serve for ``req`` and what it counts, or None
        (nothing counted, nothing changed but the store's own recency and expiry): run the
        slow path."""
        remembered = self._memo.get(key)
        if remembered is None:
            return None
        # The context the slow path has at its input rules: parsed and planned.
        plan = remembered.plan
        ctx = RequestContext(
            req.request_id or new_request_id(),
            transport,
            "POST",  # the caller checked
            req.path,
            req.headers,
            remembered.parsed,
            plan,
            # Given rather than made by default factories: the pipeline sets the cache info
            # the context leaves with; the trace is only read once the hit is served.
            cache=_PENDING,
            trace=[HIT_NOTE],
            started=time.monotonic() if req.received_at is None else req.received_at,
        )
        guardrails = self._guardrails
        if guardrails is not None and (
            guardrails.active(Stage.INPUT, ctx) or guardrails.active(Stage.OUTPUT, ctx)
        ):
            self.forget(key)  # rules loaded: requests go the slow way until they are gone
            return None
        started = time.perf_counter()
        try:
            entry = await self._exact.get(plan.exact_key, plan.partition)
        except Exception:  # a failing store: the slow path fails the same way and reports it
            return None
        if entry is None:
            return None  # expired, evicted or deleted: the slow path's miss
        self._exact_timer.observe(time.perf_counter() - started)
        ctx.lookup = Lookup(CacheStatus.HIT_EXACT, EXACT_MATCHED, entry, 1.0)
        info = CacheInfo(CacheStatus.HIT_EXACT, EXACT_MATCHED, "exact", 1.0, entry.id)
        headers = remembered.headers
        answer = entry.answer
        counts = remembered.counts
        if remembered.entry is not entry or headers is None:
            headers = replayed_headers(answer)
            headers.update(info.headers())
            remembered.entry, remembered.headers = entry, headers
            counts = None
        if counts is None or remembered.transport != transport:
            counts = remembered.counts = self._hit_counts(plan, answer.usage, transport)
            remembered.transport = transport
        response = HttpAnswer(answer.status, dict(headers), answer.body)
        self.served += 1
        return ctx, RequestOutcome("respond", info, response=response), counts
