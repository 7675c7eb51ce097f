"""Which peers are alive and how far behind they are, from heartbeats on the control topic.

Every daemon sends a heartbeat every `interval_s`: its epoch (start time), status, capture
position, its consumer lag on every other region's topic, and its watermark (how far it has
shipped and applied; see `reconciler.consistency.settle`). A peer not heard from for
`peer_timeout_s` is down; when it is heard again (or for the first time), `on_peer_up`
fires so anti-entropy runs with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.consistency.control import ControlChannel, ControlMessage
from reconciler.events import PEER_DOWN, PEER_RESTARTED, PEER_UP, log_event

log = logging.getLogger(__name__)

HEARTBEAT = "hb"
BYE = "hb.bye"  # sent on a graceful stop, so peers need not wait for the timeout


@dataclass
class PeerState:
    region: str
    alive: bool = False
    last_seen: float = 0.0  # monotonic
    epoch: int = 0
    status: str = ""
    lag: dict[str, int] = field(default_factory=dict)  # its consumer lag per origin region
    capture_offset: int = 0
    since_ms: int = 0  # when its status began (its clock)
    last_repair_ms: int = 0  # its last completed repair (its clock), 0 none
    deadletters: int = 0  # records it parked in the dead-letter topic since it started
    caught_up_on_us_ms: int = 0  # wall ms of its last heartbeat with no lag on our topic
    heartbeats: int = 0
    # Its watermark (see reconciler.consistency.settle); times are on its clock.
    at_ms: int = 0  # when it sent its last heartbeat
    shipped_through_ms: int = 0  # every write to its Redis before this is in Kafka
    produced: dict[int, int] = field(default_factory=dict)  # its topic, acked offsets
    applied: dict[str, dict[int, int]] = field(default_factory=dict)  # per origin region


def _offsets(value: object) -> dict[int, int]:
    if not isinstance(value, dict):
        return {}
    offsets = {}
    for partition, offset in value.items():
        with contextlib.suppress(TypeError, ValueError):
            offsets[int(partition)] = int(offset)
    return offsets


class Peers:
    def __init__(
        self,
        region: str,
        peers: list[str],
        *,
        timeout_s: float,
        on_peer_up: Callable[[str, str], None],
        on_peer_down: Callable[[str, str], None] = lambda peer, reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region = region
        self.timeout_s = timeout_s
        self.on_peer_up = on_peer_up
        self.on_peer_down = on_peer_down
        self.clock = clock
        self.state = {p: PeerState(p) for p in peers}

    async def handle(self, msg: ControlMessage) -> None:
        """Control-channel handler for heartbeats."""
        peer = self.state.get(msg.sender)
        if peer is None:
            return
        if msg.type == BYE:
            if peer.alive:
                peer.alive = False
                log_event(log, PEER_DOWN, peer=msg.sender, reason="stopped")
                self.on_peer_down(msg.sender, "stopped")
            return
        if msg.type != HEARTBEAT:
            return
        body = msg.body
        was_alive, old_epoch = peer.alive, peer.epoch
        peer.last_seen = self.clock()
        peer.heartbeats += 1
        peer.epoch = int(body.get("epoch", 0))
        peer.status = str(body.get("status", ""))
        peer.capture_offset = int(body.get("capture_offset", 0))
        # Added later: an older peer's heartbeat lacks them.
        peer.since_ms = int(body.get("since_ms", 0))
        peer.last_repair_ms = int(body.get("last_repair_ms", 0))
        peer.deadletters = int(body.get("deadletters", 0))
        lag = body.get("lag", {})
        peer.lag = {str(k): int(v) for k, v in lag.items()} if isinstance(lag, dict) else {}
        peer.at_ms = int(body.get("at_ms", 0))
        if peer.lag.get(self.region) == 0:
            peer.caught_up_on_us_ms = peer.at_ms
        peer.shipped_through_ms = int(body.get("shipped_through_ms", 0))
        peer.produced = _offsets(body.get("produced"))
        applied = body.get("applied", {})
        peer.applied = (
            {str(k): _offsets(v) for k, v in applied.items()} if isinstance(applied, dict) else {}
        )
        peer.alive = True
        if not was_alive:
            reason = "first heartbeat" if old_epoch == 0 else "heard again after missing heartbeats"
            log_event(log, PEER_UP, peer=msg.sender, reason=reason)
            self.on_peer_up(msg.sender, reason)
        elif old_epoch and peer.epoch != old_epoch:
            log_event(log, PEER_RESTARTED, peer=msg.sender, epoch=peer.epoch)
            self.on_peer_down(msg.sender, "restarted")
            self.on_peer_up(msg.sender, "peer daemon restarted")

    def check(self) -> list[str]:
        """Mark peers silent for longer than the timeout as down; returns those."""
        now = self.clock()
        down = []
        for peer in self.state.values():
            if peer.alive and now - peer.last_seen > self.timeout_s:
                peer.alive = False
                down.append(peer.region)
                log_event(
                    log,
                    PEER_DOWN,
                    logging.WARNING,
                    peer=peer.region,
                    reason="missed heartbeats",
                    silent_s=round(now - peer.last_seen, 1),
                )
                self.on_peer_down(peer.region, "missed heartbeats")
        return down

    def alive(self) -> list[str]:
        return [p.region for p in self.state.values() if p.alive]

    def all_caught_up_before_ms(self) -> int:
        """A wall time before which every peer has consumed everything we shipped (0 if a
        peer has never reported that)."""
        return min((p.caught_up_on_us_ms for p in self.state.values()), default=0)


async def send_heartbeats(
    channel: ControlChannel,
    interval_s: float,
    body: Callable[[], Awaitable[dict[str, Any]]],
    stopping: asyncio.Event,
) -> None:
    """Send a heartbeat every interval until `stopping` is set (failures are logged)."""
    while not stopping.is_set():
        try:
            await channel.send(HEARTBEAT, "*", **(await body()))
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is not fatal
            log.warning("heartbeat not sent: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)
