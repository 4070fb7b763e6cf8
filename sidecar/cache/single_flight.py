"""Single-flight for identical misses: while one request for an exact key is upstream, identical
requests wait (bounded) for its answer instead of paying for the same answer again.

The owner of a key's lock is the first request that missed. It releases the lock once its
answer is stored, or when the answer turns out not storable (error status, blocked, no-store...).
A waiter returns when the lock is released, when it expires (``lock_ttl``: an owner that died
or whose response never came back), or after ``lock_wait``; it then re-checks the cache and, on
a miss, proceeds upstream itself. So the lock bounds duplicate upstream calls; it never blocks
a request for more than ``lock_wait``.

``LocalMissLock`` serves one process (embedded store); the Redis exact store provides a lock
shared by every replica (``SET NX PX``, see ``sidecar.cache.stores.redis_exact``).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Protocol


class MissLock(Protocol):
    name: str

    async def acquire(self, key: str, partition: str, ttl: float) -> str | None:
        """A token when the caller now owns the key's miss; None when another request does."""
        ...

    async def wait(self, key: str, partition: str, timeout: float) -> bool:
        """Wait until the owner releases (True) or ``timeout`` seconds pass (False)."""
        ...

    async def release(self, key: str, partition: str, token: str) -> None:
        """Release if ``token`` still owns the lock (an expired lock may have a new owner)."""
        ...


@dataclass(frozen=True, slots=True)
class SingleFlight:
    """The lock and its timings, as the cache layer uses them."""

    lock: MissLock
    wait: float  # seconds a waiter waits for the owner's answer
    ttl: float  # seconds a lock lives if its owner never releases it


@dataclass(slots=True)
class HeldLock:
    """A lock a request owns until its answer is stored or found not storable."""

    key: str
    partition: str
    token: str


def new_token() -> str:
    return secrets.token_hex(8)


_PURGE_AT = 1024


class _Slot:
    __slots__ = ("token", "expires", "released")

    def __init__(self, token: str, expires: float) -> None:
        self.token = token
        self.expires = expires
        self.released = asyncio.Event()


class LocalMissLock:
    """In-process locks: an event per key in flight."""

    name = "local"

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._tokens = itertools.count(1)

    def _live(self, key: str) -> _Slot | None:
        slot = self._slots.get(key)
        if slot is not None and slot.expires <= time.monotonic():
            # The owner never released: free the key and wake its waiters.
            del self._slots[key]
            slot.released.set()
            return None
        return slot

    async def acquire(self, key: str, partition: str, ttl: float) -> str | None:
        if self._live(key) is not None:
            return None
        if len(self._slots) >= _PURGE_AT:
            # Owners whose answer never came back leave slots behind; drop the expired ones.
            for stale in [k for k, s in self._slots.items() if s.expires <= time.monotonic()]:
                self._live(stale)
        # Tokens are only compared within this process: a counter is unique here, without
        # the urandom read of new_token (a system call per miss).
        token = str(next(self._tokens))
        self._slots[key] = _Slot(token, time.monotonic() + ttl)
        return token

    async def wait(self, key: str, partition: str, timeout: float) -> bool:
        slot = self._live(key)
        if slot is None:
            return True
        # Never wait past the lock's own expiry: an abandoned lock frees its waiters.
        budget = min(timeout, max(0.0, slot.expires - time.monotonic()))
        try:
            await asyncio.wait_for(slot.released.wait(), budget)
        except TimeoutError:
            self._live(key)  # expire it if its time is up
            return slot.released.is_set()
        return True

    async def release(self, key: str, partition: str, token: str) -> None:
        slot = self._slots.get(key)
        if slot is not None and slot.token == token:
            del self._slots[key]
            slot.released.set()

    def __len__(self) -> int:
        return len(self._slots)
