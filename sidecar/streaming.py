"""A streamed answer on its way to the client: forward chunks as they come, apply output
guardrails to text deltas, keep the complete event sequence for the cache.

Used by both transports: the ext_proc server feeds upstream chunks one by one; the HTTP hook
feeds the whole SSE text at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from sidecar.formats import ApiFormat, as_list, sse_error_event
from sidecar.sse import SseAssembler, SseEvent, is_terminal, iter_text_deltas


@dataclass(slots=True)
class GuardStep:
    released: str
    blocked_message: str | None = None  # set when a rule blocked the stream
    blocked_code: str = ""
    redacted: bool = False  # on finish: some text was redacted (the stream must not be cached)
    flagged: bool = False  # on finish: some check found something (cache.store_flagged_answers)


class TextGuard(Protocol):
    """Incremental output guardrail for one channel (choice or content block)."""

    async def feed(self, text: str) -> GuardStep: ...

    async def finish(self) -> GuardStep: ...


def _set_delta_text(api: ApiFormat, payload: dict[str, Any], channel: str, text: str) -> None:
    kind, _, idx = channel.partition(":")
    if api is ApiFormat.ANTHROPIC:
        payload["delta"]["text"] = text
        return
    for choice in as_list(payload.get("choices")):
        if isinstance(choice, dict) and f"choice:{choice.get('index', 0)}" == channel:
            if isinstance(choice.get("delta"), dict) and "content" in choice["delta"]:
                choice["delta"]["content"] = text
            else:
                choice["text"] = text


def _encode(event: SseEvent, payload: Any) -> bytes:
    head = f"event: {event.event}\n".encode() if event.event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def _closes_channel(api: ApiFormat, payload: Any, channel: str) -> bool:
    """True for the event after which a channel gets no more text."""
    if not isinstance(payload, dict):
        return False
    if api is ApiFormat.ANTHROPIC:
        return (
            payload.get("type") == "content_block_stop"
            and channel == f"block:{payload.get('index', 0)}"
        )
    for choice in as_list(payload.get("choices")):
        if (
            isinstance(choice, dict)
            and choice.get("finish_reason")
            and channel == f"choice:{choice.get('index', 0)}"
        ):
            return True
    return False


class StreamProcessor:
    """Feed upstream bytes, get bytes for the client. ``events`` keeps the original stream."""

    def __init__(
        self,
        api: ApiFormat,
        guard_factory: Callable[[str], TextGuard] | None = None,
        max_bytes: int = 0,
    ) -> None:
        self.api = api
        self._guard_factory = guard_factory
        self._guards: dict[str, TextGuard] = {}
        self._last_delta: dict[str, tuple[SseEvent, Any]] = {}
        self._assembler = SseAssembler()
        self.events: list[SseEvent] = []
        self.blocked: str | None = None
        self.redacted = False
        self.flagged = False
        self.terminal_seen = False
        self.oversize = False
        self._max_bytes = max_bytes
        self._size = 0

    @property
    def guarded(self) -> bool:
        return self._guard_factory is not None

    async def feed(self, chunk: bytes) -> bytes:
        if self.blocked is not None:
            return b""  # the stream already ended with an error event
        self._size += len(chunk)
        if self._max_bytes and self._size > self._max_bytes:
            self.oversize = True
        events = self._assembler.feed(chunk)
        if not self.oversize:
            self.events.extend(events)
        for event in events:
            if is_terminal(self.api, event):
                self.terminal_seen = True
        if not self.guarded:
            return chunk  # pass-through: bytes reach the client exactly as sent
        out = bytearray()
        for event in events:
            out += await self._guard_event(event)
            if self.blocked is not None:
                break
        return bytes(out)

    async def finish(self) -> bytes:
        """End of upstream stream: release whatever guards still hold."""
        if not self.guarded or self.blocked is not None:
            return b""
        out = bytearray()
        for channel in list(self._guards):
            out += await self._flush(channel)
        rest = self._assembler.pending
        if rest.strip():
            out += rest
        return bytes(out)

    async def _guard_event(self, event: SseEvent) -> bytes:
        payload = event.json()
        deltas = list(iter_text_deltas(self.api, event))
        out = bytearray()
        if deltas and isinstance(payload, dict):
            for channel, text in deltas:
                guard = self._guards.get(channel)
                if guard is None:
                    assert self._guard_factory is not None
                    guard = self._guards[channel] = self._guard_factory(channel)
                step = await guard.feed(text)
                if step.blocked_message is not None:
                    return bytes(out) + self._block(step)
                _set_delta_text(self.api, payload, channel, step.released)
                self._last_delta[channel] = (event, payload)
            return bytes(out) + _encode(event, payload)
        # A non-delta event: channels it closes (or the terminal) must flush first.
        for channel in list(self._guards):
            if is_terminal(self.api, event) or _closes_channel(self.api, payload, channel):
                out += await self._flush(channel)
                if self.blocked is not None:
                    return bytes(out)
        return bytes(out) + event.raw

    async def _flush(self, channel: str) -> bytes:
        guard = self._guards.pop(channel)
        step = await guard.finish()
        self.redacted = self.redacted or step.redacted
        self.flagged = self.flagged or step.flagged
        if step.blocked_message is not None:
            return self._block(step)
        if not step.released:
            return b""
        template, payload = self._last_delta[channel]
        clone = orjson.loads(orjson.dumps(payload))
        _set_delta_text(self.api, clone, channel, step.released)
        return _encode(template, clone)

    def _block(self, step: GuardStep) -> bytes:
        self.blocked = step.blocked_message or "blocked"
        return sse_error_event(self.api, self.blocked, step.blocked_code)
