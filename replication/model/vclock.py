"""Vector clocks (version vectors) over region names.

An entry is the hybrid-logical timestamp (`replication.model.hlc`) of that region's latest write
to the key, not a plain counter (see `tick`). Entries still only grow per region and per key, so the
usual partial order holds, and in addition a region whose Redis came back from an older
snapshot (and so forgot its own latest counters) can never hand out an entry it handed out
before: time has moved on. `tick(region, ts)` is the increment.

Pruning (`pruned`): entries of regions removed from the configuration are dropped. The rule
that keeps comparisons sound is that both sides of a comparison are pruned with the same set
of retired regions first (`compare` takes it as an argument), and a region is retired only
after every remaining region has consumed its whole change topic.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping

# The largest clock entry anything accepts or produces: the decoder refuses entries above
# it, the encoder will not ship them, and the Lua library's tick refuses to go past it (the
# library gets this very number at load time, replication/redis/library.py). It sits 2**32
# below 2**53 so that Lua's doubles still add and compare every entry exactly, and it
# stays above any honest hybrid timestamp until the 2090s (replication.model.hlc).
MAX_CLOCK_ENTRY = (1 << 53) - (1 << 32)


class Order(enum.Enum):
    """How clock `a` relates to clock `b` in `a.compare(b)`."""

    BEFORE = "before"  # a happened before b (b dominates)
    AFTER = "after"  # a dominates b
    EQUAL = "equal"
    CONCURRENT = "concurrent"


class VectorClock(Mapping[str, int]):
    """An immutable map region -> timestamp; missing regions count as 0."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        self._entries: dict[str, int] = {r: c for r, c in items if c > 0}

    @classmethod
    def _trusted(cls, entries: dict[str, int]) -> VectorClock:
        """Wrap an already validated dict of positive entries (decoder fast path)."""
        clock = cls.__new__(cls)
        clock._entries = entries
        return clock

    # Mapping protocol
    def __getitem__(self, region: str) -> int:
        return self._entries[region]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get_count(self, region: str) -> int:
        return self._entries.get(region, 0)

    def top(self) -> int:
        """The largest entry (0 for an empty clock)."""
        return max(self._entries.values(), default=0)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VectorClock):
            return self._entries == other._entries
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{r}={c}" for r, c in sorted(self._entries.items()))
        return f"VectorClock({inner})"

    def compare(self, other: VectorClock, retired: frozenset[str] = frozenset()) -> Order:
        """The causal relation of self to other (after pruning both by `retired`)."""
        mine, theirs = self._entries, other._entries
        greater = lesser = False
        for region, count in mine.items():
            if region in retired:
                continue
            theirs_count = theirs.get(region, 0)
            if count > theirs_count:
                greater = True
            elif count < theirs_count:
                lesser = True
        for region, count in theirs.items():
            if region not in mine and region not in retired and count > 0:
                lesser = True
        if greater and lesser:
            return Order.CONCURRENT
        if greater:
            return Order.AFTER
        if lesser:
            return Order.BEFORE
        return Order.EQUAL

    def merge(self, other: VectorClock) -> VectorClock:
        """Entry-wise maximum: the clock of a state that has seen both."""
        merged = dict(self._entries)
        for region, count in other._entries.items():
            if count > merged.get(region, 0):
                merged[region] = count
        return VectorClock(merged)

    def tick(self, region: str, timestamp: int) -> VectorClock:
        """The clock of a new write by `region` at hybrid time `timestamp`.

        The entry becomes max(every entry + 1, timestamp): above the region's own previous
        entry (so it strictly grows even if the timestamp source lagged) and above every
        other region's entry, so a write that causally follows another also has the larger
        timestamp and last-writer-wins never contradicts causality, whatever the skew.
        """
        entries = dict(self._entries)
        top = max(entries.values(), default=0)
        entries[region] = max(top + 1, timestamp)
        return VectorClock(entries)

    def pruned(self, retired: frozenset[str]) -> VectorClock:
        """Without the entries of retired regions."""
        if not retired.intersection(self._entries):
            return self
        return VectorClock({r: c for r, c in self._entries.items() if r not in retired})

    def dominates_or_equals(self, other: VectorClock) -> bool:
        return self.compare(other) in (Order.AFTER, Order.EQUAL)

    def to_flat(self) -> list[str | int]:
        """Compact encoding: [region, ts, region, ts, ...] sorted by region (bytewise).

        Deterministic, so equal clocks encode to equal bytes; the same shape the Lua
        scripts read and write.
        """
        flat: list[str | int] = []
        for region in sorted(self._entries, key=str.encode):
            flat.append(region)
            flat.append(self._entries[region])
        return flat

    @classmethod
    def from_flat(cls, flat: list[object]) -> VectorClock:
        """Inverse of to_flat; raises ValueError/TypeError on malformed input."""
        if len(flat) % 2:
            raise ValueError("clock has an odd number of items")
        entries: dict[str, int] = {}
        for i in range(0, len(flat), 2):
            region, count = flat[i], flat[i + 1]
            if isinstance(region, bytes):
                region = region.decode()
            if not isinstance(region, str) or not region:
                raise TypeError("clock region must be a non-empty string")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise TypeError("clock entry must be a non-negative integer")
            if region in entries:
                raise ValueError(f"clock repeats region {region!r}")
            entries[region] = count
        return cls(entries)
