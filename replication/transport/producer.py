"""The change producer: events into `<prefix>.changes.<region>`, many per record.

A key's partition is its hash slot modulo the topic's partitions, so every change of one
key goes through one partition, in order. Events bound for one partition are packed into
records of at most `record_max_events` / `record_max_bytes`. The producer is idempotent with
`acks=all`: a record is acknowledged only once every in-sync replica has it.

`ship()` returns a `Shipment`: awaiting it waits until Kafka has acknowledged every record,
re-sending failed records with backoff (duplicates are harmless: applying is idempotent by
clocks). Only then may the capture acknowledge the Redis stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from replication.backoff import Backoff
from replication.errors import ReconcilerError
from replication.model.auth import Signer
from replication.model.event import ChangeEvent
from replication.model.keys import changes_topic
from replication.model.slots import key_slot
from replication.model.wire import ClockRangeError, assemble_batch, pack_event
from replication.transport.settings import KafkaSettings

log = logging.getLogger(__name__)

TARGET_HEADER = "target"


class EventTooLargeError(ReconcilerError):
    """One event alone is larger than a Kafka message may be."""


@dataclass(slots=True)
class Record:
    partition: int
    payload: bytes
    events: int
    target: str | None = None  # only this region applies it (repair, resync)


@dataclass(slots=True)
class Shipment:
    """Records handed to the producer for one batch of events; `wait()` until all are in."""

    producer: ChangeProducer
    records: list[Record]
    futures: list[asyncio.Future[object]] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.records)

    async def wait(self) -> None:
        """Return once Kafka acknowledged every record (re-sending what failed)."""
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        pending = list(zip(self.records, self.futures, strict=True))
        while pending:
            failed: list[Record] = []
            for record, fut in pending:
                try:
                    await fut
                except KafkaError as exc:
                    log.warning(
                        "kafka did not acknowledge a record (partition=%d events=%d): %s; "
                        "re-sending",
                        record.partition,
                        record.events,
                        exc,
                    )
                    failed.append(record)
            if not failed:
                return
            self.producer.resends += len(failed)
            await backoff.sleep()
            pending = [(r, await self.producer._send(r)) for r in failed]


class ChangeProducer:
    """Ships this region's change events. `start()`/`stop()` (flushes), or `async with`."""

    def __init__(self, settings: KafkaSettings, signer: Signer) -> None:
        self.settings = settings
        self.signer = signer  # every record is signed as this region (replication.model.wire)
        self.region = signer.region
        self.topic = changes_topic(settings.topic_prefix, self.region)
        self._producer: AIOKafkaProducer | None = None
        self._partitions = settings.partitions
        self.records_sent = 0
        self.events_sent = 0
        self.resends = 0
        self.clock_refused = 0  # versions not shipped: a clock entry above MAX_CLOCK_ENTRY
        # Per partition, the offset after the last record Kafka acknowledged: with the
        # capture's acknowledged stream offset, it tells peers what they must have applied
        # before anti-entropy can tell divergence from changes still in flight.
        self.acked: dict[int, int] = {}

    @property
    def kafka(self) -> AIOKafkaProducer:
        """The underlying producer (shared for dead letters and control messages)."""
        if self._producer is None:
            raise RuntimeError("ChangeProducer used before start()")
        return self._producer

    async def start(self) -> None:
        s = self.settings
        producer = AIOKafkaProducer(
            **s.client_options(),
            enable_idempotence=True,
            acks="all",
            linger_ms=s.linger_ms,
            max_batch_size=max(s.record_max_bytes * 2, 16384),
            max_request_size=s.max_message_bytes,
            compression_type=s.compression,
        )
        await producer.start()
        try:
            partitions = await producer.partitions_for(self.topic)
        except BaseException:
            await producer.stop()
            raise
        if partitions:
            self._partitions = len(partitions)
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is buffered, then close. Safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> ChangeProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def partition_of(self, key: bytes) -> int:
        return key_slot(key) % self._partitions

    def pack(self, events: Sequence[ChangeEvent], target: str | None = None) -> list[Record]:
        """Group events by partition into signed records within the size limits.

        A version whose clock is out of range is refused here (logged, counted, not
        shipped): every peer would refuse it, and with it the rest of its record."""
        s = self.settings
        signer = self.signer
        open_records: dict[int, tuple[list[bytes], int]] = {}
        records: list[Record] = []
        for event in events:
            try:
                packed = pack_event(event)
            except ClockRangeError as exc:
                self.clock_refused += 1
                log.error("%s", exc)  # noqa: TRY400 - an operator's problem, not a bug
                continue
            if len(packed) > s.max_message_bytes - 1024:
                raise EventTooLargeError(
                    f"a change of {len(packed)} bytes (key in db {event.db}) exceeds the "
                    f"Kafka message limit of {s.max_message_bytes} bytes; raise "
                    "kafka.max_message_bytes (and the topic's max.message.bytes) or keep "
                    "values smaller"
                )
            part = self.partition_of(event.key)
            items, size = open_records.get(part, ([], 0))
            if items and (
                len(items) >= s.record_max_events or size + len(packed) > s.record_max_bytes
            ):
                payload = assemble_batch(signer, items, target or "")
                records.append(Record(part, payload, len(items), target))
                items, size = [], 0
            items.append(packed)
            open_records[part] = (items, size + len(packed))
        for part, (items, _) in open_records.items():
            payload = assemble_batch(signer, items, target or "")
            records.append(Record(part, payload, len(items), target))
        return records

    async def _send(self, record: Record) -> asyncio.Future[object]:
        headers = [(TARGET_HEADER, record.target.encode())] if record.target else None
        fut: asyncio.Future[object] = await self.kafka.send(
            self.topic, record.payload, partition=record.partition, headers=headers
        )
        fut.add_done_callback(self._on_acked)
        return fut

    def _on_acked(self, fut: asyncio.Future[object]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        meta = fut.result()
        partition, offset = getattr(meta, "partition", None), getattr(meta, "offset", None)
        if isinstance(partition, int) and isinstance(offset, int):
            self.acked[partition] = max(self.acked.get(partition, 0), offset + 1)

    async def ship(self, events: Sequence[ChangeEvent], *, target: str | None = None) -> Shipment:
        """Hand events to Kafka (returns once they are queued, not yet acknowledged).

        With `target`, only that region applies them (repair and resync traffic); the
        others skip the records without decoding them.
        """
        records = self.pack(events, target)
        shipment = Shipment(self, records)
        for record in records:
            shipment.futures.append(await self._send(record))
        self.records_sent += len(records)
        self.events_sent += shipment.events
        return shipment
