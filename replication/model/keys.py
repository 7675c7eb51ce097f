"""Every internal Redis key name and Kafka topic name, and the "is this key internal?" test.

Internal keys live in the same Redis as user data under a reserved prefix. They are never
captured as changes, never replicated as data and never shown in reports as user keys.
"""

from __future__ import annotations

import re

INTERNAL_PREFIX = b"__rr:"

# Per-region daemon status, read by the failover client before failing back (a hash;
# fields in STATUS_FIELDS). It expires if the daemon stops refreshing it, so a dead daemon
# never looks "consistent".
STATUS_KEY = b"__rr:status"
STATUS_FIELDS = ("state", "region", "since_ms", "last_repair_ms", "updated_ms", "run_id")
# The proof that a repair completed on this Redis instance: "<run_id>:<nonce>", written by
# the daemon when a repair completes, checked by the script that writes a `consistent`
# status. An empty restart, a FLUSHALL or a restore from a backup taken before that repair
# loses it or carries another value, so the status can no longer say `consistent`.
VERIFIED_KEY = b"__rr:verified"
# The dataset's own "shipped through" moment (wall ms of this region's clock), written with
# each `consistent` status: every write this dataset held before it was versioned and
# shipped. A dataset restored from a copy (an old backup, the RDB of a crashed Redis) brings
# its moment back, and the sweep after the gap dates what it finds unversioned by it rather
# than by the latest moment shipped, which those old writes would otherwise beat.
SHIPPED_KEY = b"__rr:shipped"
STATUS_CONSISTENT = "consistent"
STATUS_RECOVERING = "recovering"
STATUS_REPAIRING = "repairing"
STATUS_STATES = (STATUS_CONSISTENT, STATUS_RECOVERING, STATUS_REPAIRING)


def is_internal(key: bytes) -> bool:
    """True for keys the daemon owns (metadata, status): never replicated."""
    return key.startswith(INTERNAL_PREFIX)


def changes_topic(prefix: str, region: str) -> str:
    """The topic carrying `region`'s local changes."""
    return f"{prefix}.changes.{region}"


def control_topic(prefix: str) -> str:
    """Heartbeats, anti-entropy requests and answers, resync requests."""
    return f"{prefix}.control"


def deadletter_topic(prefix: str) -> str:
    """Messages that could not be decoded or validated, with the reason."""
    return f"{prefix}.deadletter"


def clients_topic(prefix: str) -> str:
    """Failover-client connectivity metrics and failover/failback events."""
    return f"{prefix}.clients"


_META_PREFIX = INTERNAL_PREFIX + b"m:{"
META_PREFIX = _META_PREFIX
"""Every per-slot metadata hash's name starts with this."""


def meta_key(slot: int) -> bytes:
    """The metadata hash for hash slot `slot` (its {tag} maps to that same slot)."""
    from replication.model.slots import slot_tag

    return _META_PREFIX + slot_tag(slot) + b"}"


REGION_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
_REGION_RE = re.compile(REGION_NAME_PATTERN)
_KNOWN_GOOD: set[str] = set()


def is_valid_region_name(name: object) -> bool:
    """Region names are short lowercase ASCII: they are compared bytewise everywhere.

    Memoised (bounded): the decoder asks this for every clock entry of every event.
    """
    if type(name) is not str:
        return False
    if name in _KNOWN_GOOD:
        return True
    if _REGION_RE.fullmatch(name) is None:
        return False
    if len(_KNOWN_GOOD) < 1024:
        _KNOWN_GOOD.add(name)
    return True
