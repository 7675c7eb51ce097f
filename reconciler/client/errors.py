"""The failover client's own errors.

Each also derives from the redis-py exception an application already catches for the same
situation (``redis.exceptions.ConnectionError``, ``TimeoutError``), so swapping
``redis.Redis`` for the failover client never lets an error slip past an existing handler.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from replication.errors import ReconcilerError

__all__ = [
    "ClientClosedError",
    "ClientError",
    "CommandOutcomeUnknownError",
    "InstanceReplacedError",
    "NoHealthyRegionError",
]


class ClientError(ReconcilerError):
    """Root of the errors the failover client raises itself."""


class CommandOutcomeUnknownError(ClientError, RedisConnectionError, RedisTimeoutError):
    """A command was sent, the reply was lost, and it may not be sent again.

    The region may or may not have executed it. The command is not in the policy's
    ``retry_commands`` (it is not idempotent, e.g. INCR), so the client did not resend it
    anywhere: resending could apply it twice. The application decides (read back, or
    retry if its own logic makes that safe).
    """

    retriable = False

    def __init__(self, command: str, region: str, cause: BaseException) -> None:
        super().__init__(
            f"{command} was sent to region {region} and the reply was lost "
            f"({type(cause).__name__}: {cause}); it may or may not have been applied, and it "
            f"was not resent because {command} is not in the policy's retry_commands"
        )
        self.command = command
        self.region = region


class NoHealthyRegionError(ClientError, RedisConnectionError):
    """Every region the command could go to failed it. Retry later: they are probed."""

    retriable = True

    def __init__(self, command: str, failures: list[str]) -> None:
        super().__init__(
            f"{command} failed on every region it could be sent to: " + "; ".join(failures)
        )
        self.command = command
        self.failures = tuple(failures)


class ClientClosedError(ClientError, RedisConnectionError):
    """The client was closed; create a new one."""

    def __init__(self) -> None:
        super().__init__("the failover client is closed")


class InstanceReplacedError(ClientError, RedisConnectionError):
    """A new connection reached another Redis instance than the one whose data the client
    trusts for that region (it restarted, or was replaced): refused before any command ran
    on it, so a command that meets it goes to another region as never sent."""

    def __init__(self, region: str, reason: str) -> None:
        super().__init__(f"region {region}: {reason}; its data is not vouched for")
        self.region = region
