"""The control channel: heartbeats, anti-entropy and resync messages between daemons.

One single-partition topic, `<prefix>.control`, read by every daemon from its end (no
consumer group: a message is for whoever is running now, and sessions restart anyway).
A message is msgpack:

    {"v": 1, "type": str, "from": region, "to": region | "*", "session": str, "body": {...}}

Bodies are per type (see `reconciler.heartbeat`, `reconciler.consistency.antientropy`).
Anything that does not decode is logged and dropped; the control channel never crashes the
daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from replication.model.keys import control_topic, is_valid_region_name
from replication.transport.settings import KafkaSettings

log = logging.getLogger(__name__)

CONTROL_VERSION = 1
MAX_CONTROL_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ControlMessage:
    type: str
    sender: str
    to: str
    session: str
    body: dict[str, Any] = field(default_factory=dict)
    size: int = 0  # bytes on the wire (for the reports' bytes-exchanged figures)


def encode(msg: ControlMessage) -> bytes:
    packed: bytes = msgpack.packb(
        {
            "v": CONTROL_VERSION,
            "type": msg.type,
            "from": msg.sender,
            "to": msg.to,
            "session": msg.session,
            "body": msg.body,
        },
        use_bin_type=True,
    )
    return packed


def decode(data: bytes) -> ControlMessage | None:
    """A control message, or None (logged) for anything malformed."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        log.warning("undecodable control message dropped: %s", exc)
        return None
    if not isinstance(raw, dict) or raw.get("v") != CONTROL_VERSION:
        log.warning("control message of unknown shape or version dropped")
        return None
    kind, sender, to = raw.get("type"), raw.get("from"), raw.get("to")
    session, body = raw.get("session", ""), raw.get("body", {})
    if not (isinstance(kind, str) and isinstance(sender, str) and isinstance(to, str)):
        log.warning("control message with bad type/from/to dropped")
        return None
    if not is_valid_region_name(sender):
        log.warning("control message from an invalid region name dropped")
        return None
    if not isinstance(session, str) or not isinstance(body, dict):
        log.warning("control message with bad session/body dropped")
        return None
    return ControlMessage(kind, sender, to, session, body, len(data))


Handler = Callable[[ControlMessage], Awaitable[None]]


class ControlChannel:
    """Sends control messages and dispatches received ones to handlers by type prefix."""

    def __init__(
        self, settings: KafkaSettings, region: str, producer: Callable[[], AIOKafkaProducer]
    ) -> None:
        self.settings = settings
        self.region = region
        self.topic = control_topic(settings.topic_prefix)
        self._producer = producer
        self._consumer: AIOKafkaConsumer | None = None
        self._handlers: dict[str, Handler] = {}
        self._stopping = asyncio.Event()
        self.sent_bytes = 0
        self.received_bytes = 0

    def on(self, prefix: str, handler: Handler) -> None:
        """Route messages whose type starts with `prefix` (e.g. "ae.") to `handler`."""
        self._handlers[prefix] = handler

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.settings.client_options(),
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=MAX_CONTROL_BYTES * 2,
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        self._stopping.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def send(self, type_: str, to: str, session: str = "", **body: Any) -> int:
        """Send a message; returns its size in bytes once Kafka has acknowledged it."""
        data = encode(ControlMessage(type_, self.region, to, session, body))
        if len(data) > MAX_CONTROL_BYTES:
            raise ValueError(f"control message {type_} of {len(data)} bytes is too large")
        fut = await self._producer().send(self.topic, data)
        await fut
        self.sent_bytes += len(data)
        return len(data)

    async def run(self) -> None:
        """Receive and dispatch until stopped. A failing handler is logged, not fatal."""
        if self._consumer is None:
            raise RuntimeError("ControlChannel.run() before start()")
        consumer = self._consumer
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                log.warning("control channel fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    await self._dispatch(record.value or b"")

    async def _dispatch(self, data: bytes) -> None:
        msg = decode(data)
        if msg is None or msg.sender == self.region:
            return
        if msg.to not in ("*", self.region):
            return
        self.received_bytes += len(data)
        for prefix, handler in self._handlers.items():
            if msg.type.startswith(prefix):
                try:
                    await handler(msg)
                except Exception:  # a bad message must never stop the daemon
                    log.exception("control handler for %s failed", msg.type)
                return
