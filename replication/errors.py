"""One root error for the whole product; callers decide by `retriable`, not by class lists."""

from __future__ import annotations

import asyncio


class ReconcilerError(Exception):
    """Root of every error this product raises on purpose.

    `retriable` tells a caller whether the same operation may succeed later (a server that
    is down) or never will (bad input, bad config).
    """

    retriable: bool = False


class DecodeError(ReconcilerError):
    """Bytes from the wire (Kafka, a control message) that are not a valid message.

    `reason` is a short fixed code for metrics labels and dead-letter headers ("malformed",
    "undecodable", "clock-range", ...); the message says what exactly was wrong."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class UnsupportedTypeError(ReconcilerError):
    """A Redis value of a type we do not replicate (streams, module types)."""


def exception_leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions of a (nested) group, groups flattened, in order."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += exception_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (nested) group that is not a cancellation (a task group
    reports its siblings' cancellations beside the failure that caused them)."""
    leaves = exception_leaves(group)
    for leaf in leaves:
        if not isinstance(leaf, asyncio.CancelledError):
            return leaf
    return leaves[0] if leaves else group
