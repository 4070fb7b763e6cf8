"""Processes for the end-to-end benchmarks: a real ``sidecar serve``, the load generator in its
own process, raw HTTP request bytes, and a Prometheus scrape.

Every process started here is stopped by its own PID (``ManagedProcess``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

SIDECAR_READY_S = 240.0  # loading torch and the model on a busy 2-core machine


def raw_request(
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
) -> str:
    """One HTTP/1.1 keep-alive request as text (JSON body when given)."""
    payload = b"" if body is None else orjson.dumps(body)
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append("content-type: application/json")
    lines.append(f"content-length: {len(payload)}")
    return "\r\n".join(lines) + "\r\n\r\n" + payload.decode()


def chat_body(question: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}


def openai_answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


def hook_request_envelope(question: str, request_id: str | None = None) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": {"content-type": "application/json"},
        "body": chat_body(question),
    }
    if request_id is not None:
        envelope["request_id"] = request_id
    return envelope


#: stands for the request hook's ``request_secret`` in pre-built response hook requests;
#: benchmarks.loadgen puts the secret of the previous answer in its place
REQUEST_SECRET_SLOT = "@@request_secret@@"


def hook_response_envelope(
    request_id: str, answer_text: str, request_secret: str = REQUEST_SECRET_SLOT
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "request_secret": request_secret,
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": openai_answer(answer_text),
    }


def write_sidecar_config(
    path: Path,
    http_port: int,
    grpc_port: int,
    *,
    grpc_enabled: bool,
    rules: list[str] | None = None,
    embedder: Mapping[str, Any] | None = None,
) -> Path:
    config: dict[str, Any] = {
        "server": {
            "http_port": http_port,
            "grpc_port": grpc_port,
            "grpc_enabled": grpc_enabled,
            "log_level": "warning",
        },
        "cache": {"data_dir": ":memory:", "default_cache_key": "bench", "ttl": "1h"},
    }
    if embedder:
        config["embedder"] = dict(embedder)
    if rules:
        config["guardrails"] = {"rules": rules, "reload_interval": 0}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def start_sidecar(
    workdir: Path,
    name: str,
    *,
    grpc_enabled: bool,
    rules: list[str] | None = None,
    embedder: Mapping[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[ManagedProcess, int, int]:
    """A ``sidecar serve`` process, ready; returns it with its HTTP and gRPC ports."""
    http_port, grpc_port = free_port(), free_port()
    config = write_sidecar_config(
        workdir / f"{name}.yaml",
        http_port,
        grpc_port,
        grpc_enabled=grpc_enabled,
        rules=rules,
        embedder=embedder,
    )
    proc = ManagedProcess(name, sidecar_command(config), workdir / f"{name}.log", env).start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{http_port}/readyz", SIDECAR_READY_S)
    except Exception:
        proc.stop()
        raise
    return proc, http_port, grpc_port


def paced_spec(
    port: int,
    sequences: list[list[str]],
    rate: float,
    seconds: float,
    concurrency: int,
    count: dict[str, str],
) -> dict[str, Any]:
    """A load-generator spec offering ``rate`` sequences per second open-loop for ``seconds``
    (no warm-up: an overload starts at once), counting answers that hold ``count``'s texts."""
    return {
        "port": port,
        "sequences": sequences,
        "concurrency": concurrency,
        "duration": seconds,
        "warmup": 0.0,
        "rate": rate,
        "count": count,
    }


def run_loadgen(workdir: Path, spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """The load generator in its own process (so its CPU is not the server's event loop)."""
    spec_path = workdir / "loadgen-spec.json"
    spec_path.write_bytes(orjson.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", str(spec_path)],
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def metric_value(base_url: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus sample (``name{labels}``) from ``/metrics``; 0 when absent."""
    return sample_sum(httpx.get(f"{base_url}/metrics", timeout=10).text, name, labels)


def sample_sum(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples ``name{labels}`` in one ``/metrics`` exposition; 0 when absent
    (many figures from one read: ``metric_value`` reads the page for each)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, label_text = key.partition("{")
        if metric == name and (not labels or labels in label_text):
            total += float(value)
    return total


def envoy_stats(admin: int, pattern: str = "") -> dict[str, int]:
    """Envoy's counters and gauges (its admin ``/stats``) whose names match the regex
    ``pattern`` (Envoy's ``filter``; all when empty), by name."""
    params = {"format": "json", **({"filter": pattern} if pattern else {})}
    stats = httpx.get(f"http://127.0.0.1:{admin}/stats", params=params, timeout=10).json()
    return {
        str(s["name"]): int(s["value"])
        for s in stats.get("stats", [])
        if isinstance(s.get("value"), int)
    }


def envoy_counter(admin: int, contains: str) -> int:
    """Sum of Envoy's counters whose names hold ``contains`` (its admin ``/stats``)."""
    return sum(v for name, v in envoy_stats(admin).items() if contains in name)
