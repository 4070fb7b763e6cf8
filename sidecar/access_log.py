"""``server.access_log``: one JSON line per request, for "why was this a miss / blocked?".

Each line holds the request id, transport, the partition's hash (``sidecar.metrics.
partition_hash``, never the raw key), the cache status and its reason phrase, why an answer was
not stored, whether a guardrail blocked, the rules that fired (rule id, stage, outcome,
latency), the total and per-stage timings in milliseconds. Reason phrases are fixed texts of
the sidecar and the rule files; no prompt, answer or header value is ever written.

A request's line is written when it is over: at the request hook when it was answered there
(cache hit, block), else when its answer went through the response hook. A request whose
response hook never comes (its pending context expired) has no line.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson

from sidecar.context import RequestContext
from sidecar.metrics import partition_hash


def access_record(ctx: RequestContext) -> dict[str, Any]:
    log = ctx.stages
    assert log is not None
    stages: dict[str, float] = {}
    for s in log.stages:
        stages[s.name] = round(stages.get(s.name, 0.0) + s.ms, 3)
    out: dict[str, Any] = {
        "time": round(log.wall_ns / 1e9, 6),
        "request_id": ctx.request_id,
        "transport": ctx.transport,
        "partition": partition_hash(ctx.plan.partition) if ctx.plan is not None else None,
        "status": ctx.cache.status.value,
        "reason": ctx.cache.reason,
        "blocked": ctx.blocked,
        "latency_ms": round((log.end_ns - log.perf_ns) / 1e6, 3),
        "stages_ms": stages,
        "rules": [r for r in log.rules if r["outcome"] != "pass"],
    }
    if ctx.cache.not_stored is not None:
        out["not_stored"] = ctx.cache.not_stored
    if ctx.parsed is not None:
        out["api"] = ctx.parsed.api.value
        out["request_type"] = ctx.parsed.request_type.value
    return out


class AccessLog:
    """Appends to ``path`` (created with its directory). Lines are written whole under a lock,
    so threads (gRPC handlers) never interleave them."""

    needs_stages = True  # lines carry per-stage timings

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "ab")  # held open for the life of the sidecar
        self._lock = threading.Lock()
        self.started = time.time()

    def finish(self, ctx: RequestContext) -> None:
        line = orjson.dumps(access_record(ctx)) + b"\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
