"""What a region's status record proves about the data of the Redis instance holding it.

A probe reads, in one ``MULTI``/``EXEC`` on the probe connection, ``INFO server``,
``HGETALL __rr:status``, ``PTTL __rr:status`` and ``GET __rr:verified``: the ``run_id`` of
the instance that answers, the record that instance holds and the marker a completed repair
on it left, at one instant. :func:`reading_of` turns the replies into a :class:`Reading`;
:func:`judge` decides, without I/O, what the record is worth. The router
(:mod:`reconciler.client.router`) acts on the verdict: only :attr:`Finding.CONSISTENT` may
open the failback gate, and :attr:`Verdict.against_data` is positive evidence that moves
traffic away from a healthy region.

A record is trusted only when it decodes, names the region the client meant to probe,
names the instance that answers (``run_id`` equal to the one ``INFO`` just gave: a record
that survived a restart in an AOF, an RDB or a restored backup names an instance that no
longer runs), and carries an expiry (the daemon always writes one, so a record without
one was written by something else, or survived the daemon that stopped refreshing it).

``recovering`` in a trusted record means the daemon has not verified the instance since
its last gap (restarted empty, restored, flushed, or a gap in its change stream): positive
evidence, traffic leaves. ``repairing`` means a routine session on data that was verified
(a peer came back, an operator's repair): when the completed-repair marker
(``__rr:verified``) names this very instance, a healthy region keeps its traffic, so that
every client does not leave every region each time one region returns from an outage;
without that marker it counts as ``recovering``. Neither opens the failback gate.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.status import (
    RegionStatus,
    StatusRecordError,
    decode_status,
    is_run_id,
    parse_run_id,
)
from replication.model.keys import STATUS_RECOVERING, STATUS_REPAIRING

__all__ = ["Finding", "Reading", "Verdict", "judge", "reading_of"]


@dataclass(frozen=True)
class Reading:
    """What one probe read from a region, atomically."""

    run_id: str | None
    """The ``run_id`` of the instance that answered (None: ``INFO`` refused or without one)."""
    status: RegionStatus | None
    """The decoded record (None: no record, or one that does not decode: see `problem`)."""
    pttl_ms: int
    """``PTTL`` of the record: > 0 its expiry, -1 none, -2 no record."""
    verified_run_id: str | None = None
    """The instance named by the completed-repair marker (None: no marker)."""
    problem: str = ""
    """Why the record or the ``run_id`` could not be read, for the operator."""


class Finding(enum.Enum):
    """What a reading says about the region's data."""

    CONSISTENT = "consistent"
    """A record of this instance and region, with its expiry, says ``consistent``."""
    NOT_CONSISTENT = "not_consistent"
    """A record of this instance says ``recovering``, or ``repairing`` while no completed
    repair on this instance vouches for its data."""
    RECHECKING = "rechecking"
    """A record of this instance says ``repairing``, and a repair completed on this very
    instance: a routine session on verified data."""
    FOREIGN = "foreign"
    """The record names another instance: it survived a restart (or was copied)."""
    ABSENT = "absent"
    """No record (no daemon, or it stopped and the record expired)."""
    UNBOUND = "unbound"
    """The record cannot be tied to the instance (``INFO`` refused, or no ``run_id``)."""
    NO_EXPIRY = "no_expiry"
    """The record has no expiry: not written by a live daemon."""
    OTHER_REGION = "other_region"
    """The record names another region (a misconfigured URL or region name)."""
    UNREADABLE = "unreadable"
    """The record exists but does not decode."""


@dataclass(frozen=True)
class Verdict:
    """A :class:`Finding` and the sentence an operator reads in logs and events."""

    finding: Finding
    reason: str

    @property
    def vouches(self) -> bool:
        """True when the record vouches for the data: the only way the gate opens."""
        return self.finding is Finding.CONSISTENT

    @property
    def against_data(self) -> bool:
        """True for positive evidence that the instance's data is not vouched for: its own
        daemon says it is not consistent, or the record is left over from another instance.
        A missing or unreadable record is not evidence (a daemon can be down while its Redis
        serves correct data)."""
        return self.finding in (Finding.NOT_CONSISTENT, Finding.FOREIGN)


def reading_of(
    info: object, fields: Mapping[Any, Any] | None, pttl: object, marker: object = None
) -> Reading:
    """The :class:`Reading` of the replies to ``INFO server``, ``HGETALL`` and ``PTTL`` of
    the status record and ``GET`` of the completed-repair marker."""
    run_id = parse_run_id(info)
    ttl = pttl if isinstance(pttl, int) else -2
    verified = _marker_run_id(marker)
    problem = "" if run_id is not None else "INFO server gave no run_id"
    try:
        status = decode_status(fields or {})
    except StatusRecordError as exc:
        return Reading(run_id, None, ttl, verified, f"unreadable status record: {exc}")
    return Reading(run_id, status, ttl, verified, problem)


def _marker_run_id(marker: object) -> str | None:
    """The ``run_id`` in a ``<run_id>:<nonce>`` marker, or None."""
    if isinstance(marker, bytes | bytearray):
        marker = bytes(marker).decode("ascii", "replace")
    if not isinstance(marker, str):
        return None
    run_id = marker.split(":", 1)[0]
    return run_id if is_run_id(run_id) else None


def judge(region: str, reading: Reading) -> Verdict:
    """What `reading`, taken from region `region`, proves about its data."""
    status = reading.status
    if status is None:
        if reading.problem.startswith("unreadable"):
            return Verdict(Finding.UNREADABLE, reading.problem)
        return Verdict(Finding.ABSENT, "no status record")
    if status.region != region:
        return Verdict(
            Finding.OTHER_REGION,
            f"the status record names region {status.region!r}, not {region!r}",
        )
    if reading.run_id is None:
        return Verdict(
            Finding.UNBOUND,
            f"the record cannot be tied to the instance ({reading.problem or 'no run_id'})",
        )
    if not status.run_id:
        return Verdict(Finding.UNBOUND, "the record names no instance (run_id empty)")
    if not status.belongs_to(reading.run_id):
        return Verdict(
            Finding.FOREIGN,
            f"the status record ({status.state}) names instance {status.run_id[:12]}, "
            f"not the running {reading.run_id[:12]}: it survived a restart",
        )
    if reading.pttl_ms <= 0:
        return Verdict(Finding.NO_EXPIRY, "the status record has no expiry")
    if not status.consistent:
        if status.state == STATUS_REPAIRING and reading.verified_run_id == reading.run_id:
            return Verdict(
                Finding.RECHECKING,
                "its daemon runs a routine session on data a completed repair verified",
            )
        return Verdict(
            Finding.NOT_CONSISTENT,
            f"its daemon reports it {status.state}: not verified since its last gap"
            if status.state == STATUS_RECOVERING
            else f"its daemon reports it {status.state} and no completed repair vouches "
            "for this instance",
        )
    return Verdict(Finding.CONSISTENT, f"status consistent (updated_ms {status.updated_ms})")
