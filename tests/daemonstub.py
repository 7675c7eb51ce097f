"""A stand-in for a region's daemon where a test (or a benchmark) wants only its status
record: it keeps ``__rr:status`` fresh in a real Redis, as the daemon does.

Each write stamps the ``run_id`` that ``INFO server`` of the Redis it writes to gives at
that moment, as the daemon's own status script does, so the record belongs to the instance
that holds it (after a restart the next write names the new instance). What the state is
stays the test's decision: the stub vouches for whatever it is told. A test can also make
it forge records the client must not trust (another region, another instance, no expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from reconciler.status import RegionStatus, encode_status, parse_run_id, write_status
from replication.model.keys import STATUS_KEY


@dataclass(frozen=True)
class Forgery:
    """What a forged record gets wrong (None / True: as the daemon would write it)."""

    region: str | None = None
    run_id: str | None = None
    expiry: bool = True


class DaemonStub:
    """Plays a region's daemon: keeps its status record fresh, as the real one will.

    `state` None writes nothing (a daemon that is down); otherwise the record is rewritten
    every `refresh_s` with a TTL of `ttl_ms` (default: five refreshes). Writes to a dead
    Redis are skipped.
    """

    def __init__(
        self,
        url: str,
        region: str,
        *,
        refresh_s: float = 0.1,
        ttl_ms: int | None = None,
        max_s: float = 300.0,
    ) -> None:
        self.url = url
        self.region = region
        self.refresh_s = refresh_s
        self.ttl_ms = ttl_ms or int(refresh_s * 5000)
        self.max_s = max_s
        self._state: str | None = None
        self._forgery = Forgery()
        self._since_ms = 0
        self._stop = threading.Event()
        self._changed = threading.Event()
        self.writes = 0
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def set(self, state: str | None, forgery: Forgery | None = None) -> None:
        """Write `state` from now on (None: stop writing), as `forgery` says if given;
        waits for the first write."""
        if state != self._state:
            self._since_ms = time.time_ns() // 1_000_000
        self._forgery = forgery or Forgery()
        self._state = state
        self._changed.clear()
        # Wait until the new state is written once (or the region is down).
        if state is not None:
            self._changed.wait(timeout=5)

    def __enter__(self) -> DaemonStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        client = aioredis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + self.max_s  # the loop stays bounded
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                state, forged = self._state, self._forgery
                if state is not None:
                    with contextlib.suppress(RedisError, OSError):
                        run_id = parse_run_id(await client.info("server")) or ""
                        status = RegionStatus.now(
                            state,
                            forged.region or self.region,
                            since_ms=self._since_ms,
                            run_id=forged.run_id or run_id,
                        )
                        if forged.expiry:
                            await write_status(client, status, ttl_ms=self.ttl_ms)
                        else:  # in one MULTI: never a moment with an expiry
                            async with client.pipeline(transaction=True) as pipe:
                                pipe.delete(STATUS_KEY)
                                pipe.hset(STATUS_KEY, mapping=encode_status(status))
                                await pipe.execute()
                        self.writes += 1
                        self._changed.set()
                await asyncio.sleep(self.refresh_s)
        finally:
            await client.aclose()
