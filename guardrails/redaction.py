"""How a ``redact`` rule's findings change the text: the operators, apart from detection.

Detection (the checks) says where and what; this module decides what each span becomes
(``Redaction``: a ``[LABEL]`` placeholder, a mask, a salted hash, or the finding's own
replacement), merges overlapping spans of several checks into one replacement, and applies
whole-piece rewrites and reversible restores, refusing to merge two that disagree. Kept apart
from the engine, which decides which rules run and what their outcomes are (as Presidio keeps
analysis apart from anonymisation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from guardrails.base import CheckResult, Finding
from guardrails.rules import Profile, Redaction


class RewriteConflict(Exception):
    """Two checks of one rule rewrote the same piece differently (cannot merge safely)."""


def placeholder_label(finding_type: str) -> str:
    """``regex:ignore-previous`` -> ``IGNORE-PREVIOUS``; ``EMAIL_ADDRESS`` stays as it is."""
    return finding_type.rsplit(":", 1)[-1].upper()


def _replacement(finding: Finding, strategy: Redaction, original: str, salt: bytes) -> str:
    if finding.replacement is not None:
        return finding.replacement
    label = placeholder_label(finding.type)
    if strategy is Redaction.MASK:
        return "*" * len(original)
    if strategy is Redaction.HASH:
        digest = hashlib.sha256(salt + original.encode("utf-8")).hexdigest()[:12]
        return f"[{label}:{digest}]"
    return f"[{label}]"


def redact_text(text: str, spans: Sequence[tuple[Finding, Redaction]], salt: bytes) -> str:
    """Replace finding spans; overlapping spans merge and take the widest finding's replacement.

    A finding without a span (a verdict about the whole piece) covers the whole text.
    """
    clipped: list[tuple[int, int, Finding, Redaction]] = []
    for finding, strategy in spans:
        start, end = (finding.start, finding.end) if finding.has_span else (0, len(text))
        start, end = max(0, start), min(len(text), end)
        if end > start:
            clipped.append((start, end, finding, strategy))
    if not clipped:
        return text
    clipped.sort(key=lambda s: (s[0], -s[1], s[2].type))
    out: list[str] = []
    cursor = 0
    i = 0
    while i < len(clipped):
        start, end, _, _ = best = clipped[i]
        j = i + 1
        while j < len(clipped) and clipped[j][0] < end:  # overlaps the group so far
            if clipped[j][1] - clipped[j][0] > best[1] - best[0]:
                best = clipped[j]
            end = max(end, clipped[j][1])
            j += 1
        out.append(text[cursor:start])
        out.append(_replacement(best[2], best[3], text[start:end], salt))
        cursor = end
        i = j
    out.append(text[cursor:])
    return "".join(out)


def apply_redactions(
    results: Sequence[tuple[Profile, CheckResult]], texts: Mapping[int, str], salt: bytes
) -> tuple[dict[int, str], set[str]]:
    """New texts for the pieces a rule changes, and how they changed (``spans``,
    ``rewritten``, ``restored``). Raises RewriteConflict when merging would be unsafe."""
    whole: dict[int, dict[str, tuple[str, str]]] = {}  # piece -> profile -> (text, kind)
    spans: dict[int, list[tuple[Finding, Redaction, str]]] = {}
    for profile, result in results:
        for kind, texts_by_piece in (
            ("restored", result.restored),
            ("rewritten", result.rewritten),
        ):
            for index, new_text in texts_by_piece.items():
                if index in texts:
                    whole.setdefault(index, {})[profile.name] = (new_text, kind)
        for finding in result.findings:
            if finding.piece in texts:
                entry = (finding, profile.redaction, profile.name)
                spans.setdefault(finding.piece, []).append(entry)
    changed: dict[int, str] = {}
    kinds: set[str] = set()
    for index in set(whole) | set(spans):
        rewrites = whole.get(index, {})
        piece_spans = spans.get(index, [])
        if rewrites:
            if len({text for text, _ in rewrites.values()}) > 1:
                raise RewriteConflict
            # A rewrite covers its own check's findings, not another check's.
            if any(name not in rewrites for _, _, name in piece_spans):
                raise RewriteConflict
            new_text, kind = next(iter(rewrites.values()))
        else:
            pairs = [(f, strategy) for f, strategy, _ in piece_spans]
            new_text, kind = redact_text(texts[index], pairs, salt), "spans"
        if new_text != texts[index]:
            changed[index] = new_text
            kinds.add(kind)
    return changed, kinds
