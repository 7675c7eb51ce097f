"""Running anti-entropy sessions one at a time, in the order the region's state asks.

`RegionState` (pure) decides which sessions to queue and what their results mean; this is
its asyncio shell: the queue, the loop that waits for a pending recovery pass, settles
replication with the peer, runs the session and reports back, retries failed ones later,
and the operator's requests (which wait for their report).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka.errors import KafkaError

from reconciler.consistency.antientropy import AntiEntropy
from reconciler.consistency.modes import SessionMode
from reconciler.consistency.peers import Peers
from reconciler.consistency.reports import RepairReport
from reconciler.consistency.settle import Settler
from reconciler.service.config import AntiEntropySection
from reconciler.service.regionstate import RegionState, SessionRequest
from replication.clock import wall_ms
from replication.errors import ReconcilerError

__all__ = ["SessionRunner"]

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], object]
Queued = tuple[SessionRequest, "asyncio.Future[RepairReport]"]


class SessionRunner:
    """The session queue of one region and the loop that works it."""

    def __init__(
        self,
        state: RegionState,
        antientropy: AntiEntropy,
        settler: Settler,
        peers: Peers,
        settings: AntiEntropySection,
        *,
        recovered: asyncio.Event,
        on_change: Callable[[], None],
        spawn: Spawn,
    ) -> None:
        self.state = state
        self.antientropy = antientropy
        self.settler = settler
        self.peers = peers
        self.settings = settings
        self.recovered = recovered
        """Set unless a recovery pass is pending: sessions compare the rebuilt index."""
        self._on_change = on_change
        self._spawn = spawn
        self._queue: asyncio.Queue[Queued] = asyncio.Queue()
        self.last_repair_ms = 0
        """Wall-clock ms of the last session that repaired successfully (0: none yet)."""

    def queue(self, request: SessionRequest) -> asyncio.Future[RepairReport]:
        """Put a request the state machine accepted on the queue; its report arrives in the
        returned future."""
        done: asyncio.Future[RepairReport] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, done))
        return done

    def request(
        self,
        peer: str,
        trigger: str,
        mode: SessionMode = SessionMode.REPAIR,
        *,
        operator: bool = False,
    ) -> asyncio.Future[RepairReport] | None:
        """Ask for a session with `peer` (see `RegionState.request` for which are queued)."""
        request = self.state.request(peer, trigger, mode, operator=operator)
        if request is None:
            return None
        done = self.queue(request)
        self._on_change()
        return done

    async def operator_session(self, peer: str, mode: SessionMode, trigger: str) -> RepairReport:
        """Run a session for the operator (admin endpoint) and wait for its report."""
        if peer not in self.state.peers:
            raise ReconcilerError(f"unknown peer {peer!r} (peers: {list(self.state.peers)})")
        done = self.request(peer, trigger, mode, operator=True)
        if done is None:
            raise ReconcilerError("could not queue the session")
        return await done

    def on_peer_up(self, peer: str, reason: str) -> None:
        """A peer is heard (again): it gets the session the state machine asks for."""
        request = self.state.peer_up(peer, reason, first=reason == "first heartbeat")
        if request is not None:
            self.queue(request)
        self._on_change()

    def on_peer_down(self, peer: str, reason: str) -> None:
        """A peer stopped: a session with it ends now rather than at its timeouts."""
        self.state.peer_down(peer)
        self.antientropy.abort_peer(peer, reason)
        self._on_change()

    async def run(self) -> None:
        """Work the queue until cancelled."""
        while True:
            queued, done = await self._queue.get()
            await self.recovered.wait()
            request = self.state.session_started(queued)
            self._on_change()
            report: RepairReport | None = None
            try:
                if not request.operator:
                    await self._settle(request.peer)
                if request.operator or request.peer in self.peers.alive():
                    report = await self.antientropy.run(request.peer, request.trigger, request.mode)
                # else: it went away meanwhile; it stays pending, its return triggers it.
            finally:
                ok = report is not None and report.result == "ok"
                finished_ms = wall_ms()
                retry = self.state.session_finished(request, ok=ok, at_ms=finished_ms)
                if ok and request.mode.repairs:
                    self.last_repair_ms = finished_ms
                self._on_change()
            if not done.done() and report is not None:
                done.set_result(report)
            if retry and report is not None:
                self._spawn(self._retry_later(request.peer, request.trigger))

    async def _settle(self, peer: str) -> None:
        """Wait (bounded) until the changes in flight between every region, us and `peer`
        have been applied on both sides (see `reconciler.consistency.settle`): they are not
        divergence, and repairing them would ship them twice."""
        timeout_s = self.settings.settle_timeout_s
        try:
            settled = await self.settler.wait(peer, timeout_s)
        except (KafkaError, OSError, ReconcilerError) as exc:
            # Kafka unreachable: the session will most likely fail too, and be retried.
            log.info("settle with %s interrupted (%s); trying the session anyway", peer, exc)
            return
        if not settled:
            log.warning(
                "replication with %s not caught up after %.0fs (waiting for %s); repairing anyway",
                peer,
                timeout_s,
                self.settler.waiting_for,
            )

    async def _retry_later(self, peer: str, trigger: str) -> None:
        await asyncio.sleep(self.settings.retry_interval_s)
        if peer in self.state.pending and peer in self.peers.alive():
            self.request(peer, f"retry: {trigger}")
