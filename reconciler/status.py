"""The region status record: how a region's daemon tells failover clients "consistent".

The daemon of a region keeps one Redis hash in that region's own Redis, under
:data:`replication.model.keys.STATUS_KEY` (``__rr:status``), never replicated (it is an internal
key). Fields (:data:`replication.model.keys.STATUS_FIELDS`), all stored as ASCII strings:

``state``
    ``consistent`` (the region holds what the others hold, as far as anti-entropy knows),
    ``recovering`` (the daemon started after a gap and has not compared yet) or
    ``repairing`` (an anti-entropy session is running).
``region``
    The region name, so a client can tell it reads the record of the Redis it meant to.
``since_ms``
    Wall-clock milliseconds when this state began.
``last_repair_ms``
    Wall-clock milliseconds of the last completed repair, or 0 if none yet.
``updated_ms``
    Wall-clock milliseconds of this write.
``run_id``
    The ``run_id`` (``INFO server``) of the Redis instance that holds the record, stamped
    by the script that writes it from that instance's own ``INFO``, not by the daemon's
    belief. Every start of a redis-server gets a new random ``run_id``, so a record that
    survived a restart (in an AOF or an RDB, or restored from a backup) names an instance
    that no longer runs.

Binding ``consistent`` to the data (what makes failback safe): the daemon writes the record
through the library's ``rr_status`` function, which refuses ``consistent`` unless
:data:`replication.model.keys.VERIFIED_KEY` holds ``<run_id>:<nonce>`` with this instance's
``run_id`` and the nonce the daemon wrote there when its last repair completed. An empty
restart or a ``FLUSHALL`` loses the marker; a restart from an AOF or an old backup carries
another ``run_id``; so ``consistent`` can only stand in a Redis on which a repair
completed, whatever the timing of the daemon's loops. A reader checks the other half: the
record's ``run_id`` is the ``run_id`` of the instance it is probing, in the same
``MULTI``, and the record has its expiry.

Writer contract (the daemon): call :func:`write_status` at every state change **and**
periodically (every refresh interval) with ``ttl_ms`` of about three refresh intervals. The
record then expires when the daemon stops, and a reader treats a missing record as
"unknown", never as consistent. Because the record is refreshed, a failover client can tell
a live daemon's fresh ``consistent`` from one left over from before a failure (its
``updated_ms`` has moved on).

This module is light on purpose (no daemon code): the failover client imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from replication.clock import wall_ms
from replication.errors import ReconcilerError
from replication.model.keys import (
    STATUS_CONSISTENT,
    STATUS_FIELDS,
    STATUS_KEY,
    STATUS_STATES,
)

__all__ = [
    "RegionStatus",
    "StatusRecordError",
    "decode_status",
    "encode_status",
    "is_run_id",
    "parse_run_id",
    "read_status",
    "read_status_sync",
    "write_status",
]


class StatusRecordError(ReconcilerError):
    """A status record that exists but cannot be understood (written by something else)."""


@dataclass(frozen=True)
class RegionStatus:
    """One region's consistency status as its daemon last wrote it."""

    state: str
    region: str
    since_ms: int
    last_repair_ms: int = 0
    updated_ms: int = 0
    run_id: str = ""
    """The Redis instance holding the record (40 hex digits; empty: unknown, never trusted)."""

    def __post_init__(self) -> None:
        if self.state not in STATUS_STATES:
            raise StatusRecordError(
                f"status state {self.state!r} is not one of {', '.join(STATUS_STATES)}"
            )
        if not self.region:
            raise StatusRecordError("status record without a region name")
        for name in ("since_ms", "last_repair_ms", "updated_ms"):
            if getattr(self, name) < 0:
                raise StatusRecordError(f"status field {name} is negative")
        if self.run_id and not is_run_id(self.run_id):
            raise StatusRecordError(f"status run_id {self.run_id[:48]!r} is not 40 hex digits")

    @property
    def consistent(self) -> bool:
        """True when the daemon says the region holds what the other regions hold."""
        return self.state == STATUS_CONSISTENT

    def belongs_to(self, run_id: str | None) -> bool:
        """True when the record was written in the instance whose ``run_id`` is `run_id`."""
        return bool(run_id) and self.run_id == run_id

    @classmethod
    def now(
        cls,
        state: str,
        region: str,
        *,
        since_ms: int | None = None,
        last_repair_ms: int = 0,
        run_id: str = "",
    ) -> RegionStatus:
        """A status stamped with the current wall-clock time (``since_ms`` defaults to now)."""
        now_ms = wall_ms()
        return cls(
            state=state,
            region=region,
            since_ms=now_ms if since_ms is None else since_ms,
            last_repair_ms=last_repair_ms,
            updated_ms=now_ms,
            run_id=run_id,
        )


_RUN_ID_RE = re.compile(r"[0-9a-f]{40}")
_INFO_RUN_ID_RE = re.compile(rb"^run_id:([0-9a-f]{40})\r?$", re.MULTILINE)


def is_run_id(text: str) -> bool:
    """True for a redis-server ``run_id``: 40 lowercase hex digits."""
    return _RUN_ID_RE.fullmatch(text) is not None


def parse_run_id(info: object) -> str | None:
    """The ``run_id`` in an ``INFO server`` answer (raw bytes or str, or redis-py's parsed
    dict), or None when it has none."""
    if isinstance(info, Mapping):
        value = info.get("run_id", info.get(b"run_id"))
        text = _text(value) if value is not None else ""
        return text if is_run_id(text) else None
    if isinstance(info, str):
        info = info.encode()
    if not isinstance(info, bytes | bytearray):
        return None
    match = _INFO_RUN_ID_RE.search(info)
    return match.group(1).decode() if match else None


def encode_status(status: RegionStatus) -> dict[str, str]:
    """The hash fields of `status`, as stored."""
    return {
        "state": status.state,
        "region": status.region,
        "since_ms": str(status.since_ms),
        "last_repair_ms": str(status.last_repair_ms),
        "updated_ms": str(status.updated_ms),
        "run_id": status.run_id,
    }


def decode_status(fields: Mapping[Any, Any]) -> RegionStatus | None:
    """Parse an HGETALL answer (bytes or str keys and values); None for an empty hash.

    Raises :class:`StatusRecordError` for a record with missing or malformed fields.
    """
    if not fields:
        return None
    text = {_text(key): _text(value) for key, value in fields.items()}
    missing = [name for name in STATUS_FIELDS if name not in text]
    if missing:
        raise StatusRecordError(f"status record lacks field(s) {', '.join(missing)}")
    try:
        since_ms = int(text["since_ms"])
        last_repair_ms = int(text["last_repair_ms"])
        updated_ms = int(text["updated_ms"])
    except ValueError as exc:
        raise StatusRecordError(f"status record has a non-integer time: {exc}") from exc
    return RegionStatus(
        state=text["state"],
        region=text["region"],
        since_ms=since_ms,
        last_repair_ms=last_repair_ms,
        updated_ms=updated_ms,
        run_id=text["run_id"],
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class _AsyncClient(Protocol):
    def pipeline(self, transaction: bool = True) -> Any: ...
    def hgetall(self, name: Any) -> Any: ...


class _SyncClient(Protocol):
    def hgetall(self, name: Any) -> Any: ...


async def write_status(client: _AsyncClient, status: RegionStatus, ttl_ms: int) -> None:
    """Replace the status record atomically and make it expire after `ttl_ms`.

    `client` is a ``redis.asyncio.Redis`` on the region's own Redis. DEL, HSET and PEXPIRE
    run in one MULTI/EXEC, so a reader never sees a record without its expiry or a mix of
    old and new fields. This writer checks nothing: stand-in daemons in tests use it. The
    daemon itself writes through the library's ``rr_status``, which refuses a
    ``consistent`` that no completed repair on this instance vouches for.
    """
    if ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(STATUS_KEY)
        pipe.hset(STATUS_KEY, mapping=encode_status(status))
        pipe.pexpire(STATUS_KEY, ttl_ms)
        await pipe.execute()


async def read_status(client: _AsyncClient) -> RegionStatus | None:
    """The region's status record, or None when there is none (no daemon, or it expired).

    `client` is a ``redis.asyncio.Redis`` (or anything with an awaitable ``hgetall``).
    Connection errors propagate: a Redis that does not answer has no status.
    """
    fields = await client.hgetall(STATUS_KEY)
    return decode_status(fields)


def read_status_sync(client: _SyncClient) -> RegionStatus | None:
    """:func:`read_status` for a synchronous ``redis.Redis``."""
    fields = client.hgetall(STATUS_KEY)
    return decode_status(fields)
