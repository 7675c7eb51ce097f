"""Every operation the workload ran: region, client, start and end (monotonic and wall),
what it meant to do to its keys, and its outcome as the caller saw it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

ACKED = "acknowledged"
FAILED = "failed"  # the server refused it: it did not happen
UNKNOWN = "unknown"  # no reply (timeout, reset, lost): it may or may not have happened

# What a write leaves in its key: (type, normalized value, ttl) or None for a delete.
# ttl: ("rel", ms) relative to when the command ran, ("abs", unix ms), or None.
Effect = tuple[str, Any, tuple[str, int] | None] | None


@dataclass
class Op:
    """One operation. Writes carry `effects` (key -> what the key holds after it);
    reads carry `key` and what was read in `result`."""

    index: int
    region: str  # where it was sent (for the failover client: its active region)
    client: str
    kind: str  # set, hash, list, set, zset, del, multi, lua, read
    start: float
    start_wall_ms: int
    effects: dict[bytes, Effect] = field(default_factory=dict)
    key: bytes = b""
    end: float = 0.0
    end_wall_ms: int = 0
    outcome: str = UNKNOWN
    result: Any = None
    error: str = ""
    end_region: str = ""
    """The failover client's active region when the reply came: another than `region`
    means the command may have been served by any region (it moved while in flight)."""

    def regions(self, names: tuple[str, ...]) -> set[str]:
        """Where the operation may have run."""
        if self.end_region and self.end_region != self.region:
            return set(names)
        return {self.region}

    def describe(self) -> str:
        """One line for a violation report."""
        what = {k.decode(): _short(v) for k, v in self.effects.items()} or self.key.decode()
        res = "" if self.result is None else f" -> {_short(self.result)}"
        err = f" ({self.error})" if self.error else ""
        return (
            f"#{self.index} {self.client}@{self.region}"
            f"{'->' + self.end_region if self.end_region not in ('', self.region) else ''} "
            f"{self.kind} {what}{res} "
            f"[{self.start:.3f}..{self.end:.3f}] {self.outcome}{err}"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


class History:
    """Thread-safe, append-only; indices are the order operations started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ops: list[Op] = []

    def begin(self, region: str, client: str, kind: str, **fields: Any) -> Op:
        with self._lock:
            op = Op(
                len(self.ops),
                region,
                client,
                kind,
                time.monotonic(),
                time.time_ns() // 1_000_000,
                **fields,
            )
            self.ops.append(op)
            return op

    @staticmethod
    def end(
        op: Op, outcome: str, result: Any = None, error: str = "", end_region: str = ""
    ) -> None:
        op.end = time.monotonic()
        op.end_region = end_region
        op.end_wall_ms = time.time_ns() // 1_000_000
        op.outcome = outcome
        op.result = result
        op.error = error

    def writes(self) -> list[Op]:
        return [op for op in list(self.ops) if op.effects]

    def reads(self) -> list[Op]:
        return [op for op in list(self.ops) if op.kind == "read"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in list(self.ops):
            out[op.outcome] = out.get(op.outcome, 0) + 1
        out["total"] = len(self.ops)
        return out
