"""What this region's heartbeat tells its peers: status, capture position, lag both ways,
and the watermark sessions settle on (see `reconciler.consistency.settle`) and the tombstone
GC builds on (see `reconciler.consistency.gcwatermark`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from reconciler.consistency.gcwatermark import GcWatermark
from reconciler.consistency.settle import CaptureWatermark
from reconciler.service.instance import InstanceGuard
from reconciler.service.state import DaemonState, now_ms
from replication.capture.batch import ChangeSource
from replication.capture.position import CapturePosition
from replication.capture.stream import ReplicationStreamSource
from replication.errors import ReconcilerError
from replication.transport.consumer import ChangeConsumer
from replication.transport.deadletter import DeadLetters
from replication.transport.producer import ChangeProducer

__all__ = ["Heartbeats"]

log = logging.getLogger(__name__)


class Heartbeats:
    """Builds heartbeat bodies and the offsets they (and the settler) are made of."""

    def __init__(
        self,
        state: DaemonState,
        *,
        guard: InstanceGuard,
        source: ChangeSource,
        consumer: ChangeConsumer,
        producer: ChangeProducer,
        dead_letters: DeadLetters,
        gc: GcWatermark | None = None,
        refused_events: Callable[[], int] = lambda: 0,
        on_shipped_through: Callable[[int], None] = lambda ms: None,
    ) -> None:
        self.state = state
        self.guard = guard
        self.source = source
        self.consumer = consumer
        self.producer = producer
        self.dead_letters = dead_letters
        self.watermark = CaptureWatermark()
        self.gc = gc
        self.refused_events = refused_events
        self.on_shipped_through = on_shipped_through

    async def master_offset(self) -> int | None:
        """Our Redis's replication offset (None if it does not answer)."""
        try:
            return await self.guard.master_offset()
        except (OSError, TimeoutError, ReconcilerError) as exc:
            log.debug("master offset not read: %s", exc)
            return None

    async def master_position(self) -> CapturePosition | None:
        """Where our Redis's replication history is now (None if it does not answer)."""
        try:
            return await self.guard.master_position()
        except (OSError, TimeoutError, ReconcilerError) as exc:
            log.debug("master position not read: %s", exc)
            return None

    def capture_position(self) -> CapturePosition | None:
        """Where the capture has acknowledged the stream (None: nothing yet, or a capture
        without offsets)."""
        if not isinstance(self.source, ReplicationStreamSource):
            return None
        return self.source.position

    def capture_acked(self) -> int | None:
        """The stream offset the capture has acknowledged (None: a capture without offsets)."""
        if not isinstance(self.source, ReplicationStreamSource):
            return None
        return self.source.stats.acked_offset

    async def body(self) -> dict[str, Any]:
        """The next heartbeat's body."""
        lag: dict[str, int] = {}
        applied: dict[str, dict[int, int]] = {}
        with contextlib.suppress(Exception):
            applied = await self.consumer.applied_offsets()
            lag = await self.consumer.lag(applied)
            self.state.inbound_lag = lag
        # Read after `applied`: every event refused below those offsets is counted.
        refused = self.refused_events()
        # `applied` is read before `at_ms` is taken: a peer's tombstone GC relies on every
        # write we made before applying what `applied` covers being older than `at_ms`.
        at_ms = now_ms()
        if isinstance(self.source, ReplicationStreamSource):
            shipped_through = self.watermark.sample(
                at_ms, await self.master_position(), self.source.position
            )
        else:
            shipped_through = self.watermark.caught_up(at_ms)
        produced = dict(self.producer.acked)
        self.on_shipped_through(shipped_through)
        if self.gc is not None:
            self.gc.observe_own(shipped_through, produced, applied, status=self.state.status)
        state = self.state
        return {
            "epoch": state.started_ms,
            "status": state.status,
            "capture_offset": self.capture_acked() or 0,
            "since_ms": state.since_ms,
            "last_repair_ms": state.last_repair_ms,
            "deadletters": self.dead_letters.count,
            "refused_events": refused,
            "lag": lag,
            "at_ms": at_ms,
            "shipped_through_ms": shipped_through,
            "produced": {str(p): o for p, o in produced.items()},
            "applied": {
                region: {str(p): o for p, o in offsets.items()}
                for region, offsets in applied.items()
            },
        }
