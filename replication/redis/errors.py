"""The Redis error codes this product tells apart, in one table.

An error reply starts with its code (``-LOADING Redis is loading the dataset in memory``).
Every part that classifies replies reads this table: the daemon's Redis connections (retry
or stop), the capture's handshake (reconnect or report a configuration problem) and the
failover client (a failure of the region, or the application's own error). Standard
library only, so the client imports it without the daemon's dependencies.

Two properties per code:

* ``retriable``: the server says it will serve the same command by itself soon (it is
  loading its dataset, running a long script, waiting for its master or its cluster).
  The daemon retries these with backoff. ``OOM`` is one: a full Redis under noeviction
  refuses writes until memory is freed (by expiries, the application, an operator), and a
  daemon that exited would come back to the same wall; it waits instead (its applier gives
  the remote writes it keeps refusing to a gap, repaired once memory is back: see
  replication.pipeline.inbound). ``NOREPLICAS`` is one too: under ``min-replicas-to-write``
  (docs/capture.md) a Redis refuses writes until the daemon's capture, an acknowledging
  replica, is attached again. ``READONLY`` is not: a daemon pointed at a replica needs
  an operator, so it stops and names the error (systemd restarts it).
* ``unavailable``: the server is in no state to serve commands at all: a failure of the
  region, not of the request. The failover client counts these against the region's health.

Every code here is a refusal: the server answered it *instead of* executing the command
(``executed`` is False for all of them). The exception is a reply from inside a script
(``FCALL``, ``EVAL``): the script may have written before it hit the error, whatever the
code; a caller that must know checks the command, as the failover client does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """What one error code means for the command and for the server."""

    code: str
    retriable: bool
    """The same command may succeed later without anyone changing it."""
    unavailable: bool
    """The server cannot serve now (a failure of the region, not of the request)."""
    meaning: str
    executed: bool = False
    """Whether the command ran before the server answered with this code."""


_TABLE = (
    ErrorCode("LOADING", True, True, "restarted and loading its dataset into memory"),
    ErrorCode("BUSY", True, False, "running a script or function longer than busy-reply-threshold"),
    ErrorCode("TRYAGAIN", True, False, "a multi-key command during cluster resharding"),
    ErrorCode("MASTERDOWN", True, True, "a replica that lost its master link (stale reads off)"),
    ErrorCode("NOMASTERLINK", True, False, "a replica asked to sync while its master is down"),
    ErrorCode("CLUSTERDOWN", True, True, "the cluster cannot serve this slot now"),
    ErrorCode("READONLY", False, True, "a replica: writes are refused (failed over?)"),
    ErrorCode("OOM", True, True, "maxmemory reached under noeviction: writes are refused"),
    # min-replicas-to-write: the daemon's capture is an acknowledging replica, so a region
    # whose daemon is down (or stalled past min-replicas-max-lag) refuses writes that
    # nothing would capture. The daemon's own writes wait for its capture to attach.
    ErrorCode(
        "NOREPLICAS", True, True, "no replica (the daemon's capture) acknowledges: writes refused"
    ),
    ErrorCode("NOSCRIPT", False, False, "EVALSHA of a script the server does not hold"),
    ErrorCode("NOAUTH", False, False, "authentication required"),
    ErrorCode("WRONGPASS", False, False, "wrong user name or password"),
    ErrorCode("NOPERM", False, False, "the user's ACL does not allow the command or key"),
    ErrorCode("WRONGTYPE", False, False, "the key holds another type"),
    ErrorCode("EXECABORT", False, False, "a transaction discarded for an earlier error"),
)

CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _TABLE}
RETRIABLE: frozenset[str] = frozenset(e.code for e in _TABLE if e.retriable)
UNAVAILABLE: frozenset[str] = frozenset(e.code for e in _TABLE if e.unavailable)


def error_code(reply: object) -> str:
    """The code of an error reply (its first word: ``ERR``, ``LOADING``...); "" if none."""
    text = str(reply) if reply is not None else ""
    return text.split(" ", 1)[0] if text else ""


def lookup(reply: object) -> ErrorCode | None:
    """The table's entry for an error reply (or a bare code), None if it is not listed."""
    return CODES.get(error_code(reply))


def is_retriable(reply: object) -> bool:
    """Whether an error reply (or a bare code) says the server will serve it soon."""
    return error_code(reply) in RETRIABLE
