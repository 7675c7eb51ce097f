"""Dead letters: what cannot be decoded or applied goes to `<prefix>.deadletter` with the
reason in a header; the consumer moves on and counts it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from replication.model.keys import deadletter_topic

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, producer: Callable[[], AIOKafkaProducer], prefix: str, region: str) -> None:
        self._producer = producer
        self.topic = deadletter_topic(prefix)
        self.region = region
        self.count = 0

    async def send(
        self, payload: bytes, reason: str, *, topic: str, partition: int, offset: int
    ) -> None:
        """Park `payload` with why and where it came from; returns once Kafka has it."""
        self.count += 1
        log.warning(
            "dead letter: topic=%s partition=%d offset=%d reason=%s",
            topic,
            partition,
            offset,
            reason,
        )
        headers = [
            ("reason", reason.encode()),
            ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()),
            ("source_offset", str(offset).encode()),
            ("consumer_region", self.region.encode()),
        ]
        fut = await self._producer().send(self.topic, payload, headers=headers)
        await fut
