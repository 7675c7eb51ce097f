"""Conflict records: every concurrent write resolved by the rule, kept for the reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replication.model.event import Version
from replication.model.resolver import resolve


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    db: int
    key: bytes
    local: Version
    remote: Version
    winner: str  # "local" | "remote"
    reason: str
    source: str  # the region the remote version came from
    at_ms: int

    @classmethod
    def of(
        cls, db: int, key: bytes, local: Version, remote: Version, *, source: str, at_ms: int
    ) -> ConflictRecord:
        res = resolve(local, remote)
        winner = "remote" if res.winner == remote else "local"
        return cls(db, key, local, remote, winner, res.reason, source, at_ms)

    def to_json(self) -> dict[str, Any]:
        def version(v: Version) -> dict[str, Any]:
            return {
                "origin": v.origin,
                "hlc": v.hlc,
                "clock": dict(v.clock),
                "digest": v.digest.hex(),
            }

        return {
            "db": self.db,
            "key": self.key.decode("utf-8", "backslashreplace"),
            "winner": self.winner,
            "reason": self.reason,
            "source": self.source,
            "at_ms": self.at_ms,
            "local": version(self.local),
            "remote": version(self.remote),
        }
