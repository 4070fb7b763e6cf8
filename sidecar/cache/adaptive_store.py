"""Where the adaptive cache keeps its evidence (sidecar/cache/adaptive.py): observations per
entry and per partition, and the served semantic hits a user may report (feedback).

- ``MemoryEvidence``: this process only (``data_dir: :memory:``).
- ``SqliteEvidence``: the embedded store's SQLite file. An entry's evidence is deleted with its
  row (a trigger on ``entries``), so deletes, evictions and expiry drop it; it survives restart.
- ``RedisEvidence``: next to the Redis exact store, in the entry's partition hash tag, expiring
  with the entry (``PEXPIREAT``); replicas read and write the same evidence.

Every collection is bounded: observations per entry and per partition (adaptive.py), the number
of entries and partitions tracked, and the served-hit map (by count, bytes and age).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import orjson

from sidecar.cache.adaptive import (
    ENTRY_MAX_OBSERVATIONS,
    PARTITION_MAX_OBSERVATIONS,
    EntryEvidence,
    Observation,
    PartitionEvidence,
    Ticket,
)

log = logging.getLogger("sidecar.cache.adaptive")

#: partitions whose evidence is kept in memory (least recently used beyond it are dropped from
#: memory; the SQLite and Redis stores keep theirs)
MAX_PARTITIONS = 10_000
#: bytes of the served-hit map (ids and figures; never question or answer text)
SERVED_MAX_BYTES = 64 * 1024 * 1024
_SERVED_OVERHEAD = 160  # per record: the tuple, floats and dict slot, roughly


class EvidenceStore(Protocol):
    name: str

    async def start(self) -> None: ...

    async def entry(self, partition: str, entry_id: str, created_at: float) -> EntryEvidence | None:
        """The entry's evidence, if any was recorded for this stored version of it."""
        ...

    async def partition(self, partition: str, refresh: bool = False) -> PartitionEvidence:
        """``refresh``: read shared evidence now (else it may be up to a second old)."""
        ...

    async def record(self, ticket: Ticket, obs: Observation) -> EntryEvidence: ...

    async def forget(self, entry_ids: Sequence[str], partition: str | None) -> None: ...

    async def forget_partition(self, partition: str) -> None:
        """A deleted partition's own observations go too."""
        ...

    async def remember_served(self, request_id: str, ticket: Ticket) -> None: ...

    async def take_served(self, request_id: str) -> Ticket | None:
        """The served hit of a request, once: a second report of it finds nothing."""
        ...

    def known_partitions(self) -> list[str]: ...

    async def close(self) -> None: ...


def _ticket_bytes(request_id: str, ticket: Ticket) -> int:
    return len(request_id) + len(ticket.entry_id) + len(ticket.partition) + _SERVED_OVERHEAD


class MemoryEvidence:
    name = "memory"

    def __init__(
        self,
        max_entries: int,
        served_max: int,
        served_window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[str, EntryEvidence]] = OrderedDict()
        self._max_entries = max_entries
        self._partitions: OrderedDict[str, PartitionEvidence] = OrderedDict()
        self._served: OrderedDict[str, tuple[float, Ticket]] = OrderedDict()
        self._served_bytes = 0
        self._served_max = served_max
        self._served_window = served_window
        self._clock = clock

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def known_partitions(self) -> list[str]:
        return list(self._partitions)

    # -- entries
    async def entry(self, partition: str, entry_id: str, created_at: float) -> EntryEvidence | None:
        found = self._entries.get(entry_id)
        if found is None or found[1].created_at != created_at:
            return None  # none, or evidence about an earlier answer stored under this key
        return found[1]

    async def partition(self, partition: str, refresh: bool = False) -> PartitionEvidence:
        return self._partition(partition)

    def _partition(self, partition: str) -> PartitionEvidence:
        evidence = self._partitions.get(partition)
        if evidence is None:
            evidence = self._partitions[partition] = PartitionEvidence()
            while len(self._partitions) > MAX_PARTITIONS:
                self._partitions.popitem(last=False)
        else:
            self._partitions.move_to_end(partition)
        return evidence

    def _add_local(self, ticket: Ticket, obs: Observation) -> EntryEvidence:
        found = self._entries.get(ticket.entry_id)
        evidence = found[1] if found is not None else None
        if evidence is None or evidence.created_at != ticket.created_at:
            evidence = EntryEvidence(ticket.created_at)
        evidence.add(obs)
        self._entries[ticket.entry_id] = (ticket.partition, evidence)
        self._entries.move_to_end(ticket.entry_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        self._partition(ticket.partition).add(obs)
        return evidence

    async def record(self, ticket: Ticket, obs: Observation) -> EntryEvidence:
        return self._add_local(ticket, obs)

    async def forget(self, entry_ids: Sequence[str], partition: str | None) -> None:
        for entry_id in entry_ids:
            self._entries.pop(entry_id, None)

    async def forget_partition(self, partition: str) -> None:
        self._partitions.pop(partition, None)

    # -- served hits
    async def remember_served(self, request_id: str, ticket: Ticket) -> None:
        now = self._clock()
        old = self._served.pop(request_id, None)
        if old is not None:
            self._served_bytes -= _ticket_bytes(request_id, old[1])
        self._served[request_id] = (now + self._served_window, ticket)
        self._served_bytes += _ticket_bytes(request_id, ticket)
        while self._served and (
            len(self._served) > self._served_max
            or self._served_bytes > SERVED_MAX_BYTES
            or next(iter(self._served.values()))[0] <= now
        ):
            rid, (_, gone) = self._served.popitem(last=False)
            self._served_bytes -= _ticket_bytes(rid, gone)

    async def take_served(self, request_id: str) -> Ticket | None:
        found = self._served.pop(request_id, None)
        if found is None:
            return None
        self._served_bytes -= _ticket_bytes(request_id, found[1])
        return None if found[0] <= self._clock() else found[1]


class SqliteEvidence(MemoryEvidence):
    """Memory for reads, SQLite for persistence: the file of the embedded exact store."""

    name = "embedded"

    def __init__(self, data_dir: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._path = Path(data_dir) / "cache.sqlite3"
        self._db: sqlite3.Connection | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-adaptive")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def start(self) -> None:
        entries, observations = await self._run(self._open)
        for entry_id, partition, raw in entries:
            try:
                evidence = EntryEvidence.from_json(orjson.loads(raw))
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                log.warning("adaptive evidence of entry %s unreadable, dropped", entry_id)
                continue
            self._entries[entry_id] = (partition, evidence)
        by_partition: dict[str, list[Observation]] = {}
        for partition, raw in observations:
            try:
                by_partition.setdefault(partition, []).append(
                    Observation.from_json(orjson.loads(raw))
                )
            except (ValueError, TypeError, orjson.JSONDecodeError):
                continue
        for partition, found in by_partition.items():
            self._partition(partition).replace(found[-PARTITION_MAX_OBSERVATIONS:])
        log.info(
            "adaptive evidence loaded: %d entries, %d partitions", len(entries), len(by_partition)
        )

    def _open(self) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, bytes]]]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db = sqlite3.connect(str(self._path), check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS adaptive_entries (id TEXT PRIMARY KEY,"
            " partition TEXT NOT NULL, data BLOB NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS adaptive_observations (seq INTEGER PRIMARY KEY"
            " AUTOINCREMENT, partition TEXT NOT NULL, data BLOB NOT NULL)"
        )
        db.execute(
            "CREATE INDEX IF NOT EXISTS adaptive_observations_partition"
            " ON adaptive_observations (partition, seq)"
        )
        # An entry's evidence goes with its row, whatever deletes it (admin API, eviction,
        # expiry sweep, start-up cleanup).
        db.execute(
            "CREATE TRIGGER IF NOT EXISTS adaptive_entry_gone AFTER DELETE ON entries"
            " BEGIN DELETE FROM adaptive_entries WHERE id = OLD.id; END"
        )
        db.execute("DELETE FROM adaptive_entries WHERE id NOT IN (SELECT id FROM entries)")
        # Each partition keeps its most recent observations only.
        db.execute(
            "DELETE FROM adaptive_observations WHERE seq IN (SELECT seq FROM (SELECT seq,"
            " ROW_NUMBER() OVER (PARTITION BY partition ORDER BY seq DESC) AS r"
            " FROM adaptive_observations) WHERE r > ?)",
            (PARTITION_MAX_OBSERVATIONS,),
        )
        db.commit()
        entries = db.execute("SELECT id, partition, data FROM adaptive_entries").fetchall()
        observations = db.execute(
            "SELECT partition, data FROM adaptive_observations ORDER BY seq"
        ).fetchall()
        return entries, observations

    def _write(self, entry_id: str, partition: str, entry: bytes, obs: bytes) -> None:
        if self._db is None:
            return
        # Only while the entry's row exists: a deleted entry's evidence must not come back.
        self._db.execute(
            "INSERT OR REPLACE INTO adaptive_entries (id, partition, data)"
            " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM entries WHERE id = ?)",
            (entry_id, partition, entry, entry_id),
        )
        self._db.execute(
            "INSERT INTO adaptive_observations (partition, data) VALUES (?, ?)", (partition, obs)
        )
        self._db.commit()

    async def record(self, ticket: Ticket, obs: Observation) -> EntryEvidence:
        evidence = self._add_local(ticket, obs)
        await self._run(
            self._write,
            ticket.entry_id,
            ticket.partition,
            orjson.dumps(evidence.to_json()),
            orjson.dumps(obs.to_json()),
        )
        return evidence

    async def forget_partition(self, partition: str) -> None:
        await super().forget_partition(partition)

        def _delete() -> None:
            if self._db is not None:
                self._db.execute(
                    "DELETE FROM adaptive_observations WHERE partition = ?", (partition,)
                )
                self._db.commit()

        await self._run(_delete)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._io.shutdown(wait=True)


# KEYS: entry observations, entry wrong-at, partition observations.
# ARGV: item, expires_at_ms, entry max, partition max, similarity if wrong ("" if agreed).
_RECORD = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then
  local cur = redis.call('GET', KEYS[2])
  if not cur or tonumber(cur) < tonumber(ARGV[5]) then redis.call('SET', KEYS[2], ARGV[5]) end
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
return 1
"""
# KEYS: entry observations, entry wrong-at.
_READ_ENTRY = """
return {redis.call('LRANGE', KEYS[1], 0, -1), redis.call('GET', KEYS[2])}
"""
#: a replica re-reads a partition's shared observations at most this often
_PARTITION_REFRESH_S = 1.0


class RedisEvidence(MemoryEvidence):
    """Shared through the Redis exact store's connection. Observation items carry the entry
    version (``created_at``) they are about."""

    name = "redis"

    def __init__(self, exact: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exact = exact  # a RedisExactStore
        self._loaded: dict[str, float] = {}  # partition -> monotonic time of the last read

    def _keys(self, partition: str, entry_id: str) -> list[str]:
        tag = self._exact._tag(partition)
        return [f"{tag}:o:{entry_id}", f"{tag}:ow:{entry_id}"]

    def _partition_key(self, partition: str) -> str:
        return f"{self._exact._tag(partition)}:ao"

    async def entry(self, partition: str, entry_id: str, created_at: float) -> EntryEvidence | None:
        items, wrong = await self._exact.script(
            _READ_ENTRY, self._keys(partition, entry_id), [], "adaptive_entry"
        )
        if not items:
            return None
        evidence = EntryEvidence(created_at)
        for raw in items:
            try:
                data = orjson.loads(raw)
                if data[0] == created_at:
                    evidence.observations.append(Observation.from_json(data[1]))
            except (ValueError, TypeError, IndexError, orjson.JSONDecodeError):
                continue
        if not evidence.observations:
            return None
        if wrong is not None:
            evidence.wrong_at = float(wrong)
        return evidence

    async def partition(self, partition: str, refresh: bool = False) -> PartitionEvidence:
        evidence = self._partition(partition)
        now = time.monotonic()
        last = self._loaded.get(partition)
        if refresh or last is None or now - last >= _PARTITION_REFRESH_S:
            self._loaded[partition] = now
            if len(self._loaded) > MAX_PARTITIONS:
                self._loaded.pop(next(iter(self._loaded)))
            key = self._partition_key(partition)
            items = await self._exact.call("adaptive_partition", lambda c: c.lrange(key, 0, -1))
            found: list[Observation] = []
            for raw in items:
                try:
                    found.append(Observation.from_json(orjson.loads(raw)[1]))
                except (ValueError, TypeError, IndexError, orjson.JSONDecodeError):
                    continue
            evidence.replace(found)
        return evidence

    async def record(self, ticket: Ticket, obs: Observation) -> EntryEvidence:
        item = orjson.dumps([ticket.created_at, obs.to_json()])
        await self._exact.script(
            _RECORD,
            [*self._keys(ticket.partition, ticket.entry_id), self._partition_key(ticket.partition)],
            [
                item,
                int(ticket.expires_at * 1000),
                ENTRY_MAX_OBSERVATIONS,
                PARTITION_MAX_OBSERVATIONS,
                "" if obs.agreed else repr(obs.similarity),
            ],
            "adaptive_record",
        )
        self._partition(ticket.partition).add(obs)
        found = await self.entry(ticket.partition, ticket.entry_id, ticket.created_at)
        return found if found is not None else EntryEvidence(ticket.created_at)

    async def forget(self, entry_ids: Sequence[str], partition: str | None) -> None:
        if partition is None:
            return  # expires with the entry
        keys = [k for i in entry_ids for k in self._keys(partition, i)]
        if keys:
            await self._exact.call("adaptive_forget", lambda c: c.delete(*keys))

    async def forget_partition(self, partition: str) -> None:
        await super().forget_partition(partition)
        self._loaded.pop(partition, None)
        key = self._partition_key(partition)
        await self._exact.call("adaptive_forget", lambda c: c.delete(key))

    async def remember_served(self, request_id: str, ticket: Ticket) -> None:
        key = f"{self._exact.prefix}:fb:{request_id}"
        data = orjson.dumps(asdict(ticket))
        px = max(1, int(self._served_window * 1000))
        await self._exact.call("adaptive_served", lambda c: c.set(key, data, px=px))

    async def take_served(self, request_id: str) -> Ticket | None:
        key = f"{self._exact.prefix}:fb:{request_id}"
        raw = await self._exact.call("adaptive_served", lambda c: c.getdel(key))
        if raw is None:
            return None
        try:
            return Ticket(**orjson.loads(raw))
        except (TypeError, orjson.JSONDecodeError):
            return None
