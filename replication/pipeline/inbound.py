"""Inbound: peers' change topics applied to the local Redis, then offsets committed.

A `deferred` event means the key holds a local write the capture has not versioned yet. We
version those keys here (shipping the local write, so it is never lost) and apply again:
now it is an ordinary, recorded conflict, resolved by the rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from aiokafka.errors import KafkaError

from replication.backoff import Backoff, retrying
from replication.latency import PEER_STAGES, StageLatency
from replication.model.event import ChangeEvent
from replication.model.wire import encode_batch
from replication.pipeline.applier import Applier, ApplyReport
from replication.pipeline.publisher import Publisher
from replication.transport.consumer import ChangeConsumer, Incoming
from replication.transport.deadletter import DeadLetters

log = logging.getLogger(__name__)

MAX_DEFER_ROUNDS = 20
# Offsets are committed at most this often, not after every poll: a commit is a round trip
# to the group coordinator on the apply loop, and what it protects against (re-applying a
# few records after a crash) is harmless, as applying is idempotent by clocks.
COMMIT_INTERVAL_S = 0.2


@dataclass
class InboundStats:
    polls: int = 0
    events: int = 0
    applied: int = 0
    stale: int = 0
    remote_won: int = 0
    local_won: int = 0
    deferred: int = 0
    rejected: int = 0
    commits: int = 0


class Inbound:
    def __init__(
        self,
        consumer: ChangeConsumer,
        applier: Applier,
        publisher: Publisher,
        dead_letters: DeadLetters,
        *,
        on_applied: Callable[[ApplyReport], None],
        max_records: int = 500,
    ) -> None:
        self.consumer = consumer
        self.applier = applier
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.on_applied = on_applied
        self.max_records = max_records
        self.stats = InboundStats()
        self.latency = StageLatency.of(PEER_STAGES)
        self._stopping = asyncio.Event()

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
                await self.process(incoming)
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
        """Apply a poll's batches; returns the combined report."""
        total = ApplyReport()
        for item in incoming:
            report = await retrying(
                partial(self.applier.apply, item.batch.events, item.batch.source),
                what="applying a batch",
            )
            if report.deferred:
                await self._settle_deferred(report, item.batch.source)
            for event, reason in report.rejected:
                payload = encode_batch(item.batch.source, [event])
                await self.dead_letters.send(
                    payload,
                    reason,
                    topic=item.topic,
                    partition=item.partition,
                    offset=item.offset,
                )
            # At once, not for the whole poll: if Redis is lost (and restarted empty) while
            # a later record is retried, these changes must reach the index that described
            # the Redis they went into, not the one rebuilt after it.
            self.publisher.applied(report.digest_changes)
            self.on_applied(report)
            total.merge(report)
            self.stats.events += len(item.batch.events)
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
        now_wall_ms = time.time_ns() / 1e6
        consumed_wall_ms = now_wall_ms - (time.monotonic() - item.consumed_at) * 1000
        lat = self.latency
        lat.observe("produced_to_consumed", (consumed_wall_ms - item.produced_ms) / 1000, n)
        lat.observe("consumed_to_applied", time.monotonic() - item.consumed_at, n)
        lat.observe("produced_to_applied", (now_wall_ms - item.produced_ms) / 1000, n)

    async def _settle_deferred(self, report: ApplyReport, source: str) -> None:
        backoff = Backoff(base_s=0.01, cap_s=1.0)
        pending: list[ChangeEvent] = report.deferred
        report.deferred = []
        rounds = 0
        while pending:
            rounds += 1
            self.stats.deferred += len(pending)
            keys: dict[int, set[bytes]] = {}
            for event in pending:
                keys.setdefault(event.db, set()).add(event.key)
            local = await self.publisher.publish(keys, retry="versioning deferred keys")
            await local.wait()
            retry = await retrying(
                partial(self.applier.apply, pending, source), what="re-applying deferred events"
            )
            pending = retry.deferred
            retry.deferred = []
            report.merge(retry)
            if pending and rounds >= MAX_DEFER_ROUNDS:
                # Local writes keep racing these keys; never drop, just slow down.
                log.warning("still deferred after %d rounds: %d events", rounds, len(pending))
                await backoff.sleep()
