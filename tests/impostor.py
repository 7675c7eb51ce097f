"""A test stand-in for a region's daemon on the control topic: it speaks the real protocol
(the project's own `ControlChannel`, signing with the region's real key from the test
cluster's keyring) over the real Kafka broker, and does whatever the test says: sends
heartbeats so a daemon sees it alive, forges or replays messages, answers a daemon's
anti-entropy requests with malformed replies. Raw bytes (unsigned, another schema,
junk) go out through a plain producer.

It runs its own asyncio loop in a thread (like `tests.tcpproxy`), so sync tests and
hypothesis use it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from reconciler.consistency.control import ControlChannel, ControlMessage
from reconciler.consistency.peers import HEARTBEAT
from replication.model.auth import Keyring
from replication.model.keys import control_topic
from replication.transport.settings import KafkaSettings

T = TypeVar("T")


class Impostor:
    def __init__(
        self, bootstrap: str, prefix: str, region: str, keyring: Keyring, peers: list[str]
    ) -> None:
        self.settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
        self.region = region
        self.keyring = keyring
        self.peers = peers
        self.topic = control_topic(prefix)
        self.received: queue.Queue[ControlMessage] = queue.Queue()
        self.epoch = time.time_ns() // 1_000_000
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._producer: AIOKafkaProducer | None = None
        self.channel: ControlChannel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Answers requests by itself while set: msg -> reply body (None: queue it instead).
        self.policy: Callable[[ControlMessage], dict[str, Any] | None] | None = None
        self.answered: list[ControlMessage] = []

    # ------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Impostor:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            self._run(self._stop(), timeout_s=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers)
        await self._producer.start()
        producer = self._producer
        channel = ControlChannel(
            self.settings,
            self.region,
            lambda: producer,
            keyring=self.keyring,
            signer=self.keyring.signer(self.region),
            peers=self.peers,
        )
        await channel.start()
        channel.on("ae.", self._received)
        channel.on("hb", self._ignored, broadcast=True)
        self.channel = channel
        self._tasks.append(asyncio.create_task(channel.run()))

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _received(self, msg: ControlMessage) -> None:
        policy = self.policy
        reply = policy(msg) if policy is not None and msg.type.startswith("ae.req.") else None
        if reply is None:
            self.received.put(msg)
            return
        assert self.channel is not None
        seq = msg.body.get("seq")
        await self.channel.send("ae.reply", msg.sender, msg.session, seq=seq, **reply)
        self.answered.append(msg)

    async def _ignored(self, msg: ControlMessage) -> None:
        return None

    # ---------------------------------------------------------------------------- acting
    def send(self, type_: str, to: str, session: str = "", **body: Any) -> None:
        """A message signed with this region's real key."""
        assert self.channel is not None
        self._run(self.channel.send(type_, to, session, **body))

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, on the control topic."""
        assert self._producer is not None
        producer = self._producer

        async def send() -> None:
            await (await producer.send(self.topic, data))

        self._run(send())

    def seal(self, type_: str, to: str, session: str = "", **body: Any) -> bytes:
        """The signed record `send` would produce (to replay it, or to tamper with it)."""
        assert self.channel is not None
        return self.channel.seal(type_, to, session, body)

    def heartbeat_body(self) -> dict[str, Any]:
        now = time.time_ns() // 1_000_000
        return {
            "epoch": self.epoch,
            "status": "consistent",
            "at_ms": now,
            "shipped_through_ms": now,
            "lag": {},
            "produced": {},
            "applied": {},
        }

    def heartbeat(self) -> None:
        self.send(HEARTBEAT, "*", **self.heartbeat_body())

    def keep_alive(self, interval_s: float = 0.3) -> None:
        """Send heartbeats until the impostor is closed."""

        async def beat() -> None:
            assert self.channel is not None
            while True:
                with contextlib.suppress(Exception):
                    await self.channel.send(HEARTBEAT, "*", **self.heartbeat_body())
                await asyncio.sleep(interval_s)

        async def start() -> None:
            self._tasks.append(asyncio.create_task(beat()))

        self._run(start())

    def next_message(self, timeout_s: float = 30.0) -> ControlMessage:
        """The next anti-entropy message addressed to this region."""
        return self.received.get(timeout=timeout_s)

    def drain(self) -> list[ControlMessage]:
        out = []
        while True:
            try:
                out.append(self.received.get_nowait())
            except queue.Empty:
                return out
