"""The change consumer: every peer's change topic, in one consumer group per region.

Offsets are committed manually, after the events of a poll have been applied
(at-least-once; applying is idempotent by clocks).

Every record is verified before anything in it is read: signed by a key of the region
whose topic it is on, claiming that region as its source (replication.model.wire). One
that fails is a dead letter as a whole. Each event of a verified record is then admitted
or not (replication.model.admission: origin, clock regions, clock drift, database); an
event that is not is a dead letter on its own, and the rest of its record goes on.
Nothing here raises for bad input: the consumer always moves on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from replication.errors import DecodeError
from replication.model.admission import QUARANTINE_REASON, Admission
from replication.model.auth import Keyring
from replication.model.event import ChangeEvent
from replication.model.hlc import ceiling
from replication.model.keys import changes_topic
from replication.model.wire import EventBatch, decode_batch, pack_event
from replication.transport.deadletter import DeadLetters
from replication.transport.producer import TARGET_HEADER
from replication.transport.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    batch: EventBatch
    produced_ms: int = 0  # the record's timestamp: when the origin's producer queued it
    consumed_at: float = 0.0  # time.monotonic() when poll() handed it out


class ChangeConsumer:
    """Reads peers' change topics. `start()`/`stop()`, or `async with`."""

    def __init__(
        self,
        settings: KafkaSettings,
        admission: Admission,
        keyring: Keyring,
        dead_letters: DeadLetters,
        *,
        max_drift_ms: int = 60_000,
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.keyring = keyring
        self.max_drift_ms = max_drift_ms
        self.region = region = admission.region
        self.dead_letters = dead_letters
        self.topics = {changes_topic(settings.topic_prefix, p): p for p in sorted(admission.peers)}
        self.group_id = group_id or f"{settings.topic_prefix}.applier.{region}"
        self._consumer: AIOKafkaConsumer | None = None
        self.records = 0
        self.events = 0
        self.skipped = 0  # records targeted at another region
        self.rejected_records = 0  # failed as a whole (signature, source, decoding)
        self.rejected_events = 0  # refused one by one (malformed, not admitted)
        self.quarantined = 0  # of those: clocks too far ahead (alert on this)
        # Offset after the last record handed out by poll() / after the last one applied.
        self._polled: dict[TopicPartition, int] = {}
        self._applied: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            *self.topics,
            **self.settings.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.settings.max_message_bytes,
            fetch_max_bytes=max(self.settings.max_message_bytes, 52_428_800),
        )
        await consumer.start()
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> ChangeConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def kafka(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("ChangeConsumer used before start()")
        return self._consumer

    async def poll(self, *, timeout_ms: int = 200, max_records: int = 500) -> list[Incoming]:
        """Fetch, verify, decode and admit what is available; dead-letters the rest."""
        fetched = await self.kafka.getmany(timeout_ms=timeout_ms, max_records=max_records)
        consumed_at = time.monotonic()
        incoming: list[Incoming] = []
        for tp, records in fetched.items():
            if records:
                self._polled[tp] = records[-1].offset + 1
            expected_source = self.topics.get(tp.topic)
            for record in records:
                self.records += 1
                if record.headers and not self._for_us(record.headers):
                    self.skipped += 1
                    continue
                batch = await self._admit(tp, record.offset, record.value or b"", expected_source)
                if batch is not None:
                    incoming.append(
                        Incoming(
                            tp.topic,
                            tp.partition,
                            record.offset,
                            batch,
                            produced_ms=record.timestamp or 0,
                            consumed_at=consumed_at,
                        )
                    )
        return incoming

    async def _admit(
        self, tp: TopicPartition, offset: int, payload: bytes, expected_source: str | None
    ) -> EventBatch | None:
        """The admitted events of one record (None if none): the rest is dead-lettered."""

        async def park(data: bytes, message: str, code: str, unit: str) -> None:
            await self.dead_letters.send(
                data,
                message,
                code=code,
                unit=unit,
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
            )

        try:
            batch = decode_batch(
                payload,
                self.keyring,
                expected_source=expected_source,
                max_bytes=self.settings.max_message_bytes,
            )
            if batch.target not in ("", self.region):
                # The header said us, the signed target says otherwise: a tampered header.
                raise DecodeError(
                    f"record signed for {batch.target!r} arrived marked for {self.region}",
                    reason="wrong-target",
                )
        except DecodeError as exc:
            self.rejected_records += 1
            await park(payload, str(exc), exc.reason, "record")
            return None
        for bad in batch.invalid:
            self.rejected_events += 1
            await park(bad.payload(), bad.message, bad.reason, "event")
        top = ceiling(self.max_drift_ms)
        admitted: list[ChangeEvent] = []
        targeted = batch.target == self.region
        for event in batch.events:
            refusal = self.admission.check(
                event, source=batch.source, targeted=targeted, ceiling=top
            )
            if refusal is None:
                admitted.append(event)
                continue
            self.rejected_events += 1
            if refusal.reason == QUARANTINE_REASON:
                self.quarantined += 1
            await park(pack_event(event), refusal.message, refusal.reason, "event")
        self.events += len(admitted)
        if not admitted:
            return None
        return EventBatch(batch.source, admitted)

    def _for_us(self, headers: Sequence[tuple[str, bytes]]) -> bool:
        for name, value in headers:
            if name == TARGET_HEADER:
                return value.decode(errors="replace") == self.region
        return True

    async def commit(self) -> None:
        """Commit the positions of everything polled so far."""
        await self.kafka.commit()

    def mark_applied(self) -> None:
        """Everything returned by poll() so far has been applied (or dead-lettered)."""
        self._applied.update(self._polled)

    async def applied_offsets(self) -> dict[str, dict[int, int]]:
        """Per peer region and partition, the offset up to which its changes are applied.

        Unlike the consumer's position, this does not count records fetched but still being
        applied. A partition not polled since its assignment is at its position (the
        committed offset)."""
        consumer = self.kafka
        applied: dict[str, dict[int, int]] = {}
        for tp in consumer.assignment():
            if tp in self._polled:
                offset = self._applied.get(tp)
                if offset is None:
                    offset = await consumer.committed(tp) or 0
            else:
                offset = await consumer.position(tp)
            applied.setdefault(self.topics.get(tp.topic, tp.topic), {})[tp.partition] = offset
        return applied

    async def end_offsets(self, region: str) -> dict[int, int]:
        """The end offsets of `region`'s topic (only partitions assigned to us)."""
        consumer = self.kafka
        topic = changes_topic(self.settings.topic_prefix, region)
        assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
        if not assigned:
            return {}
        end = await consumer.end_offsets(assigned)
        return {tp.partition: offset for tp, offset in end.items()}

    async def own_end_offsets(self) -> dict[int, int]:
        """The end offsets of this region's own topic (which it does not consume), over the
        partitions its producer writes: what earlier daemons of the region shipped."""
        topic = changes_topic(self.settings.topic_prefix, self.region)
        parts = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        end = await self.kafka.end_offsets(parts)
        return {tp.partition: offset for tp, offset in end.items()}

    async def end_offsets_all(self) -> dict[str, dict[int, int]]:
        """Per peer region and partition assigned to us, the end offset of its topic now."""
        consumer = self.kafka
        assigned = list(consumer.assignment())
        if not assigned:
            return {}
        end: dict[str, dict[int, int]] = {}
        for tp, offset in (await consumer.end_offsets(assigned)).items():
            end.setdefault(self.topics.get(tp.topic, tp.topic), {})[tp.partition] = offset
        return end

    async def lag(self, applied: dict[str, dict[int, int]] | None = None) -> dict[str, int]:
        """Records not yet applied, per peer region (for heartbeats and metrics), from
        `applied` if the caller has just read `applied_offsets()`. A peer is missing until
        its partitions are assigned."""
        end = await self.end_offsets_all()
        if applied is None:
            applied = await self.applied_offsets()
        return {
            peer: sum(
                max(0, offset - applied.get(peer, {}).get(partition, 0))
                for partition, offset in partitions.items()
            )
            for peer, partitions in end.items()
        }
