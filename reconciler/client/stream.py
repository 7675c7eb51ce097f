"""Streaming a client's connectivity metrics and events to Kafka (optional).

When the client config has a ``[kafka]`` table, the client sends to
``<topic_prefix>.clients`` (:func:`replication.model.keys.clients_topic`):

* a **snapshot** every ``snapshot_interval_s``: per region its state, requests, failures,
  application errors and error rate over the window, latency p50/p99, cumulative totals,
  and the active region and failover/failback counts;
* an **event** as soon as one happens (failover, failback, region_down, region_up).

Messages are JSON objects (one per Kafka record, key = client id so a client's messages
stay in order), with ``"schema": 1``. JSON rather than msgpack: the volume is a few small
messages per client per interval, and an operator can read the topic with any console
consumer. :func:`decode` validates what ``reconciler clients`` reads.

aiokafka is imported only when streaming starts, so an application without a ``[kafka]``
table never loads it. Kafka being down never affects commands: the streamer retries with
the project's backoff and keeps at most :data:`MAX_PENDING_EVENTS` events meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from reconciler.client.config import KafkaConfig
from reconciler.client.router import Event, Router, RouterSnapshot
from replication.backoff import Backoff
from replication.clock import wall_ms
from replication.errors import DecodeError
from replication.model.keys import clients_topic

__all__ = [
    "SCHEMA_VERSION",
    "MetricsStreamer",
    "StreamThread",
    "decode",
    "encode",
    "event_message",
    "snapshot_message",
]

log = logging.getLogger("reconciler.client.stream")

SCHEMA_VERSION = 1
MAX_PENDING_EVENTS = 1000
_STOP_FLUSH_S = 5.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def snapshot_message(client_id: str, snap: RouterSnapshot, at_ms: int) -> dict[str, Any]:
    """The JSON-ready snapshot of one client's connectivity."""
    return {
        "schema": SCHEMA_VERSION,
        "type": "snapshot",
        "client_id": client_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "at_ms": at_ms,
        "home": snap.home,
        "active": snap.active,
        "failovers": snap.failovers,
        "failbacks": snap.failbacks,
        "regions": [
            {
                "name": region.name,
                "state": region.state.value,
                "requests": region.stats.requests,
                "failures": region.stats.failures,
                "app_errors": region.stats.app_errors,
                "error_rate": round(region.stats.error_rate, 4),
                "p50_ms": _ms(region.stats.p50_s),
                "p99_ms": _ms(region.stats.p99_s),
                "requests_total": region.stats.requests_total,
                "failures_total": region.stats.failures_total,
                "app_errors_total": region.stats.app_errors_total,
                "probing_ok_s": region.probing_ok_s,
                "status": None if region.status is None else region.status.state,
                "finding": None if region.finding is None else region.finding.value,
            }
            for region in snap.regions
        ],
    }


def event_message(client_id: str, event: Event) -> dict[str, Any]:
    """The JSON-ready form of one failover/failback/region event."""
    return {
        "schema": SCHEMA_VERSION,
        "type": "event",
        "client_id": client_id,
        "at_ms": event.at_ms,
        "kind": event.kind,
        "region": event.region,
        "from_region": event.from_region,
        "to_region": event.to_region,
        "reason": event.reason,
    }


def encode(message: dict[str, Any]) -> bytes:
    """A message as compact UTF-8 JSON."""
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes | None) -> dict[str, Any]:
    """Parse and validate one record's value; raises DecodeError saying what is wrong."""
    if raw is None:
        raise DecodeError("empty record")
    try:
        message = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise DecodeError("not a JSON object")
    if message.get("schema") != SCHEMA_VERSION:
        raise DecodeError(f"unknown schema {message.get('schema')!r}")
    kind = message.get("type")
    if kind not in ("snapshot", "event"):
        raise DecodeError(f"unknown message type {kind!r}")
    if not isinstance(message.get("client_id"), str) or not isinstance(message.get("at_ms"), int):
        raise DecodeError("message without client_id or at_ms")
    if kind == "snapshot":
        regions = message.get("regions")
        if not isinstance(message.get("active"), str) or not isinstance(regions, list):
            raise DecodeError("snapshot without active region or regions")
        if not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in regions):
            raise DecodeError("snapshot with a malformed region")
    elif not isinstance(message.get("kind"), str):
        raise DecodeError("event without kind")
    return message


class MetricsStreamer:
    """Sends one client's snapshots and events to Kafka from an asyncio task.

    Events arrive from any thread (:meth:`Router.add_listener`); :meth:`run` is the task.
    """

    def __init__(self, kafka: KafkaConfig, client_id: str, router: Router) -> None:
        self.kafka = kafka
        self.client_id = client_id
        self.topic = clients_topic(kafka.topic_prefix)
        self._router = router
        self._pending: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_PENDING_EVENTS
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self.sent = 0
        self.dropped = 0
        router.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        with self._lock:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append(event_message(self.client_id, event))
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        # Closed loop: the streamer has finished and the event stays unsent.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake.set)

    def request_stop(self) -> None:
        """Ask :meth:`run` to send what it holds and return (from any thread)."""
        self._stopping = True
        self._poke()

    async def run(self) -> None:
        """Stream until :meth:`request_stop`; Kafka errors are retried, never raised."""
        from aiokafka.errors import KafkaError

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        producer: Any = None
        next_snapshot = 0.0
        try:
            while not self._stopping:
                if producer is None:
                    try:
                        producer = await self._start_producer()
                    except (KafkaError, OSError) as exc:
                        log.warning("metrics stream cannot reach kafka: %s", exc)
                        await self._sleep(backoff.next_delay())
                        continue
                    backoff.reset()
                try:
                    await self._send_pending(producer)
                    if time.monotonic() >= next_snapshot:
                        await self._send_snapshot(producer)
                        next_snapshot = time.monotonic() + self.kafka.snapshot_interval_s
                except (KafkaError, OSError) as exc:
                    log.warning("metrics stream send failed: %s", exc)
                    await self._stop_producer(producer)
                    producer = None
                    continue
                await self._sleep(max(0.0, next_snapshot - time.monotonic()))
        finally:
            if producer is not None:
                await self._final_flush(producer)

    async def _start_producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            client_id=f"rr-client-metrics {self.client_id}",
            acks=1,
            linger_ms=20,
            request_timeout_ms=10_000,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _stop_producer(self, producer: Any) -> None:
        from aiokafka.errors import KafkaError

        try:
            await producer.stop()
        except (KafkaError, OSError) as exc:
            log.warning("metrics stream producer stop failed: %s", exc)

    async def _send(self, producer: Any, message: dict[str, Any]) -> None:
        # send() returns once the record is queued; delivery is awaited in batches.
        await producer.send(self.topic, encode(message), key=self.client_id.encode())
        self.sent += 1

    async def _send_pending(self, producer: Any) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                message = self._pending[0]
            await self._send(producer, message)
            with self._lock:
                # Only now: a failed send leaves the event queued for the next producer.
                if self._pending and self._pending[0] is message:
                    self._pending.popleft()

    async def _send_snapshot(self, producer: Any) -> None:
        snap = self._router.snapshot()
        await self._send(producer, snapshot_message(self.client_id, snap, wall_ms()))

    async def _final_flush(self, producer: Any) -> None:
        from aiokafka.errors import KafkaError

        try:
            async with asyncio.timeout(_STOP_FLUSH_S):
                await self._send_pending(producer)
                await self._send_snapshot(producer)
                await producer.flush()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("metrics stream final flush failed: %s", exc)
        finally:
            await self._stop_producer(producer)

    async def _sleep(self, seconds: float) -> None:
        wake = self._wake
        assert wake is not None
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wake.wait()
        wake.clear()


class StreamThread:
    """Runs a :class:`MetricsStreamer` on its own event loop in a thread (sync client)."""

    def __init__(self, kafka: KafkaConfig, client_id: str, router: Router) -> None:
        self.streamer = MetricsStreamer(kafka, client_id, router)
        self._thread = threading.Thread(
            target=self._main, name=f"rr-metrics {client_id}", daemon=True
        )

    def _main(self) -> None:
        asyncio.run(self.streamer.run())

    def start(self) -> None:
        """Start streaming in the background."""
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Send what is pending and a final snapshot, then stop. Safe to call twice."""
        self.streamer.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
