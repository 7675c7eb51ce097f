"""The latest moment this region said every earlier write was shipped, kept on disk.

A delete the capture had not versioned when the daemon or its Redis went down is found
later (in the stream replayed at restart, or by the sweep after a gap). It happened after
the last `shipped_through_ms` this region announced (that one covered every write before
it), so it is dated one millisecond after that (see `replication.capture.versioner`): the
tombstone GC dates a delete by its clock and must not take it for one shipped earlier. The
mark is saved at most once a second; after a restart the GC frontiers start again from the
new run's heartbeats, so a slightly stale mark is safe.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["ShippedFloor"]

SAVE_EVERY_MS = 1_000


class ShippedFloor:
    """The highest `shipped_through_ms` announced, in `path` (wall ms, 0 none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = self._load()
        self._saved = self.value

    def _load(self) -> int:
        try:
            value = int(json.loads(self.path.read_text())["shipped_through_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return max(0, value)

    def advance(self, shipped_through_ms: int) -> int:
        """Take a newly announced mark; returns the highest so far."""
        if shipped_through_ms > self.value:
            self.value = shipped_through_ms
            if self.value - self._saved >= SAVE_EVERY_MS:
                self._save()
        return self.value

    def flush(self) -> None:
        """Save the latest mark now (at a graceful stop)."""
        if self.value > self._saved:
            self._save()

    def _save(self) -> None:
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"shipped_through_ms": self.value}))
            tmp.replace(self.path)
            self._saved = self.value
        except OSError:
            pass  # the next advance tries again; a stale mark only dates late writes earlier
