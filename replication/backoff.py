"""Capped exponential backoff with full jitter: the one retry delay used everywhere
(capture reconnects, Kafka restarts, the applier's retries, the client's probes)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from replication.errors import ReconcilerError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Backoff:
    """delay(n) = uniform(0, min(cap, base * 2**n)); `reset()` after a success.

    Full jitter spreads the retries of many clients so they do not reconnect in lockstep.
    """

    base_s: float = 0.05
    cap_s: float = 10.0
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    async def sleep(self) -> float:
        """Sleep for the next delay and return it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        self.attempt = 0


async def retrying(
    op: Callable[[], Awaitable[T]], *, what: str, backoff: Backoff | None = None
) -> T:
    """Run `op` until it succeeds, sleeping with backoff after each retriable failure
    (`ReconcilerError.retriable`); anything else propagates."""
    # Capped at 1 s: what is retried here waits for the region's own Redis, and a Redis
    # that answers again should be used again within a second (it bounds the recovery).
    backoff = backoff or Backoff(base_s=0.1, cap_s=1.0)
    while True:
        try:
            return await op()
        except ReconcilerError as exc:
            if not exc.retriable:
                raise
            log.warning("%s failed (%s); retrying", what, exc)
            await backoff.sleep()
