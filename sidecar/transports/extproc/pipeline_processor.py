"""The sidecar's processor: translates ext_proc messages to ``Pipeline`` calls and back.

Request: headers, then the BUFFERED body -> ``on_request``. A cache hit or a block becomes an
ImmediateResponse (the upstream is never called); a rewritten body becomes a body mutation
with a matching content-length.

Response: at the headers the processor chooses the body mode through ``mode_override``:
STREAMED for a ``stream: true`` request answered 200 (tokens keep flowing, each chunk is fed
to a ``StreamProcessor`` and answered at once), BUFFERED for other answers the pipeline wants
to see (``on_response``), NONE when there is nothing to do. Envoy may ignore the override
(``allow_mode_override: false``), so every body handler accepts either chunking.
"""

from __future__ import annotations

import logging
import time

import orjson

from guardrails.base import Stage
from sidecar.cache.layer import CacheStatus
from sidecar.context import (
    ENTRY_HEADER,
    HookError,
    HookRequest,
    HttpAnswer,
    RequestContext,
    RequestOutcome,
)
from sidecar.formats import request_type_for
from sidecar.pipeline import Pipeline
from sidecar.streaming import StreamProcessor
from sidecar.transports.extproc.messages import (
    CONTINUE_REQUEST_HEADERS,
    REQUEST_BODY,
    REQUEST_HEADERS,
    RESPONSE_BODY,
    RESPONSE_HEADERS,
    BodySendMode,
    HttpBody,
    HttpHeaders,
    ProcessingResponse,
    Reply,
    body_reply,
    continue_for,
    error_answer,
    headers_reply,
    immediate,
    read_headers,
)

log = logging.getLogger("sidecar.extproc")
#: bodies up to this size usually arrive with their headers (one TCP window): the delay between
#: the headers reply and such a body is the transport's, not the client's upload
ROUND_TRIP_MAX_BODY = 16 * 1024

TRANSPORT = "extproc"
#: an immediate response's ``details`` by cache status (an enum's ``value`` is a Python-level
#: property: read once here rather than per answer)
_DETAILS = {status: f"sidecar_{status.value}" for status in CacheStatus}


class ExtProcError(Exception):
    """The processor cannot do what the pipeline asked (handled by the server's fail mode)."""


def _without_pseudo(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if not k.startswith(":")}


class PipelineProcessor:
    # Defaults of the per-stream state, as class attributes: one processor is built per
    # request, and assigning each in __init__ was a measurable share of an exact hit.
    # Mutable state (dicts, lists) is the instance's own.
    _method = ""
    _path = ""
    _have_headers = False
    _cacheable_request = False  # POST to an LLM API path the sidecar handles
    _decided = False  # on_request ran (or was skipped); later request messages pass
    ctx: RequestContext | None = None
    finished = False  # the answer is not needed (a shed miss): end the stream
    _headers_replied = 0.0
    _received = 0.0
    # response side
    _status = 0
    _response_mode = BodySendMode.NONE
    _stream: StreamProcessor | None = None
    _stream_stored = False
    _stream_messages = 0
    _answer_size = 0
    _request_size = 0  # request body bytes received so far (chunks past the bound not kept)

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._max_bytes = pipeline.config.server.max_body_bytes
        self._governor = None if pipeline.cache is None else pipeline.cache.governor
        # Made where first needed (an exact hit needs none of them): the request headers
        # by _take_headers, the answer's by response_headers, before anything reads them.
        self._headers: dict[str, str]
        self._request_chunks: list[bytes] = []
        self._response_headers: dict[str, str]
        self._answer_chunks: list[bytes]

    # ------------------------------------------------------------------ request
    def _take_headers(self, headers: dict[str, str], pseudo: dict[str, str] | None = None) -> None:
        """``headers`` with its pseudo-headers, or without them and ``pseudo`` holding them."""
        if pseudo is None:
            pseudo, headers = headers, _without_pseudo(headers)
        method = self._method = pseudo.get(":method", "").upper()
        path = self._path = pseudo.get(":path", "")
        self._headers = headers
        self._have_headers = True
        self._cacheable_request = method == "POST" and request_type_for(path) is not None

    def request_attributes(self, headers: dict[str, str]) -> None:
        if not self._have_headers:
            self._take_headers(headers)

    async def request_headers(self, message: HttpHeaders) -> Reply:
        pseudo: dict[str, str] = {}
        try:
            headers = read_headers(message, "request", pseudo)
        except HookError as exc:
            self._decided = True
            return self._refuse(exc)
        self._take_headers(headers, pseudo)
        self._received = time.monotonic()  # guardrail timeouts count from here
        if message.end_of_stream or not self._cacheable_request:
            # Nothing to wait for: decide now, the body (if any) passes untouched.
            self._decided = True
            return await self._decide(None, REQUEST_HEADERS)
        self._headers_replied = time.perf_counter()  # the reply goes out now
        return CONTINUE_REQUEST_HEADERS

    async def request_body(self, message: HttpBody) -> Reply:
        if self._decided:
            return continue_for(REQUEST_BODY)
        if not self._have_headers:
            raise ExtProcError(
                "the request body came without the request headers: with "
                "request_header_mode SKIP, Envoy must send them as request_attributes "
                "(docs/envoy.md, one message per request)"
            )
        if not self._cacheable_request:
            # Headers came as attributes (no headers message): this is where we learn the
            # request is not one we handle.
            self._decided = True
            return await self._decide(None, REQUEST_BODY)
        body = message.body  # read once: each read copies it out of the message
        end = message.end_of_stream
        if self._headers_replied and self._governor is not None:
            # Load signal: how long Envoy's body took to follow the headers reply. Only small
            # bodies in one message: a large upload's own transfer time is not load.
            if end and len(body) <= ROUND_TRIP_MAX_BODY:
                self._governor.observe_round_trip(time.perf_counter() - self._headers_replied)
            self._headers_replied = 0.0
        self._request_size += len(body)
        if not end:
            # request_body_mode STREAMED: the chunk goes upstream now, the decision waits.
            # Chunks are kept up to max_body_bytes only: past it the request passes uncached.
            if self._request_size <= self._max_bytes:
                self._request_chunks.append(body)
            else:
                self._request_chunks.clear()
            return continue_for(REQUEST_BODY)
        self._decided = True
        if self._request_size > self._max_bytes:
            # Unlike the HTTP hook, a proxy in the path must not refuse traffic it cannot cache.
            self._request_chunks.clear()
            log.info(
                "request body of %d bytes over max_body_bytes: passed uncached", self._request_size
            )
            self._pipeline.counts.request_counter(TRANSPORT, CacheStatus.BYPASS).inc()
            self._pipeline.metrics.bypasses.inc()
            return continue_for(REQUEST_BODY)
        if self._request_chunks:  # the last of several chunks (none kept: it came whole)
            self._request_chunks.append(body)
            body = b"".join(self._request_chunks)
        return await self._decide(body, REQUEST_BODY)

    async def _decide(self, body: bytes | None, kind: str) -> Reply:
        hook = HookRequest(
            method=self._method or "GET",
            path=self._path,
            headers=self._headers,
            body=body,
            request_id=self._headers.get("x-request-id") or None,
            received_at=self._received or None,
        )
        try:
            self.ctx, outcome = await self._pipeline.on_request(hook, TRANSPORT)
        except HookError as exc:
            return self._refuse(exc)
        return self._request_reply(outcome, kind)

    def _immediate(self, answer: HttpAnswer, details: str) -> bytes:
        self.finished = True  # the stream ends with this reply (see ``Processor.finished``)
        return immediate(answer, details)

    def _request_reply(self, outcome: RequestOutcome, kind: str) -> Reply:
        if outcome.action == "respond":
            assert outcome.response is not None
            return self._immediate(outcome.response, _DETAILS[outcome.cache.status])
        self.finished = not outcome.answer_needed
        if outcome.body is None:
            return continue_for(kind)
        if kind != REQUEST_BODY or self._request_chunks:
            raise ExtProcError(
                "the request body must be rewritten but arrived in several chunks; "
                "configure request_body_mode: BUFFERED"
            )
        new_body = orjson.dumps(outcome.body)
        return body_reply(REQUEST_BODY, new_body, fix_length=True)

    def _refuse(self, exc: HookError) -> bytes:
        self._pipeline.metrics.hook_errors.labels(TRANSPORT, exc.kind).inc()
        return self._immediate(error_answer(exc), f"sidecar_{exc.kind}")

    # ------------------------------------------------------------------ response
    def _output_guarded(self, ctx: RequestContext) -> bool:
        guardrails = self._pipeline.guardrails
        return guardrails is not None and guardrails.active(Stage.OUTPUT, ctx)

    def _choose_mode(self, ctx: RequestContext) -> int:
        if ctx.parsed is None or not 200 <= self._status < 300:
            return BodySendMode.NONE  # the pipeline neither checks nor stores these
        if ctx.cache.status is CacheStatus.BYPASS and not self._output_guarded(ctx):
            return BodySendMode.NONE
        if ctx.parsed.stream and self._status == 200:
            return BodySendMode.STREAMED
        return BodySendMode.BUFFERED

    async def response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        ctx = self.ctx
        if ctx is None:
            return headers_reply(RESPONSE_HEADERS, response_body_mode=BodySendMode.NONE)
        try:
            headers = read_headers(message, "response")
        except HookError:
            # An upstream's odd header is not ours to judge: leave the answer alone.
            return headers_reply(RESPONSE_HEADERS, response_body_mode=BodySendMode.NONE)
        try:
            self._status = int(headers.get(":status", "0"))
        except ValueError:
            self._status = 0
        self._response_headers = _without_pseudo(headers)
        self._answer_chunks = []
        self._response_mode = self._choose_mode(ctx)
        if self._response_mode == BodySendMode.NONE:
            # No body will come: let identical requests waiting on this miss go ahead now.
            await self._pipeline.release_miss_lock(ctx)
        return headers_reply(
            RESPONSE_HEADERS, ctx.cache.headers(), response_body_mode=self._response_mode
        )

    async def response_body(self, message: HttpBody) -> Reply:
        ctx = self.ctx
        if ctx is None or ctx.parsed is None or not 200 <= self._status < 300:
            return continue_for(RESPONSE_BODY)
        if ctx.parsed.stream and self._status == 200:
            return await self._stream_chunk(ctx, message)
        return await self._answer_chunk(ctx, message)

    async def _stream_chunk(self, ctx: RequestContext, message: HttpBody) -> ProcessingResponse:
        if self._stream is None:
            self._stream = self._pipeline.open_stream(ctx)
        chunk = message.body
        self._stream_messages += 1
        out = await self._stream.feed(chunk)
        if message.end_of_stream:
            out += await self._stream.finish()
        if not self._stream_stored and (self._stream.terminal_seen or message.end_of_stream):
            # Stored as soon as the terminal event arrives and before it is released: SDKs
            # (OpenAI's) close the connection at [DONE], so end_of_stream may never come, and
            # the client's next request must find the entry.
            self._stream_stored = True
            await self._pipeline.finish_stream(
                ctx, self._status, self._response_headers, self._stream
            )
        # One message holding the whole stream means Envoy buffered it (mode_override not
        # allowed): a rewritten body then needs its content-length corrected.
        whole = self._stream_messages == 1 and message.end_of_stream
        return body_reply(RESPONSE_BODY, out if out != chunk else None, fix_length=whole)

    async def _answer_chunk(self, ctx: RequestContext, message: HttpBody) -> Reply:
        self._answer_size += len(message.body)
        if self._answer_size <= self._max_bytes:
            self._answer_chunks.append(message.body)
        else:
            self._answer_chunks.clear()  # too large to store or check: pass through
        if not message.end_of_stream:
            return continue_for(RESPONSE_BODY)
        if self._answer_size > self._max_bytes:
            ctx.note("answer over max_body_bytes: passed through, not stored")
            self._pipeline.metrics.store_skips.labels("too_large").inc()
            return continue_for(RESPONSE_BODY)
        whole = len(self._answer_chunks) == 1 and self._response_mode == BodySendMode.BUFFERED
        body = b"".join(self._answer_chunks)
        outcome = await self._pipeline.on_response(ctx, self._status, self._response_headers, body)
        if outcome.action == "respond" or outcome.body is not None:
            if not whole:
                # Earlier chunks already reached the client: the answer cannot be replaced.
                raise ExtProcError(
                    "the answer must be replaced but arrived STREAMED; set "
                    "allow_mode_override: true (or response_body_mode: BUFFERED)"
                )
            if outcome.response is not None:
                return self._immediate(outcome.response, "sidecar_output_blocked")
        extra: dict[str, str] = {}
        if outcome.stored_entry_id is not None and whole:
            extra[ENTRY_HEADER] = outcome.stored_entry_id
        return body_reply(RESPONSE_BODY, outcome.body, extra, fix_length=whole)

    async def close(self) -> None:
        # A stream cut short (client gone, Envoy timeout, error) never reached the store: free
        # its single-flight miss lock so waiting requests go upstream instead of timing out.
        if self.ctx is not None and self._pipeline.holds_miss_lock(self.ctx):
            await self._pipeline.release_miss_lock(self.ctx)
