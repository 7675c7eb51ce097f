"""Keeping the region's published status true: gaps, recovery passes, the repair marker,
the status record, and what the status waits for (a verified instance, a caught-up
applier).

`RegionState` (pure) decides the status; this is its asyncio shell. A gap (a capture
gap, a restarted or replaced Redis, a status write refused) starts an epoch: the index is
rebuilt, every key versioned again, sessions queued with every peer. When the state
machine says the gap's repair is complete, the marker is written into the Redis
(`InstanceGuard.mark_verified`); only then may the status record say `consistent`, and the
library refuses it otherwise (see `reconciler.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiokafka.errors import KafkaError

from reconciler.consistency.catchup import CatchUp
from reconciler.consistency.merkle import MerkleIndex, rebuild
from reconciler.events import REGION_GAP, REGION_STATUS, log_event
from reconciler.service.config import DaemonConfig
from reconciler.service.instance import InstanceGuard, StatusRefusedError
from reconciler.service.notify import ServiceNotifier
from reconciler.service.regionstate import RegionState
from reconciler.service.sessions import SessionRunner
from reconciler.service.shippedfloor import ShippedFloor
from reconciler.service.state import DaemonState, now_ms
from reconciler.status import RegionStatus
from replication.backoff import retrying
from replication.capture.batch import GAP_FLUSH, GAP_SWAPDB, Gap
from replication.errors import ReconcilerError
from replication.pipeline.publisher import Publisher
from replication.redis.resp import RespConnection
from replication.transport.consumer import ChangeConsumer

__all__ = ["CaptureBehindError", "Recovery"]

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None] | None"]


class CaptureBehindError(ReconcilerError):
    """The recovery sweep could not wait for the capture to reach the Redis's stream (the
    Redis stopped answering, or restarted again): the pass is retried."""

    retriable = True


class Recovery:
    """Gaps in, a truthful status record out."""

    def __init__(
        self,
        config: DaemonConfig,
        state: DaemonState,
        region_state: RegionState,
        guard: InstanceGuard,
        sessions: SessionRunner,
        *,
        consumer: ChangeConsumer,
        index: MerkleIndex,
        publisher: Publisher,
        shipped_floor: ShippedFloor,
        conn: Callable[[int], Awaitable[RespConnection]],
        refresh_slots: Callable[[int, list[int]], Awaitable[int]],
        notifier: ServiceNotifier,
        spawn: Spawn,
        stopping: asyncio.Event,
        capture_settled: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.region_state = region_state
        self.guard = guard
        self.sessions = sessions
        self.consumer = consumer
        self.index = index
        self.publisher = publisher
        self.shipped_floor = shipped_floor
        self._conn = conn
        self._refresh_slots = refresh_slots
        self.notifier = notifier
        self._spawn = spawn
        self._stopping = stopping
        self._capture_settled = capture_settled
        self.catch_up = CatchUp()
        # Until the first sample: a daemon that starts has not shown it is caught up.
        region_state.caught_up = False
        region_state.applied_through_ms = None
        self._recovery: asyncio.Task[None] | None = None
        self._verifying = False

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read which instance the Redis is and whether an earlier run verified it; write
        the first status record."""
        marker_valid = await retrying(self.guard.adopt_marker, what="reading the repair marker")
        self.region_state.start(
            marker_valid=marker_valid, sessions_on_start=self.config.antientropy.on_start
        )
        self.state.status = self.region_state.status
        log.info(
            "redis instance %s: %s",
            self.guard.run_id,
            "verified by an earlier run" if marker_valid else "not verified: repair first",
        )
        await self.write_status()

    # -- gaps ------------------------------------------------------------------------------

    async def on_capture_gap(self, gap: Gap) -> None:
        """The capture (or the applier) could not follow: a gap of the given reason."""
        log_event(log, REGION_GAP, logging.WARNING, reason=gap.reason, detail=gap.detail)
        self.gap(
            gap.reason,
            f"capture gap: {gap.reason}",
            data_changed=gap.reason in (GAP_FLUSH, GAP_SWAPDB),
        )

    def gap(self, kind: str, reason: str, *, data_changed: bool = True) -> None:
        """Something was missed or lost: no longer vouch for the data, recover, repair.

        `data_changed`: this Redis may have lost or replaced data (a restart, a flush, a
        swap) rather than only missed shipping some of its own writes (a stream the capture
        could not follow): then the repair marker goes too, and clients leave the region."""
        self.state.gaps[kind] = self.state.gaps.get(kind, 0) + 1
        epoch = self.region_state.gap()
        self.sessions.recovered.clear()
        log.warning("gap: epoch=%d reason=%r: status recovering until repaired", epoch, reason)
        if data_changed:
            self._spawn(self._forget_marker())
        self.publish()
        if self._recovery is None or self._recovery.done():
            self._recovery = self._spawn(self._recover(reason))

    async def _forget_marker(self) -> None:
        try:
            await self.guard.forget()
        except (OSError, TimeoutError, ReconcilerError) as exc:
            # The key names the old instance, or is gone with it: it vouches for nothing.
            log.debug("repair marker not deleted: %s", exc)

    async def _recover(self, reason: str) -> None:
        """After a gap: rebuild the index, version every key again, then repair with peers.

        Passes repeat while gaps keep coming (a pass begun before a gap does not cover it).
        The Redis that caused the gap may still be coming back: each pass is retried (with
        backoff) while it is unreachable, never abandoned."""
        rs = self.region_state
        while rs.recovering:
            epoch = rs.epoch
            swept = await retrying(self._rebuild_and_sweep, what="recovery after a gap")
            log.info(
                "recovery sweep: epoch=%d reason=%r local_changes_found=%d", epoch, reason, swept
            )
            for request in rs.recovery_done(epoch):
                self.sessions.queue(request)
        self.sessions.recovered.set()
        self.publish()

    async def found_late_floor_ms(self) -> int | None:
        """The floor that dates what this Redis holds unversioned after a gap (None: the
        versioner's own), for the sweep and for the applier when it meets such a write
        first.

        Read before anything can stamp the dataset again (only a `consistent` status
        does, after the recovery): a dataset brought back from a copy (an old backup, the
        RDB of a crashed Redis) holds writes shipped in its first life, some still
        unversioned in the copy. Dated by the latest moment shipped, they would beat
        every later write of this region (found by the fault suite: a key ended with a
        value from the backup); dated just after the copy's own moment, they lose to
        those and still beat what they followed. A dataset without one (restarted
        empty, never verified) is dated by the latest moment shipped."""
        mark = await self.guard.shipped_mark()
        floor = self.shipped_floor.value
        dated_ms = (min(mark, floor) if floor else mark) + 1 if mark else None
        if dated_ms is not None and dated_ms <= floor:
            log.info(
                "the dataset was shipped through %d ms, %d ms before the latest moment "
                "shipped; what it holds unversioned is dated by its own",
                mark,
                floor - mark,
            )
        return dated_ms

    async def _rebuild_and_sweep(self) -> int:
        dated_ms = await self.found_late_floor_ms()
        await self.rebuild_index()
        swept = 0
        for db in self.config.redis.dbs:
            swept += await self.publisher.sweep(
                db, late_floor_ms=dated_ms, settle=self._capture_settled
            )
        return swept

    async def rebuild_index(self) -> None:
        """Rebuild every database's Merkle tree from the metadata in Redis."""
        for db in self.config.redis.dbs:
            conn = await self._conn(db)
            started = time.monotonic()

            def progress(done: int, keys: int, db: int = db) -> None:
                self.state.rebuild_progress = done / 16384
                if done % 4096 == 0:
                    log.info("merkle rebuild: db=%d slots=%d/16384 keys=%d", db, done, keys)

            # Changes during the scan go to the old tree; the new one may have read their
            # slot before them. Those slots are read again once it is in place.
            with self.index.rebuilding(db) as touched:
                tree = await rebuild(conn, progress=progress)
                self.index.trees[db] = tree
            if touched:
                drifted = await self._refresh_slots(db, sorted(touched))
                log.info(
                    "merkle rebuild: db=%d slots changed meanwhile=%d re-read, corrected=%d",
                    db,
                    len(touched),
                    drifted,
                )
            log.info(
                "merkle rebuild done: db=%d keys=%d seconds=%.2f",
                db,
                tree.keys,
                time.monotonic() - started,
            )

    # -- the status ------------------------------------------------------------------------

    def publish(self) -> None:
        """Bring the published status in line with `region_state` (and write the repair
        marker when a gap's repair has just completed)."""
        rs = self.region_state
        if rs.wants_verification() and not self._verifying:
            self._verifying = True
            self._spawn(self._verify(rs.epoch))
        status = rs.status
        if status != self.state.status:
            log_event(log, REGION_STATUS, from_=self.state.status, to=status)
            self.state.status = status
            self.state.since_ms = now_ms()
            self.notifier.status_changed()
            self._spawn(self.write_status())

    async def _verify(self, epoch: int) -> None:
        """A gap's repair completed: write the marker that lets the status say consistent."""
        try:
            run_id = self.guard.run_id
            if run_id is None:
                await self.guard.observe()
                run_id = self.guard.run_id
            if run_id is not None and await self.guard.mark_verified(run_id):
                if self.region_state.verified_as(epoch):
                    log.info("repair verified on redis instance %s (epoch %d)", run_id, epoch)
            else:
                self.gap("instance", "redis instance changed while it was repaired")
        except (OSError, TimeoutError, ReconcilerError) as exc:
            log.warning("repair marker not written (%s); retrying at the next status tick", exc)
        finally:
            self._verifying = False
        self.publish()

    async def write_status(self) -> None:
        """Write the status record (refused `consistent` is itself a gap)."""
        s = self.state
        s.last_repair_ms = max(s.last_repair_ms, self.sessions.last_repair_ms)
        status = RegionStatus(
            state=s.status,
            region=self.config.region,
            since_ms=s.since_ms,
            last_repair_ms=s.last_repair_ms,
            updated_ms=now_ms(),
        )
        try:
            await self.guard.write_status(
                status,
                int(self.config.status.ttl_s * 1000),
                shipped_through_ms=self.shipped_floor.value,
            )
            s.status_written_ms = now_ms()
        except StatusRefusedError as exc:
            # The Redis holds no proof of a repair on its current instance: it restarted,
            # was flushed or replaced before we noticed. That is a gap.
            self.gap("instance", f"status refused by redis: {exc}")
        except (OSError, TimeoutError, ReconcilerError) as exc:
            log.debug("status record not written: %s", exc)

    # -- what the status waits for ---------------------------------------------------------

    async def watch_instance(self) -> None:
        """Notice a restarted or replaced Redis within `instance_check_s` of it answering,
        whatever the capture's reconnect backoff is doing."""
        interval_s = self.config.status.instance_check_s
        while not self._stopping.is_set():
            await self.check_instance()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)

    async def check_instance(self) -> None:
        """Read which instance the Redis is now; a restarted or replaced one is a gap.
        Also called before the applier dates a local write it found unversioned: that
        write may be from before a restart nobody has noticed yet."""
        try:
            change = await self.guard.observe()
        except (OSError, TimeoutError, ReconcilerError) as exc:
            log.debug("redis instance not observed: %s", exc)
            return
        if change is not None:
            self.gap(
                "instance",
                f"redis instance replaced: run_id {change.old_run_id[:12]} -> "
                f"{change.new_run_id[:12]}",
            )
            # Tell clients now, not at the next refresh.
            await self.write_status()

    async def track_catch_up(self) -> None:
        """Sample how far behind the peers' changes the applier is; `consistent` waits for
        it to be within `status.consistent_max_lag_s`."""
        status = self.config.status
        max_lag_ms = int(status.consistent_max_lag_s * 1000)
        while not self._stopping.is_set():
            at_ms = now_ms()
            try:
                end = await self.consumer.end_offsets_all()
                applied = await self.consumer.applied_offsets()
            except (KafkaError, OSError) as exc:
                log.debug("catch-up not sampled: %s", exc)
            else:
                self.catch_up.sample(at_ms, end, applied)
            lag_ms = self.catch_up.lag_ms(now_ms())
            caught_up = lag_ms is not None and lag_ms <= max_lag_ms
            rs = self.region_state
            through = self.catch_up.through_ms
            if caught_up != rs.caught_up or through != rs.applied_through_ms:
                rs.caught_up = caught_up
                rs.applied_through_ms = through
                self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), status.catch_up_sample_s)
