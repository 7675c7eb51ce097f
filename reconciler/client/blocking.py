"""Commands that block on the server, and how long the client waits for their reply.

A blocking command (``BLPOP``, ``XREAD ... BLOCK``, ``WAIT``...) is meant to sit on the
server until something arrives or its own timeout passes. The command timeout of the policy
would cut it short, so its reply is awaited for its block time plus the command timeout,
and forever when it blocks forever (a block time of 0), as with plain redis-py. Such a
command is never sent again elsewhere once it reached a server (it may have popped an
element), and a read timeout on it is not counted against the region: a queue worker
waiting on an empty list must not look like a failing region.
"""

from __future__ import annotations

import math

__all__ = ["BLOCKING", "FOREVER", "block_s", "read_timeout_s"]

FOREVER = math.inf
"""The read timeout of a command that blocks until something arrives."""

# Where the block time stands: the last argument, in seconds.
_LAST_S = ("BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX")
# The first argument after the name, in seconds.
_FIRST_S = ("BLMPOP", "BZMPOP")
# A BLOCK <milliseconds> option (no option: not blocking).
_BLOCK_OPTION_MS = ("XREAD", "XREADGROUP")
# Position of the timeout in milliseconds: WAIT numreplicas timeout, WAITAOF l r timeout.
_POSITION_MS = {"WAIT": 2, "WAITAOF": 3}

_NAMES = (*_LAST_S, *_FIRST_S, *_BLOCK_OPTION_MS, *_POSITION_MS)
BLOCKING: frozenset[object] = frozenset(
    variant
    for name in _NAMES
    for variant in (name, name.lower(), name.encode(), name.lower().encode())
)
"""The names (as redis-py's methods and applications spell them) of the commands that may
block: a set lookup on the hot path; :func:`block_s` reads the arguments."""


def _number(arg: object) -> float | None:
    try:
        value = float(arg.decode() if isinstance(arg, bytes | bytearray) else arg)  # type: ignore[arg-type]
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def block_s(args: tuple[object, ...]) -> float | None:
    """How long the command `args` may block, in seconds: 0 for forever, None when it does
    not block (or its block time is malformed: the server then refuses it at once)."""
    if not args or args[0] not in BLOCKING:
        return None
    first = args[0]
    name = (first.decode() if isinstance(first, bytes) else str(first)).upper()
    if name in _LAST_S:
        return _number(args[-1]) if len(args) > 1 else None
    if name in _FIRST_S:
        return _number(args[1]) if len(args) > 1 else None
    if name in _POSITION_MS:
        at = _POSITION_MS[name]
        ms = _number(args[at]) if len(args) > at else None
        return None if ms is None else ms / 1000.0
    for position, arg in enumerate(args[1:-1], start=1):
        word = arg.decode("ascii", "replace") if isinstance(arg, bytes) else arg
        if isinstance(word, str) and word.upper() == "STREAMS":
            return None  # the options end here: no BLOCK
        if isinstance(word, str) and word.upper() == "BLOCK":
            ms = _number(args[position + 1])
            return None if ms is None else ms / 1000.0
    return None


def read_timeout_s(args: tuple[object, ...], command_timeout_s: float) -> float | None:
    """The read timeout for `args`: None for a command that does not block (the connection's
    own timeout applies), :data:`FOREVER`, or its block time plus `command_timeout_s`."""
    blocked = block_s(args)
    if blocked is None:
        return None
    if blocked == 0:
        return FOREVER
    return blocked + command_timeout_s
