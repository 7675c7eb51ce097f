"""The daemon: one per region, supervising every part in one `asyncio.TaskGroup`.

    capture (PSYNC or notifications) -> versioner -> producer        (outbound)
    consumer -> applier (-> versioner for deferred keys) -> commit   (inbound)
    control channel: heartbeats, anti-entropy sessions (initiator and responder)
    Merkle index per database, updated by both directions
    status record, tombstone GC, clock high-water mark, admin HTTP (health, metrics, repair)

When one part fails for good the group cancels the rest and the daemon exits non-zero
(systemd restarts it). SIGTERM (or SIGINT) stops gracefully: capture stops reading, what is
in flight reaches Kafka and is acknowledged on the stream, the applier finishes what it
holds and commits its offsets; a second signal forces the exit.

Gaps (a first start, a full resync, a flush, a restarted Redis) are never silent: the
status goes to `recovering`, the index is rebuilt, every key is versioned again (finding
local writes and deletes the stream did not show), and anti-entropy runs with every peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka.errors import KafkaError

from reconciler.consistency.antientropy import AntiEntropy
from reconciler.consistency.catchup import CatchUp
from reconciler.consistency.control import ControlChannel
from reconciler.consistency.merkle import MerkleIndex, rebuild
from reconciler.consistency.peers import BYE, Peers, send_heartbeats
from reconciler.consistency.repair import RepairShipper
from reconciler.consistency.reports import ConflictJournal, RepairReport, ReportStore
from reconciler.consistency.settle import CaptureWatermark, Settler
from reconciler.consistency.tombstones import collect
from reconciler.events import (
    REGION_FAILED,
    REGION_GAP,
    REGION_READY,
    REGION_STARTING,
    REGION_STATUS,
    REGION_STOPPED,
    REGION_STOPPING,
    log_event,
)
from reconciler.service.admin import AdminServer
from reconciler.service.config import DaemonConfig
from reconciler.service.instance import InstanceGuard, StatusRefusedError
from reconciler.service.metrics import DaemonCollector
from reconciler.service.notify import ServiceNotifier, status_text
from reconciler.service.regionstate import RegionState, SessionMode, SessionRequest, Status
from reconciler.status import RegionStatus
from replication.backoff import Backoff, retrying
from replication.capture.batch import GAP_FLUSH, GAP_SWAPDB, ChangeSource, Gap
from replication.capture.notifications import KeyspaceNotificationSource
from replication.capture.stream import ReplicationStreamSource
from replication.capture.versioner import Versioner
from replication.errors import ReconcilerError, exception_leaves
from replication.model.admission import Admission
from replication.model.hlc import HybridClock
from replication.pipeline.applier import Applier, ApplyReport
from replication.pipeline.inbound import Inbound
from replication.pipeline.outbound import Outbound
from replication.pipeline.publisher import Publisher
from replication.redis.connections import LibraryConnections
from replication.redis.resp import RespConnection
from replication.transport.consumer import ChangeConsumer
from replication.transport.deadletter import DeadLetters
from replication.transport.producer import ChangeProducer
from replication.transport.topics import ensure_topics

log = logging.getLogger(__name__)

STOP_DEADLINE_S = 30.0


Queued = tuple[SessionRequest, "asyncio.Future[RepairReport] | None"]


@dataclass
class DaemonState:
    """What the daemon knows about itself (status record, health, metrics)."""

    status: str = Status.RECOVERING
    """The status last published (`RegionState.status` decides it)."""
    since_ms: int = 0
    last_repair_ms: int = 0
    gaps: dict[str, int] = field(default_factory=dict)
    started_ms: int = 0
    rebuild_progress: float = 0.0
    gc_tombstones_removed: int = 0
    gc_expired_removed: int = 0
    conflicts_won: int = 0
    conflicts_lost: int = 0
    inbound_lag: dict[str, int] = field(default_factory=dict)  # ours on each peer's topic
    status_written_ms: int = 0  # last successful write of the status record, 0 never


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.region = config.region
        self.state_dir = Path(config.state_dir)
        self.state = DaemonState(started_ms=now_ms(), since_ms=now_ms())
        self._clock_saved = 0  # the high-water mark last persisted
        self.clock = HybridClock(
            max_drift_ms=config.clock.max_drift_ms, floor=self._load_clock_floor()
        )
        self.index = MerkleIndex(config.redis.dbs)
        self.trees = self.index.trees
        self.region_state = RegionState(config.peers, automatic=config.antientropy.automatic)
        self.catch_up = CatchUp()
        self.region_state.caught_up = False  # until the first sample says otherwise
        self.guard = InstanceGuard(
            config.redis.address(config.redis.dbs[0]), timeout_s=config.status.instance_timeout_s
        )
        kafka = config.kafka.settings()
        self.kafka_settings = kafka
        # Every record we produce is signed with our key; every record we read is verified
        # against its claimed region's keys (replication.model.auth).
        self.keyring = config.auth.keyring
        self.signer = config.auth.signer(self.region)
        address = config.redis.address(config.redis.dbs[0])
        self.versioner = Versioner(address, self.region, self.clock)
        self.applier = Applier(address, self.region, self.clock, frozenset(config.retired_regions))
        self.producer = ChangeProducer(kafka, self.signer)
        self.publisher = Publisher(self.versioner, self.producer, self.index)
        self.dead_letters = DeadLetters(
            lambda: self.producer.kafka,
            kafka.topic_prefix,
            self.signer,
            max_message_bytes=kafka.max_message_bytes,
        )
        self.consumer = ChangeConsumer(
            kafka,
            Admission(
                self.region,
                frozenset(config.peers),
                frozenset(config.retired_regions),
                frozenset(config.redis.dbs),
            ),
            self.keyring,
            self.dead_letters,
            max_drift_ms=config.clock.max_drift_ms,
        )
        self.control = ControlChannel(
            kafka,
            self.region,
            lambda: self.producer.kafka,
            keyring=self.keyring,
            signer=self.signer,
            peers=config.peers,
            max_drift_ms=config.clock.max_drift_ms,
        )
        self.peers = Peers(
            self.region,
            list(config.peers),
            timeout_s=config.heartbeat.peer_timeout_s,
            on_peer_up=self._on_peer_up,
            on_peer_down=self._on_peer_down,
        )
        self.shipper = RepairShipper(
            self.conn,
            self.publisher,
            keys_per_s=config.antientropy.repair_keys_per_s,
        )
        self.antientropy = AntiEntropy(
            self.region,
            channel=self.control,
            trees=self.trees,
            conn=self.conn,
            shipper=self.shipper,
            settings=config.antientropy,
            reports=ReportStore(
                config.reports_path,
                max_reports=config.reports.max_reports,
                max_bytes=config.reports.max_bytes,
            ),
        )
        self.source: ChangeSource = self._make_source()
        self.watermark = CaptureWatermark()
        self.settler = Settler(
            self.region,
            self.peers,
            master_offset=self._master_offset,
            capture_acked=self._capture_acked,
            produced=lambda: self.producer.acked,
            applied=self.consumer.applied_offsets,
            end_offsets=self.consumer.end_offsets,
        )
        self.outbound = Outbound(
            self.source,
            self.publisher,
            on_gap=self._on_gap,
            on_flush=self._on_flush,
            max_in_flight=config.capture.max_in_flight_batches,
        )
        self.inbound = Inbound(
            self.consumer,
            self.applier,
            self.publisher,
            self.dead_letters,
            on_applied=self._on_applied,
            on_gap=self._on_gap,
            max_records=config.apply.max_records_per_poll,
            transient_retry_s=config.apply.transient_retry_s,
        )
        self.collector = DaemonCollector(self)
        self.admin = AdminServer(self, config.admin.host, config.admin.port)
        self.notifier = ServiceNotifier(lambda: status_text(self))  # systemd, if under it
        self.journal = ConflictJournal(
            config.reports_path / f"conflicts-{self.region}.jsonl",
            max_bytes=config.reports.journal_max_bytes,
            files=config.reports.journal_files,
        )
        self._conns = LibraryConnections(config.redis.address())
        self._status_client: aioredis.Redis | None = None
        self._repairs: asyncio.Queue[Queued] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._spawned: set[asyncio.Task[None]] = set()
        self._recovery: asyncio.Task[None] | None = None
        self._recovered = asyncio.Event()  # clear while a recovery pass is pending
        self._recovered.set()
        self._verifying = False
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ construction
    def _make_source(self) -> ChangeSource:
        cfg = self.config.redis
        if cfg.capture == "notifications":
            return KeyspaceNotificationSource(cfg.address(), dbs=cfg.dbs)
        return ReplicationStreamSource(
            cfg.address(),
            state_dir=self.state_dir,
            name=f"capture-{self.region}",
            dbs=cfg.dbs,
            max_batch_commands=self.config.capture.max_batch_commands,
        )

    def _clock_path(self) -> Path:
        return self.state_dir / f"clock-{self.region}.json"

    def _load_clock_floor(self) -> int:
        try:
            return int(json.loads(self._clock_path().read_text())["high_water"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save_clock_floor(self, *, force: bool = False) -> None:
        """Persist a high-water mark above every timestamp handed out, so a restart never
        goes back in time. With headroom, it is rewritten only when the clock has used half
        of it (a file rename on the event loop every status tick cost up to 5% of the
        loop); the headroom stays far below `clock.max_drift_ms`, or peers would quarantine
        the first changes after a restart as dated ahead."""
        headroom = min(10_000, self.config.clock.max_drift_ms // 4) << 12
        if not force and self.clock.last + headroom // 2 < self._clock_saved:
            return
        path = self._clock_path()
        tmp = path.with_name(path.name + ".tmp")
        high_water = self.clock.last + headroom
        tmp.write_text(json.dumps({"high_water": high_water}))
        tmp.replace(path)
        self._clock_saved = high_water

    async def conn(self, db: int) -> RespConnection:
        """A connection to database `db` with the function library loaded (reopened if the
        previous one broke), for anti-entropy, repair and GC."""
        return await self._conns.get(db)

    # -------------------------------------------------------------------- callbacks
    def _on_applied(self, report: ApplyReport) -> None:
        for conflict in report.conflicts:
            if conflict.winner == "local":
                self.state.conflicts_won += 1
            else:
                self.state.conflicts_lost += 1
        if report.conflicts:
            self._record_conflicts(report)

    def _record_conflicts(self, report: ApplyReport) -> None:
        self.journal.append(conflict.to_json() for conflict in report.conflicts)

    async def _on_gap(self, gap: Gap) -> None:
        log_event(log, REGION_GAP, logging.WARNING, reason=gap.reason, detail=gap.detail)
        self._gap(
            gap.reason,
            f"capture gap: {gap.reason}",
            data_changed=gap.reason in (GAP_FLUSH, GAP_SWAPDB),
        )

    def _gap(self, kind: str, reason: str, *, data_changed: bool = True) -> None:
        """Something was missed or lost: no longer vouch for the data, recover, repair.

        `data_changed`: this Redis may have lost or replaced data (a restart, a flush, a
        swap) rather than only missed shipping some of its own writes (a stream the capture
        could not follow): then the repair marker goes too, and clients leave the region."""
        self.state.gaps[kind] = self.state.gaps.get(kind, 0) + 1
        epoch = self.region_state.gap()
        self._recovered.clear()
        log.warning("gap: epoch=%d reason=%r: status recovering until repaired", epoch, reason)
        if data_changed:
            self._spawn(self._forget_marker())
        self._publish()
        if self._recovery is None or self._recovery.done():
            self._recovery = self._spawn(self._recover(reason))

    async def _forget_marker(self) -> None:
        try:
            await self.guard.forget()
        except (OSError, TimeoutError, ReconcilerError) as exc:
            # The key names the old instance, or is gone with it: it vouches for nothing.
            log.debug("repair marker not deleted: %s", exc)

    async def _on_flush(self, dbs: frozenset[int]) -> None:
        log.warning("local flush of dbs %s: refilling from peers", sorted(dbs))
        # The gap that comes with the flush triggers the recovery.

    def _on_peer_down(self, peer: str, reason: str) -> None:
        self.region_state.peer_down(peer)
        self.antientropy.abort_peer(peer, reason)
        self._publish()

    def _on_peer_up(self, peer: str, reason: str) -> None:
        request = self.region_state.peer_up(peer, reason, first=reason == "first heartbeat")
        if request is not None:
            self._queue(request)
        self._publish()

    # ------------------------------------------------------------------ status, repair
    def _publish(self) -> None:
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
            self._spawn(self._write_status())

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
                self._gap("instance", "redis instance changed while it was repaired")
        except (OSError, TimeoutError, ReconcilerError) as exc:
            log.warning("repair marker not written (%s); retrying at the next status tick", exc)
        finally:
            self._verifying = False
        self._publish()

    def _queue(self, request: SessionRequest) -> asyncio.Future[RepairReport]:
        loop = self._loop or asyncio.get_running_loop()
        done: asyncio.Future[RepairReport] = loop.create_future()
        self._repairs.put_nowait((request, done))
        return done

    def request_repair(
        self,
        peer: str,
        trigger: str,
        mode: SessionMode = SessionMode.REPAIR,
        *,
        operator: bool = False,
    ) -> asyncio.Future[RepairReport] | None:
        """Queue a session with `peer` (see `RegionState.request` for which are queued)."""
        request = self.region_state.request(peer, trigger, mode, operator=operator)
        if request is None:
            return None
        done = self._queue(request)
        self._publish()
        return done

    async def operator_session(self, peer: str, mode: str, trigger: str) -> RepairReport:
        """Run a session for the operator (admin endpoint) and wait for its report."""
        if peer not in self.config.peers:
            raise ReconcilerError(f"unknown peer {peer!r} (peers: {list(self.config.peers)})")
        fut = self.request_repair(peer, trigger, SessionMode(mode), operator=True)
        if fut is None:
            raise ReconcilerError("could not queue the session")
        return await fut

    async def _repair_loop(self) -> None:
        while True:
            queued, done = await self._repairs.get()
            # No session while a recovery pass is pending: it compares the rebuilt index.
            await self._recovered.wait()
            request = self.region_state.session_started(queued)
            self._publish()
            report: RepairReport | None = None
            try:
                if not request.operator:
                    await self._settle(request.peer)
                if request.operator or request.peer in self.peers.alive():
                    report = await self.antientropy.run(
                        request.peer, request.trigger, str(request.mode)
                    )
                # else: it went away meanwhile; it stays pending, its return triggers it.
            finally:
                ok = report is not None and report.result == "ok"
                retry = self.region_state.session_finished(request, ok=ok)
                if ok and request.mode.repairs:
                    self.state.last_repair_ms = now_ms()
                self._publish()
            if done is not None and not done.done() and report is not None:
                done.set_result(report)
            if retry and report is not None:
                self._spawn(self._retry_later(request.peer, request.trigger))

    async def _settle(self, peer: str) -> None:
        """Wait (bounded) until the changes in flight between every region, us and `peer`
        have been applied on both sides (see `reconciler.consistency.settle`): they are not
        divergence, and repairing them would ship them twice."""
        timeout_s = self.config.antientropy.settle_timeout_s
        try:
            settled = await self.settler.wait(peer, timeout_s)
        except (KafkaError, OSError, ReconcilerError) as exc:
            # Kafka unreachable: the session will most likely fail too, and be retried.
            log.info("settle with %s interrupted (%s); trying the session anyway", peer, exc)
            return
        if not settled:
            log.warning(
                "replication with %s not caught up after %.0fs (waiting for %s); repairing anyway",
                peer,
                timeout_s,
                self.settler.waiting_for,
            )

    async def _master_offset(self) -> int | None:
        """Our Redis's replication offset (None if it does not answer)."""
        try:
            client = await self._status_client_get()
            info = await client.info("replication")
        except (OSError, aioredis.RedisError) as exc:
            log.debug("master offset not read: %s", exc)
            return None
        offset = info.get("master_repl_offset")
        return offset if isinstance(offset, int) else None

    def _capture_acked(self) -> int | None:
        """The stream offset the capture has acknowledged (None: a capture without offsets)."""
        if not isinstance(self.source, ReplicationStreamSource):
            return None
        return self.source.stats.acked_offset

    async def _retry_later(self, peer: str, trigger: str) -> None:
        await asyncio.sleep(self.config.antientropy.retry_interval_s)
        if peer in self.region_state.pending and peer in self.peers.alive():
            self.request_repair(peer, f"retry: {trigger}")

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
                self._queue(request)
        self._recovered.set()
        self._publish()

    async def _rebuild_and_sweep(self) -> int:
        await self._rebuild_trees()
        swept = 0
        for db in self.config.redis.dbs:
            swept += await self.publisher.sweep(db)
        return swept

    async def _rebuild_trees(self) -> None:
        for db in self.config.redis.dbs:
            conn = await self.conn(db)
            started = time.monotonic()

            def progress(done: int, keys: int, db: int = db) -> None:
                self.state.rebuild_progress = done / 16384
                if done % 4096 == 0:
                    log.info("merkle rebuild: db=%d slots=%d/16384 keys=%d", db, done, keys)

            # Changes during the scan go to the old tree; the new one may have read their
            # slot before them. Those slots are read again once it is in place.
            with self.index.rebuilding(db) as touched:
                tree = await rebuild(conn, progress=progress)
                self.trees[db] = tree
            if touched:
                drifted = await self.antientropy.refresh_slots(db, sorted(touched))
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

    # ------------------------------------------------------------------- periodic jobs
    async def _status_client_get(self) -> aioredis.Redis:
        if self._status_client is None:
            a = self.config.redis.address(self.config.redis.dbs[0])
            self._status_client = aioredis.Redis(
                host=a.host,
                port=a.port,
                db=a.db,
                username=a.username,
                password=a.password,
                socket_timeout=5,
                socket_connect_timeout=5,
            )
        return self._status_client

    async def _write_status(self) -> None:
        s = self.state
        status = RegionStatus(
            state=s.status,
            region=self.region,
            since_ms=s.since_ms,
            last_repair_ms=s.last_repair_ms,
            updated_ms=now_ms(),
        )
        try:
            await self.guard.write_status(status, int(self.config.status.ttl_s * 1000))
            s.status_written_ms = now_ms()
        except StatusRefusedError as exc:
            # The Redis holds no proof of a repair on its current instance: it restarted,
            # was flushed or replaced before we noticed. That is a gap.
            self._gap("instance", f"status refused by redis: {exc}")
        except (OSError, TimeoutError, ReconcilerError) as exc:
            log.debug("status record not written: %s", exc)

    async def _track_catch_up(self) -> None:
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
            if caught_up != self.region_state.caught_up:
                self.region_state.caught_up = caught_up
                self._publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), status.catch_up_sample_s)

    async def _watch_instance(self) -> None:
        """Notice a restarted or replaced Redis within `instance_check_s` of it answering,
        whatever the capture's reconnect backoff is doing."""
        interval_s = self.config.status.instance_check_s
        while not self._stopping.is_set():
            try:
                change = await self.guard.observe()
            except (OSError, TimeoutError, ReconcilerError) as exc:
                log.debug("redis instance not observed: %s", exc)
            else:
                if change is not None:
                    self._gap(
                        "instance",
                        f"redis instance replaced: run_id {change.old_run_id[:12]} -> "
                        f"{change.new_run_id[:12]}",
                    )
                    # Tell clients now, not at the next refresh.
                    await self._write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)

    async def _every(self, interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping.is_set():
            try:
                await job()
            except (OSError, ReconcilerError, aioredis.RedisError) as exc:
                log.warning("periodic job %s failed: %s", getattr(job, "__name__", job), exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)

    async def _status_tick(self) -> None:
        self.peers.check()
        self.region_state.peers_alive(self.peers.alive())
        self._publish()
        await self._write_status()
        self._save_clock_floor()

    async def _gc_tick(self) -> None:
        t = self.config.tombstones
        for db, tree in self.trees.items():
            result = await collect(
                await self.conn(db),
                tree,
                now_ms(),
                caught_up_before_ms=self.peers.all_caught_up_before_ms(),
                min_age_ms=int(t.min_age_s * 1000),
                horizon_ms=int(t.horizon_s * 1000),
            )
            self.state.gc_tombstones_removed += result.tombstones_removed
            self.state.gc_expired_removed += result.expired_removed

    async def heartbeat_body(self) -> dict[str, Any]:
        at_ms = now_ms()
        shipped_through = self.watermark.sample(
            at_ms, await self._master_offset(), self._capture_acked()
        )
        lag: dict[str, int] = {}
        applied: dict[str, dict[int, int]] = {}
        with contextlib.suppress(Exception):
            applied = await self.consumer.applied_offsets()
            lag = await self.consumer.lag(applied)
            self.state.inbound_lag = lag
        return {
            "epoch": self.state.started_ms,
            "status": self.state.status,
            "capture_offset": self._capture_acked() or 0,
            "since_ms": self.state.since_ms,
            "last_repair_ms": self.state.last_repair_ms,
            "deadletters": self.dead_letters.count,
            "lag": lag,
            "at_ms": at_ms,
            "shipped_through_ms": shipped_through,
            "produced": {str(p): o for p, o in self.producer.acked.items()},
            "applied": {
                region: {str(p): o for p, o in offsets.items()}
                for region, offsets in applied.items()
            },
        }

    # ----------------------------------------------------------------------- lifecycle
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run a background job in the daemon's task group; it is cancelled at shutdown."""
        if self._group is None:
            coro.close()  # not running (yet, or any more): nothing to do it for
            return None
        task = self._group.create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    def request_stop(self) -> None:
        """Graceful stop (SIGTERM). A second request forces it."""
        self._signals += 1
        if self._signals == 1:
            log_event(log, REGION_STOPPING, reason="stop signal")
            self.notifier.stopping("stopping: finishing in-flight work")
            self._stopping.set()
            self.outbound.stop()
            self.inbound.stop()
        else:
            log.warning("second stop signal: exiting now")
            os._exit(1)

    async def run(self) -> int:
        """Run until stopped; 0 after a graceful stop, 1 after a failure."""
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_stop)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.notifier.start()  # the watchdog is fed from this loop from now on
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._start(stack)
                await self._supervise()
        except ReconcilerError as exc:
            log_event(log, REGION_FAILED, logging.ERROR, error=str(exc))
            return 1
        except ExceptionGroup as group:
            for failure in exception_leaves(group):
                if isinstance(failure, ReconcilerError):
                    log_event(log, REGION_FAILED, logging.ERROR, error=str(failure))
                else:
                    log.exception("daemon failed", exc_info=failure)
            return 1
        else:
            return 0
        finally:
            await self.notifier.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    self._loop.remove_signal_handler(sig)

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        log_event(log, REGION_STARTING, region=self.region, peers=",".join(cfg.peers))
        self.admin.bind()  # a port in use fails here, before anything is touched
        stack.callback(self.admin.stop)
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        while True:
            try:
                await ensure_topics(self.kafka_settings, cfg.regions)
                break
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                log.warning("kafka not reachable yet (%s); retrying", exc)
                await backoff.sleep()
        stack.push_async_callback(self._close_conns)
        for component in (self.versioner, self.applier, self.producer, self.consumer, self.control):
            await component.start()
            stack.push_async_callback(component.stop)
        stack.push_async_callback(self.antientropy.stop)
        stack.push_async_callback(self.guard.close)
        marker_valid = await retrying(self.guard.adopt_marker, what="reading the repair marker")
        self.region_state.start(
            marker_valid=marker_valid, sessions_on_start=cfg.antientropy.on_start
        )
        self.state.status = self.region_state.status
        log.info(
            "redis instance %s: %s",
            self.guard.run_id,
            "verified by an earlier run" if marker_valid else "not verified: repair first",
        )
        await self._write_status()
        await self._rebuild_trees()
        await self.source.start()
        stack.push_async_callback(self.source.stop)
        self.admin.start()
        self.control.on("hb", self.peers.handle, broadcast=True)
        self.control.on("ae.", self.antientropy.handle)
        # Sessions with pending peers start as each peer's first heartbeat arrives.
        log.info("admin endpoint: http://%s:%d", self.admin.host, self.admin.port)

    async def _supervise(self) -> None:
        cfg = self.config
        async with asyncio.TaskGroup() as group:
            self._group = group
            main = [group.create_task(self.outbound.run()), group.create_task(self.inbound.run())]
            services = [
                group.create_task(self.control.run()),
                group.create_task(self._repair_loop()),
                group.create_task(
                    send_heartbeats(
                        self.control, cfg.heartbeat.interval_s, self.heartbeat_body, self._stopping
                    )
                ),
                group.create_task(self._every(cfg.status.refresh_s, self._status_tick)),
                group.create_task(self._watch_instance()),
                group.create_task(self._track_catch_up()),
                group.create_task(self._every(cfg.tombstones.gc_interval_s, self._gc_tick)),
            ]
            # Capture, consumers and the admin endpoint run (started above, tasks created).
            log_event(log, REGION_READY, admin=f"http://{self.admin.host}:{self.admin.port}")
            self.notifier.ready()
            await self._stopping.wait()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.control.send(BYE, "*")
            try:
                async with asyncio.timeout(STOP_DEADLINE_S):
                    await asyncio.gather(*main)
            except TimeoutError:
                log.warning("graceful stop took longer than %.0fs; cancelling", STOP_DEADLINE_S)
            for task in [*main, *services, *self._spawned]:
                task.cancel()
        self._group = None
        self._save_clock_floor(force=True)
        log_event(log, REGION_STOPPED)

    async def _close_conns(self) -> None:
        await self._conns.close()
        if self._status_client is not None:
            await self._status_client.aclose()
            self._status_client = None
