"""Immediate responses are shared between identical answers (an exact hit replays the same
stored answer, its request id aside), within a byte bound, and each is exactly what building
it afresh gives. And request headers read in one pass, pseudo-headers apart."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from sidecar.context import REQUEST_ID_HEADER, HttpAnswer
from sidecar.transports.extproc.messages import (
    HttpHeaders,
    _build_immediate,
    _ReplyMemo,
    read_headers,
)


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
    assert first == _build_immediate(answer(1), "sidecar_hit-exact")
    other = memo.get(answer(2), "sidecar_hit-exact")
    assert other is not first
    headers = {
        h.header.key: h.header.raw_value for h in other.immediate_response.headers.set_headers
    }
    assert headers["x-bf-cache-entry-id"] == b"entry-2"
    assert memo.get(answer(1), "sidecar_hit-semantic") is not first  # details are part of it


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
    and each reply is, byte for byte, what building the whole answer gives."""
    memo = _ReplyMemo()
    replies = [memo.get(with_request_id(f"req-{n}"), "sidecar_hit-exact") for n in range(50)]
    assert len(memo._replies) == 1
    for n, reply in enumerate(replies):
        built = _build_immediate(with_request_id(f"req-{n}"), "sidecar_hit-exact")
        assert reply.SerializeToString() == built.SerializeToString()
    assert replies[0] is not replies[1]  # each stream its own copy: the memo's is never sent
    shared = memo.get(answer(1), "sidecar_hit-exact")  # no request id: shared as before
    assert shared is memo.get(answer(1), "sidecar_hit-exact")
    assert REQUEST_ID_HEADER not in {
        h.header.key for h in shared.immediate_response.headers.set_headers
    }


def test_a_request_id_not_last_is_part_of_the_key() -> None:
    headers = {REQUEST_ID_HEADER: "req-1", "content-type": "application/json"}
    odd = HttpAnswer(200, headers, b"{}")
    reply = _ReplyMemo().get(odd, "d")
    assert reply.SerializeToString() == _build_immediate(odd, "d").SerializeToString()


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
