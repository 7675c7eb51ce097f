"""What change capture hands on: batches of touched keys, gaps, the source protocol, errors.

This is the contract between a change source (the replication-stream tailer in
:mod:`replication.capture.stream`, the keyspace-notification fallback in
:mod:`replication.capture.notifications`) and its consumer, the versioner.

Policies the consumer can rely on
---------------------------------
* **Keys, not commands.** A batch says which user keys (per db) were written by the commands
  it covers; the consumer reads their current state. A key written several times in a batch
  appears once. Keys only read by a command (the sources of ``SUNIONSTORE``, ``COPY``,
  ``SORT ... STORE``) are not reported: their state did not change. Internal keys
  (:func:`replication.model.keys.is_internal`) are never reported.
* **Gaps are never silent.** Anything that may have lost changes (a first start, a full
  resync, a flush, a ``SWAPDB``, a notification connection that dropped) is reported as a
  :class:`Gap` on a batch, possibly a batch with no keys. The consumer schedules
  anti-entropy for it. A batch carries at most one gap: a second cause starts a new batch.
* **Flushes are not replicated.** ``FLUSHDB``/``FLUSHALL`` empty a db in this region only:
  the batch that starts at the flush lists the db in ``flushed_dbs`` and carries a gap with
  reason ``"flush"``; the emptied region is refilled from its peers by anti-entropy. Keys
  written after the flush are reported as usual (in the same batch or later ones).
* **Order.** Batches are delivered in stream order. ``ack(batch.end_offset)`` acknowledges
  that batch and every batch delivered before it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from replication.clock import wall_ms
from replication.errors import ReconcilerError

# Gap reasons. A consumer may switch on them; any gap means "schedule anti-entropy".
GAP_INITIAL = "initial"
"""First start with no stored capture position: nothing before it was seen."""
GAP_FULL_RESYNC = "full-resync"
"""The server could not continue from our position (backlog overflow, restart, failover)."""
GAP_FLUSH = "flush"
"""FLUSHDB/FLUSHALL in a captured db: not replicated, refilled from peers."""
GAP_SWAPDB = "swapdb"
"""SWAPDB involving a captured db: its whole content changed."""
GAP_NOTIFICATIONS_DISCONNECT = "notifications-disconnect"
"""The keyspace-notification connection dropped or was (re)established."""


now_ms = wall_ms  # for :attr:`Gap.at_ms`: the daemon's one wall clock (replication.clock)


@dataclass(frozen=True, slots=True)
class Gap:
    """Changes may have been missed here: the consumer must schedule anti-entropy."""

    reason: str
    """``"initial" | "full-resync" | "flush" | "swapdb" | "notifications-disconnect"``."""
    detail: str
    """Operator readable, e.g. ``"asked PSYNC abc… 12345, got FULLRESYNC def… 0"``."""
    at_ms: int
    """Wall-clock milliseconds when the gap was detected."""


@dataclass(frozen=True, slots=True)
class CaptureBatch:
    """The user keys touched by a run of consecutive commands, and where the run ends."""

    keys: Mapping[int, frozenset[bytes]]
    """db -> user keys written by the commands of this batch (only dbs with keys appear)."""
    flushed_dbs: frozenset[int]
    """Captured dbs wholly emptied (FLUSHDB/FLUSHALL) at the start of this batch."""
    gap: Gap | None
    """Set on the first batch after a gap."""
    end_offset: int | None
    """Replication offset after the last command (``None`` for notifications)."""
    replid: str | None
    """Replication id the offset belongs to (``None`` for notifications)."""
    commands: int
    """Commands in the batch, all of them (PING, REPLCONF, MULTI/EXEC included)."""
    replay: bool
    """Every command is at or below the server's offset seen when we (re)connected:
    these commands may already have been seen before a crash or restart."""
    created_at: float = field(default_factory=time.monotonic, compare=False)
    """``time.monotonic()`` when the batch was closed: where the lag histograms start."""
    read_ms: int = field(default_factory=wall_ms, compare=False)
    """The daemon's wall clock when the batch was closed: its writes were made before it,
    and it dates them (`Versioner.version`), however long they wait to be versioned."""

    @property
    def key_count(self) -> int:
        """Number of (db, key) pairs in the batch."""
        return sum(len(keys) for keys in self.keys.values())


@dataclass(slots=True)
class CaptureStats:
    """Counters of one source, for metrics. Updated in place; read at any time."""

    commands: int = 0
    """Commands parsed from the stream (or notifications received)."""
    bytes: int = 0
    """Stream bytes parsed after the RDB (or notification bytes received)."""
    rdb_bytes: int = 0
    """RDB payload bytes skipped at full resyncs."""
    batches: int = 0
    """Batches delivered to the consumer."""
    keys: int = 0
    """(db, key) pairs delivered."""
    reconnects: int = 0
    """Connection losses followed by a reconnect attempt."""
    gaps: int = 0
    """Gaps reported (every reason)."""
    full_resyncs: int = 0
    """+FULLRESYNC answers, including the initial one."""
    echo_keys_dropped: int = 0
    """Keys written by this daemon's applies, recognised in the stream and not versioned."""
    unknown_commands: int = 0
    """Commands whose keys could not be determined (no key specs): logged once per name."""
    parsed_offset: int = 0
    """Stream offset after the last command parsed."""
    acked_offset: int = 0
    """Offset the consumer confirmed (what we report with REPLCONF ACK)."""
    master_offset_at_connect: int = 0
    """The server's master_repl_offset read just before the last PSYNC."""
    connected: bool = False
    """Whether the source currently holds a live link to the server."""


@runtime_checkable
class ChangeSource(Protocol):
    """What the versioner consumes: both capture sources satisfy it.

    Lifecycle: ``start()`` connects (raising if the server cannot be used at all), then the
    source reconnects on its own; ``stop()`` is safe twice and after a failed start; the
    source works as ``async with``. One consumer iterates :meth:`batches`.
    """

    @property
    def stats(self) -> CaptureStats:
        """Counters for metrics."""
        ...

    async def start(self) -> None:
        """Connect and begin capturing."""
        ...

    async def stop(self) -> None:
        """Stop capturing, release connections, persist the acknowledged position."""
        ...

    def batches(self) -> AsyncIterator[CaptureBatch]:
        """Batches in order; ends after ``stop()``, raises if the source failed for good."""
        ...

    async def ack(self, offset: int | None) -> None:
        """Confirm that a batch (and all before it) was durably handed on."""
        ...


class CaptureConnectionError(ReconcilerError):
    """The link to the region's Redis failed or misbehaved; the source reconnects."""

    retriable = True


class CaptureProtocolError(CaptureConnectionError):
    """The server sent bytes we could not parse; the source reconnects from its position."""


class CaptureAuthError(ReconcilerError):
    """The server refused our credentials: an operator must fix the configuration."""


class PsyncRefusedError(ReconcilerError):
    """The server will not let us register as a replica (PSYNC or REPLCONF refused).

    Managed Redis services often forbid it. Either grant the capture user the ACL it needs
    (``+psync +replconf +sync +ping +info +command +select``, see docs/capture.md) or configure
    the keyspace-notification source instead.
    """


class NotificationsConfigError(ReconcilerError):
    """Keyspace notifications are not enabled enough and we may not enable them."""
