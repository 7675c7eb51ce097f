"""The publisher: the one owner of shipping a local change.

    keys -> versioner.version() -> index.update() -> producer.ship() -> (Kafka acks)
            `------------ version() ------------'   `-- send() --'

Every path that finds a local write goes through it: the capture stream (`outbound`), keys
the applier deferred (`inbound`), keys a repair found unversioned (`repair`) and the sweep
after a gap (the daemon's recovery). The index is told before the change is handed to Kafka,
so an anti-entropy session never sees a shipped change its own tree does not describe.

The index is whatever the process keeps per key digest (the daemon's Merkle trees); it is
reached through `ChangeIndex`, so this layer never imports the consistency layer above it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from replication.backoff import retrying
from replication.capture.versioner import VersionedChange, Versioner, VersionReport
from replication.pipeline.applier import DigestChange
from replication.transport.producer import ChangeProducer, Shipment


class ChangeIndex(Protocol):
    """Told of every change to a key's live digest in the local Redis (b"" = no live value)."""

    def update(self, db: int, key: bytes, old_digest: bytes, new_digest: bytes) -> None: ...


@dataclass(slots=True)
class Publication:
    """What one `publish()` versioned, and its records on their way to Kafka (None if it
    found nothing to ship)."""

    report: VersionReport
    shipment: Shipment | None

    async def wait(self) -> None:
        """Return once Kafka acknowledged every record of it."""
        if self.shipment is not None:
            await self.shipment.wait()


class Publisher:
    """Versions local writes, records them in the index and hands them to the producer."""

    def __init__(self, versioner: Versioner, producer: ChangeProducer, index: ChangeIndex) -> None:
        self.versioner = versioner
        self.producer = producer
        self.index = index

    async def publish(
        self,
        keys: Mapping[int, Iterable[bytes]],
        *,
        replay: bool = False,
        late: bool = False,
        late_floor_ms: int | None = None,
        retry: str | None = None,
    ) -> Publication:
        """Version the touched `keys` and ship what changed; Kafka's acknowledgement is left
        to the caller (`Publication.wait`).

        With `retry` (what to call it in the log) the versioning is retried while Redis is
        unreachable: the caller cannot skip these keys (their writes would be lost).
        Without, the error propagates. Only the versioning is retried: once the index has
        been told, the change is shipped exactly once from here.
        """
        report = await self.version(
            keys, replay=replay, late=late, late_floor_ms=late_floor_ms, retry=retry
        )
        return Publication(report, await self.send(report.changes))

    async def publish_found_late(
        self,
        keys: Mapping[int, Iterable[bytes]],
        *,
        late_floor_ms: int | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
        retry: str,
    ) -> Publication:
        """Version and ship what `keys` hold that the capture will never show, as found
        late (`Versioner.version_found_late`); retried while Redis is unreachable."""
        listed = {db: list(db_keys) for db, db_keys in keys.items()}

        def version() -> Awaitable[VersionReport]:
            return self.versioner.version_found_late(
                listed, late_floor_ms=late_floor_ms, settle=settle
            )

        report = await retrying(version, what=retry)
        self.record(report.changes)
        return Publication(report, await self.send(report.changes))

    async def version(
        self,
        keys: Mapping[int, Iterable[bytes]],
        *,
        replay: bool = False,
        late: bool = False,
        late_floor_ms: int | None = None,
        retry: str | None = None,
        read_ms: int | None = None,
    ) -> VersionReport:
        """Version the touched `keys` and record what changed in the index, without
        shipping it yet: the caller hands `report.changes` to :meth:`send`, in order. The
        capture stream does that from another task, so that its writes are versioned (and
        dated) as they arrive while Kafka is slow or cut off. `read_ms`: when the capture
        read these writes, which dates them; `late`, `late_floor_ms`: writes found late,
        dated as the sweep dates them (`Versioner.version`)."""

        def version() -> Awaitable[VersionReport]:
            return self.versioner.version(
                keys, replay=replay, late=late, late_floor_ms=late_floor_ms, read_ms=read_ms
            )

        report = await (version() if retry is None else retrying(version, what=retry))
        self.record(report.changes)
        return report

    def record(self, changes: Iterable[VersionedChange]) -> None:
        """Tell the index of versioned changes (before they are handed to Kafka)."""
        for change in changes:
            event = change.event
            self.index.update(event.db, event.key, change.previous_digest, event.digest)

    async def send(self, changes: list[VersionedChange]) -> Shipment | None:
        """Hand changes the index was told of to Kafka (None if there are none)."""
        if not changes:
            return None
        return await self.producer.ship([c.event for c in changes])

    async def ship(self, changes: list[VersionedChange]) -> Shipment | None:
        """Record versioned changes in the index and hand them to Kafka."""
        self.record(changes)
        return await self.send(changes)

    async def sweep(
        self,
        db: int,
        *,
        late_floor_ms: int | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Version every key and metadata entry of `db` (after a gap) and ship what the
        stream did not show, each chunk acknowledged by Kafka before the next; returns the
        number of changes shipped. `late_floor_ms`, `settle`: see `Versioner.sweep`."""
        shipped = 0
        async for report in self.versioner.sweep(db, late_floor_ms=late_floor_ms, settle=settle):
            shipment = await self.ship(report.changes)
            if shipment is not None:
                await shipment.wait()
                shipped += len(report.changes)
        return shipped

    def applied(self, changes: Iterable[DigestChange]) -> None:
        """Record what the applier changed in the local Redis: the index describes local
        and applied writes alike."""
        for change in changes:
            self.index.update(change.db, change.key, change.old, change.new)
