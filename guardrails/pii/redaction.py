"""Redaction modes and reversible placeholders.

Modes (``redaction`` in the profile config):

``replace``     ``[EMAIL_ADDRESS]``
``mask``        letters and digits replaced by ``mask_char`` except the last ``mask_keep_last``:
                ``**** **** **** 6467``
``hash``        ``[EMAIL_ADDRESS:<16 hex>]``, an HMAC-SHA256 of the value keyed with the
                deployment's salt, so one value gives one token across requests and restarts
``reversible``  ``[EMAIL_ADDRESS_1]``: each distinct value of a request gets a numbered
                placeholder; :class:`PlaceholderVault` keeps the mapping for that request only

Restoring (reversible mode, output stage)::

    vault = ctx.request_state["presidio.vault"]            # set by the input stage
    text = restore_text(answer_text, vault.mapping)        # whole answers

    restorer = StreamingRestorer(vault.mapping)            # streamed answers (SSE deltas)
    for delta in deltas:
        send(restorer.feed(delta))   # releases text, holding back a possible partial placeholder
    send(restorer.finish())          # the held-back rest, restored where complete

``feed(text) -> str`` returns the text that can be released now with complete placeholders
restored; it holds back at most one incomplete placeholder (at most the longest placeholder's
length minus one characters), so a placeholder split across chunks (``[EMAIL_AD`` +
``DRESS_1]``) is restored whole. ``finish() -> str`` returns what is left. Unknown
placeholder-shaped text (not in the mapping) is released unchanged. Restored values are raw
text: whoever re-encodes the delta (JSON string escaping) does so after restoring.

The vault and its mapping are plain in-memory objects; ``repr`` shows only the entry count so
values cannot reach a log line by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from guardrails.pii.config import PresidioConfig, RedactionMode

VAULT_KEY = "presidio.vault"
PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*_\d+\]")


class PlaceholderVault:
    """Per-request mapping between values and numbered placeholders."""

    __slots__ = ("_by_value", "_by_placeholder", "_counters", "_taken")

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        self._taken: set[str] = set()

    def __repr__(self) -> str:
        return f"PlaceholderVault({len(self._by_placeholder)} entries)"

    def __len__(self) -> int:
        return len(self._by_placeholder)

    def note_existing(self, text: str) -> None:
        """Remember placeholder-shaped strings the request already contains, so a new
        placeholder never collides with text the user wrote."""
        self._taken.update(PLACEHOLDER.findall(text))

    def placeholder_for(self, entity: str, value: str) -> str:
        key = (entity, value)
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        n = self._counters.get(entity, 0)
        while True:
            n += 1
            placeholder = f"[{entity}_{n}]"
            if placeholder not in self._taken and placeholder not in self._by_placeholder:
                break
        self._counters[entity] = n
        self._by_value[key] = placeholder
        self._by_placeholder[placeholder] = value
        return placeholder

    @property
    def mapping(self) -> Mapping[str, str]:
        """placeholder -> original value (read-only view)."""
        return _ReadOnlyMapping(self._by_placeholder)


class _ReadOnlyMapping(Mapping[str, str]):
    __slots__ = ("_data",)

    def __init__(self, data: dict[str, str]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<placeholder mapping: {len(self._data)} entries>"


def restore_text(text: str, mapping: Mapping[str, str]) -> str:
    if not mapping or "[" not in text:
        return text
    return PLACEHOLDER.sub(lambda m: mapping.get(m.group(), m.group()), text)


class StreamingRestorer:
    """Restores placeholders in a stream of text chunks; see the module docstring."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = dict(mapping)
        self._prefixes = {p[:i] for p in self._mapping for i in range(1, len(p))}
        self._longest = max((len(p) for p in self._mapping), default=0)
        self._held = ""

    def feed(self, text: str) -> str:
        buffer = self._held + text
        if not self._mapping:
            self._held = ""
            return buffer
        hold = self._hold_from(buffer)
        self._held = buffer[hold:]
        return restore_text(buffer[:hold], self._mapping)

    def finish(self) -> str:
        rest, self._held = self._held, ""
        return restore_text(rest, self._mapping)

    def _hold_from(self, buffer: str) -> int:
        """Index of the first '[' near the end that starts an incomplete placeholder."""
        tail_start = max(0, len(buffer) - self._longest + 1)
        i = buffer.find("[", tail_start)
        while i >= 0:
            if buffer[i:] in self._prefixes:
                return i
            i = buffer.find("[", i + 1)
        return len(buffer)


class Redactor:
    """Computes the replacement text of one detected value for the configured mode."""

    def __init__(self, config: PresidioConfig) -> None:
        self.mode = config.redaction
        self._mask_char = config.mask_char
        self._keep_last = config.mask_keep_last
        self._salt = config.hash_salt

    def replacement(self, entity: str, value: str, vault: PlaceholderVault | None) -> str:
        if self.mode is RedactionMode.REPLACE:
            return f"[{entity}]"
        if self.mode is RedactionMode.MASK:
            return mask_value(value, self._mask_char, self._keep_last)
        if self.mode is RedactionMode.HASH:
            assert self._salt is not None  # parse_config guarantees a salt for this mode
            digest = hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()
            return f"[{entity}:{digest[:16]}]"
        if vault is None:
            raise ValueError("reversible redaction needs the request's placeholder vault")
        return vault.placeholder_for(entity, value)


def mask_value(value: str, mask_char: str, keep_last: int) -> str:
    """Mask letters and digits, keeping separators and the last ``keep_last`` alphanumerics.

    Short values keep at most a third of their alphanumerics, so masking never leaves most of a
    short value readable.
    """
    alnum_positions = [i for i, c in enumerate(value) if c.isalnum()]
    keep = min(keep_last, len(alnum_positions) // 3)
    masked = set(alnum_positions[: len(alnum_positions) - keep])
    return "".join(mask_char if i in masked else c for i, c in enumerate(value))


def apply_replacements(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
    """Replace non-overlapping ``(start, end, replacement)`` spans of ``text``."""
    out: list[str] = []
    pos = 0
    for start, end, replacement in sorted(spans):
        if start < pos:
            raise ValueError("overlapping spans")
        out.append(text[pos:start])
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    return "".join(out)
