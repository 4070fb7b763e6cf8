"""Server-sent events: re-assembly across chunk boundaries and stream completeness.

Upstream chunks do not align with events; ``SseAssembler`` keeps the partial frame until the
rest arrives. A stream is cacheable only when it ended with its terminal event and carried no
error event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.formats import ApiFormat, as_list


@dataclass(frozen=True, slots=True)
class SseEvent:
    raw: bytes  # the event exactly as received, with its terminating blank line
    event: str | None
    data: str

    def json(self) -> Any:
        try:
            return orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return None


def _parse(raw: bytes) -> SseEvent:
    event: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    return SseEvent(raw, event, "\n".join(data))


class SseAssembler:
    """Feed bytes, get complete events back in order."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = _frame_end(self._buffer)
            if cut < 0:
                break
            raw, self._buffer = self._buffer[:cut], self._buffer[cut:]
            if raw.strip():
                events.append(_parse(raw))
        return events

    @property
    def pending(self) -> bytes:
        return self._buffer


def _frame_end(buf: bytes) -> int:
    best = -1
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buf.find(sep)
        if i >= 0 and (best < 0 or i + len(sep) < best):
            best = i + len(sep)
    return best


def parse_events(text: bytes) -> list[SseEvent]:
    assembler = SseAssembler()
    events = assembler.feed(text)
    if assembler.pending.strip():
        events.append(_parse(assembler.pending))
    return events


def is_terminal(api: ApiFormat, event: SseEvent) -> bool:
    if api is ApiFormat.ANTHROPIC:
        return event.event == "message_stop" or _type_of(event) == "message_stop"
    return event.data.strip() == "[DONE]"


def is_error(event: SseEvent) -> bool:
    if event.event == "error":
        return True
    payload = event.json()
    return isinstance(payload, dict) and ("error" in payload or payload.get("type") == "error")


def _type_of(event: SseEvent) -> str | None:
    payload = event.json()
    return payload.get("type") if isinstance(payload, dict) else None


def stream_is_complete(api: ApiFormat, events: Iterable[SseEvent]) -> tuple[bool, str]:
    """(complete, reason). Complete means a terminal event arrived and no error did."""
    saw_terminal = False
    for event in events:
        if is_error(event):
            return False, "stream carried an error event"
        if saw_terminal and event.data.strip():
            return False, "events after the terminal event"
        if is_terminal(api, event):
            saw_terminal = True
    if not saw_terminal:
        return False, "stream ended without its terminal event (truncated)"
    return True, "complete"


def iter_text_deltas(api: ApiFormat, event: SseEvent) -> Iterator[tuple[str, str]]:
    """(channel, text) pairs carried by one event; channel separates choices / blocks."""
    payload = event.json()
    if not isinstance(payload, dict):
        return
    if api is ApiFormat.ANTHROPIC:
        delta = payload.get("delta")
        if payload.get("type") == "content_block_delta" and isinstance(delta, dict):
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                yield f"block:{payload.get('index', 0)}", delta["text"]
        return
    for choice in as_list(payload.get("choices")):
        if not isinstance(choice, dict):
            continue
        channel = f"choice:{choice.get('index', 0)}"
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            yield channel, delta["content"]
        elif isinstance(choice.get("text"), str):
            yield channel, choice["text"]
