"""The replay of one question stream through real sidecars' HTTP hooks, and its figures.

A *lane* is one cache configuration: a sidecar process, a partition (``x-bf-cache-key``) and
request headers. Every lane replays the same stream, one request at a time (a request hook,
on a miss the fake provider and the response hook), so a lane's decisions never depend on
timing; lanes run side by side. A served semantic hit is right when the answer was written for
a question of the request's class (ground truth from ``adaptive_stream``). A simulated user
reports a share of the wrong semantic hits through ``POST /v1/cache/feedback``.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.adaptive_stream import Request, question_key
from benchmarks.stack import chat_body

CHAT = "/v1/chat/completions"
#: the statuses a request can end with, as recorded per request
EXACT, SEMANTIC, MISS, EXPLORED, ERROR = "E", "S", "M", "X", "!"


@dataclass(slots=True)
class Lane:
    name: str
    base_url: str
    partition: str
    headers: dict[str, str] = field(default_factory=dict)
    #: per request: one of EXACT, SEMANTIC, MISS, EXPLORED, ERROR
    statuses: list[str] = field(default_factory=list)
    #: per request: True for a wrong hit (a semantic hit of another class's answer)
    wrong: list[bool] = field(default_factory=list)
    #: per request: True when the simulated user reported the hit as wrong
    reported: list[bool] = field(default_factory=list)
    #: per request: the served or fetched answer text (to compare lanes request by request)
    answers: list[str] = field(default_factory=list)
    similarities: list[float | None] = field(default_factory=list)
    feedback_status: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_raw(self) -> dict[str, Any]:
        """Every request's outcome, compactly (a later run may reuse the lane: ``from_raw``)."""
        return {
            "statuses": "".join(self.statuses),
            "wrong": "".join("1" if w else "0" for w in self.wrong),
            "reported": "".join("1" if r else "0" for r in self.reported),
            # a short digest of each answer: enough to tell two lanes' answers apart
            "answers": [hashlib.sha256(a.encode()).hexdigest()[:10] for a in self.answers],
            "similarities": self.similarities,
        }

    @classmethod
    def from_raw(cls, name: str, raw: dict[str, Any], seconds: float) -> Lane:
        lane = cls(name, "", "")
        lane.statuses = list(raw["statuses"])
        lane.wrong = [c == "1" for c in raw["wrong"]]
        lane.reported = [c == "1" for c in raw["reported"]]
        lane.answers = list(raw["answers"])
        lane.similarities = list(raw["similarities"])
        lane.seconds = seconds
        return lane

    def record(self, status: str, answer: str, wrong: bool, similarity: float | None) -> None:
        self.statuses.append(status)
        self.answers.append(answer)
        self.wrong.append(wrong)
        self.reported.append(False)
        self.similarities.append(similarity)


def _answer_text(body: Any) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


async def replay(
    lane: Lane,
    stream: Sequence[Request],
    provider: str,
    report_share: float,
    seed: int,
    progress_every: int = 0,
    on_progress: Callable[[], None] | None = None,
) -> Lane:
    """Replay ``stream`` through ``lane``; returns it with one record per request."""
    # Every answer this lane fetched from the provider, and its class: a served answer's class.
    class_of_answer: dict[str, int] = {}
    user = random.Random(f"{seed}:user")
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    async with (
        httpx.AsyncClient(base_url=lane.base_url, timeout=300, limits=limits) as sidecar,
        httpx.AsyncClient(base_url=provider, timeout=60, limits=limits) as upstream,
    ):
        for request in stream:
            request_id = f"{lane.name}-{request.index}"
            envelope = {
                "method": "POST",
                "path": CHAT,
                "request_id": request_id,
                "headers": {
                    "content-type": "application/json",
                    "x-bf-cache-key": lane.partition,
                    **lane.headers,
                },
                "body": chat_body(request.text),
            }
            try:
                await _one(lane, request, envelope, sidecar, upstream, class_of_answer)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                lane.errors.append(f"request {request.index}: {exc!r}"[:300])
                lane.record(ERROR, "", False, None)
            if lane.statuses[-1] == SEMANTIC and lane.wrong[-1] and user.random() < report_share:
                await _report(lane, sidecar, request_id)
            if progress_every and (request.index + 1) % progress_every == 0:
                rate = (request.index + 1) / (time.perf_counter() - started)
                print(f"[adaptive] {lane.name}: {request.index + 1} requests, {rate:.1f}/s")
                if on_progress is not None:
                    on_progress()
    lane.seconds = round(time.perf_counter() - started, 1)
    return lane


async def _one(
    lane: Lane,
    request: Request,
    envelope: dict[str, Any],
    sidecar: httpx.AsyncClient,
    upstream: httpx.AsyncClient,
    class_of_answer: dict[str, int],
) -> None:
    reply = await sidecar.post("/v1/hooks/request", json=envelope)
    if reply.status_code != 200:
        raise ValueError(f"request hook {reply.status_code}: {reply.text[:200]}")
    decision = reply.json()
    cache = decision["cache"]
    if decision["action"] == "respond":
        text = _answer_text(decision["response"]["body"])
        served_class = class_of_answer.get(text)
        if cache["status"] == "hit-exact":
            lane.record(EXACT, text, served_class != request.class_id, None)
        else:
            wrong = served_class != request.class_id
            lane.record(SEMANTIC, text, wrong, cache.get("similarity"))
        return
    answer = await upstream.post(CHAT, json=chat_body(request.text))
    answer.raise_for_status()
    body = answer.json()
    text = _answer_text(body)
    known = class_of_answer.setdefault(text, request.class_id)
    if known != request.class_id:  # two classes with the same words: ground truth unclear
        lane.errors.append(f"request {request.index}: answer text shared by two classes")
    stored = await sidecar.post(
        "/v1/hooks/response",
        json={
            "request_id": decision["request_id"],
            "request_secret": decision["request_secret"],
            "status": 200,
            "headers": {"content-type": "application/json"},
            "body": body,
        },
    )
    if stored.status_code != 200:
        raise ValueError(f"response hook {stored.status_code}: {stored.text[:200]}")
    explored = str(cache.get("reason", "")).startswith("explore")
    lane.record(EXPLORED if explored else MISS, text, False, cache.get("similarity"))


async def _report(lane: Lane, sidecar: httpx.AsyncClient, request_id: str) -> None:
    reply = await sidecar.post(
        "/v1/cache/feedback", json={"request_id": request_id, "correct": False}
    )
    key = str(reply.status_code)
    lane.feedback_status[key] = lane.feedback_status.get(key, 0) + 1
    lane.reported[-1] = reply.status_code < 300


# ---------------------------------------------------------------------------- figures
def figures(lane: Lane, start: int = 0, end: int | None = None) -> dict[str, Any]:
    """Counts and rates over requests ``start`` to ``end`` (not included)."""
    statuses = lane.statuses[start:end]
    wrong = lane.wrong[start:end]
    n = len(statuses)
    exact = statuses.count(EXACT)
    semantic = statuses.count(SEMANTIC)
    explored = statuses.count(EXPLORED)
    wrong_semantic = sum(1 for s, w in zip(statuses, wrong, strict=True) if s == SEMANTIC and w)
    wrong_exact = sum(1 for s, w in zip(statuses, wrong, strict=True) if s == EXACT and w)
    upstream = statuses.count(MISS) + explored
    return {
        "requests": n,
        "exact_hits": exact,
        "semantic_hits": semantic,
        "wrong_semantic_hits": wrong_semantic,
        "wrong_exact_hits": wrong_exact,
        "explored": explored,
        "upstream_calls": upstream,
        "errors": statuses.count(ERROR),
        "reported": sum(lane.reported[start:end]),
        "hit_rate": _rate(exact + semantic, n),
        "semantic_hit_rate": _rate(semantic, n),
        "good_hit_rate": _rate(exact + semantic - wrong_semantic - wrong_exact, n),
        "wrong_hit_rate": _rate(wrong_semantic, semantic),
        # the share of would-be semantic hits sent upstream to check them
        "explore_share": _rate(explored, explored + semantic),
        "explored_per_request": _rate(explored, n),
    }


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 5) if denominator else None


def windows(lane: Lane, size: int) -> list[dict[str, Any]]:
    """Per window of ``size`` requests, its figures and the running (cumulative from the
    first request) wrong-hit rate and extra upstream calls."""
    out = []
    for start in range(0, len(lane.statuses), size):
        end = min(start + size, len(lane.statuses))
        window = figures(lane, start, end)
        running = figures(lane, 0, end)
        out.append(
            {
                "end": end,
                **{k: window[k] for k in ("hit_rate", "wrong_hit_rate", "explored", "reported")},
                "semantic_hits": window["semantic_hits"],
                "running_wrong_hit_rate": running["wrong_hit_rate"],
                "running_hit_rate": running["hit_rate"],
                "running_explored": running["explored"],
            }
        )
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Requests where two lanes (``Lane.to_raw``) decided differently: status or answer."""
    differ = [
        i
        for i, (sa, sb, ta, tb) in enumerate(
            zip(a["statuses"], b["statuses"], a["answers"], b["answers"], strict=False)
        )
        if sa != sb or (sa in (EXACT, SEMANTIC) and ta != tb)
    ]
    return {
        "compared": min(len(a["statuses"]), len(b["statuses"])),
        "different": len(differ),
        "first_different": differ[:10],
    }


def similarity_histogram(lane: Lane, start: int, bins: int = 30) -> dict[str, Any]:
    """Served semantic hits after ``start`` by similarity (bins of 0.01 from 0.70), good and
    wrong: what a static threshold would have kept, roughly, in hindsight."""
    good, wrong = [0] * bins, [0] * bins
    for status, is_wrong, sim in zip(
        lane.statuses[start:], lane.wrong[start:], lane.similarities[start:], strict=True
    ):
        if status != SEMANTIC or sim is None:
            continue
        slot = min(bins - 1, max(0, int((sim - 0.7) * 100)))
        (wrong if is_wrong else good)[slot] += 1
    return {"from": [round(0.7 + i / 100, 2) for i in range(bins)], "good": good, "wrong": wrong}


def kinds_of_wrong(lane: Lane, kinds: Sequence[str], start: int) -> dict[str, dict[str, int]]:
    """Semantic hits after ``start`` per request kind of the stream: served and wrong."""
    out: dict[str, dict[str, int]] = {}
    for kind, status, is_wrong in zip(
        kinds[start:], lane.statuses[start:], lane.wrong[start:], strict=False
    ):
        if status == SEMANTIC:
            row = out.setdefault(kind, {"semantic_hits": 0, "wrong": 0})
            row["semantic_hits"] += 1
            row["wrong"] += int(is_wrong)
    return out


def class_map(stream: Sequence[Request]) -> dict[str, int]:
    return {question_key(r.text): r.class_id for r in stream}
