"""State-change log lines: one line per change, with a stable event name first.

    event=region.status from=recovering to=repairing
    event=peer.down peer=us-east reason="missed heartbeats"

An operator (or a log pipeline) matches on ``event=NAME``; the names below are a contract,
listed in the README's table, and never reworded. The other ``key=value`` fields may grow.
Under ``log_format = "json"`` the event and its fields are also JSON keys of the line.

Light on purpose (only the standard library): the failover client logs its events with it.
"""

from __future__ import annotations

import json
import logging
from typing import Final

# A region (its daemon): lifecycle and consistency status.
REGION_STARTING: Final = "region.starting"
REGION_READY: Final = "region.ready"
REGION_STATUS: Final = "region.status"
REGION_GAP: Final = "region.gap"
REGION_STOPPING: Final = "region.stopping"
REGION_STOPPED: Final = "region.stopped"
REGION_FAILED: Final = "region.failed"
# A peer, as this region's daemon sees it through heartbeats.
PEER_UP: Final = "peer.up"
PEER_DOWN: Final = "peer.down"
PEER_RESTARTED: Final = "peer.restarted"
# A failover client: where its commands go.
CLIENT_FAILOVER: Final = "client.failover"
CLIENT_FAILBACK: Final = "client.failback"
CLIENT_REGION_DOWN: Final = "client.region_down"
CLIENT_REGION_UP: Final = "client.region_up"

EVENTS: Final = (
    REGION_STARTING,
    REGION_READY,
    REGION_STATUS,
    REGION_GAP,
    REGION_STOPPING,
    REGION_STOPPED,
    REGION_FAILED,
    PEER_UP,
    PEER_DOWN,
    PEER_RESTARTED,
    CLIENT_FAILOVER,
    CLIENT_FAILBACK,
    CLIENT_REGION_DOWN,
    CLIENT_REGION_UP,
)

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/,+@")


def _value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text)  # quoted, with spaces, quotes and newlines escaped


def format_event(event: str, fields: dict[str, object]) -> str:
    """``event=NAME k=v ...``; a trailing ``_`` in a field name is dropped (``from_``)."""
    parts = [f"event={event}"]
    parts.extend(f"{name.removesuffix('_')}={_value(value)}" for name, value in fields.items())
    return " ".join(parts)


def log_event(
    logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object
) -> None:
    """Log one state change as ``event=NAME k=v ...`` (see the module docstring)."""
    if not logger.isEnabledFor(level):
        return
    clean = {name.removesuffix("_"): value for name, value in fields.items()}
    logger.log(
        level,
        "%s",
        format_event(event, fields),
        extra={"event": event, "event_fields": clean},
    )
