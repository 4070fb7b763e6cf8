"""A small closed-loop HTTP/1.1 load generator, run as its own process by the benchmarks.

Usage: ``python -m benchmarks.loadgen SPEC.json`` prints one JSON result on stdout.

The spec::

    {"host": "127.0.0.1", "port": 8080, "concurrency": 32, "duration": 5.0, "warmup": 1.0,
     "max_sequences": 0,
     "sequences": [["POST /a HTTP/1.1\\r\\n...", "POST /b ..."], ...],
     "count": {"hit": "hit-exact"}}

With ``"rate": R`` (sequences per second) the load is open-loop: sequence k starts at
``k / R`` seconds (or as soon as a connection is free, when all are busy: give enough
connections), so a slow server sees the offered rate, not a rate it sets itself.

Each connection (``concurrency`` of them, keep-alive) repeatedly takes the next sequence
(round robin) and sends its requests in order, one answer before the next request. A
sequence is one logical request: the request hook then the response hook, for example.
Latency is recorded per step and per whole sequence; answers are counted per substring in
``count`` (headers or body), so a benchmark can confirm it measured hits and not misses. The
requests are pre-built bytes: the generator does as little work per request as it can. The
one exception: a step containing ``@@request_secret@@`` gets the ``request_secret`` of the
previous step's answer in its place (and its content-length adjusted), as the HTTP hook's
response call needs.
"""

from __future__ import annotations

import asyncio
import re
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


_SECRET_SLOT = b"@@request_secret@@"
_SECRET_FIELD = re.compile(rb'"request_secret":"([^"]*)"')
_LENGTH = re.compile(rb"content-length: (\d+)", re.IGNORECASE)


def _with_secret(request: bytes, previous_body: bytes) -> bytes:
    """``request`` with the previous answer's request_secret in place of the slot."""
    found = _SECRET_FIELD.search(previous_body)
    secret = found.group(1) if found else b""
    head, _, body = request.partition(b"\r\n\r\n")
    body = body.replace(_SECRET_SLOT, secret)
    head = _LENGTH.sub(b"content-length: " + str(len(body)).encode(), head, count=1)
    return head + b"\r\n\r\n" + body


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
    rate = float(spec.get("rate", 0.0))
    next_slot = counter()
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
                if rate > 0:
                    slot_at = start + next(next_slot) / rate
                    if slot_at > now:
                        await asyncio.sleep(slot_at - now)  # pacing the offered load
                        now = loop.time()
                    if now >= stop_at:
                        return
                seq = sequences[next(next_index) % len(sequences)]
                measured = now >= measure_from
                seq_started = time.perf_counter()
                body = b""
                for i, request in enumerate(seq):
                    if _SECRET_SLOT in request:
                        request = _with_secret(request, body)
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
