"""The change event: one key's new state (not the command that produced it) and its version."""

from __future__ import annotations

from dataclasses import dataclass

from replication.model.value import Kind, Value
from replication.model.vclock import VectorClock


@dataclass(frozen=True, slots=True)
class Version:
    """A version's identity: its clock, the region whose write it is, its digest.

    `hlc` is the origin's entry in the clock: the hybrid timestamp of the write.
    """

    clock: VectorClock
    origin: str
    digest: bytes

    @property
    def hlc(self) -> int:
        return self.clock.get_count(self.origin)

    def lww_key(self) -> tuple[int, bytes, bytes]:
        """Order of concurrent versions: hybrid timestamp, then region name, then digest
        (bytes compare bytewise, exactly as the Lua library does)."""
        return (self.hlc, self.origin.encode(), self.digest)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A key's state at one version, as shipped between regions.

    `value` has the shape `kind` requires (see replication.model.value); None for Kind.NONE,
    which is a delete (a tombstone). `expire_at_ms` is absolute Unix ms, 0 for none.
    """

    db: int
    key: bytes
    kind: Kind
    value: Value
    expire_at_ms: int
    clock: VectorClock
    origin: str
    digest: bytes

    @property
    def hlc(self) -> int:
        """The hybrid timestamp of the write (the origin's clock entry)."""
        return self.clock.get_count(self.origin)

    @property
    def deleted(self) -> bool:
        return self.kind is Kind.NONE

    @property
    def version(self) -> Version:
        return Version(self.clock, self.origin, self.digest)
