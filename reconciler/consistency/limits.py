"""Limits on peers' anti-entropy requests: deduplicated, rate-limited and bounded per
peer, so no peer (buggy, compromised, or replaying records) can make a responder do
unbounded work or hold unbounded memory.

Per peer: a request already answered (same session and seq) is dropped; at most
`max_in_flight` requests are answered at once; requests beyond a token bucket of
`rate_per_s` (burst `burst`) are refused; whole-keyspace jobs (resync, selfcheck) run one
at a time per peer and at most `expensive_burst` per `expensive_every_s`. A refused
request gets a refusal reply (its session fails at once with the reason, instead of
waiting for a timeout), and every refusal is counted by reason.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

REMEMBERED = 4096  # (session, seq) pairs remembered per peer, to drop duplicates


class TokenBucket:
    """`take()` succeeds while tokens remain; they refill at `rate` per second."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = burst
        self.tokens = burst
        self.clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _Peer:
    requests: TokenBucket
    expensive: TokenBucket
    in_flight: int = 0
    expensive_running: bool = False
    seen: OrderedDict[tuple[str, int], None] = field(default_factory=OrderedDict)


class RequestLimits:
    """Decides whether a peer's request is answered; `admit` then `release` around it."""

    def __init__(
        self,
        *,
        max_in_flight: int = 12,
        rate_per_s: float = 500.0,
        burst: float = 1000.0,
        expensive_every_s: float = 60.0,
        expensive_burst: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.expensive_every_s = expensive_every_s
        self.expensive_burst = expensive_burst
        self.clock = clock
        self._peers: dict[str, _Peer] = {}
        self.refused: Counter[str] = Counter()  # by reason

    def _peer(self, peer: str) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = _Peer(
                TokenBucket(self.rate_per_s, self.burst, self.clock),
                TokenBucket(1.0 / self.expensive_every_s, self.expensive_burst, self.clock),
            )
            self._peers[peer] = state
        return state

    def admit(self, peer: str, session: str, seq: int, *, expensive: bool) -> str | None:
        """None if the request may run now (call `release` when done), else why not:
        "duplicate" (answered already: drop it silently), "busy", "rate-limited"."""
        state = self._peer(peer)
        key = (session, seq)
        if key in state.seen:
            self.refused["duplicate"] += 1
            return "duplicate"
        state.seen[key] = None
        if len(state.seen) > REMEMBERED:
            state.seen.popitem(last=False)
        if state.in_flight >= self.max_in_flight:
            return self._refuse("busy")
        if expensive and state.expensive_running:
            return self._refuse("busy")
        if not state.requests.take():
            return self._refuse("rate-limited")
        if expensive and not state.expensive.take():
            return self._refuse("rate-limited")
        state.in_flight += 1
        if expensive:
            state.expensive_running = True
        return None

    def release(self, peer: str, *, expensive: bool) -> None:
        state = self._peer(peer)
        state.in_flight -= 1
        if expensive:
            state.expensive_running = False

    def _refuse(self, reason: str) -> str:
        self.refused[reason] += 1
        return reason
