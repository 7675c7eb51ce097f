"""The versioner: touched keys in, change events out.

For every touched key the library's `rr_version` reads the key's state and metadata
atomically inside Redis (`rr_version_many`: many keys per script call, several calls per
round trip). A key whose digest matches its metadata is an
echo of an apply (or a no-op write) and is skipped; otherwise this region's clock entry is
bumped and the new metadata stored in the same script, and the state becomes an event.

Two more entry points:
- `replay=True` (batches the stream replays after a restart): a key whose metadata is this
  region's own unshipped-or-not version is re-shipped without a bump. The capture position
  is persisted only after Kafka acknowledged, so everything between it and a crash is
  replayed: no lost write (it is re-shipped) and no double-counted one (no second bump).
- `sweep()`: after a gap, every key and every metadata entry of a db is versioned, which
  finds the local writes and deletes the stream did not show us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis

from replication.model.event import ChangeEvent
from replication.model.hlc import HybridClock, pack
from replication.model.keys import is_internal
from replication.redis.address import RedisAddress
from replication.redis.connections import LibraryConnections
from replication.redis.library import (
    VersionStatus,
    ensure_library,
    is_missing_function,
    parse_probe_many_reply,
    parse_version_many_reply,
    probe_many_command,
    version_many_command,
)
from replication.redis.resp import RedisCommandError
from replication.redis.scan import metadata_entries, user_keys

log = logging.getLogger(__name__)

PIPELINE_KEYS = 512  # keys per round trip: big enough to amortise, small enough to stay fair
# Keys per script call: the call's own cost (about 1.3 µs) is shared by all of them, and one
# call still blocks the server for well under a millisecond.
KEYS_PER_CALL = 64


@dataclass(frozen=True, slots=True)
class VersionedChange:
    """A change to ship, and the key's live digest before it (b"" if none or deleted),
    which the Merkle index needs to update its leaf in O(1)."""

    event: ChangeEvent
    previous_digest: bytes


@dataclass(slots=True)
class VersionReport:
    changes: list[VersionedChange] = field(default_factory=list)
    reshipped: int = 0
    echoes: int = 0  # keys touched whose state matched their metadata
    unsupported: list[tuple[int, bytes, str]] = field(default_factory=list)
    # Keys whose clock is at the top of its range (MAX_CLOCK_ENTRY): not versioned, not
    # shipped; their metadata needs an operator (README, security).
    refused: list[tuple[int, bytes]] = field(default_factory=list)


LATE_TICK = 1
"""The tick of a value found late: the library makes the key's entry the larger of the tick
and one above every entry of its clock, so this is "just after what the key had"."""


class Versioner:
    """Versions local writes in one region's Redis. `start()`/`stop()`, or `async with`."""

    def __init__(self, address: RedisAddress, region: str, clock: HybridClock) -> None:
        self.address = address
        self.region = region
        self.clock = clock
        self._conns = LibraryConnections(address)
        self.unsupported_total = 0
        self.clock_refused_total = 0
        self.late_floor_ms = 0
        """The date of writes found late (see `version`): just after the last moment this
        region announced as shipped through; 0 (none known) dates them now."""

    async def start(self) -> None:
        await self._conns.get(self.address.db)

    async def stop(self) -> None:
        await self._conns.close()

    async def __aenter__(self) -> Versioner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def version(
        self,
        keys: Mapping[int, Iterable[bytes]],
        *,
        replay: bool = False,
        late: bool = False,
        late_floor_ms: int | None = None,
        read_ms: int | None = None,
        expect: Mapping[int, Mapping[bytes, bytes]] | None = None,
    ) -> VersionReport:
        """Version the touched keys of every db; returns what to ship.

        `replay` (the stream replayed after a restart) and `late` (the sweep after a gap)
        find writes made while nothing was capturing. Dated now, such a write would beat
        every write the other regions acknowledged meanwhile, later ones included (found
        by the fault suite: an application read its own later write, then its earlier
        one). A replayed write was made after the last moment this region announced
        everything shipped: it is dated `late_floor_ms`, just after it. The sweep after a
        gap may also find an old write brought back by a Redis restored from a backup,
        shipped long ago in its first life (a restored backup's old value came back): on a
        key whose clock is known it gets the smallest tick after that clock (LATE_TICK),
        winning over what it causally follows and losing every conflict with a concurrent
        write elsewhere (an unshipped write is inside the window of an asynchronous
        failure); a key without metadata (a Redis restarted empty, written before capture
        resumed) and a delete are dated by the floor, the first to beat this region's own
        earlier versions its lost metadata no longer shows, the second because the
        tombstone GC dates a delete by its clock. `late_floor_ms` replaces the floor for
        this call (a dataset restored from a copy is dated by the copy's own moment).

        `read_ms` (live writes: when the capture read them) dates the writes by that
        moment rather than by the clock now: a write read while the daemon was still
        starting, or queued behind a slow versioning, would otherwise be dated seconds
        after it was made and beat writes made elsewhere meanwhile (found by the fault
        suite: writes taken between the capture's attach at a restart and the end of the
        startup). Above what the clock had observed then (`HybridClock.at`), and never
        before the floor: this region announced every write before it shipped.

        `expect` (per db, per key: the state token it was probed with) leaves alone a key
        whose state changed since (see `version_found_late`)."""
        report = VersionReport()
        floor_ms = self.late_floor_ms if late_floor_ms is None else late_floor_ms
        if replay:
            # The same instance's stream, replayed after a restart: every write in it was
            # made after the last position shipped, so after the floor.
            tick = delete_tick = pack(floor_ms) if floor_ms else self.clock.now()
        elif late:
            tick = LATE_TICK
            delete_tick = pack(floor_ms) if floor_ms else self.clock.now()
        elif read_ms is not None:
            tick = delete_tick = max(self.clock.at(read_ms), pack(self.late_floor_ms))
        else:
            tick = delete_tick = self.clock.now()
        for db, db_keys in keys.items():
            batch = [k for k in db_keys if not is_internal(k)]
            chunks = [batch[i : i + PIPELINE_KEYS] for i in range(0, len(batch), PIPELINE_KEYS)]
            tokens = None if expect is None else expect.get(db, {})
            previous: tuple[list[Sequence[bytes]], list[Any]] | None = None
            for chunk in chunks:
                # Redis runs this chunk while we turn the previous one's replies into
                # events, instead of each side waiting for the other.
                fetch = asyncio.ensure_future(
                    self._fetch(db, chunk, tick, replay, delete_tick, tokens=tokens)
                )
                try:
                    if previous is not None:
                        await asyncio.sleep(0)  # the fetch sends its commands first
                        self._collect(db, *previous, report)
                    previous = await fetch
                except BaseException:
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
                    raise
            if previous is not None:
                self._collect(db, *previous, report)
        return report

    async def _fetch(
        self,
        db: int,
        keys: Sequence[bytes],
        tick: int,
        replay: bool,
        delete_tick: int,
        *,
        tokens: Mapping[bytes, bytes] | None = None,
    ) -> tuple[list[Sequence[bytes]], list[Any]]:
        """One round trip: rr_version_many for `keys`; (key groups, their replies)."""
        groups = [keys[i : i + KEYS_PER_CALL] for i in range(0, len(keys), KEYS_PER_CALL)]
        commands = [
            version_many_command(
                g,
                self.region,
                tick,
                replay=replay,
                delete_tick=None if delete_tick == tick else delete_tick,
                expect=None if tokens is None else [tokens.get(k, b"") for k in g],
            )
            for g in groups
        ]
        return groups, await self._call(db, commands, "versioning")

    async def _call(self, db: int, commands: list[Any], what: str) -> list[Any]:
        """One pipeline of library calls in db `db`, the library loaded again if the Redis
        lost it; a reply error is raised."""
        conn = await self._conns.get(db)
        replies = await conn.pipeline(commands)
        if any(is_missing_function(r) for r in replies):
            # The Redis restarted empty (or was flushed of functions): load and redo.
            await ensure_library(conn)
            replies = await conn.pipeline(commands)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise RedisCommandError(f"{what} keys in db {db} failed: {reply}", reply)
        return replies

    async def probe(self, db: int, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The keys of `keys` (in db `db`) that versioning would change, each with the
        token of its state now (read only)."""
        keys = [k for k in keys if not is_internal(k)]
        groups = [keys[i : i + KEYS_PER_CALL] for i in range(0, len(keys), KEYS_PER_CALL)]
        replies = await self._call(db, [probe_many_command(g) for g in groups], "probing")
        found: dict[bytes, bytes] = {}
        for group, reply in zip(groups, replies, strict=True):
            found.update(parse_probe_many_reply(reply, group))
        return found

    async def version_found_late(
        self,
        keys: Mapping[int, Sequence[bytes]],
        *,
        late_floor_ms: int | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> VersionReport:
        """Version, as found late (`version(late=True)`), what `keys` hold that the capture
        will never show: what a Redis came back with after a gap, or took before the
        capture resynced.

        The keys are probed first; then `settle` waits until the capture has versioned
        everything the Redis had written by then; then only a key whose state is still the
        one probed, and still unversioned, is versioned here. Anything else was written
        while the region was live again: the capture versions it, dated when it read it.
        (Versioned here instead, a write made just after a restart was dated by the floor
        and lost to an older write: the fault suite's seeds 29 and 37.)"""
        expect: dict[int, dict[bytes, bytes]] = {}
        for db, db_keys in keys.items():
            found = await self.probe(db, db_keys)
            if found:
                expect[db] = found
        if not expect:
            return VersionReport()
        if settle is not None:
            await settle()
        return await self.version(
            {db: list(found) for db, found in expect.items()},
            late=True,
            late_floor_ms=late_floor_ms,
            expect=expect,
        )

    def _collect(
        self,
        db: int,
        groups: list[Sequence[bytes]],
        replies: list[Any],
        report: VersionReport,
    ) -> None:
        for group, reply in zip(groups, replies, strict=True):
            for key, result in zip(group, parse_version_many_reply(reply, db, group), strict=True):
                if result.status is VersionStatus.NOTHING:
                    report.echoes += 1
                elif result.status is VersionStatus.CLOCK_REFUSED:
                    self.clock_refused_total += 1
                    report.refused.append((db, key))
                    log.error(
                        "a key in db %d cannot be versioned: %s, past the clock limit "
                        "MAX_CLOCK_ENTRY; its write is not shipped. Its metadata carries a "
                        "forged or corrupt clock: see README, security (key logged at debug)",
                        db,
                        result.refused,
                    )
                    log.debug("clock refused: db=%d key=%r", db, key)
                elif result.status is VersionStatus.UNSUPPORTED:
                    self.unsupported_total += 1
                    report.unsupported.append((db, key, result.unsupported_type))
                    log.debug("not replicated: key=%r type=%s", key, result.unsupported_type)
                else:
                    assert result.event is not None  # NEW and RESHIP always carry one
                    report.changes.append(VersionedChange(result.event, result.old_digest))
                    if result.status is VersionStatus.RESHIP:
                        report.reshipped += 1

    async def sweep(
        self,
        db: int,
        *,
        late_floor_ms: int | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[VersionReport]:
        """Version every user key and every metadata entry of `db`, in chunks.

        Finds what a gap hid: keys written (present, digest != metadata) and keys deleted
        (absent, metadata still live). Yields a report per chunk, so the caller can ship
        as it goes and memory stays bounded. `late_floor_ms` (None: the versioner's own)
        dates keys without metadata and deletes (see `version`); `settle`: see
        `version_found_late`.
        """
        conn = await self._conns.get(db)
        async for keys in user_keys(conn):
            yield await self.version_found_late(
                {db: keys}, late_floor_ms=late_floor_ms, settle=settle
            )
        async for entries in metadata_entries(conn):
            # Only entries whose key is gone can be news here (present keys were just
            # versioned by the key scan); EXISTS in one pipeline filters them.
            fields = [key for key, _ in entries]
            exists = await conn.pipeline([("EXISTS", f) for f in fields])
            gone = [f for f, e in zip(fields, exists, strict=True) if e == 0]
            if gone:
                yield await self.version_found_late(
                    {db: gone}, late_floor_ms=late_floor_ms, settle=settle
                )
