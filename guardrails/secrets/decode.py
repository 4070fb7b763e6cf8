"""Decoding of base64, hex and percent-encoded segments, for secrets hidden inside them.

Each pass finds encoded-looking segments, decodes the ones that turn into printable text and
splices the decoded text in place. The detector then rescans the new text and keeps only
matches that touch a freshly decoded segment (anything else was already seen in an earlier
pass). ``PassMap`` maps positions in the decoded text back to the previous text, so a
finding inside decoded text is reported at the span of the encoded segment it came from.

All offsets are byte offsets into UTF-8 text, like the detector's.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from guardrails.secrets.patterns import Regex

# Base64 needs 16+ alphabet characters before it is worth a decode attempt (shorter runs
# are mostly identifiers). Hex is the same alphabet's subset and is tried first when it fits.
_TOKEN = r"[A-Za-z0-9+/_-]{16,}={0,2}"
_PERCENT = r"%[0-9A-Fa-f]{2}(?:[^\s%]*%[0-9A-Fa-f]{2})*"
_CANDIDATES = Regex(f"{_PERCENT}|{_TOKEN}", "encoded-segment finder", capture=False)
_HEX_DIGITS = b"0123456789abcdefABCDEF"
# Printable ASCII plus tab, LF, CR: decoded bytes outside this are binary, not hidden text.
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r"
# The first character of each base64 quad holds a byte's top six bits; for the bytes above
# that is one of these. Checking it rejects most random tokens without decoding them.
_B64_PRINTABLE_LEADS = b"CDIJKLMNOPQRSTUVWXYZabcdef"
_MIN_DECODED = 6


@dataclass(frozen=True, slots=True)
class Segment:
    """One decoded segment: ``[enc_start, enc_end)`` in the previous text became
    ``[dec_start, dec_end)`` in the new text."""

    enc_start: int
    enc_end: int
    dec_start: int
    dec_end: int
    encodings: tuple[str, ...]  # outermost first, e.g. ("base64", "percent")


def _printable(data: bytes) -> bool:
    return len(data) >= _MIN_DECODED and not data.translate(None, _PRINTABLE)


def decode_hex(token: bytes) -> bytes | None:
    if len(token) % 2 or token.translate(None, _HEX_DIGITS):
        return None
    data = binascii.unhexlify(token)
    return data if _printable(data) else None


def decode_base64(token: bytes) -> bytes | None:
    body = token.rstrip(b"=")
    if len(body) % 4 == 1:  # never a valid base64 length
        return None
    if body[::4].translate(None, _B64_PRINTABLE_LEADS):
        return None
    padded = body + b"=" * (-len(body) % 4)
    urlsafe = b"-" in body or b"_" in body
    if urlsafe and (b"+" in body or b"/" in body):
        return None  # mixed alphabets: not base64
    try:
        if urlsafe:
            data = base64.urlsafe_b64decode(padded)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if _printable(data) else None


def decode_percent(run: bytes) -> bytes | None:
    data = unquote_to_bytes(run)
    return data if data != run and _printable(data) else None


class PassMap:
    """The segments of one decoding pass, with position mapping to the previous text."""

    __slots__ = ("segments", "_dec_starts", "_dec_ends")

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self._dec_starts = [s.dec_start for s in segments]
        self._dec_ends = [s.dec_end for s in segments]

    def overlapping(self, start: int, end: int) -> Segment | None:
        """The first segment whose decoded range overlaps or touches ``[start, end)``.

        Touching counts: decoding ``%3D`` to ``=`` can complete a token's left boundary
        without the token itself having been encoded."""
        i = bisect.bisect_left(self._dec_ends, start)
        if i < len(self.segments) and self.segments[i].dec_start <= end:
            return self.segments[i]
        return None

    def _shift_before(self, i: int) -> int:
        # segments[:i] all end before the position: shift = encoded minus decoded lengths
        if i == 0:
            return 0
        seg = self.segments[i - 1]
        return seg.enc_end - seg.dec_end

    def to_previous(self, start: int, end: int) -> tuple[int, int]:
        """Map ``[start, end)`` to the previous text; touched segments expand to their
        whole encoded range, because positions inside decoded text have no exact origin."""
        i = bisect.bisect_right(self._dec_starts, start) - 1
        if i >= 0 and start < self._dec_ends[i]:
            new_start = self.segments[i].enc_start
        else:
            new_start = start + self._shift_before(i + 1)
        j = bisect.bisect_left(self._dec_starts, end) - 1
        if j >= 0 and end <= self._dec_ends[j] and end > self._dec_starts[j]:
            new_end = self.segments[j].enc_end
        else:
            new_end = end + self._shift_before(j + 1)
        return new_start, max(new_end, new_start)


def _decode(candidate: bytes) -> tuple[str, bytes | None]:
    if candidate[:1] == b"%":
        return "percent", decode_percent(candidate)
    decoded = decode_hex(candidate)
    if decoded is not None:
        return "hex", decoded
    return "base64", decode_base64(candidate)


def _candidates(text: bytes, previous: PassMap | None) -> list[tuple[int, int, Segment | None]]:
    """Encoded-looking runs; after the first pass only those inside freshly decoded text."""
    found: list[tuple[int, int, Segment | None]] = []
    if previous is None:
        found.extend((start, end, None) for start, end in _CANDIDATES.spans(text))
        return found
    for parent in previous.segments:
        pos = parent.dec_start
        while pos < parent.dec_end:
            span = _CANDIDATES.span(text, pos)
            if span is None or span[0] >= parent.dec_end:
                break
            found.append((span[0], span[1], parent))
            pos = span[1] if span[1] > span[0] else span[1] + 1
    return found


def decode_pass(text: bytes, previous: PassMap | None) -> tuple[bytes, PassMap]:
    """Decode the encoded segments of ``text``.

    After the first pass only candidates inside a segment decoded by the previous pass are
    tried: the rest of the text was already examined.
    """
    out = bytearray()
    segments: list[Segment] = []
    cursor = 0
    for start, end, parent in _candidates(text, previous):
        if start < cursor:
            continue  # overlaps a candidate already decoded
        kind, decoded = _decode(text[start:end])
        if decoded is None:
            continue
        out += text[cursor:start]
        dec_start = len(out)
        out += decoded
        cursor = end
        encodings = (parent.encodings if parent is not None else ()) + (kind,)
        segments.append(Segment(start, end, dec_start, len(out), encodings))
    if not segments:
        return text, PassMap([])
    out += text[cursor:]
    return bytes(out), PassMap(segments)
