"""One root error for the whole product; callers decide by `retriable`, not by class lists."""

from __future__ import annotations


class ReconcilerError(Exception):
    """Root of every error this product raises on purpose.

    `retriable` tells a caller whether the same operation may succeed later (a server that
    is down) or never will (bad input, bad config).
    """

    retriable: bool = False


class DecodeError(ReconcilerError):
    """Bytes from the wire (Kafka, a control message) that are not a valid message."""


class UnsupportedTypeError(ReconcilerError):
    """A Redis value of a type we do not replicate (streams, module types)."""


class CaptureGapError(ReconcilerError):
    """Changes may have been missed (full resync, lost stream): anti-entropy must run."""

    retriable = True


class ApplyError(ReconcilerError):
    """An event could not be applied to the local Redis."""

    retriable = True
