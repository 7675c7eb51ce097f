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
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from reconciler.consistency.antientropy import AntiEntropy
from reconciler.consistency.control import ControlChannel
from reconciler.consistency.gcwatermark import GcWatermark
from reconciler.consistency.merkle import MerkleIndex
from reconciler.consistency.modes import SessionMode
from reconciler.consistency.peers import BYE, Peers, send_heartbeats
from reconciler.consistency.repair import RepairShipper
from reconciler.consistency.reports import ConflictJournal, RepairReport, ReportStore
from reconciler.consistency.settle import Settler
from reconciler.consistency.tombstones import collect
from reconciler.events import (
    REGION_FAILED,
    REGION_READY,
    REGION_STARTING,
    REGION_STOPPED,
    REGION_STOPPING,
    log_event,
)
from reconciler.service.admin import AdminServer
from reconciler.service.clockfloor import ClockFloor
from reconciler.service.config import DaemonConfig
from reconciler.service.heartbeat import Heartbeats
from reconciler.service.instance import InstanceGuard
from reconciler.service.metrics import DaemonCollector
from reconciler.service.notify import ServiceNotifier, status_text
from reconciler.service.parts import DaemonParts
from reconciler.service.recovery import CaptureBehindError, Recovery
from reconciler.service.regionstate import RegionState, Status
from reconciler.service.sessions import SessionRunner
from reconciler.service.shippedfloor import ShippedFloor
from reconciler.service.state import DaemonState, now_ms
from replication.backoff import Backoff, retrying
from replication.capture.batch import ChangeSource, Gap
from replication.capture.notifications import KeyspaceNotificationSource
from replication.capture.stream import ReplicationStreamSource
from replication.capture.versioner import Versioner
from replication.errors import ReconcilerError, exception_leaves
from replication.model.admission import Admission
from replication.model.hlc import HybridClock
from replication.pipeline.applier import Applier, ApplyReport
from replication.pipeline.inbound import Inbound, LocalVerdict, LocalWrites
from replication.pipeline.outbound import Outbound
from replication.pipeline.publisher import Publisher
from replication.pipeline.stall import StallWatch
from replication.redis.connections import LibraryConnections
from replication.redis.resp import RespConnection
from replication.transport.access import check_access
from replication.transport.consumer import ChangeConsumer
from replication.transport.deadletter import DeadLetters
from replication.transport.producer import ChangeProducer
from replication.transport.topics import ensure_topics

log = logging.getLogger(__name__)

STOP_DEADLINE_S = 30.0
# How long a remote write that found a local one unversioned waits for the capture to
# version it (dated when read) before the inbound versions it itself (dated now).
DEFERRED_WAIT_S = 2.0
# How often the recovery sweep, waiting for the capture, says so in the log.
SWEEP_SETTLE_S = 5.0


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.region = config.region
        self.state_dir = Path(config.state_dir)
        self.state = DaemonState(started_ms=now_ms(), since_ms=now_ms())
        self.clock_floor = ClockFloor(
            self.state_dir / f"clock-{self.region}.json", max_drift_ms=config.clock.max_drift_ms
        )
        self.clock = HybridClock(
            max_drift_ms=config.clock.max_drift_ms, floor=self.clock_floor.load()
        )
        self.index = MerkleIndex(config.redis.dbs)
        self.trees = self.index.trees
        self.region_state = RegionState(config.peers, automatic=config.antientropy.automatic)
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
        self.shipped_floor = ShippedFloor(self.state_dir / f"shipped-{self.region}.json")
        self._on_shipped_through(self.shipped_floor.value)
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
        self.gc_watermark = GcWatermark(self.region, config.peers)
        self.peers = Peers(
            self.region,
            list(config.peers),
            timeout_s=config.heartbeat.peer_timeout_s,
            on_peer_up=self._on_peer_up,
            on_peer_down=self._on_peer_down,
            on_heartbeat=lambda peer, beat: self.gc_watermark.observe_peer(
                peer,
                epoch=beat.epoch,
                at_ms=beat.at_ms,
                shipped_through_ms=beat.shipped_through_ms,
                produced=beat.produced,
                applied=beat.applied,
                status=beat.status,
                refused_events=beat.refused_events,
            ),
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
        self.heartbeats = Heartbeats(
            self.state,
            guard=self.guard,
            source=self.source,
            consumer=self.consumer,
            producer=self.producer,
            dead_letters=self.dead_letters,
            gc=self.gc_watermark,
            refused_events=lambda: self.consumer.rejected_events + self.inbound.stats.rejected,
            on_shipped_through=self._on_shipped_through,
        )
        self.settler = Settler(
            self.region,
            self.peers,
            master_position=self.heartbeats.master_position,
            capture_acked=(
                self.heartbeats.capture_position
                if isinstance(self.source, ReplicationStreamSource)
                else None
            ),
            produced=lambda: self.producer.acked,
            applied=self.consumer.applied_offsets,
            end_offsets=self.consumer.end_offsets,
        )
        # One watch for both paths that version local writes (capture, deferred applies).
        self.stall = StallWatch(self.heartbeats.master_offset)
        self.outbound = Outbound(
            self.source,
            self.publisher,
            on_gap=self._on_capture_gap,
            on_flush=self._on_flush,
            max_in_flight=config.capture.max_in_flight_batches,
            max_unshipped_events=config.capture.max_unshipped_events,
            stall=self.stall,
        )
        self.inbound = Inbound(
            self.consumer,
            self.applier,
            self.publisher,
            self.dead_letters,
            on_applied=self._on_applied,
            on_gap=self._on_capture_gap,
            max_records=config.apply.max_records_per_poll,
            transient_retry_s=config.apply.transient_retry_s,
            stall=self.stall,
            judge_local=self._judge_local,
            capture_settled=self._capture_settled_briefly,
        )
        # systemd, if under it (the status line is read once the parts exist, below)
        self.notifier = ServiceNotifier(lambda: status_text(self.parts))
        self.journal = ConflictJournal(
            config.reports_path / f"conflicts-{self.region}.jsonl",
            max_bytes=config.reports.journal_max_bytes,
            files=config.reports.journal_files,
        )
        self._conns = LibraryConnections(config.redis.address())
        self._stopping = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._spawned: set[asyncio.Task[None]] = set()
        recovered = asyncio.Event()  # clear while a recovery pass is pending
        recovered.set()
        self.sessions = SessionRunner(
            self.region_state,
            self.antientropy,
            self.settler,
            self.peers,
            config.antientropy,
            recovered=recovered,
            on_change=self._publish,
            spawn=self._spawn,
        )
        self.recovery = Recovery(
            config,
            self.state,
            self.region_state,
            self.guard,
            self.sessions,
            consumer=self.consumer,
            index=self.index,
            publisher=self.publisher,
            shipped_floor=self.shipped_floor,
            conn=self.conn,
            refresh_slots=self.antientropy.refresh_slots,
            notifier=self.notifier,
            spawn=self._spawn,
            stopping=self._stopping,
            capture_settled=self._capture_settled,
        )
        self.parts = DaemonParts(
            region=self.region,
            state=self.state,
            region_state=self.region_state,
            catch_up=self.recovery.catch_up,
            peers=self.peers,
            source=self.source,
            outbound=self.outbound,
            inbound=self.inbound,
            consumer=self.consumer,
            producer=self.producer,
            versioner=self.versioner,
            dead_letters=self.dead_letters,
            antientropy=self.antientropy,
            control=self.control,
            journal=self.journal,
            trees=self.trees,
        )
        self.collector = DaemonCollector(self.parts)
        self.admin = AdminServer(
            self.parts,
            config.admin.host,
            config.admin.port,
            config.admin.token,
            state_dir=self.state_dir,
            peers=tuple(config.peers),
            collector=self.collector,
            operator_session=self.operator_session,
            stopping=self._stopping.is_set,
        )
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ construction
    def _on_shipped_through(self, shipped_through_ms: int) -> None:
        # Writes found late (replayed at restart, swept after a gap) are dated just after
        # the last moment this region announced every earlier write shipped.
        floor = self.shipped_floor.advance(shipped_through_ms)
        self.versioner.late_floor_ms = floor + 1 if floor else 0

    async def _judge_local(self, first_round: bool) -> LocalWrites:
        """What the applier should make of local writes it found unversioned (see
        `replication.pipeline.inbound`). On the first round the capture is waited for, up
        to DEFERRED_WAIT_S, to version everything Redis has written so far."""
        # A restart not noticed yet is a gap now, so that its writes are found late.
        await self.recovery.check_instance()
        # Only with offsets, and only in the history the Redis is in now: a restarted
        # Redis's offsets start again, and its small ones would look caught up at once.
        source = self.source
        if not isinstance(source, ReplicationStreamSource):
            return LocalWrites(LocalVerdict.LIVE)
        position = await self.heartbeats.master_position()
        if position is None:
            return LocalWrites(LocalVerdict.LIVE)
        if first_round and await self.outbound.versioned_through(position, DEFERRED_WAIT_S):
            # Also while a gap is recovered: a write made since the capture resynced is a
            # live one, dated when read (dated as found late, it lost to an older remote
            # write and the failover client read its own write, then the older one).
            return LocalWrites(LocalVerdict.CAPTURED)
        streaming = source.replid == position.replid
        if not streaming or (not first_round and self.region_state.recovering):
            # The capture never shows these: its stream is not the Redis's history (what
            # the Redis came back with, or took before the capture resyncs, is in the
            # snapshot it will skip), or it caught up and the key is still unversioned
            # while the gap's sweep has not run. The sweep dates such writes; so do we.
            # (A capture merely slow to version, a daemon still starting, streams the
            # Redis's history: its writes are live. Judged by what the capture had
            # versioned, they were found late, and lost to an older remote write: the
            # fault suite's seed 23.)
            floor = await retrying(
                self.recovery.found_late_floor_ms, what="reading the dataset's shipped mark"
            )
            return LocalWrites(LocalVerdict.FOUND_LATE, floor)
        return LocalWrites(LocalVerdict.LIVE)

    async def _capture_settled(self) -> None:
        """For the recovery sweep: return once the capture has versioned everything the
        Redis had written when called, so that what the sweep then finds unversioned is
        only what the capture will never show (see `Versioner.version_found_late`).

        Waits as long as that takes (a capture reconnecting, a backlog); raises
        `CaptureBehindError` (the pass is retried) if the Redis does not answer, or its
        history changed meanwhile (a restart: another gap is on its way). A capture
        without positions (keyspace notifications) is not waited for (README: its limits)."""
        if not isinstance(self.source, ReplicationStreamSource):
            return
        position = await self.heartbeats.master_position()
        if position is None:
            raise CaptureBehindError("the Redis did not say where its replication stream is")
        while not await self.outbound.versioned_through(position, SWEEP_SETTLE_S):
            now = await self.heartbeats.master_position()
            if self._stopping.is_set() or now is None or now.replid != position.replid:
                raise CaptureBehindError(
                    f"the capture has not versioned the Redis's stream through offset "
                    f"{position.offset} of history {position.replid[:12]}, and the Redis "
                    f"{'stopped answering' if now is None else 'moved on'}"
                )
            log.info(
                "recovery sweep: waiting for the capture to version through offset %d "
                "(versioned through %d)",
                position.offset,
                self.outbound.versioned_offset,
            )

    async def _capture_settled_briefly(self) -> None:
        """For the applier's writes found late: `_capture_settled`, up to DEFERRED_WAIT_S
        (a remote write does not wait longer; the recovery sweep catches what it leaves)."""
        if not isinstance(self.source, ReplicationStreamSource):
            return
        position = await self.heartbeats.master_position()
        if position is not None:
            await self.outbound.versioned_through(position, DEFERRED_WAIT_S)

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

    # The parts are built before the ones they call back; these forward to them.
    async def _on_capture_gap(self, gap: Gap) -> None:
        await self.recovery.on_capture_gap(gap)

    def _on_peer_up(self, peer: str, reason: str) -> None:
        self.sessions.on_peer_up(peer, reason)

    def _on_peer_down(self, peer: str, reason: str) -> None:
        self.sessions.on_peer_down(peer, reason)

    def _publish(self) -> None:
        self.recovery.publish()

    async def _on_flush(self, dbs: frozenset[int]) -> None:
        log.warning("local flush of dbs %s: refilling from peers", sorted(dbs))
        # The gap that comes with the flush triggers the recovery.

    async def operator_session(self, peer: str, mode: SessionMode, trigger: str) -> RepairReport:
        """Run a session for the operator (admin endpoint) and wait for its report."""
        return await self.sessions.operator_session(peer, mode, trigger)

    # ------------------------------------------------------------------- periodic jobs
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
        self.recovery.publish()
        await self.recovery.write_status()
        self.clock_floor.save(self.clock.last)

    async def _gc_tick(self) -> None:
        t = self.config.tombstones
        # While this region recovers, its own Redis may lack what the frontiers assume:
        # tombstones then wait (the horizon still applies).
        recovering = self.state.status == Status.RECOVERING
        safe_before = {} if recovering else self.gc_watermark.frontiers()
        held = 0
        for db, tree in self.trees.items():
            result = await collect(
                await self.conn(db),
                tree,
                now_ms(),
                safe_before=safe_before,
                min_age_ms=int(t.min_age_s * 1000),
                horizon_ms=int(t.horizon_s * 1000),
            )
            self.state.gc_tombstones_removed += result.tombstones_removed
            self.state.gc_expired_removed += result.expired_removed
            held += result.tombstones_held
        self.state.gc_tombstones_held = held
        if held:
            log.info(
                "tombstone gc: %d tombstone(s) kept; per origin, the regions not yet known to have "
                "applied past them (or whose earlier writes are not yet applied here): %s",
                held,
                self.gc_watermark.waiting_on(),
            )

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

    @property
    def stop_requested(self) -> bool:
        """A stop was asked for (another `request_stop` would force the exit)."""
        return self._signals > 0

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
        # The capture attaches first: under min-replicas-to-write (docs/capture.md) Redis
        # takes no write, ours included, until a replica acknowledges. Its batches wait
        # for the outbound path; a full resync's RDB is skipped without it.
        await self.source.start()
        stack.push_async_callback(self.source.stop)
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        while True:
            try:
                await ensure_topics(self.kafka_settings, cfg.regions)
                break
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                # A refused password or certificate is no reason to wait: stop, saying why.
                await check_access(self.kafka_settings)
                log.warning("kafka not reachable yet (%s); retrying", exc)
                await backoff.sleep()
        stack.push_async_callback(self._close_conns)
        for name, redis_part in (("versioner", self.versioner), ("applier", self.applier)):
            # Loading the function library is a write: refused (NOREPLICAS) until Redis
            # has put the capture online, a moment after its full resync.
            await retrying(redis_part.start, what=f"starting the {name}")
            stack.push_async_callback(redis_part.stop)
        for component in (self.producer, self.consumer, self.control):
            await component.start()
            stack.push_async_callback(component.stop)
        await self._seed_produced(backoff)
        stack.push_async_callback(self.antientropy.stop)
        stack.push_async_callback(self.guard.close)
        await self.recovery.start()
        await self.recovery.rebuild_index()
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
                group.create_task(self.sessions.run()),
                group.create_task(
                    send_heartbeats(
                        self.control, cfg.heartbeat.interval_s, self.heartbeats.body, self._stopping
                    )
                ),
                group.create_task(self._every(cfg.status.refresh_s, self._status_tick)),
                group.create_task(self.recovery.watch_instance()),
                group.create_task(self.recovery.track_catch_up()),
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
        self.clock_floor.save(self.clock.last, force=True)
        self.shipped_floor.flush()
        log_event(log, REGION_STOPPED)

    async def _seed_produced(self, backoff: Backoff) -> None:
        """Start the producer's acknowledged offsets at our topic's end: heartbeats then name
        every partition, including those earlier daemons of this region wrote and this one
        has not yet, which peers' tombstone GC needs (reconciler.consistency.gcwatermark)."""
        while True:
            try:
                end = await self.consumer.own_end_offsets()
                break
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                log.warning("end offsets of our topic not read yet (%s); retrying", exc)
                await backoff.sleep()
        for partition, offset in end.items():
            self.producer.acked[partition] = max(self.producer.acked.get(partition, 0), offset)

    async def _close_conns(self) -> None:
        await self._conns.close()
