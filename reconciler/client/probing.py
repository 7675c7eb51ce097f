"""What the sync and asyncio shells send to check a region, and what the answers mean.

Two checks, the same in both shells (which only do the I/O):

* **The probe** (every ``probe_interval_s``, on each region's one-connection probe client):
  :data:`PROBE_COMMANDS` in one ``MULTI``/``EXEC``, so the ``run_id`` and the record it is
  compared with come from the same instance at the same instant. :func:`outcome_of_replies`
  and :func:`outcome_of_error` turn the result into a :class:`ProbeOutcome` for
  :meth:`Router.probe_result`. A region that answers but refuses writes because no replica
  acknowledges (``min-replicas-to-write`` while its daemon's capture is detached) fails the
  probe: no client fails back to it until its daemon captures again.
* **A new connection** (redis-py's ``redis_connect_func`` hook, after its own handshake):
  ``INFO server`` on that connection; :func:`admit` asks the router whether the instance is
  the one whose data the client trusts, and refuses the connection before any command runs
  on it when it is not (:class:`InstanceReplacedError`: the command goes elsewhere as not
  sent).

The client's Redis user needs ``+info`` and read access to the two internal keys
(``%R~__rr:*``). Without them the record cannot be tied to the instance: nothing fails back
while ``require_consistent_status`` is on (safe), and a restarted instance is noticed only by
the error rate. :class:`Access` says so once, naming what to grant.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError, RedisError, ResponseError

from reconciler.client.errors import InstanceReplacedError
from reconciler.client.evidence import Reading, reading_of
from reconciler.client.health import classify
from reconciler.client.router import Router
from reconciler.status import parse_run_id
from replication.model.keys import STATUS_KEY, VERIFIED_KEY

__all__ = [
    "GRANT",
    "PROBE_COMMANDS",
    "Access",
    "ProbeOutcome",
    "admit",
    "outcome_of_error",
    "outcome_of_replies",
    "report_probe",
    "writes_refused",
]

log = logging.getLogger("reconciler.client")

PROBE_COMMANDS: tuple[tuple[Any, ...], ...] = (
    ("INFO", "server"),
    ("HGETALL", STATUS_KEY),
    ("PTTL", STATUS_KEY),
    ("GET", VERIFIED_KEY),
    ("INFO", "replication"),
)
"""Queued in one MULTI on the probe connection; :func:`outcome_of_replies` reads the replies."""

_GOOD_REPLICAS_RE = re.compile(rb"min_slaves_good_slaves:(\d+)")

GRANT = "+info %R~__rr:*"
"""What the client's ACL user needs beyond its application's rights (``ACL SETUSER``)."""


@dataclass(frozen=True)
class ProbeOutcome:
    """One probe: the region answered (`ok`), what it read, and why not (`detail`)."""

    ok: bool
    reading: Reading | None
    detail: str = ""


class Access:
    """Remembers that the client's user was refused ``INFO`` or the status keys, and warns
    once per client (probes and new connections repeat the refusal every second)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warned = False

    def denied(self, region: str, exc: BaseException) -> str:
        """Note a refusal; returns the detail for the probe's outcome."""
        detail = (
            f"the client's Redis user may not check region {region}'s instance and status "
            f"record ({exc}); grant it with ACL SETUSER <user> {GRANT}"
        )
        with self._lock:
            first, self._warned = not self._warned, True
        if first:
            log.warning(
                "%s. Until then the status record cannot be tied to the Redis instance: no "
                "region fails back while require_consistent_status is on, and a restarted "
                "instance is noticed only by its errors",
                detail,
            )
        return detail


def outcome_of_replies(replies: Sequence[Any]) -> ProbeOutcome:
    """The outcome of a probe whose MULTI answered (replies of :data:`PROBE_COMMANDS`)."""
    info, fields, pttl, marker, replication = replies
    reading = reading_of(info, fields, pttl, marker)
    if writes_refused(replication):
        # Reads still answer, but a client sent back here would have its writes refused.
        return ProbeOutcome(False, reading, REFUSING_WRITES)
    return ProbeOutcome(True, reading)


REFUSING_WRITES = (
    "the region refuses writes: no replica acknowledges under min-replicas-to-write "
    "(its daemon's capture is detached)"
)


def writes_refused(info: object) -> bool:
    """Whether an ``INFO replication`` answer (raw, or redis-py's parsed dict) says the
    instance refuses writes now: it enforces ``min-replicas-to-write`` and no replica
    acknowledges in time. Redis shows ``min_slaves_good_slaves`` only when enforcing; a
    threshold above one replica is not visible in ``INFO``, so only zero counts."""
    if isinstance(info, Mapping):
        value = info.get("min_slaves_good_slaves", info.get(b"min_slaves_good_slaves"))
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("ascii", "replace")
        return value is not None and str(value).strip() == "0"
    if isinstance(info, str):
        info = info.encode()
    if not isinstance(info, bytes | bytearray):
        return False
    match = _GOOD_REPLICAS_RE.search(info)
    return match is not None and int(match.group(1)) == 0


def outcome_of_error(exc: BaseException, region: str, access: Access) -> ProbeOutcome:
    """The outcome of a probe that raised `exc`."""
    if isinstance(exc, NoPermissionError):
        # It answered: the region is up, but nothing it holds can vouch for it.
        return ProbeOutcome(True, None, access.denied(region, exc))
    # A refusal such as LOADING is the region failing; any other error reply still proves
    # it answers.
    ok = isinstance(exc, RedisError | OSError) and not classify(exc, sent=True).is_failure
    return ProbeOutcome(ok, None, f"{type(exc).__name__}: {exc}")


def report_probe(
    router: Router,
    region: tuple[int, str],
    access: Access,
    replies: Sequence[Any] | None,
    error: BaseException | None,
) -> None:
    """Tell the router how the probe of `region` (index, name) went: its MULTI answered
    `replies`, or raised `error` (neither: it was interrupted)."""
    index, name = region
    if replies is not None:
        outcome = outcome_of_replies(replies)
    elif error is not None:
        outcome = outcome_of_error(error, name, access)
    else:
        outcome = ProbeOutcome(False, None, "probe interrupted")
    router.probe_result(index, ok=outcome.ok, reading=outcome.reading, detail=outcome.detail)


def admit(router: Router, index: int, region: str, info: object, access: Access) -> None:
    """Let commands run on a new connection to region `index` whose ``INFO server`` answer
    is `info` (an exception when it was refused), or raise :class:`InstanceReplacedError`."""
    if isinstance(info, ResponseError):
        access.denied(region, info)
        return
    refusal = router.connected(index, parse_run_id(info))
    if refusal is not None:
        raise InstanceReplacedError(region, refusal)
