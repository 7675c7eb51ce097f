"""Change capture: which keys of the region's Redis changed, in order, with no silent gaps.

Two sources with the same interface (:class:`ChangeSource`), both built on
:class:`~replication.capture.source.CaptureSource` (lifecycle, reconnects, the batch queue):

* :class:`ReplicationStreamSource` (primary): registers with Redis as a replica (``PSYNC``)
  and tails its replication stream, acknowledging with ``REPLCONF ACK`` only what the
  consumer confirmed, and continuing from the persisted position after a restart.
* :class:`KeyspaceNotificationSource` (fallback for servers that forbid ``PSYNC``):
  keyspace notifications, fire-and-forget, so every (re)connection is a gap.

Both deliver :class:`CaptureBatch` es: the user keys touched per db, flushed dbs, a
:class:`Gap` when changes may have been missed, and (stream only) the offset to
acknowledge. See docs/capture.md for the policies (flush, swapdb, expiry, gaps,
backpressure) and the ACL a production user needs.
"""

from replication.capture.batch import (
    GAP_FLUSH,
    GAP_FULL_RESYNC,
    GAP_INITIAL,
    GAP_NOTIFICATIONS_DISCONNECT,
    GAP_SWAPDB,
    CaptureAuthError,
    CaptureBatch,
    CaptureConnectionError,
    CaptureProtocolError,
    CaptureStats,
    ChangeSource,
    Gap,
    NotificationsConfigError,
    PsyncRefusedError,
)
from replication.capture.commands import KeyTable
from replication.capture.notifications import KeyspaceNotificationSource
from replication.capture.position import CapturePosition, PositionStore
from replication.capture.stream import ReplicationStreamSource

__all__ = [
    "GAP_FLUSH",
    "GAP_FULL_RESYNC",
    "GAP_INITIAL",
    "GAP_NOTIFICATIONS_DISCONNECT",
    "GAP_SWAPDB",
    "CaptureAuthError",
    "CaptureBatch",
    "CaptureConnectionError",
    "CapturePosition",
    "CaptureProtocolError",
    "CaptureStats",
    "ChangeSource",
    "Gap",
    "KeyTable",
    "KeyspaceNotificationSource",
    "NotificationsConfigError",
    "PositionStore",
    "PsyncRefusedError",
    "ReplicationStreamSource",
]
