"""Inbound: peers' change topics applied to the local Redis, then offsets committed.

What the applier answers decides what happens to each event, one by one (one event's
fate never decides another's):

- applied, stale, a conflict either way: done.
- refused for good (a bad digest, a type not replicated here, WRONGTYPE): a dead letter
  with the reason, counted; the rest goes on.
- an error that may pass (OOM, LOADING, BUSY, or one we do not know): retried with capped
  backoff for `transient_retry_s`; if it still fails, those events are given up to a gap
  (`on_gap`: the daemon's recovery repairs them from the peers once Redis takes writes
  again) and the consumer moves on. Until Redis takes a write again, further failures are
  given up to the same gap at once instead of waiting each out.
- deferred (the key holds a local write the capture has not versioned yet): the daemon
  judges the local writes (`judge_local`, a `LocalWrites`). Usually the capture is merely
  behind: we wait, briefly, for it to version everything Redis has written so far, so the
  local write is dated by the moment the capture read it. Versioned here instead, a local
  write is dated now: seconds late if the capture was behind (a daemon still starting),
  and it would beat the remote write made meanwhile (the fault suite's monotonic reads).
  If the Redis restarted (or was replaced) and the capture never shows such a write (it is
  not in the Redis's new history yet, or it caught up and the key is still unversioned
  while the recovery sweep has not run: the write came back with the data), we version it
  *found late*, dated as the sweep dates what it finds (the fault suite: a write made 2 ms
  before a Redis restart, versioned here as new, beat eleven later writes of another
  region). A write made after the capture resynced is a live one, waited for as usual.
  If the capture does not catch up in time (or a local write keeps racing), we version
  those keys here (shipping the local write, so it is never lost). Then we apply again,
  now an ordinary conflict resolved by the rule. A key written so often that a local
  write lands between every versioning and the next apply is given up after
  `MAX_DEFER_ROUNDS`: the remote version is *superseded*. That loses nothing: applying
  it observed its timestamp, so every local version made since has a larger one and wins
  the conflict against it in every region anyway. So a hot key never holds up the other keys.

A stop during the retries leaves the poll uncommitted: it is applied again after the
restart (applying is idempotent), never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from aiokafka.errors import KafkaError

from replication.backoff import Backoff, retrying
from replication.capture.batch import Gap
from replication.clock import wall_ms
from replication.latency import PEER_STAGES, StageLatency
from replication.model.event import ChangeEvent
from replication.model.wire import pack_event
from replication.pipeline.applier import Applier, ApplyReport, Rejection
from replication.pipeline.publisher import Publisher
from replication.pipeline.stall import StallWatch
from replication.transport.consumer import ChangeConsumer, Incoming
from replication.transport.deadletter import DeadLetters

log = logging.getLogger(__name__)

MAX_DEFER_ROUNDS = 3
GAP_REASON = "apply-failed"
# Offsets are committed at most this often, not after every poll: a commit is a round trip
# to the group coordinator on the apply loop, and what it protects against (re-applying a
# few records after a crash) is harmless, as applying is idempotent by clocks.
COMMIT_INTERVAL_S = 0.2


class LocalVerdict(enum.Enum):
    """What the daemon says of local writes the applier found unversioned."""

    CAPTURED = "captured"
    """The capture versioned everything Redis had written when asked: apply again."""
    FOUND_LATE = "found-late"
    """Written before a gap (a Redis restarted or replaced) the recovery has not swept:
    the capture will never see them; versioned as the sweep versions what it finds."""
    LIVE = "live"
    """Ordinary writes the capture has not reached in time: versioned as new."""


@dataclass(frozen=True, slots=True)
class LocalWrites:
    """The daemon's verdict on unversioned local writes, and for FOUND_LATE the floor
    the sweep dates them by (None: the versioner's own)."""

    verdict: LocalVerdict
    late_floor_ms: int | None = None


async def _live(first_round: bool) -> LocalWrites:
    return LocalWrites(LocalVerdict.LIVE)


@dataclass
class InboundStats:
    polls: int = 0
    events: int = 0
    applied: int = 0
    stale: int = 0
    remote_won: int = 0
    local_won: int = 0
    deferred: int = 0
    deferred_to_capture: int = 0  # ... of which the capture versioned in time
    deferred_found_late: int = 0  # ... of which were found from before an unswept gap
    rejected: int = 0
    commits: int = 0
    superseded: int = 0  # deferred events given up to the local writes racing them
    retried: int = 0  # event applies retried after an error that may pass
    given_up: int = 0  # events given up to a gap after those retries


class _InterruptedError(Exception):
    """A stop arrived while events were waiting for a retry: leave the poll uncommitted."""


class Inbound:
    def __init__(
        self,
        consumer: ChangeConsumer,
        applier: Applier,
        publisher: Publisher,
        dead_letters: DeadLetters,
        *,
        on_applied: Callable[[ApplyReport], None],
        on_gap: Callable[[Gap], Awaitable[None]],
        max_records: int = 500,
        transient_retry_s: float = 30.0,
        stall: StallWatch | None = None,
        judge_local: Callable[[bool], Awaitable[LocalWrites]] = _live,
        capture_settled: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.consumer = consumer
        self.applier = applier
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.on_applied = on_applied
        self.on_gap = on_gap
        self.max_records = max_records
        self.transient_retry_s = transient_retry_s
        self.stall = stall
        # Called with whether this is the first round for these events (only then is the
        # capture waited for).
        self.judge_local = judge_local
        # Waits (bounded) for the capture to version what Redis has written so far; before
        # writes found late are versioned, so that only what it never shows is.
        self.capture_settled = capture_settled
        self.stats = InboundStats()
        self.latency = StageLatency.of(PEER_STAGES)
        self._stopping = asyncio.Event()
        # A gap was recorded for events Redis kept refusing, and Redis has not taken a
        # write since: give further refusals to that gap at once.
        self._degraded = False
        self._given_up_since_gap = False

    def stop(self) -> None:
        """Ask `run()` to return after applying and committing what it holds."""
        self._stopping.set()

    async def run(self) -> None:
        uncommitted = False
        last_commit = 0.0
        while not self._stopping.is_set():
            # The timeout only bounds an idle wait: poll returns as soon as records arrive.
            incoming = await self.consumer.poll(timeout_ms=200, max_records=self.max_records)
            self.stats.polls += 1
            if incoming:
                try:
                    await self.process(incoming)
                except _InterruptedError:
                    # Nothing is committed: this poll (and any not committed yet) is
                    # applied again after the restart, idempotently, never skipped.
                    log.info("stopping with events still to retry: not committing")
                    return
                uncommitted = True
            self.consumer.mark_applied()  # skipped and dead-lettered records count as done
            if uncommitted and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                await self._commit()
                uncommitted = False
                last_commit = time.monotonic()
        if uncommitted:
            await self._commit()

    async def _commit(self) -> None:
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        while True:
            try:
                await self.consumer.commit()
                self.stats.commits += 1
                return
            except KafkaError as exc:
                if self._stopping.is_set() and backoff.attempt >= 5:
                    # Shutting down: uncommitted events are re-applied after restart
                    # (idempotent), so giving up here loses nothing.
                    log.warning("final offset commit failed, will re-apply on start: %s", exc)
                    return
                log.warning("offset commit failed, retrying: %s", exc)
                await backoff.sleep()

    async def process(self, incoming: list[Incoming]) -> ApplyReport:
        """Apply a poll's batches; returns the combined report.

        Consecutive records of one peer are applied together: one pipelined round trip to
        Redis for all of them instead of one per record, which is what kept the consumer
        behind at a thousand writes a second (records are small at such rates: the
        producer's linger is 2 ms). Order is kept (the applier keeps each db's events in
        order), and a refused event is still a dead letter at its own record's offset."""
        total = ApplyReport()
        for run in _runs(incoming):
            events = [event for item in run for event in item.batch.events]
            report = await self._apply_until_decided(events, run[0].batch.source)
            if report.rejected:
                home = {id(event): item for item in run for event in item.batch.events}
                for rejection in report.rejected:
                    item = home.get(id(rejection.event), run[0])
                    await self.dead_letters.send(
                        pack_event(rejection.event),
                        rejection.message,
                        code=rejection.reason,
                        unit="event",
                        topic=item.topic,
                        partition=item.partition,
                        offset=item.offset,
                    )
            self.on_applied(report)
            total.merge(report)
            self.stats.events += len(events)
            for item in run:
                self._observe(item)
        s = self.stats
        s.applied += total.applied
        s.stale += total.stale
        s.remote_won += total.remote_won
        s.local_won += total.local_won
        s.rejected += len(total.rejected)
        return total

    def _observe(self, item: Incoming) -> None:
        if not item.produced_ms or not item.consumed_at:
            return
        n = len(item.batch.events)
        now_wall_ms = float(wall_ms())
        consumed_wall_ms = now_wall_ms - (time.monotonic() - item.consumed_at) * 1000
        lat = self.latency
        lat.observe("produced_to_consumed", (consumed_wall_ms - item.produced_ms) / 1000, n)
        lat.observe("consumed_to_applied", time.monotonic() - item.consumed_at, n)
        lat.observe("produced_to_applied", (now_wall_ms - item.produced_ms) / 1000, n)

    async def _apply(self, events: Sequence[ChangeEvent], source: str) -> ApplyReport:
        # Redis unreachable (restarting): wait for it; these events cannot be skipped.
        return await retrying(partial(self.applier.apply, events, source), what="applying")

    async def _apply_until_decided(self, events: Sequence[ChangeEvent], source: str) -> ApplyReport:
        """Apply events (of one peer) until each has an outcome (see the module doc)."""
        total = ApplyReport()
        step = await self._apply(events, source)
        defer_rounds = 0
        failing_since: float | None = None
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        while True:
            if _executed(step):
                await self._taking_writes()
            deferred, failed = step.deferred, step.failed
            step.deferred, step.failed = [], []
            # At once, not after the retries below: if Redis is lost (and restarted empty)
            # while some events are retried, what did go in must reach the index that
            # described the Redis it went into, not the one rebuilt after it.
            self.publisher.applied(step.digest_changes)
            total.merge(step)
            again: list[ChangeEvent] = []
            if deferred:
                defer_rounds += 1
                again += await self._settle_deferred(deferred, defer_rounds, total)
            if failed:
                now = time.monotonic()
                failing_since = failing_since or now
                budget = 0.0 if self._degraded else self.transient_retry_s
                if now - failing_since >= budget:
                    await self._give_up(failed)
                else:
                    self.stats.retried += len(failed)
                    log.warning("redis refused %d events (%s); retrying", len(failed), failed[0][1])
                    await self._pause(backoff.next_delay())
                    again += [event for event, _ in failed]
            if not again:
                return total
            step = await self._apply(again, source)

    async def _settle_deferred(
        self, deferred: list[ChangeEvent], rounds: int, report: ApplyReport
    ) -> list[ChangeEvent]:
        """Ship the local writes that hold `deferred` back; returns what to apply again."""
        self.stats.deferred += len(deferred)
        if rounds > MAX_DEFER_ROUNDS:
            # Local writes keep landing between our versioning and our apply: they win
            # against these remote versions anyway (module doc). Do not hold the others up.
            self.stats.superseded += len(deferred)
            log.info(
                "%d remote events superseded by local writes that kept racing them",
                len(deferred),
            )
            return []
        judged = await self.judge_local(rounds == 1)
        if judged.verdict is LocalVerdict.CAPTURED:
            self.stats.deferred_to_capture += len(deferred)
            return deferred  # versioned by the capture, dated when it read them
        keys: dict[int, set[bytes]] = {}
        for event in deferred:
            keys.setdefault(event.db, set()).add(event.key)
        if judged.verdict is LocalVerdict.FOUND_LATE:
            self.stats.deferred_found_late += len(deferred)
            local = await self.publisher.publish_found_late(
                keys,
                late_floor_ms=judged.late_floor_ms,
                settle=self.capture_settled,
                retry="versioning deferred keys found late",
            )
        else:
            # A local write found unversioned just after this process did not run for a
            # while may be from the pause: dated as late then, like the capture dates it.
            late = self.stall is not None and await self.stall.behind()
            local = await self.publisher.publish(
                keys, replay=late, retry="versioning deferred keys"
            )
        await local.wait()
        refused = set(local.report.refused)
        if not refused:
            return deferred
        # Keys whose clock is at the top of its range cannot be versioned, so they would
        # stay deferred for good (the versioner logged why): these events are dead letters.
        for event in deferred:
            if (event.db, event.key) in refused:
                report.rejected.append(
                    Rejection(
                        event,
                        "local-clock-range",
                        "the local key cannot be versioned (its clock is at "
                        "MAX_CLOCK_ENTRY), so this remote write cannot be applied over it",
                    )
                )
        return [e for e in deferred if (e.db, e.key) not in refused]

    async def _taking_writes(self) -> None:
        """Redis executed a write again after refusing them."""
        if not self._degraded:
            return
        self._degraded = False
        if self._given_up_since_gap:
            self._given_up_since_gap = False
            # Events given up to the last gap after its recovery may have started: one
            # more gap, whose recovery starts after them, covers them.
            await self.on_gap(
                Gap(
                    GAP_REASON,
                    "remote events given up while redis refused writes",
                    wall_ms(),
                )
            )

    async def _give_up(self, failed: list[tuple[ChangeEvent, str]]) -> None:
        """Events Redis keeps refusing: a gap, which the daemon's recovery repairs."""
        self.stats.given_up += len(failed)
        detail = (
            f"redis kept refusing {len(failed)} remote events for {self.transient_retry_s:g}s "
            f"(last error: {failed[-1][1][:200]}); they are repaired from the peers"
        )
        if self._degraded:
            self._given_up_since_gap = True
            log.warning("%s (same gap)", detail)
            return
        self._degraded = True
        log.error("%s", detail)
        await self.on_gap(Gap(GAP_REASON, detail, wall_ms()))

    async def _pause(self, delay_s: float) -> None:
        """Sleep before a retry; a stop cuts it short and leaves the poll uncommitted."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        if self._stopping.is_set():
            raise _InterruptedError


def _executed(report: ApplyReport) -> bool:
    """Whether Redis executed any of a report's events (any outcome but an error reply)."""
    return bool(
        report.applied
        or report.stale
        or report.remote_won
        or report.local_won
        or report.deferred
        or report.rejected
        or report.conflicts
    )


def _runs(incoming: list[Incoming]) -> list[list[Incoming]]:
    """`incoming` cut into runs of consecutive records from the same peer (in order)."""
    runs: list[list[Incoming]] = []
    for item in incoming:
        if runs and runs[-1][0].batch.source == item.batch.source:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs
