"""Immediate responses are shared between identical answers (an exact hit replays the same
stored answer), within a byte bound, and each is exactly what building it afresh gives."""

from __future__ import annotations

from sidecar.context import HttpAnswer
from sidecar.transports.extproc.messages import _build_immediate, _ReplyMemo


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
