"""Append-only, hash-chained JSONL audit log of guardrail decisions.

Each line is one JSON object with sorted keys. ``hash`` is the SHA-256 of the record's
canonical JSON without its ``hash`` field (so including ``prev``), and ``prev`` is the ``hash``
of the line before (64 zeros for the first record). Editing a line breaks its own hash;
recomputing that hash breaks the next line's ``prev``; deleting or reordering lines breaks
``prev`` too. Truncating the tail cannot be detected from the file alone (keep an external
copy of the latest hash if that matters).

Records carry rule ids, finding types and counts, never matched text: callers pass only
those fields, and :meth:`AuditLog.append` refuses keys that could carry text.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64
# Keys a caller might be tempted to use for matched text; refusing them keeps the rule that
# audit records never hold secrets or personal data enforceable in one place.
_FORBIDDEN_KEYS = frozenset({"text", "match", "matched", "value", "content", "snippet"})


def _canonical(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(record: Mapping[str, Any]) -> str:
    """Hash of a record's canonical JSON, excluding its own ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _last_line(path: str) -> bytes | None:
    """The last non-empty line of a file, read from the end (audit logs grow large)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = 8192
        data = b""
        pos = size
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
            stripped = data.rstrip(b"\n")
            if b"\n" in stripped or pos == 0:
                return stripped.rsplit(b"\n", 1)[-1] if stripped else None
    return None


class AuditLog:
    """Thread-safe appender. One process should own a given file (the chain is sequential)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = os.fspath(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._prev = self._resume()
        self._fh = open(self.path, "ab")  # noqa: SIM115 - held open for the log's lifetime

    def _resume(self) -> str:
        if not os.path.exists(self.path):
            return GENESIS
        last = _last_line(self.path)
        if last is None:
            return GENESIS
        try:
            parsed = orjson.loads(last)
            value = parsed.get("hash") if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, str) and len(value) == 64:
            return value
        # A torn last line (crash mid-write): chain onto its raw bytes; verify still reports it.
        return hashlib.sha256(last).hexdigest()

    @property
    def last_hash(self) -> str:
        return self._prev

    def append(self, record: Mapping[str, Any]) -> str:
        """Write one record (adds ``ts`` when missing, ``prev`` and ``hash``); returns its hash."""
        refused = (_FORBIDDEN_KEYS | {"prev", "hash"}).intersection(record)
        if refused:
            raise ValueError(f"audit records may not set {', '.join(sorted(refused))}")
        body = dict(record)
        body.setdefault("ts", time.time())
        with self._lock:
            body["prev"] = self._prev
            digest = record_hash(body)
            body["hash"] = digest
            self._fh.write(_canonical(body) + b"\n")
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())
            self._prev = digest
        return digest

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()


@dataclass(frozen=True, slots=True)
class AuditVerifyResult:
    ok: bool
    records: int  # records read (all of them when ok; those before the break otherwise)
    first_broken_line: int | None = None  # 1-based line number
    reason: str | None = None


def verify_audit_file(path: str | os.PathLike[str]) -> AuditVerifyResult:
    """Walk the chain from the first line; report the first line that does not fit."""
    prev = GENESIS
    count = 0
    with open(os.fspath(path), "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\n")
            if not raw.endswith(b"\n"):
                reason = "last line is incomplete (no newline)"
                return AuditVerifyResult(False, count, number, reason)
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                return AuditVerifyResult(False, count, number, "not valid JSON")
            if not isinstance(record, dict):
                return AuditVerifyResult(False, count, number, "not a JSON object")
            stored = record.get("hash")
            if record.get("prev") != prev:
                reason = "prev does not match the previous record's hash"
                return AuditVerifyResult(False, count, number, reason)
            if stored != record_hash(record):
                return AuditVerifyResult(False, count, number, "hash does not match the record")
            prev = stored
            count += 1
    return AuditVerifyResult(True, count)
