"""Immediate responses are serialised once for identical answers (an exact hit replays the
same stored answer, its request id aside), within a byte bound, and each reply parses to
exactly what building it afresh gives, and the gRPC server sends replies given as bytes as
they are. And request headers read in one pass, pseudo-headers apart."""

from __future__ import annotations

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from sidecar.context import REQUEST_ID_HEADER, HttpAnswer
from sidecar.transports.extproc.messages import (
    CONTINUE_REQUEST_HEADERS,
    REQUEST_HEADERS,
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    Reply,
    _build_immediate,
    _ReplyMemo,
    continue_for,
    immediate,
    read_headers,
)
from sidecar.transports.extproc.processor import PassThroughProcessor
from sidecar.transports.extproc.server import ExtProcServer


def parsed(reply: bytes) -> ProcessingResponse:
    return ProcessingResponse.FromString(reply)


def answer(n: int, body: bytes = b'{"ok": true}') -> HttpAnswer:
    return HttpAnswer(
        200,
        {"content-type": "application/json", "x-bf-cache-entry-id": f"entry-{n}"},
        body,
    )


def test_the_same_answer_gets_the_same_reply_and_another_its_own() -> None:
    memo = _ReplyMemo()
    first = memo.get(answer(1), "sidecar_hit-exact")
    assert memo.get(answer(1), "sidecar_hit-exact") is first
    assert parsed(first) == _build_immediate(answer(1), "sidecar_hit-exact")
    other = memo.get(answer(2), "sidecar_hit-exact")
    assert other is not first
    headers = {
        h.header.key: h.header.raw_value
        for h in parsed(other).immediate_response.headers.set_headers
    }
    assert headers["x-bf-cache-entry-id"] == b"entry-2"
    semantic = memo.get(answer(1), "sidecar_hit-semantic")  # details are part of the key
    assert parsed(semantic).immediate_response.details == "sidecar_hit-semantic"


def test_the_memo_stays_within_its_byte_bound() -> None:
    memo = _ReplyMemo(max_bytes=10_000, max_body=2_000)
    body = b"x" * 1_000
    for n in range(100):
        memo.get(answer(n, body), "d")
        assert memo._bytes <= 10_000
    assert len(memo._replies) < 10
    big = answer(0, b"y" * 3_000)
    assert memo.get(big, "d") is not memo.get(big, "d")  # over max_body: never kept


def with_request_id(request_id: str) -> HttpAnswer:
    base = answer(1)
    return HttpAnswer(base.status, {**base.headers, REQUEST_ID_HEADER: request_id}, base.body)


def test_answers_differing_only_in_their_request_id_share_one_memo_entry() -> None:
    """Behind Envoy every request has its own id: the memo keys on the answer without it,
    and each reply (the memoised bytes, then the id's header serialised apart) parses to
    what building the whole answer gives, the id's header last."""
    memo = _ReplyMemo()
    ids = [f"req-{n}" for n in range(50)] + ["7c9a3e7e-4b4f-4a55-9a8e-1b0c8d9e6f70", "x" * 256]
    replies = [memo.get(with_request_id(rid), "sidecar_hit-exact") for rid in ids]
    assert len(memo._replies) == 1
    for rid, reply in zip(ids, replies, strict=True):
        built = _build_immediate(with_request_id(rid), "sidecar_hit-exact")
        assert parsed(reply) == built
        # parsed and serialised again: the same bytes as the message built whole
        assert parsed(reply).SerializeToString() == built.SerializeToString()
        last = parsed(reply).immediate_response.headers.set_headers[-1]
        assert (last.header.key, last.header.raw_value) == (REQUEST_ID_HEADER, rid.encode())
    shared = memo.get(answer(1), "sidecar_hit-exact")  # no request id: the memoised bytes
    assert shared is memo.get(answer(1), "sidecar_hit-exact")
    assert REQUEST_ID_HEADER not in {
        h.header.key for h in parsed(shared).immediate_response.headers.set_headers
    }


def test_a_request_id_not_last_is_part_of_the_key() -> None:
    headers = {REQUEST_ID_HEADER: "req-1", "content-type": "application/json"}
    odd = HttpAnswer(200, headers, b"{}")
    reply = _ReplyMemo().get(odd, "d")
    assert reply == _build_immediate(odd, "d").SerializeToString()


def test_request_headers_read_in_one_pass_match_reading_then_splitting() -> None:
    """``read_headers`` with a ``pseudo`` map gives the same headers, repeated ones joined,
    as reading all of them and dropping the pseudo-headers afterwards."""
    raw = [
        (":method", b"POST"),
        (":path", b"/v1/chat/completions"),
        ("X-BF-Cache-Key", b"tenant"),
        ("accept", b"a"),
        ("accept", b"b"),
        ("x-latin", "caf\u00e9".encode("latin-1")),
    ]
    message = HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v) for k, v in raw]
        )
    )
    whole = read_headers(message, "request")
    pseudo: dict[str, str] = {}
    split = read_headers(message, "request", pseudo)
    assert split == {k: v for k, v in whole.items() if not k.startswith(":")}
    assert pseudo == {":method": "POST", ":path": "/v1/chat/completions"}
    assert split["accept"] == "a, b" and split["x-bf-cache-key"] == "tenant"
    assert split["x-latin"] == "caf\u00e9"


class _ServedFromBytes(PassThroughProcessor):
    """Answers as an exact hit does: the CONTINUE and the immediate response as bytes."""

    async def request_headers(self, message: HttpHeaders) -> Reply:
        return CONTINUE_REQUEST_HEADERS

    async def request_body(self, message: HttpBody) -> Reply:
        self.finished = True
        return immediate(with_request_id("req-7"), "sidecar_hit-exact")


async def test_replies_given_as_bytes_reach_the_client_as_the_messages_they_encode() -> None:
    """Through the real gRPC server: bytes go out as they are, and the stream ends after an
    immediate response given as bytes (``finished``), as after one given as a message."""
    server = ExtProcServer(_ServedFromBytes, port=0)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=30)
            await call.write(ProcessingRequest(request_headers=HttpHeaders()))
            assert await call.read() == continue_for(REQUEST_HEADERS)
            await call.write(ProcessingRequest(request_body=HttpBody(end_of_stream=True)))
            hit = await call.read()
            assert hit == _build_immediate(with_request_id("req-7"), "sidecar_hit-exact")
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
    finally:
        await server.stop(0)
