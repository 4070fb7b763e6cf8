"""Pieces of the fault suite (``benchmarks/faults_bench.py``): a liveness prober, an RSS sampler,
a hook client that records what the sidecar acknowledged, and a durable Redis of our own.

Each runs in a thread of the benchmark process, so the figures are taken from outside the
sidecar, as a gateway and an orchestrator would see them.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from sidecar.demo.processes import ManagedProcess, free_port

CHAT = "/v1/chat/completions"
PARTITION = "faults"


class LivenessProbe:
    """Polls ``GET /healthz`` back to back (one request at a time, 10 ms apart) and keeps the
    worst latency of the answers it got. Refused connections while the sidecar is down (a
    scenario killed it) are counted apart: no process means no latency to measure. With
    ``health_url`` (the ``server.health_port`` listener) a second thread polls that one the
    same way, kept apart (``health_worst_ms``)."""

    def __init__(self, base_url: str, health_url: str | None = None) -> None:
        self.base_url = base_url
        self.health_url = health_url
        self.worst_ms = 0.0
        self.answered = 0
        self.refused = 0
        self.failed = 0  # connected but no 200 within the client timeout
        self.health = {"worst_ms": 0.0, "answered": 0, "refused": 0, "failed": 0}
        # every answered probe's latency (ms), for percentiles beside the worst
        self.latencies: dict[str, list[float]] = {"hook": [], "health_port": []}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="liveness", daemon=True)]
        if health_url is not None:
            self._threads.append(
                threading.Thread(target=self._run_health, name="liveness-port", daemon=True)
            )

    def _poll(
        self, client: httpx.Client, url: str, tally: dict[str, float], seen: list[float]
    ) -> None:
        started = time.perf_counter()
        try:
            status = client.get(f"{url}/healthz").status_code
        except httpx.ConnectError:
            tally["refused"] += 1
        except httpx.HTTPError:
            tally["failed"] += 1
        else:
            elapsed = (time.perf_counter() - started) * 1000
            if status == 200:
                tally["answered"] += 1
                tally["worst_ms"] = max(tally["worst_ms"], elapsed)
                seen.append(elapsed)
            else:
                tally["failed"] += 1

    def _run(self) -> None:
        tally = {"worst_ms": 0.0, "answered": 0, "refused": 0, "failed": 0}
        with httpx.Client(timeout=2.0) as client:
            while not self._stop.is_set():
                self._poll(client, self.base_url, tally, self.latencies["hook"])
                self.worst_ms, self.answered = tally["worst_ms"], int(tally["answered"])
                self.refused, self.failed = int(tally["refused"]), int(tally["failed"])
                self._stop.wait(0.01)  # the probing interval, not a synchronisation point

    def _run_health(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            while not self._stop.is_set():
                assert self.health_url is not None
                self._poll(client, self.health_url, self.health, self.latencies["health_port"])
                self._stop.wait(0.01)  # the probing interval, not a synchronisation point

    @property
    def health_worst_ms(self) -> float | None:
        return None if self.health_url is None else round(self.health["worst_ms"], 2)

    def retarget(self, base_url: str) -> None:
        self.base_url = base_url

    def __enter__(self) -> LivenessProbe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, seen in self.latencies.items():
            if seen:
                ordered = sorted(seen)
                out[name] = {
                    "p50_ms": round(ordered[len(ordered) // 2], 2),
                    "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
                    "over_100ms": sum(1 for v in ordered if v >= 100.0),
                    "answered": len(ordered),
                }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "percentiles": self.percentiles(),
            "worst_ms": round(self.worst_ms, 2),
            "answered": self.answered,
            "refused_while_down": self.refused,
            "failed": self.failed,
            "health_worst_ms": self.health_worst_ms,
            "health_port": {k: round(v, 2) for k, v in self.health.items()}
            if self.health_url is not None
            else None,
        }


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (0 when it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Peak RSS of one process, sampled every 20 ms, relative to its RSS when it was ready."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ready = rss_bytes(pid)
        self.peak = self.ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def to_json(self) -> dict[str, Any]:
        return {
            "rss_at_ready_mb": round(self.ready / 2**20, 1),
            "peak_rss_mb": round(self.peak / 2**20, 1),
            "peak_over_ready_mb": round((self.peak - self.ready) / 2**20, 1),
        }


def chat_body(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], **extra}


def answer_body(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-faults",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


def served_text(reply: dict[str, Any]) -> str | None:
    """The assistant text of a ``respond`` answer; None when it cannot be read (corrupt)."""
    body: Any = (reply.get("response") or {}).get("body")
    try:
        return str(body["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return None


@dataclass
class Ledger:
    """What the load saw: entries the sidecar acknowledged (``stored_entry_id`` returned), with
    the answer each question must get back, and every error by kind."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


class HookClient:
    """The HTTP hook as a gateway uses it: request hook, then (on continue) the provider's
    answer to the response hook. Passes back whatever per-request secret the sidecar issued."""

    def __init__(self, base_url: str, token: str = "") -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=base_url, timeout=30.0, headers=headers)

    def close(self) -> None:
        self.client.close()

    def request(self, question: str, **extra: Any) -> httpx.Response:
        envelope = {
            "method": "POST",
            "path": CHAT,
            "headers": {"x-bf-cache-key": PARTITION, "x-bf-cache-type": "direct"},
            "body": chat_body(question, **extra),
        }
        return self.client.post("/v1/hooks/request", content=orjson.dumps(envelope))

    def respond(self, reply: dict[str, Any], answer: str) -> httpx.Response:
        envelope: dict[str, Any] = {
            "request_id": reply["request_id"],
            "status": 200,
            "headers": {"content-type": "application/json"},
            "body": answer_body(answer),
        }
        if "request_secret" in reply:
            envelope["request_secret"] = reply["request_secret"]
        return self.client.post("/v1/hooks/response", content=orjson.dumps(envelope))

    def store(self, question: str, answer: str, ledger: Ledger) -> None:
        """One round trip; records the entry when the sidecar acknowledged its store."""
        with ledger.lock:
            ledger.sent += 1
        first = self.request(question)
        if first.status_code != 200:
            ledger.error(f"request hook {first.status_code}")
            return
        reply = first.json()
        if reply["action"] != "continue":
            return  # already cached: nothing to acknowledge
        second = self.respond(reply, answer)
        if second.status_code != 200:
            ledger.error(f"response hook {second.status_code}")
            return
        if second.json().get("stored_entry_id"):
            with ledger.lock:
                ledger.acknowledged[question] = answer


@dataclass
class Audit:
    """The check after a fault: every acknowledged question asked again."""

    checked: int = 0
    lost: int = 0
    wrong: int = 0
    corrupt: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "acknowledged_lost": self.lost,
            "served_wrong": self.wrong,
            "corrupt": self.corrupt,
        }


def audit(base_url: str, expected: dict[str, str], token: str = "") -> Audit:
    """Asks every acknowledged question again: a hit must carry its own answer."""
    result = Audit()
    client = HookClient(base_url, token)
    try:
        for question, answer in expected.items():
            result.checked += 1
            reply = client.request(question)
            if reply.status_code != 200:
                result.lost += 1
                continue
            data = reply.json()
            if data["action"] != "respond":
                result.lost += 1
                continue
            text = served_text(data)
            if text is None:
                result.corrupt += 1
            elif text != answer:
                result.wrong += 1
    finally:
        client.close()
    return result


def redis_server() -> str | None:
    return shutil.which("redis-server")


@contextmanager
def durable_redis(workdir: Path) -> Iterator[RedisProcess]:
    """A Redis of our own with ``appendonly yes`` and ``appendfsync always``: what a user needs
    for an acknowledged entry to survive a Redis restart (docs/backends.md)."""
    proc = RedisProcess(workdir)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


class RedisProcess:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = redis_server()
        assert binary is not None
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.proc = ManagedProcess("redis", command, self.dir / "redis.log").start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            )
            if done.stdout.strip() == b"PONG":
                return
            time.sleep(0.05)  # polling while the server starts, not a synchronisation point
        raise RuntimeError(f"redis did not start:\n{self.proc.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
