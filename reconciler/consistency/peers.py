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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.consistency.control import ControlChannel, ControlMessage
from reconciler.consistency.messages import BadMessageError, Heartbeat
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
    heartbeats: int = 0
    bye_epoch: int = 0  # the epoch that said goodbye: its heartbeats still in flight are old
    # Its watermark (see reconciler.consistency.settle); times are on its clock.
    at_ms: int = 0  # when it sent its last heartbeat
    shipped_through_ms: int = 0  # every write to its Redis before this is in Kafka
    produced: dict[int, int] = field(default_factory=dict)  # its topic, acked offsets
    applied: dict[str, dict[int, int]] = field(default_factory=dict)  # per origin region


class Peers:
    def __init__(
        self,
        region: str,
        peers: list[str],
        *,
        timeout_s: float,
        on_peer_up: Callable[[str, str], None],
        on_peer_down: Callable[[str, str], None] = lambda peer, reason: None,
        on_heartbeat: Callable[[str, Heartbeat], None] = lambda peer, beat: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region = region
        self.timeout_s = timeout_s
        self.on_peer_up = on_peer_up
        self.on_peer_down = on_peer_down
        self.on_heartbeat = on_heartbeat  # every heartbeat taken (the tombstone GC's input)
        self.clock = clock
        self.state = {p: PeerState(p) for p in peers}
        self.rejected: Counter[str] = Counter()  # heartbeats not taken, by reason

    async def handle(self, msg: ControlMessage) -> None:
        """Control-channel handler for heartbeats."""
        peer = self.state.get(msg.sender)
        if peer is None:
            return
        if msg.type == BYE:
            peer.bye_epoch = peer.epoch
            if peer.alive:
                peer.alive = False
                log_event(log, PEER_DOWN, peer=msg.sender, reason="stopped")
                self.on_peer_down(msg.sender, "stopped")
            return
        if msg.type != HEARTBEAT:
            return
        try:
            beat = Heartbeat.parse(msg.body)
        except BadMessageError as exc:
            self.rejected["malformed"] += 1
            log.warning("heartbeat from %s rejected: %s", msg.sender, exc)
            return
        if beat.epoch == peer.bye_epoch:
            # Sent before (or while) that daemon said goodbye, delivered after it (another
            # partition): taking it would bring a stopped peer back up and start a session.
            self.rejected["after-bye"] += 1
            return
        if peer.alive and (beat.epoch, beat.at_ms) <= (peer.epoch, peer.at_ms):
            # Older than one already taken (a replay, or an earlier daemon of that region):
            # taking it would move the peer's offsets and watermark backwards. (A peer that
            # is down may come back with any epoch: its clock may have been stepped back.)
            self.rejected["out-of-order"] += 1
            return
        was_alive, old_epoch = peer.alive, peer.epoch
        peer.last_seen = self.clock()
        peer.heartbeats += 1
        peer.epoch = beat.epoch
        peer.status = beat.status
        peer.capture_offset = beat.capture_offset
        peer.since_ms = beat.since_ms
        peer.last_repair_ms = beat.last_repair_ms
        peer.deadletters = beat.deadletters
        peer.lag = dict(beat.lag)
        peer.at_ms = beat.at_ms
        peer.shipped_through_ms = beat.shipped_through_ms
        peer.produced = dict(beat.produced)
        peer.applied = {region: dict(offsets) for region, offsets in beat.applied.items()}
        peer.alive = True
        self.on_heartbeat(msg.sender, beat)
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
