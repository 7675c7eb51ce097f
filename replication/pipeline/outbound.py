"""Outbound: the region's change stream, versioned, shipped to Kafka, then acknowledged.

    source.batches() -> publisher.version() -> publisher.send() -> (Kafka acks) -> source.ack()
    `------------ reader -------------'   `-- shipper --'       `------ acker ------'

Three tasks, so that a slow or unreachable Kafka never delays the versioning: a write is
dated by the clock when the capture reads it, not when Kafka takes it (a write held back
for the seconds of a cut and dated at the heal would beat writes made elsewhere meanwhile:
the fault suite's `kafka-cut`). Up to `max_unshipped_events` versioned changes may wait for
the producer (beyond, the reader waits: memory is bounded) and `max_in_flight` batches for
Kafka's acknowledgement; acknowledgements go back to the source strictly in stream order,
and only once Kafka has every record of the batch and of all batches before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from replication.capture.batch import CaptureBatch, ChangeSource, Gap
from replication.capture.position import CapturePosition
from replication.capture.versioner import VersionedChange
from replication.latency import ORIGIN_STAGES, StageLatency
from replication.pipeline.publisher import Publisher
from replication.pipeline.stall import StallWatch
from replication.transport.producer import Shipment

log = logging.getLogger(__name__)


@dataclass
class OutboundStats:
    batches: int = 0
    commands: int = 0
    changes: int = 0
    reshipped: int = 0
    echoes: int = 0
    unsupported: int = 0
    acked_offset: int = 0
    late_batches: int = 0  # written while the process was stopped (StallWatch)


@dataclass(frozen=True, slots=True)
class _Versioned:
    offset: int | None
    changes: list[VersionedChange]
    versioned_at: float


@dataclass(frozen=True, slots=True)
class _InFlight:
    offset: int | None
    shipment: Shipment | None
    versioned_at: float


class Outbound:
    """Runs until `stop()`; then finishes what is in flight, acknowledges it, and returns."""

    def __init__(
        self,
        source: ChangeSource,
        publisher: Publisher,
        *,
        on_gap: Callable[[Gap], Awaitable[None]],
        on_flush: Callable[[frozenset[int]], Awaitable[None]],
        max_in_flight: int = 8,
        max_unshipped_events: int = 50_000,
        stall: StallWatch | None = None,
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.on_gap = on_gap
        self.on_flush = on_flush
        self.stall = stall
        self.stats = OutboundStats()
        self.latency = StageLatency.of(ORIGIN_STAGES)
        # (end offset, shipment, versioned at) per batch in stream order; None marks the end.
        self._in_flight: asyncio.Queue[_InFlight | None] = asyncio.Queue(max_in_flight)
        # Versioned, not yet handed to the producer; bounded by events, not batches (a
        # batch read during a cut may hold thousands).
        self._unshipped: asyncio.Queue[_Versioned | None] = asyncio.Queue()
        self.max_unshipped_events = max_unshipped_events
        self.unshipped_events = 0
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        # Stream position through which every batch is versioned: the replication history
        # (None: none yet) and the offset in it; waited on by `versioned_through`. Offsets
        # of two histories (a Redis restarted) say nothing about each other.
        self.versioned_replid: str | None = None
        self.versioned_offset = 0
        self._progress = asyncio.Condition()

    def stop(self) -> None:
        """Ask `run()` to stop reading and drain."""
        self._stopping.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            acker = group.create_task(self._ack())
            shipper = group.create_task(self._ship())
            ticker = group.create_task(self.stall.run()) if self.stall is not None else None
            try:
                await self._read()
            finally:
                if ticker is not None:
                    ticker.cancel()
            # The shipper hands on what is queued, then the acker finishes it; both return.
            await self._unshipped.put(None)
            await shipper
            await acker

    async def _read(self) -> None:
        """Take batches until stopped. A stop interrupts the wait for the next batch, never
        the handling of one: a batch half versioned would have to be replayed."""
        batches = aiter(self.source.batches())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                following = asyncio.ensure_future(anext(batches))
                await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await following
                    return
                try:
                    batch = following.result()
                except StopAsyncIteration:
                    return
                await self.handle(batch)
        finally:
            stopping.cancel()

    async def handle(self, batch: CaptureBatch) -> None:
        """Version one capture batch and hand its events to Kafka."""
        if batch.flushed_dbs:
            await self.on_flush(batch.flushed_dbs)
        if batch.gap is not None:
            if self.stall is not None:
                self.stall.forget()
            await self.on_gap(batch.gap)
            self.versioned_replid, self.versioned_offset = None, 0  # another history
        changes: list[VersionedChange] = []
        versioned = 0.0
        if batch.keys:
            # Written while this process was stopped: dated like a replayed write, not by
            # the clock at the resume (replication.pipeline.stall).
            late = self.stall is not None and await self.stall.is_late(batch.end_offset)
            if late:
                self.stats.late_batches += 1
            # The same batch is retried while Redis is unreachable: skipping it would lose
            # its writes (the stream moves on; its offset would be acknowledged).
            report = await self.publisher.version(
                batch.keys,
                replay=batch.replay or late,
                retry="versioning a capture batch",
                read_ms=batch.read_ms,
            )
            changes = report.changes
            self.stats.reshipped += report.reshipped
            self.stats.echoes += report.echoes
            self.stats.unsupported += len(report.unsupported)
            self.stats.changes += len(report.changes)
            versioned = time.monotonic()
            self.latency.observe(
                "captured_to_versioned", versioned - batch.created_at, len(report.changes)
            )
        self.stats.batches += 1
        self.stats.commands += batch.commands
        if batch.end_offset is not None:
            async with self._progress:
                self.versioned_replid = batch.replid
                self.versioned_offset = batch.end_offset
                self._progress.notify_all()
        await self._reserve(len(changes))
        self._unshipped.put_nowait(_Versioned(batch.end_offset, changes, versioned))

    def follows(self, replid: str) -> bool:
        """Whether the last batch versioned belongs to replication history `replid`."""
        return self.versioned_replid == replid

    async def versioned_through(self, position: CapturePosition, timeout_s: float) -> bool:
        """Wait until every batch of `position`'s replication history ending at or before
        its offset is versioned; False if that took longer than `timeout_s`."""

        def reached() -> bool:
            return self.follows(position.replid) and self.versioned_offset >= position.offset

        try:
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(reached)
        except TimeoutError:
            return False
        return True

    async def _reserve(self, events: int) -> None:
        """Wait until `events` more fit under `max_unshipped_events` (a batch larger than
        the bound passes alone), then count them."""
        while self.unshipped_events and (
            self.unshipped_events + events > self.max_unshipped_events
        ):
            self._room.clear()
            await self._room.wait()
        self.unshipped_events += events

    async def _ship(self) -> None:
        while (item := await self._unshipped.get()) is not None:
            shipment = await self.publisher.send(item.changes)
            self.unshipped_events -= len(item.changes)
            self._room.set()
            await self._in_flight.put(_InFlight(item.offset, shipment, item.versioned_at))
        await self._in_flight.put(None)  # the acker finishes what is queued, then returns

    async def _ack(self) -> None:
        while (item := await self._in_flight.get()) is not None:
            offset, shipment = item.offset, item.shipment
            if shipment is not None:
                await shipment.wait()
                self.latency.observe(
                    "versioned_to_acked", time.monotonic() - item.versioned_at, shipment.events
                )
            if offset is not None:
                await self.source.ack(offset)
                self.stats.acked_offset = offset
