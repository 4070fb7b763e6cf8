"""Reversible redaction: restoring placeholders on the output stage, whole and streamed."""

from __future__ import annotations

from guardrails.base import CheckContext, PieceKind, Stage, TextPiece
from guardrails.pii.check import PresidioCheck, build
from guardrails.pii.redaction import StreamingRestorer, apply_replacements, restore_text

PROMPT = "Email dana.keller@example.com and call +44 20 7946 0958 about card 4539 1488 0343 6467."


def context(request_id: str, stage: Stage, state: dict[str, object] | None = None) -> CheckContext:
    return CheckContext(
        stage=stage, request_id=request_id, request_type="chat", request_state=state or {}
    )


async def redact_input(check: PresidioCheck, text: str, request_id: str) -> tuple[str, dict]:
    ctx = context(request_id, Stage.INPUT)
    result = await check.scan([TextPiece(0, text)], ctx)
    spans = [(f.start, f.end, f.replacement or "") for f in result.findings]
    return apply_replacements(text, spans), ctx.request_state


async def test_provider_sees_placeholders_and_answer_is_restored() -> None:
    check = build({"redaction": "reversible"})
    redacted, state = await redact_input(check, PROMPT, "r1")
    assert redacted == (
        "Email [EMAIL_ADDRESS_1] and call [PHONE_NUMBER_1] about card [CREDIT_CARD_1]."
    )
    answer = "I emailed [EMAIL_ADDRESS_1]; [PHONE_NUMBER_1] was busy. Card [CREDIT_CARD_1] noted."
    pieces = [
        TextPiece(0, answer, kind=PieceKind.ANSWER),
        TextPiece(1, '{"to": "[EMAIL_ADDRESS_1]"}', kind=PieceKind.TOOL_ARGS),
        TextPiece(2, "nothing to restore", kind=PieceKind.ANSWER),
    ]
    result = await check.scan(pieces, context("r1", Stage.OUTPUT, state))
    assert result.findings == []
    assert result.restored == {
        0: "I emailed dana.keller@example.com; +44 20 7946 0958 was busy. "
        "Card 4539 1488 0343 6467 noted.",
        1: '{"to": "dana.keller@example.com"}',
    }


async def test_cached_answer_is_restored_with_each_requests_own_values() -> None:
    # Two requests whose prompts differ only in personal data redact to the same prompt; the
    # cache stores the provider's answer with placeholders and each request restores its own.
    check = build({"redaction": "reversible"})
    first, state_a = await redact_input(check, "Reply to ann@example.com please", "a")
    second, state_b = await redact_input(check, "Reply to bob@example.org please", "b")
    assert first == second == "Reply to [EMAIL_ADDRESS_1] please"
    cached_answer = "Sure, I will reply to [EMAIL_ADDRESS_1] today."
    piece = [TextPiece(0, cached_answer, kind=PieceKind.ANSWER)]
    out_a = await check.scan(piece, context("a", Stage.OUTPUT, state_a))
    out_b = await check.scan(piece, context("b", Stage.OUTPUT, state_b))
    assert out_a.restored[0] == "Sure, I will reply to ann@example.com today."
    assert out_b.restored[0] == "Sure, I will reply to bob@example.org today."
    # A request that never had personal data restores nothing.
    out_c = await check.scan(piece, context("c", Stage.OUTPUT))
    assert out_c.restored == {}


async def test_streamed_answer_restores_placeholders_split_at_every_position() -> None:
    check = build({"redaction": "reversible"})
    _, state = await redact_input(check, PROMPT, "r1")
    answer = "Done: [EMAIL_ADDRESS_1], [PHONE_NUMBER_1] and [CREDIT_CARD_1]. [NOT_A_PLACEHOLDER_9]"
    expected = (
        "Done: dana.keller@example.com, +44 20 7946 0958 and 4539 1488 0343 6467. "
        "[NOT_A_PLACEHOLDER_9]"
    )
    out_ctx = context("r1", Stage.OUTPUT, state)
    for cut in range(1, len(answer)):
        restorer = check.stream_restorer(out_ctx)
        assert restorer is not None
        released = restorer.feed(answer[:cut]) + restorer.feed(answer[cut:]) + restorer.finish()
        assert released == expected, cut


async def test_streamed_answer_in_single_characters_holds_back_only_partial_placeholders() -> None:
    restorer = StreamingRestorer({"[EMAIL_ADDRESS_1]": "a@example.com"})
    released = []
    for ch in "x [EMAIL_ADDRESS_1] [y] [EMAIL_ADDRESS_2]":
        released.append(restorer.feed(ch))
    released.append(restorer.finish())
    assert "".join(released) == "x a@example.com [y] [EMAIL_ADDRESS_2]"
    # Text that cannot start a placeholder is released at once.
    assert released[0] == "x"
    # While "[EMAIL_AD" is pending nothing of it is released.
    assert "".join(released[:11]) == "x "


def test_restore_text_leaves_unknown_placeholders() -> None:
    mapping = {"[PHONE_NUMBER_1]": "+1 415-555-0132"}
    text = "[PHONE_NUMBER_1] or [PHONE_NUMBER_2]"
    assert restore_text(text, mapping) == "+1 415-555-0132 or [PHONE_NUMBER_2]"


async def test_no_restorer_without_reversible_mode_or_values() -> None:
    reversible = build({"redaction": "reversible"})
    assert reversible.stream_restorer(context("r", Stage.OUTPUT)) is None
    plain = build({})
    _, state = await redact_input(plain, PROMPT, "r")
    assert plain.stream_restorer(context("r", Stage.OUTPUT, state)) is None
