"""The hybrid clock's high-water mark on disk, so a restart never goes back in time."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["ClockFloor"]


class ClockFloor:
    """A high-water mark above every timestamp handed out, in `path`.

    It keeps headroom so it is rewritten only when the clock has used half of it (a file
    rename on the event loop every status tick cost up to 5% of the loop under load); the
    headroom stays far below `max_drift_ms`, or peers would quarantine the first changes
    after a restart as dated ahead.
    """

    def __init__(self, path: Path, *, max_drift_ms: int) -> None:
        self.path = path
        self.headroom = min(10_000, max_drift_ms // 4) << 12  # HLC units: ms << 12
        self.saved = 0

    def load(self) -> int:
        """The mark saved by the previous run (0 if none or unreadable)."""
        try:
            return int(json.loads(self.path.read_text())["high_water"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def save(self, last: int, *, force: bool = False) -> None:
        """Persist a mark above `last` (the clock's latest timestamp) if it is needed."""
        if not force and last + self.headroom // 2 < self.saved:
            return
        high_water = last + self.headroom
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"high_water": high_water}))
        tmp.replace(self.path)
        self.saved = high_water
