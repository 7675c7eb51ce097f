"""The control channel: heartbeats, anti-entropy and resync messages between daemons.

One single-partition topic, `<prefix>.control`, read by every daemon from its end (no
consumer group: a message is for whoever is running now, and sessions restart anyway).
A record is msgpack, signed by its sender (`replication.model.auth`, domain
`DOMAIN_CONTROL`; the sender and key id are bound into the MAC):

    record  = [2, sender, key_id, to, payload_bin, mac]     mac over (to, payload_bin)
    payload = [type, session, sent_ms, body]

`to` is outside the payload so that a daemon skips the (many) messages between other
regions without verifying or decoding them.

Bodies are per type and parsed by `reconciler.consistency.messages`. A record is dropped,
with its reason counted in `rejected` (`reconciler_control_rejected_total{reason}`), when
it is too large or does not decode; its sender is not one of our peers (`unknown-sender`);
its signature does not check out (`unknown-key`, `bad-signature`; schema 1 records are
`unsigned`); it is not addressed to us, or is addressed to everyone (`to = "*"`) while its
type is not a broadcast (only heartbeats are); its type has no handler (`unknown-type`);
or it was sent more than `MAX_AGE_MS` ago or dated further ahead than the allowed clock
drift (`stale`, `future`: a replayed record). Nothing in a record is read before its
signature is verified, and the control channel never crashes the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from reconciler.consistency.messages import BadMessageError, bounded_unpack
from replication.clock import wall_ms
from replication.model.auth import DOMAIN_CONTROL, AuthError, Keyring, Signature, Signer
from replication.model.keys import control_topic, is_valid_region_name
from replication.transport.settings import KafkaSettings

log = logging.getLogger(__name__)

CONTROL_VERSION = 2
UNSIGNED_VERSION = 1
MAX_CONTROL_BYTES = 4 * 1024 * 1024
MAX_AGE_MS = 300_000  # a record older than this (plus the allowed drift) is a replay
_SESSION = re.compile(r"[0-9A-Za-z_-]{0,64}")
_TYPE = re.compile(r"[a-z][a-z0-9._-]{0,31}")
_PACKER = msgpack.Packer(use_bin_type=True)


@dataclass(frozen=True, slots=True)
class ControlMessage:
    type: str
    sender: str
    to: str
    session: str
    body: dict[str, Any] = field(default_factory=dict)
    size: int = 0  # bytes on the wire (for the reports' bytes-exchanged figures)
    sent_ms: int = 0  # the sender's wall clock when it sent the message


class ControlRejectedError(Exception):
    """A control record that is dropped; `reason` is its metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode(msg: ControlMessage, signer: Signer) -> bytes:
    """The signed record for `msg` (sent as `signer`'s region, whatever `msg.sender` says)."""
    payload: bytes = _PACKER.pack([msg.type, msg.session, msg.sent_ms, msg.body])
    signature = signer.sign(DOMAIN_CONTROL, msg.to.encode(), payload)
    record: bytes = _PACKER.pack(
        [CONTROL_VERSION, signer.region, signature.key_id, msg.to, payload, signature.mac]
    )
    return record


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    to: str
    signature: Signature
    payload: bytes


def open_envelope(data: bytes) -> Envelope:
    """The envelope of a record, nothing decoded beyond it (ControlRejectedError)."""
    if not isinstance(data, bytes) or len(data) > MAX_CONTROL_BYTES:
        raise ControlRejectedError("oversized", f"record of {len(data)} bytes")
    try:
        # Six items, no maps: decoding builds nothing larger than the record itself.
        raw = msgpack.unpackb(data, raw=False, max_array_len=6, max_map_len=8)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ControlRejectedError("undecodable", f"not msgpack ({type(exc).__name__})") from None
    if isinstance(raw, list | dict) and _version_of(raw) == UNSIGNED_VERSION:
        raise ControlRejectedError("unsigned", "an unsigned (schema 1) control record")
    if not (isinstance(raw, list) and len(raw) == 6 and raw[0] == CONTROL_VERSION):
        raise ControlRejectedError("undecodable", "not a schema 2 control record")
    _, sender, key_id, to, payload, mac = raw
    if not is_valid_region_name(sender):
        raise ControlRejectedError("undecodable", "sender is not a region name")
    if type(to) is not str or not (to == "*" or is_valid_region_name(to)):
        raise ControlRejectedError("undecodable", "bad recipient")
    if type(key_id) is not str or type(payload) is not bytes or type(mac) is not bytes:
        raise ControlRejectedError("undecodable", "bad key id, payload or MAC")
    return Envelope(sender, to, Signature(key_id, mac), payload)


def _version_of(raw: list[Any] | dict[Any, Any]) -> object:
    if isinstance(raw, dict):
        return raw.get("v")
    return raw[0] if raw else None


def open_payload(envelope: Envelope, size: int) -> ControlMessage:
    """The message of a verified envelope; ControlRejectedError if it is malformed."""
    try:
        raw = bounded_unpack(envelope.payload)
    except BadMessageError as exc:
        raise ControlRejectedError(exc.reason, str(exc)) from None
    if not (isinstance(raw, list) and len(raw) == 4):
        raise ControlRejectedError("malformed", "payload must be [type, session, ms, body]")
    kind, session, sent_ms, body = raw
    if type(kind) is not str or not _TYPE.fullmatch(kind):
        raise ControlRejectedError("malformed", "bad type")
    if type(session) is not str or not _SESSION.fullmatch(session):
        raise ControlRejectedError("malformed", "bad session")
    if type(sent_ms) is not int or not 0 <= sent_ms < 1 << 63:
        raise ControlRejectedError("malformed", "bad timestamp")
    if type(body) is not dict or not all(type(k) is str for k in body):
        raise ControlRejectedError("malformed", "body must be a map with string keys")
    return ControlMessage(kind, envelope.sender, envelope.to, session, body, size, sent_ms)


Handler = Callable[[ControlMessage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Handler
    broadcast: bool  # may be addressed to "*"


class ControlChannel:
    """Sends control messages and dispatches received ones to handlers by type prefix."""

    def __init__(
        self,
        settings: KafkaSettings,
        region: str,
        producer: Callable[[], AIOKafkaProducer],
        *,
        keyring: Keyring,
        signer: Signer,
        peers: Collection[str],
        max_drift_ms: int = 60_000,
    ) -> None:
        self.settings = settings
        self.region = region
        self.topic = control_topic(settings.topic_prefix)
        self._producer = producer
        self.keyring = keyring
        self.signer = signer
        self.peers = frozenset(peers)
        self.max_drift_ms = max_drift_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._routes: dict[str, _Route] = {}
        self._stopping = asyncio.Event()
        self.sent_bytes = 0
        self.received_bytes = 0
        self.rejected: Counter[str] = Counter()  # dropped records by reason

    def on(self, prefix: str, handler: Handler, *, broadcast: bool = False) -> None:
        """Route messages whose type starts with `prefix` (e.g. "ae.") to `handler`;
        `broadcast`: they may be addressed to every region ("*")."""
        self._routes[prefix] = _Route(handler, broadcast)

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

    def seal(self, type_: str, to: str, session: str, body: dict[str, Any]) -> bytes:
        """The signed record of a message from this region (the one place messages are
        signed; `accept` is the one place they are verified)."""
        msg = ControlMessage(type_, self.region, to, session, body, sent_ms=wall_ms())
        return encode(msg, self.signer)

    async def send(self, type_: str, to: str, session: str = "", **body: Any) -> int:
        """Send a message; returns its size in bytes once Kafka has acknowledged it."""
        data = self.seal(type_, to, session, body)
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

    def accept(
        self, data: bytes, now_ms: int | None = None
    ) -> tuple[ControlMessage, Handler] | None:
        """The message in a record and its handler, or None: our own message (skipped) or
        a rejected one (counted and logged)."""
        try:
            envelope = open_envelope(data)
            sender = envelope.sender
            if sender == self.region or envelope.to not in ("*", self.region):
                return None  # our own, read back from the topic, or for another region
            if sender not in self.peers:
                raise ControlRejectedError("unknown-sender", f"{sender} is not a peer")
            try:
                self.keyring.verify(
                    sender,
                    DOMAIN_CONTROL,
                    envelope.signature,
                    envelope.to.encode(),
                    envelope.payload,
                )
            except AuthError as exc:
                raise ControlRejectedError(exc.reason, str(exc)) from None
            msg = open_payload(envelope, len(data))
            route = next(
                (r for prefix, r in self._routes.items() if msg.type.startswith(prefix)), None
            )
            if route is None:
                raise ControlRejectedError("unknown-type", f"no handler for {msg.type!r}")
            if msg.to == "*" and not route.broadcast:
                raise ControlRejectedError("broadcast-refused", f"{msg.type} sent to '*'")
            now = wall_ms() if now_ms is None else now_ms
            if now - msg.sent_ms > MAX_AGE_MS + self.max_drift_ms:
                raise ControlRejectedError("stale", f"sent {now - msg.sent_ms} ms ago")
            if msg.sent_ms - now > self.max_drift_ms:
                raise ControlRejectedError("future", f"dated {msg.sent_ms - now} ms ahead")
        except ControlRejectedError as exc:
            self.rejected[exc.reason] += 1
            n = self.rejected[exc.reason]
            if n <= 10 or n % 1000 == 0:  # a flood must not flood the log too
                log.warning(
                    "control message rejected: reason=%s count=%d detail=%s", exc.reason, n, exc
                )
            return None
        return msg, route.handler

    async def _dispatch(self, data: bytes) -> None:
        accepted = self.accept(data)
        if accepted is None:
            return
        msg, handler = accepted
        self.received_bytes += len(data)
        try:
            await handler(msg)
        except Exception:
            log.exception("control handler for %s failed", msg.type)
