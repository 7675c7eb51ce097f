"""A payment service's idempotency keys, as the application sees them through a client.

Each worker thread writes write-once keys (``SET key value NX``, the way a payment service
records that a payment was taken) and reads back keys that were acknowledged more than
`read_after_s` earlier. A read that finds nothing is the failure that matters: the service
would take the payment a second time. Every such read is recorded with when it happened
and which region the client was using, so a test or the demo can say exactly what an
application would have seen during a failure and recovery.

Bounded: every worker stops at `max_s` or `max_ops`, whichever comes first.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass(frozen=True)
class MissingRead:
    """A read of an acknowledged key that came back empty."""

    key: str
    acked_at: float  # monotonic
    read_at: float  # monotonic
    region: str  # the client's active region when the read was sent


@dataclass(frozen=True)
class FailureVerdict:
    """What the application saw across one failure (see `IdempotencyLoad.judge_failure`)."""

    lost_in_window: list[str]
    """Acknowledged just before the kill, never shipped: gone with the Redis's data."""
    lost_outside_window: list[str]
    """Acknowledged earlier and gone everywhere: a violation."""
    read_before_arrival: list[MissingRead]
    """Read elsewhere during the failover before replication brought them: asynchronous."""
    violations: list[MissingRead]
    """Reads that came back empty for any other reason: the failure that matters."""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.lost_outside_window


@dataclass
class _Worker:
    acked: list[tuple[str, bytes, float]] = field(default_factory=list)  # key, value, at
    writes_failed: int = 0
    writes_unknown: int = 0
    reads: int = 0
    reads_failed: int = 0
    missing: list[MissingRead] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


class IdempotencyLoad:
    """`workers` threads sharing one (failover) client; see the module docstring."""

    def __init__(
        self,
        client: Any,
        *,
        workers: int = 4,
        read_after_s: float = 3.0,
        pause_s: float = 0.004,
        max_s: float = 180.0,
        max_ops: int = 400_000,
        prefix: str = "idem",
        region_of: Callable[[], str] | None = None,
        unknown: type[BaseException] | tuple[type[BaseException], ...] = (),
        seed: int = 1,
    ) -> None:
        self.client = client
        self.read_after_s = read_after_s
        self.pause_s = pause_s
        self.max_s = max_s
        self.max_ops = max_ops
        self.prefix = prefix
        self.region_of = region_of or (lambda: "")
        self.unknown = unknown
        self._workers = [_Worker() for _ in range(workers)]
        self._stop = threading.Event()
        self._seed = seed
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"idem-{n}", daemon=True)
            for n in range(workers)
        ]

    # -- results ---------------------------------------------------------------------------

    @property
    def acked(self) -> int:
        """Writes the client acknowledged (the key is new and holds its value)."""
        return sum(len(w.acked) for w in self._workers)

    @property
    def reads(self) -> int:
        return sum(w.reads for w in self._workers)

    def acked_keys(self) -> dict[str, tuple[bytes, float]]:
        """Every acknowledged key: its value and when it was acknowledged (monotonic)."""
        return {key: (value, at) for w in self._workers for key, value, at in list(w.acked)}

    def missing(self) -> list[MissingRead]:
        """Reads of keys acknowledged over `read_after_s` earlier that found nothing."""
        return sorted((m for w in self._workers for m in w.missing), key=lambda m: m.read_at)

    def wrong(self) -> list[str]:
        """Reads that found another value than the one written (never expected)."""
        return [key for w in self._workers for key in w.wrong]

    def totals(self) -> dict[str, int]:
        return {
            "acked": self.acked,
            "writes_failed": sum(w.writes_failed for w in self._workers),
            "writes_unknown": sum(w.writes_unknown for w in self._workers),
            "reads": self.reads,
            "reads_failed": sum(w.reads_failed for w in self._workers),
            "reads_missing": sum(len(w.missing) for w in self._workers),
        }

    # -- running ---------------------------------------------------------------------------

    def _run(self, n: int) -> None:
        worker = self._workers[n]
        rng = random.Random(self._seed * 1000 + n)
        deadline = time.monotonic() + self.max_s
        for i in range(self.max_ops):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            if i % 2 == 0:
                self._write(worker, n, i)
            else:
                self._read(worker, rng)
            time.sleep(self.pause_s)

    def _write(self, worker: _Worker, n: int, i: int) -> None:
        key = f"{self.prefix}:{n}:{i}"
        value = f"paid:{n}:{i}".encode()
        try:
            if self.client.set(key, value, nx=True):
                worker.acked.append((key, value, time.monotonic()))
            else:
                worker.wrong.append(key)  # a fresh key that already existed
        except self.unknown:
            worker.writes_unknown += 1
        except (redis.RedisError, OSError):
            worker.writes_failed += 1

    def _read(self, worker: _Worker, rng: random.Random) -> None:
        cutoff = time.monotonic() - self.read_after_s
        acked = worker.acked
        # Keys are appended in time order: pick among those old enough.
        lo, hi = 0, len(acked)
        while lo < hi:
            mid = (lo + hi) // 2
            if acked[mid][2] <= cutoff:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return
        key, value, at = acked[rng.randrange(lo)]
        region = self.region_of()
        try:
            got = self.client.get(key)
        except (redis.RedisError, OSError):
            worker.reads_failed += 1
            return
        worker.reads += 1
        if got is None:
            worker.missing.append(MissingRead(key, at, time.monotonic(), region))
        elif got != value:
            worker.wrong.append(key)

    def judge_failure(
        self,
        present: set[str],
        *,
        killed_at: float,
        dead_at: float,
        home_again: float,
        window_s: float,
    ) -> FailureVerdict:
        """Sort out what the application saw across one failure of its home region.

        `present`: the keys every region holds once they converged. `killed_at`/`dead_at`:
        when the home Redis was killed (the kill was being delivered in between);
        `home_again`: when the client failed back (monotonic). Keys acknowledged in the
        `window_s` before the kill may not have reached the other regions yet (replication
        is asynchronous): lost for good if no region holds them, or read as missing
        elsewhere before they arrived. Anything else missing is a violation.
        """
        acked = self.acked_keys()
        in_window = {k for k, (_, at) in acked.items() if killed_at - window_s <= at <= dead_at}
        lost = {k for k in acked if k not in present}
        in_flight: list[MissingRead] = []
        violations: list[MissingRead] = []
        for read in self.missing():
            if read.key in lost and read.key in in_window:
                continue
            if read.key in in_window and killed_at <= read.read_at < home_again:
                in_flight.append(read)
            else:
                violations.append(read)
        return FailureVerdict(
            lost_in_window=sorted(lost & in_window),
            lost_outside_window=sorted(lost - in_window),
            read_before_arrival=in_flight,
            violations=violations,
        )

    def __enter__(self) -> IdempotencyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop and join every worker (each ends within one command's timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_failover_policy(**changes: Any) -> Any:
    """The failover client's policy for local regions (demo, tests, benchmarks): a 2 s
    window, fail over at half the requests failing (5 at least), back after 2 s of good
    probes and a trusted `consistent`. `changes` override single settings."""
    from reconciler.client import PolicyConfig

    settings: dict[str, Any] = {
        "window_s": 2.0,
        "min_requests": 5,
        "error_rate_threshold": 0.5,
        "command_timeout_s": 0.5,
        "connect_timeout_s": 0.5,
        "probe_interval_s": 0.2,
        "probe_backoff_cap_s": 0.5,
        "failback_healthy_s": 2.0,
        "require_consistent_status": True,
    }
    return PolicyConfig(**(settings | changes))
