"""A small closed-loop HTTP/1.1 load generator, run as its own process by the benchmarks.

Usage: ``python -m benchmarks.loadgen SPEC.json`` prints one JSON result on stdout.

The spec::

    {"host": "127.0.0.1", "port": 8080, "concurrency": 32, "duration": 5.0, "warmup": 1.0,
     "max_sequences": 0,
     "sequences": [["POST /a HTTP/1.1\\r\\n...", "POST /b ..."], ...],
     "count": {"hit": "hit-exact"}}

Each connection (``concurrency`` of them, keep-alive) repeatedly takes the next sequence
(round robin) and sends its requests in order, one answer before the next request. A
sequence is one logical request: the request hook then the response hook, for example.
Latency is recorded per step and per whole sequence; answers are counted per substring in
``count`` (headers or body), so a benchmark can confirm it measured hits and not misses. The
requests are pre-built bytes: the generator does as little work per request as it can.
"""

from __future__ import annotations

import asyncio
import sys
import time
from itertools import count as counter
from typing import Any

import orjson


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """Status, header block and body of one answer (content-length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, head, b"".join(parts)
    return status, head, await reader.readexactly(length) if length > 0 else b""


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    sequences = [[step.encode() for step in seq] for seq in spec["sequences"]]
    steps = max(len(s) for s in sequences)
    concurrency = int(spec.get("concurrency", 1))
    duration = float(spec.get("duration", 5.0))
    warmup = float(spec.get("warmup", 0.5))
    max_sequences = int(spec.get("max_sequences", 0))
    patterns = {k: v.encode() for k, v in spec.get("count", {}).items()}
    step_lat: list[list[float]] = [[] for _ in range(steps)]
    seq_lat: list[float] = []
    counts = dict.fromkeys(patterns, 0)
    statuses: dict[int, int] = {}
    errors: list[str] = []
    next_index = counter()
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    stop_at = measure_from + duration
    done = 0
    issued = 0  # every completed sequence, warm-up included (the server did the work)

    async def worker() -> None:
        nonlocal done, issued
        reader, writer = await asyncio.open_connection(spec.get("host", "127.0.0.1"), spec["port"])
        try:
            while True:
                now = loop.time()
                if now >= stop_at or (max_sequences and done >= max_sequences):
                    return
                seq = sequences[next(next_index) % len(sequences)]
                measured = now >= measure_from
                seq_started = time.perf_counter()
                for i, request in enumerate(seq):
                    started = time.perf_counter()
                    writer.write(request)
                    status, head, body = await _read_answer(reader)
                    if measured:
                        step_lat[i].append(time.perf_counter() - started)
                        statuses[status] = statuses.get(status, 0) + 1
                        for name, pattern in patterns.items():
                            if pattern in body or pattern in head:
                                counts[name] += 1
                issued += 1
                if measured:
                    seq_lat.append(time.perf_counter() - seq_started)
                    done += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors.append(repr(exc)[:200])
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = min(loop.time(), stop_at) - measure_from
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "sequences": len(seq_lat),
        "sequences_total": issued,
        "rps": round(len(seq_lat) / elapsed, 1) if elapsed > 0 else 0.0,
        "sequence_latency_s": seq_lat,
        "step_latency_s": step_lat,
        "statuses": statuses,
        "counts": counts,
        "errors": errors[:5],
    }


def main() -> int:
    with open(sys.argv[1], "rb") as fh:
        spec = orjson.loads(fh.read())
    result = asyncio.run(run(spec))
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
