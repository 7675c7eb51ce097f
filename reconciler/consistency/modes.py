"""What an anti-entropy session does with the differences it finds."""

from __future__ import annotations

import enum


class SessionMode(enum.StrEnum):
    """A session's mode; its value is the name operators, reports and the CLI use."""

    REPAIR = "repair"
    """Compare, then ship the winning state of every differing key."""
    DRY_RUN = "dry-run"
    """Compare and report what a repair would do; ship nothing."""
    VERIFY = "verify"
    """A dry run plus each side's check of its data against its metadata."""
    RESYNC = "resync"
    """The peer streams its whole keyspace to us, then a repair session runs."""

    @property
    def repairs(self) -> bool:
        """True for the modes that change data (and so count as a repair)."""
        return self in (SessionMode.REPAIR, SessionMode.RESYNC)
