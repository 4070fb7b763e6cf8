"""Building and reading ext_proc protobuf messages. No decisions here, only translation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from sidecar.context import REQUEST_ID_HEADER, HookError, HttpAnswer
from sidecar.hit_path import PLAN_HEADERS

__all__ = ["HttpBody", "HttpHeaders", "ProcessingRequest", "ProcessingResponse", "Reply"]

ProcessingMode = processing_mode_pb2.ProcessingMode
BodySendMode = processing_mode_pb2.ProcessingMode.BodySendMode

# The request kinds Envoy sends, as named by the ``request`` oneof.
REQUEST_HEADERS = "request_headers"
REQUEST_BODY = "request_body"
RESPONSE_HEADERS = "response_headers"
RESPONSE_BODY = "response_body"
REQUEST_TRAILERS = "request_trailers"
RESPONSE_TRAILERS = "response_trailers"
# Headers Envoy must never receive in a mutation (it rejects the whole reply).
_IMMUTABLE = frozenset({"host", ":authority", ":method", ":path", ":scheme", ":status"})
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def read_headers(
    message: HttpHeaders, what: str, pseudo: dict[str, str] | None = None
) -> dict[str, str]:
    """Header map with lower-case names; repeated headers are joined with ``", "``.

    Values are UTF-8. A sidecar control header (``x-bf-*``) that is not raises HookError(400)
    naming it; any other header falls back to Latin-1 (HTTP's historical charset), since
    the sidecar must not refuse traffic the provider would accept. With ``pseudo``, the
    pseudo-headers (``:method``, ``:path``...) go there instead of into the map (one pass
    rather than a second one to split them).
    """
    out: dict[str, str] = {}
    for header in message.headers.headers:
        name = header.key.lower()
        raw = header.raw_value
        if raw:
            try:
                value = raw.decode()
            except UnicodeDecodeError:
                if name.startswith("x-bf-"):
                    raise HookError(
                        400, "bad_header", f"{what} header {name!r} has a value that is not UTF-8"
                    ) from None
                value = raw.decode("latin-1")
        else:
            value = header.value
        into = pseudo if pseudo is not None and name[:1] == ":" else out
        if name in into:
            value = f"{into[name]}, {value}"
        into[name] = value
    return out


# One message per request (request_header_mode: SKIP): Envoy sends no headers message and
# attaches these attributes to the body message instead, under this filter's namespace.
ATTRIBUTES_NAMESPACE = "envoy.filters.http.ext_proc"
#: the request headers the sidecar itself reads; rules that read other headers need them added
CARRIED_HEADERS = (
    "content-type",
    "x-request-id",
    *PLAN_HEADERS,  # what parsing and the cache plan read
    # W3C trace context: a request traced by the caller (or Envoy) continues its trace
    "traceparent",
    "tracestate",
)
#: the ``request_attributes`` list for that Envoy configuration (docs/envoy.md)
REQUEST_ATTRIBUTES = (
    "request.method",
    "request.path",
    *(f"request.headers['{name}']" for name in CARRIED_HEADERS),
)
#: when Envoy received the request (``request_attributes: [request.time]``, docs/envoy.md): the
#: sidecar measures how long each stream waited in the gRPC transport before it was taken up
REQUEST_TIME = "request.time"
_HEADER_ATTRIBUTE = re.compile(r"""^request\.headers\[\s*(['"])([^'"]+)\1\s*\]$""")


def read_attributes(message: ProcessingRequest) -> dict[str, str] | None:
    """The request headers Envoy sent as attributes, in ``read_headers``' shape (``:method``,
    ``:path`` and lower-case names), or None when the message carries none.

    Envoy names each value by its expression (``request.headers['x-bf-cache-key']``) and
    leaves out the headers a request does not have.
    """
    if ATTRIBUTES_NAMESPACE not in message.attributes:
        return None
    fields = message.attributes[ATTRIBUTES_NAMESPACE].fields
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name == "request.method":
            key = ":method"
        elif name == "request.path":
            key = ":path"
        elif match := _HEADER_ATTRIBUTE.match(name):
            key = match.group(2).lower()
        else:
            continue  # another attribute someone configured: not a header
        out[key] = _attribute_text(value)
    return out


def request_time(message: ProcessingRequest) -> float | None:
    """``request.time`` of the message's attributes as a Unix time in seconds, or None when
    Envoy does not send it. Envoy writes the timestamp as RFC 3339 text (UTC)."""
    attributes = message.attributes.get(ATTRIBUTES_NAMESPACE)
    if attributes is None:
        return None
    value = attributes.fields.get(REQUEST_TIME)
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return float(value.number_value)
    if kind != "string_value":
        return None
    try:
        when = datetime.fromisoformat(value.string_value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _attribute_text(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return str(int(number)) if number.is_integer() else str(number)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return ""


def header_mutation(
    set_headers: Mapping[str, str] | None = None, remove: tuple[str, ...] = ()
) -> pb.HeaderMutation:
    options = [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, raw_value=value.encode("utf-8")),
            append_action=_OVERWRITE,
        )
        for name, value in (set_headers or {}).items()
        if name.lower() not in _IMMUTABLE
    ]
    return pb.HeaderMutation(set_headers=options, remove_headers=list(remove))


def _continue(kind: str) -> ProcessingResponse:
    if kind in (REQUEST_HEADERS, RESPONSE_HEADERS):
        return ProcessingResponse(**{kind: pb.HeadersResponse()})
    if kind in (REQUEST_BODY, RESPONSE_BODY):
        return ProcessingResponse(**{kind: pb.BodyResponse()})
    return ProcessingResponse(**{kind: pb.TrailersResponse()})


# Built once: a reply is only read after it is built (grpc serialises it), so every stream
# can share these, as the immediate responses in ``_ReplyMemo`` are shared.
_CONTINUE = {
    kind: _continue(kind)
    for kind in (
        REQUEST_HEADERS,
        RESPONSE_HEADERS,
        REQUEST_BODY,
        RESPONSE_BODY,
        REQUEST_TRAILERS,
        RESPONSE_TRAILERS,
    )
}


#: what a processor answers a message with: a message, or its bytes already serialised (the
#: gRPC server sends those as they are, see ``serialize_reply``)
Reply: TypeAlias = ProcessingResponse | bytes
#: the CONTINUE reply to request headers, serialised once: every request to the LLM API waits
#: for its body with it
CONTINUE_REQUEST_HEADERS = _CONTINUE[REQUEST_HEADERS].SerializeToString()


def serialize_reply(reply: Reply) -> bytes:
    """The gRPC response serialiser of ``Process``: a reply already serialised goes as is."""
    if type(reply) is bytes:
        return reply
    assert isinstance(reply, ProcessingResponse)
    return reply.SerializeToString()


def as_message(reply: Reply) -> ProcessingResponse:
    """The reply as a message, whichever form the processor gave it in (tests, tools)."""
    if isinstance(reply, bytes):
        return ProcessingResponse.FromString(reply)
    return reply


def continue_for(kind: str) -> ProcessingResponse:
    """The unmodified reply to a message of ``kind``: Envoy carries on as if we were absent.
    Shared between streams: callers must not modify it."""
    reply = _CONTINUE.get(kind)
    if reply is None:
        raise ValueError(f"unknown ext_proc message kind {kind!r}")
    return reply


def headers_reply(
    kind: str,
    set_headers: Mapping[str, str] | None = None,
    response_body_mode: int | None = None,
) -> ProcessingResponse:
    """A headers reply, optionally adding headers and switching the response body mode.

    ``mode_override`` is honoured only when the filter has ``allow_mode_override: true``;
    without it Envoy keeps its configured mode and the processor copes with either.
    """
    common = pb.CommonResponse()
    if set_headers:
        common.header_mutation.CopyFrom(header_mutation(set_headers))
    reply = ProcessingResponse(**{kind: pb.HeadersResponse(response=common)})
    if response_body_mode is not None:
        reply.mode_override.CopyFrom(
            ProcessingMode(
                response_header_mode=ProcessingMode.SEND,
                response_body_mode=response_body_mode,
                response_trailer_mode=ProcessingMode.SKIP,
            )
        )
    return reply


def body_reply(
    kind: str,
    new_body: bytes | None,
    set_headers: Mapping[str, str] | None = None,
    fix_length: bool = False,
) -> ProcessingResponse:
    """A body reply. ``fix_length`` sets content-length to the new body's size: required when a
    BUFFERED body is replaced, or Envoy answers 500 for the length mismatch."""
    common = pb.CommonResponse()
    headers = dict(set_headers or {})
    if new_body is not None:
        common.body_mutation.CopyFrom(pb.BodyMutation(body=new_body))
        if fix_length:
            headers["content-length"] = str(len(new_body))
    if headers:
        common.header_mutation.CopyFrom(header_mutation(headers))
    return ProcessingResponse(**{kind: pb.BodyResponse(response=common)})


class _ReplyMemo:
    """Immediate responses already serialised, by everything they are built from but the
    request id.

    An exact hit replays the same stored answer with the same headers (status, entry id)
    each time; building its protobuf (a HeaderValueOption per header) and serialising it cost
    more than the rest of the sidecar's work for a hit. Every answer also carries its own
    request id (``x-bf-cache-request-id``, the last header: the pipeline adds it after the
    others), so the memo keys on the answer without it and each reply is the memoised bytes
    followed by that one header, serialised apart (``_request_id_tail``). Protobuf parsing
    merges a message field met twice and appends to a repeated one, so the two parts read as
    one reply, header for header what building the whole answer gives (``_build_immediate``;
    ``tests/test_extproc_replies.py``). Bounded by bytes: when the next reply would pass
    ``max_bytes`` the memo starts over; bodies over ``max_body`` are not kept. A dictionary
    rather than functools.lru_cache, which has no byte bound.
    """

    def __init__(self, max_bytes: int = 8 * 1024 * 1024, max_body: int = 64 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_body = max_body
        self._replies: dict[Any, bytes] = {}
        self._bytes = 0

    def get(self, answer: HttpAnswer, details: str) -> bytes:
        if len(answer.body) > self.max_body:
            return _build_immediate(answer, details).SerializeToString()
        items = tuple(answer.headers.items())
        request_id = None
        if items and items[-1][0] == REQUEST_ID_HEADER:
            request_id = items[-1][1]
            items = items[:-1]
        key = (answer.status, items, answer.body, details)
        reply = self._replies.get(key)
        if reply is None:
            built = _build_immediate(HttpAnswer(answer.status, dict(items), answer.body), details)
            reply = built.SerializeToString()
            size = len(reply) + sum(len(k) + len(v) for k, v in items) + len(details)
            if self._bytes + size > self.max_bytes:
                self._replies.clear()
                self._bytes = 0
            self._replies[key] = reply
            self._bytes += size
        if request_id is None:
            return reply
        return reply + _request_id_tail(request_id)


#: per request id length (in bytes): the serialised reply holding only that header, split
#: around the id's bytes; Envoy's ids all have one length, so this holds one or two items
_ID_TAILS: dict[int, tuple[bytes, bytes]] = {}
_MAX_ID_TAILS = 64


def _request_id_tail(request_id: str) -> bytes:
    """``ProcessingResponse`` bytes that add ``x-bf-cache-request-id: request_id`` to an
    immediate response's headers when appended to it. The id is the last field of the message
    (``raw_value``, then only ``append_action`` follows), so the bytes around it depend on
    its length alone."""
    raw = request_id.encode("utf-8")
    parts = _ID_TAILS.get(len(raw))
    if parts is None:
        whole = _id_only_reply(b"\0" * len(raw)).SerializeToString()
        after = base_pb2.HeaderValueOption(append_action=_OVERWRITE).SerializeToString()
        start = len(whole) - len(after) - len(raw)
        assert whole[start:] == b"\0" * len(raw) + after, "unexpected field order"
        parts = (whole[:start], after)
        if len(_ID_TAILS) >= _MAX_ID_TAILS:
            _ID_TAILS.clear()
        _ID_TAILS[len(raw)] = parts
    return parts[0] + raw + parts[1]


def _id_only_reply(raw: bytes) -> ProcessingResponse:
    return ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            headers=pb.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=REQUEST_ID_HEADER, raw_value=raw),
                        append_action=_OVERWRITE,
                    )
                ]
            )
        )
    )


def _build_immediate(answer: HttpAnswer, details: str) -> ProcessingResponse:
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-length"}
    return ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=answer.status),
            headers=header_mutation(headers),
            body=answer.body,
            details=details,
        )
    )


_REPLIES = _ReplyMemo()


def immediate(answer: HttpAnswer, details: str) -> bytes:
    """Answer the client directly; the upstream is not called (or its answer is replaced).
    Serialised already (see ``_ReplyMemo``): the gRPC server sends reply bytes as they are."""
    return _REPLIES.get(answer, details)


def error_answer(exc: HookError) -> HttpAnswer:
    """The HTTP hook's error shape, so both transports report bad input the same way."""
    body = orjson.dumps({"error": {"kind": exc.kind, "message": exc.message}})
    return HttpAnswer(exc.status, {"content-type": "application/json"}, body)
