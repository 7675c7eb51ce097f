"""The applier: remote change events into the local Redis, one atomic `rr_apply` per event,
pipelined. The script compares clocks, writes value, expiry and metadata together, and
refuses to overwrite a local write the capture has not versioned yet (`deferred`): the
caller versions those keys (so the local write is shipped, never lost) and applies again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import hiredis

from replication.clock import wall_ms
from replication.errors import DecodeError
from replication.model.conflicts import ConflictRecord
from replication.model.event import ChangeEvent, Version
from replication.model.hlc import HybridClock
from replication.model.metadata import decode_meta
from replication.redis.address import RedisAddress
from replication.redis.connections import LibraryConnections
from replication.redis.errors import is_retriable
from replication.redis.library import (
    ApplyResult,
    apply_many_command,
    ensure_library,
    is_missing_function,
    parse_apply_many_reply,
)

log = logging.getLogger(__name__)

PIPELINE_EVENTS = 256
EVENTS_PER_CALL = 32  # events per rr_apply_many call (see versioner.KEYS_PER_CALL)


@dataclass(frozen=True, slots=True)
class DigestChange:
    """A key's live digest changed (b"" = no live value): what the Merkle index needs."""

    db: int
    key: bytes
    old: bytes
    new: bytes


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event this Redis will never take as it is: dead-lettered, not retried."""

    event: ChangeEvent
    reason: str  # a short fixed code (metrics label)
    message: str


@dataclass(slots=True)
class ApplyReport:
    applied: int = 0
    stale: int = 0
    remote_won: int = 0
    local_won: int = 0
    deferred: list[ChangeEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # Events Redis answered with an error that may pass (OOM, LOADING, BUSY, or one we do
    # not know): the caller retries them, and records a gap if they keep failing.
    failed: list[tuple[ChangeEvent, str]] = field(default_factory=list)
    conflicts: list[ConflictRecord] = field(default_factory=list)
    digest_changes: list[DigestChange] = field(default_factory=list)

    def merge(self, other: ApplyReport) -> None:
        self.applied += other.applied
        self.stale += other.stale
        self.remote_won += other.remote_won
        self.local_won += other.local_won
        self.deferred += other.deferred
        self.rejected += other.rejected
        self.failed += other.failed
        self.conflicts += other.conflicts
        self.digest_changes += other.digest_changes


class Applier:
    """Applies remote events to one region's Redis. `start()`/`stop()`, or `async with`."""

    def __init__(
        self,
        address: RedisAddress,
        region: str,
        clock: HybridClock,
        retired: frozenset[str] = frozenset(),
    ) -> None:
        self.address = address
        self.region = region
        self.clock = clock
        self.retired_csv = ",".join(sorted(retired))
        self._conns = LibraryConnections(address)

    async def start(self) -> None:
        await self._conns.get(self.address.db)

    async def stop(self) -> None:
        await self._conns.close()

    async def __aenter__(self) -> Applier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def apply(self, events: Sequence[ChangeEvent], source: str = "") -> ApplyReport:
        """Apply events (any dbs, any order); returns outcomes, conflicts, digest changes."""
        report = ApplyReport()
        by_db: dict[int, list[ChangeEvent]] = {}
        for event in events:
            by_db.setdefault(event.db, []).append(event)
        top = 0
        for db, db_events in by_db.items():
            for i in range(0, len(db_events), PIPELINE_EVENTS):
                chunk = db_events[i : i + PIPELINE_EVENTS]
                await self._apply_chunk(db, chunk, source, report)
                top = max(top, *(e.hlc for e in chunk))
        if top:
            self.clock.observe(top)  # our next writes sort after what we have seen
        return report

    async def _apply_chunk(
        self, db: int, events: list[ChangeEvent], source: str, report: ApplyReport
    ) -> None:
        conn = await self._conns.get(db)
        groups = [events[i : i + EVENTS_PER_CALL] for i in range(0, len(events), EVENTS_PER_CALL)]
        commands = [apply_many_command(g, self.region, self.retired_csv) for g in groups]
        replies = await conn.pipeline(commands)
        if any(is_missing_function(r) for r in replies):
            await ensure_library(conn)
            replies = await conn.pipeline(commands)
        now = wall_ms()
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                if is_retriable(reply):
                    # Redis refuses every write alike (OOM is checked before a script
                    # runs; LOADING, BUSY): the whole group waits for a retry.
                    report.failed += [(event, str(reply)) for event in group]
                    continue
                # Refused as a whole (the writes delete first, so a WRONGTYPE cannot stop
                # one halfway): apply the group one event per call to tell the refused
                # events apart from the others.
                await self._apply_one_by_one(db, group, source, report, now)
                continue
            for event, result in zip(group, parse_apply_many_reply(reply, len(group)), strict=True):
                self._account(event, result, source, now, report)

    async def _apply_one_by_one(
        self, db: int, events: list[ChangeEvent], source: str, report: ApplyReport, now: int
    ) -> None:
        conn = await self._conns.get(db)
        replies = await conn.pipeline(
            [apply_many_command([e], self.region, self.retired_csv) for e in events]
        )
        for event, reply in zip(events, replies, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                if text.startswith("WRONGTYPE"):
                    # Something not ours holds the metadata hash's name: this write can
                    # never land; every other key still can.
                    report.rejected.append(
                        Rejection(event, "redis-refused", f"redis refused the write: {text}")
                    )
                else:
                    report.failed.append((event, text))
                continue
            (result,) = parse_apply_many_reply(reply, 1)
            self._account(event, result, source, now, report)

    def _account(
        self,
        event: ChangeEvent,
        result: ApplyResult,
        source: str,
        now: int,
        report: ApplyReport,
    ) -> None:
        outcome = result.outcome
        if outcome == "stale":
            report.stale += 1
            return
        if outcome == "deferred":
            report.deferred.append(event)
            return
        if outcome == "bad-digest":
            report.rejected.append(
                Rejection(event, "bad-digest", "digest does not match the value")
            )
            return
        if outcome == "unsupported-local":
            report.rejected.append(
                Rejection(
                    event,
                    "unsupported-local",
                    "the key holds a type that is not replicated here (a stream or a "
                    "module type); the remote write was not applied",
                )
            )
            return
        if outcome in ("conflict-remote-won", "conflict-local-won"):
            if outcome == "conflict-remote-won":
                report.remote_won += 1
            else:
                report.local_won += 1
            self._record_conflict(event, result.old_meta, source, now, report)
            if outcome == "conflict-local-won":
                return
        else:
            report.applied += 1
        new = b"" if event.deleted else event.digest
        if new != result.old_digest:
            report.digest_changes.append(DigestChange(event.db, event.key, result.old_digest, new))

    def _record_conflict(
        self, event: ChangeEvent, old_meta: bytes, source: str, now: int, report: ApplyReport
    ) -> None:
        try:
            meta = decode_meta(old_meta)
        except DecodeError as exc:
            log.warning("conflict without readable local metadata: %s", exc)
            return
        local = Version(meta.clock, meta.origin, meta.digest)
        report.conflicts.append(
            ConflictRecord.of(
                event.db, event.key, local, event.version, source=source or event.origin, at_ms=now
            )
        )
