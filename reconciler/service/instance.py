"""Which Redis instance the daemon is talking to, and the proof of what it verified there.

Every start of a redis-server gets a new random ``run_id``. :class:`InstanceGuard` polls it
(``INFO server``, every ``status.instance_check_s``) on a connection of its own, so the
daemon learns that its Redis restarted or was replaced within that interval of the Redis
answering again, whatever the capture's reconnect backoff is doing, and marks a gap at once.

It also writes the two keys that make ``consistent`` trustworthy (see
:mod:`reconciler.status`): the repair marker (``rr_mark_verified``, after a completed
repair, bound to the instance the repair ran on) and the status record (``rr_status``,
which refuses ``consistent`` without that marker on this very instance). The guard keeps the
marker it wrote in memory; a gap forgets it and deletes the key.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import hiredis

from reconciler.status import RegionStatus, parse_run_id
from replication.capture.position import CapturePosition, master_offset_in, master_position_in
from replication.errors import ReconcilerError
from replication.model.keys import SHIPPED_KEY, STATUS_KEY, VERIFIED_KEY
from replication.redis.address import RedisAddress
from replication.redis.connections import LibraryConnections
from replication.redis.resp import Command, RedisCommandError, RedisUnavailableError

__all__ = ["InstanceChange", "InstanceGuard", "StatusRefusedError"]

log = logging.getLogger(__name__)


class StatusRefusedError(ReconcilerError):
    """The Redis refused a `consistent` status: no repair on this instance vouches for it."""


@dataclass(frozen=True)
class InstanceChange:
    """The Redis answering now is not the one seen before."""

    old_run_id: str
    new_run_id: str


class InstanceGuard:
    """The daemon's view of its Redis instance, and its writes of marker and status."""

    def __init__(self, address: RedisAddress, *, timeout_s: float = 1.0) -> None:
        self._conns = LibraryConnections(address)
        self._db = address.db
        self.timeout_s = timeout_s
        self.run_id: str | None = None
        """The instance last seen (None before the first answer)."""
        self.marker: str | None = None
        """The marker this daemon wrote or adopted for the current instance."""

    async def _pipeline(self, *commands: Command) -> list[Any]:
        """Replies (errors as values) within the guard's timeout; a Redis that does not
        answer in time is unavailable (retriable), like one that refused the connection."""
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self._conns.get(self._db)
                try:
                    return await conn.pipeline(list(commands))
                except RedisUnavailableError:
                    # A connection from before a restart finds it closed at its first use:
                    # one fresh connection answers now instead of at the next check.
                    # (Every command the guard sends may be sent twice.)
                    conn = await self._conns.get(self._db)
                    return await conn.pipeline(list(commands))
        except TimeoutError as exc:
            raise RedisUnavailableError(
                f"redis did not answer within {self.timeout_s:g}s (status.instance_timeout_s)"
            ) from exc

    async def _execute(self, *command: bytes | str | int | float) -> Any:
        (reply,) = await self._pipeline(command)
        if isinstance(reply, hiredis.ReplyError):
            raise RedisCommandError(f"{command[0]!r} failed: {reply}", reply)
        return reply

    async def observe(self) -> InstanceChange | None:
        """Read the instance's run_id; a change from the last one seen is returned.

        Raises RedisUnavailableError (or TimeoutError) when the Redis does not answer.
        """
        info = await self._execute("INFO", "server")
        run_id = parse_run_id(info)
        if run_id is None:
            raise ReconcilerError("INFO server answered without a run_id")
        previous, self.run_id = self.run_id, run_id
        if previous is not None and previous != run_id:
            self.marker = None
            return InstanceChange(previous, run_id)
        return None

    async def master_offset(self) -> int | None:
        """The Redis's replication offset (`master_repl_offset`), or None without one."""
        return master_offset_in(await self._replication_info())

    async def master_position(self) -> CapturePosition | None:
        """Where the Redis's replication history is now (replid and offset), or None."""
        return master_position_in(await self._replication_info())

    async def _replication_info(self) -> bytes:
        info = await self._execute("INFO", "replication")
        return info if isinstance(info, bytes) else str(info).encode()

    async def adopt_marker(self) -> bool:
        """At start: keep the marker a previous run wrote if it names this instance."""
        await self.observe()
        raw = await self._execute("GET", VERIFIED_KEY)
        held = raw.decode("ascii", "replace") if isinstance(raw, bytes) else ""
        if self.run_id and held.startswith(self.run_id + ":"):
            self.marker = held
            return True
        return False

    async def mark_verified(self, run_id: str) -> bool:
        """Record that a repair completed on instance `run_id`. False (no marker) if the
        Redis is another instance by now: that is a gap the caller reports."""
        nonce = secrets.token_hex(8)
        try:
            reply = await self._execute("FCALL", "rr_mark_verified", 1, VERIFIED_KEY, run_id, nonce)
        except RedisCommandError as exc:
            if "RRINSTANCE" in str(exc):
                log.warning("repair marker refused: %s", exc)
                return False
            raise
        self.marker = reply.decode("ascii")
        return True

    async def forget(self) -> None:
        """A gap: the marker no longer vouches for anything (best effort on the key)."""
        self.marker = None
        await self._execute("DEL", VERIFIED_KEY)

    async def shipped_mark(self) -> int:
        """The dataset's own "shipped through" moment (``SHIPPED_KEY``), 0 if it has none
        (never verified, restarted empty) or holds something unreadable."""
        raw = await self._execute("GET", SHIPPED_KEY)
        try:
            return max(0, int(raw)) if isinstance(raw, bytes) else 0
        except ValueError:
            return 0

    async def write_status(
        self, status: RegionStatus, ttl_ms: int, *, shipped_through_ms: int = 0
    ) -> str:
        """Write the status record through ``rr_status``; returns the instance's run_id.

        A ``consistent`` status also stamps the dataset with `shipped_through_ms` (if not
        0). Raises :class:`StatusRefusedError` when the status is ``consistent`` and the
        Redis holds no marker of ours for its current instance."""
        command: Command = (
            "FCALL",
            "rr_status",
            3,
            STATUS_KEY,
            VERIFIED_KEY,
            SHIPPED_KEY,
            status.state,
            status.region,
            status.since_ms,
            status.last_repair_ms,
            status.updated_ms,
            ttl_ms,
            self.marker or "",
            shipped_through_ms or "",
        )
        (reply,) = await self._pipeline(command)
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith("RRUNVERIFIED"):
                raise StatusRefusedError(str(reply))
            raise RedisCommandError(f"status write failed: {reply}", reply)
        return bytes(reply).decode("ascii")

    async def close(self) -> None:
        """Close the guard's connection; safe to call twice."""
        await self._conns.close()
