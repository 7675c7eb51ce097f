"""Shipping the winning state of keys to a peer that lost them (repair and resync).

The state is read with `rr_read` (value and metadata together) and shipped as ordinary
change events on this region's topic, targeted at the peer, whose applier resolves them
with their clocks exactly like live replication. A key whose value no longer matches its
metadata holds a local write not versioned yet: it is versioned instead (and so shipped to
every region). Shipping is rate-limited so repair never starves live replication.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import hiredis

from replication.clock import wall_ms
from replication.errors import DecodeError, UnsupportedTypeError
from replication.model.digest import TOMBSTONE_DIGEST
from replication.model.event import ChangeEvent
from replication.model.metadata import Meta, decode_meta
from replication.model.value import Kind
from replication.pipeline.publisher import Publisher
from replication.redis.library import KeyState, parse_read_reply, parse_value, read_command
from replication.redis.resp import RedisCommandError, RespConnection
from replication.redis.scan import metadata_entries, user_keys

log = logging.getLogger(__name__)

READ_CHUNK = 256


class RateLimiter:
    """A token bucket: `acquire(n)` waits until n tokens are available (rate per second)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    async def acquire(self, n: float) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= min(n, self.capacity):
                self.tokens -= n
                return
            await asyncio.sleep((min(n, self.capacity) - self.tokens) / self.rate)


def event_from_state(db: int, state: KeyState, meta: Meta) -> ChangeEvent:
    """The change event for a key's current state at the version its metadata names."""
    kind = Kind.from_redis(state.kind_name)
    return ChangeEvent(
        db,
        state.key,
        kind,
        parse_value(kind, state.value),
        state.expire_at_ms,
        meta.clock,
        meta.origin,
        meta.digest,
    )


def expiry_event(db: int, key: bytes, meta: Meta) -> ChangeEvent:
    """An expired version, shipped as a delete at its clock (its value is gone)."""
    return ChangeEvent(db, key, Kind.NONE, None, 0, meta.clock, meta.origin, TOMBSTONE_DIGEST)


class RepairShipper:
    def __init__(
        self,
        conn: Callable[[int], Awaitable[RespConnection]],
        publisher: Publisher,
        *,
        keys_per_s: float,
    ) -> None:
        self._conn = conn
        self.publisher = publisher
        self.limiter = RateLimiter(keys_per_s)
        self.shipped = 0

    async def ship(self, db: int, keys: Sequence[bytes], target: str) -> int:
        """Ship the current state of `keys` to `target`; returns events shipped."""
        shipped = 0
        for i in range(0, len(keys), READ_CHUNK):
            shipped += await self._ship_chunk(db, list(keys[i : i + READ_CHUNK]), target)
        return shipped

    async def _ship_chunk(self, db: int, keys: list[bytes], target: str) -> int:
        conn = await self._conn(db)
        (reply,) = await conn.pipeline([read_command(keys)])
        if isinstance(reply, hiredis.ReplyError):
            raise RedisCommandError(f"reading keys for repair failed: {reply}", reply)
        now = wall_ms()
        events: list[ChangeEvent] = []
        unversioned: list[bytes] = []
        for state in parse_read_reply(keys, reply):
            try:
                meta = decode_meta(state.meta_raw) if state.meta_raw else None
            except DecodeError:
                meta = None
            if state.kind_name == "none" and meta is None:
                continue  # nothing there
            if state.kind_name == "none" and meta is not None and meta.is_expired(now):
                if not meta.deleted:
                    # This version expired, but a peer may still hold an older live one (a
                    # Redis restored from a backup taken before this version reached it):
                    # its clock must win there too, as the delete it now amounts to.
                    events.append(expiry_event(db, state.key, meta))
                continue
            if meta is None or state.digest != meta.digest:
                unversioned.append(state.key)
                continue
            try:
                events.append(event_from_state(db, state, meta))
            except UnsupportedTypeError:
                continue
        if unversioned:
            local = await self.publisher.publish({db: unversioned})
            await local.wait()
        if events:
            await self.limiter.acquire(len(events))
            shipment = await self.publisher.producer.ship(events, target=target)
            await shipment.wait()
        self.shipped += len(events) + len(unversioned)
        return len(events) + len(unversioned)

    async def ship_everything(self, db: int, target: str) -> int:
        """Full resync: every key and every tombstone of `db`, streamed to `target`."""
        shipped = 0
        async for keys in self._all_keys(db):
            shipped += await self.ship(db, keys, target)
        return shipped

    async def _all_keys(self, db: int) -> AsyncIterator[list[bytes]]:
        conn = await self._conn(db)
        async for keys in user_keys(conn):
            yield keys
        # Tombstones: deletes the rebuilt region must learn too (absent keys, metadata left).
        async for entries in metadata_entries(conn):
            gone = [key for key, raw in entries if _is_tombstone(raw)]
            if gone:
                yield gone


def _is_tombstone(raw: bytes) -> bool:
    try:
        return decode_meta(raw).deleted
    except DecodeError:
        return False
