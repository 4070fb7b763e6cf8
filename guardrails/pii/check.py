"""The ``presidio`` check: PII detection with Microsoft Presidio, fully offline.

Input stage: every detected value becomes a :class:`Finding` of type ``EMAIL_ADDRESS`` (the
entity name) whose ``replacement`` follows the profile's redaction mode. In ``reversible``
mode the placeholders are recorded in ``ctx.request_state["presidio.vault"]``
(:class:`~guardrails.pii.redaction.PlaceholderVault`), which lives for the request only.

Output stage: in ``reversible`` mode the check reports no findings; it returns
``CheckResult.restored`` (piece index -> text with the request's placeholders put back). For
streamed answers, :meth:`PresidioCheck.stream_restorer` gives a
:class:`~guardrails.pii.redaction.StreamingRestorer` for the request. Restoring uses the
current request's mapping, so a cached answer (stored with placeholders) is restored with the
personal data of whichever request receives it. In the other modes the output stage detects
and reports like the input stage. To detect PII that a model produces on its own alongside
reversible restoration, configure a second ``presidio`` profile (``replace`` mode) on the
output stage.

Example profile::

    provider: presidio
    config:
      entities: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN, IP_ADDRESS]
      min_score: 0.5
      redaction: reversible
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from guardrails.base import CheckContext, CheckResult, Finding, Stage, TextPiece
from guardrails.pii.config import PresidioConfig, RedactionMode, parse_config
from guardrails.pii.engine import Detection, PiiAnalyzer
from guardrails.pii.recognizers import BUILTIN_ENTITIES
from guardrails.pii.redaction import (
    VAULT_KEY,
    PlaceholderVault,
    Redactor,
    StreamingRestorer,
    restore_text,
)

# When the check is called directly (the engine runs ``analyze`` itself, inline or in a worker
# process): below this many characters analysis runs on the event loop (about 1-2 ms per KB);
# above it, in a thread so a long prompt does not stall other requests.
_INLINE_CHARS = 4096
# Longest text one finding covers: an e-mail address (64 + 1 + 255) is the longest built-in.
_MAX_SPAN = 320


class PresidioCheck:
    provider = "presidio"

    def __init__(self, config: PresidioConfig, analyzer: PiiAnalyzer) -> None:
        self.config = config
        self.analyzer = analyzer
        self._redactor = Redactor(config)

    @property
    def reversible(self) -> bool:
        return self.config.redaction is RedactionMode.REVERSIBLE

    async def scan(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        if ctx.stage is Stage.OUTPUT and self.reversible:
            return self._restore(pieces, ctx)
        return self.complete(pieces, ctx, await self._detect_all(pieces))

    def analyze(self, pieces: Sequence[TextPiece], stage: Stage) -> list[list[Detection]] | None:
        """Detections per piece; None where the stage only restores (reversible output)."""
        if stage is Stage.OUTPUT and self.reversible:
            return None
        return [self.analyzer.detect(p.text) for p in pieces]

    def complete(
        self,
        pieces: Sequence[TextPiece],
        ctx: CheckContext,
        analysis: list[list[Detection]] | None,
    ) -> CheckResult:
        if analysis is None:
            return self._restore(pieces, ctx)
        vault = self._vault(ctx) if self.reversible else None
        if vault is not None:
            for piece in pieces:
                vault.note_existing(piece.text)
        findings: list[Finding] = []
        for piece, found in zip(pieces, analysis, strict=True):
            for d in found:
                value = piece.text[d.start : d.end]
                findings.append(
                    Finding(
                        type=d.entity,
                        piece=piece.index,
                        start=d.start,
                        end=d.end,
                        score=round(d.score, 3),
                        replacement=self._redactor.replacement(d.entity, value, vault),
                    )
                )
        return CheckResult(findings=findings)

    def max_span(self) -> int | None:
        return _MAX_SPAN

    async def aclose(self) -> None:
        return None

    def stream_restorer(self, ctx: CheckContext) -> StreamingRestorer | None:
        """A restorer for this request's streamed answer, or None when nothing to restore."""
        vault = ctx.request_state.get(VAULT_KEY)
        if not self.reversible or not isinstance(vault, PlaceholderVault) or not len(vault):
            return None
        return StreamingRestorer(vault.mapping)

    def detect(self, text: str) -> list[Detection]:
        return self.analyzer.detect(text)

    async def _detect_all(self, pieces: Sequence[TextPiece]) -> list[list[Detection]]:
        texts = [p.text for p in pieces]
        if sum(len(t) for t in texts) <= _INLINE_CHARS:
            return [self.analyzer.detect(t) for t in texts]
        return await asyncio.to_thread(lambda: [self.analyzer.detect(t) for t in texts])

    def _vault(self, ctx: CheckContext) -> PlaceholderVault:
        vault = ctx.request_state.get(VAULT_KEY)
        if not isinstance(vault, PlaceholderVault):
            vault = PlaceholderVault()
            ctx.request_state[VAULT_KEY] = vault
        return vault

    def _restore(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        vault = ctx.request_state.get(VAULT_KEY)
        result = CheckResult()
        if not isinstance(vault, PlaceholderVault) or not len(vault):
            return result
        mapping = vault.mapping
        for piece in pieces:
            restored = restore_text(piece.text, mapping)
            if restored != piece.text:
                result.restored[piece.index] = restored
        return result


def build(config: Mapping[str, Any], *, base_dir: str | None = None) -> PresidioCheck:
    """Factory named in ``guardrails.registry``: validate the profile config, build the engine."""
    parsed = parse_config(config, base_dir=base_dir, known_entities=BUILTIN_ENTITIES)
    return PresidioCheck(parsed, PiiAnalyzer(parsed, base_dir))
