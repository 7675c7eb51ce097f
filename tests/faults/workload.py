"""The seeded workload: in every region a writer of every replicated type straight to its
Redis (strings, hashes, lists, sets, sorted sets, deletes, relative and absolute expiries,
MULTI/EXEC over two keys, a Lua script), and an application thread writing and reading
back through the failover client. Every operation goes into the history.

Keys say who writes them, so the checker knows which resolution rule applies:
``own:<region>:<n>`` only that region's writer, ``shared:<n>`` every writer,
``fc:<n>`` the failover client (strings whose value is an increasing sequence number, so a
read can tell how old it is). Bounded: every thread stops at its deadline or its op count.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from reconciler.client import CommandOutcomeUnknownError, FailoverClient, NoHealthyRegionError
from tests.faults.history import ACKED, FAILED, UNKNOWN, Effect, History, Op

OWN_KEYS = 24
SHARED_KEYS = 8
FC_KEYS = 8
SHORT_TTL_MS = (1_500, 4_000)  # expires during the run: expiry replication is exercised
LONG_TTL_MS = (60_000, 600_000)

LUA_HASH = (
    "redis.call('DEL', KEYS[1]) "
    "redis.call('HSET', KEYS[1], unpack(ARGV)) "
    "return redis.call('HLEN', KEYS[1])"
)


def own_key(region: str, n: int) -> bytes:
    return f"own:{region}:{n}".encode()


def shared_key(n: int) -> bytes:
    return f"shared:{n}".encode()


def fc_key(n: int) -> bytes:
    return f"fc:{n}".encode()


def writer_of(key: bytes) -> str | None:
    """The only region that writes `key`, None if several may."""
    parts = key.split(b":")
    return parts[1].decode() if parts[0] == b"own" else None


class _Writer(threading.Thread):
    """One region's writer, straight to its Redis."""

    def __init__(
        self,
        region: str,
        port: int,
        history: History,
        seed: int,
        deadline: float,
        max_ops: int,
        pause_s: float,
    ) -> None:
        super().__init__(name=f"faults-writer-{region}", daemon=True)
        self.region = region
        self.history = history
        self.rng = random.Random(f"{seed}:writer:{region}")
        self.deadline = deadline
        self.max_ops = max_ops
        self.pause_s = pause_s
        self.stop_event = threading.Event()
        self.crashed: BaseException | None = None
        # One attempt per operation: redis-py's retries would blur what was sent when.
        self.client = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )

    def run(self) -> None:
        try:
            for _ in range(self.max_ops):
                if self.stop_event.is_set() or time.monotonic() > self.deadline:
                    return
                self.step()
                time.sleep(self.pause_s)
        except BaseException as exc:  # reported by the harness, never swallowed
            self.crashed = exc
        finally:
            self.client.close()

    def key(self) -> bytes:
        if self.rng.random() < 0.7:
            return own_key(self.region, self.rng.randrange(OWN_KEYS))
        return shared_key(self.rng.randrange(SHARED_KEYS))

    def ttl(self) -> tuple[str, int] | None:
        roll = self.rng.random()
        if roll < 0.6:
            return None
        if roll < 0.85:
            span = SHORT_TTL_MS if self.rng.random() < 0.4 else LONG_TTL_MS
            return ("rel", self.rng.randint(*span))
        ms = self.rng.randint(*SHORT_TTL_MS) if self.rng.random() < 0.3 else 120_000
        return ("abs", time.time_ns() // 1_000_000 + ms)

    def step(self) -> None:
        kind = self.rng.choices(
            ["string", "hash", "list", "set", "zset", "del", "multi", "lua"],
            weights=[25, 12, 10, 10, 10, 10, 8, 8],
        )[0]
        key = self.key()
        tag = f"{self.region}:{len(self.history.ops)}"
        n = self.rng.randint(1, 4)
        effects: dict[bytes, Effect]
        if kind == "string":
            ttl = self.ttl()
            effects = {key: ("string", tag.encode(), ttl)}
            self.run_op(kind, effects, lambda: self.client.set(key, tag, **_set_ttl(ttl)))
        elif kind == "del":
            effects = {key: None}
            self.run_op(kind, effects, lambda: self.client.delete(key))
        elif kind == "lua":
            fields = {f"f{i}".encode(): f"{tag}:{i}".encode() for i in range(n)}
            argv = [x for pair in fields.items() for x in pair]
            effects = {key: ("hash", fields, None)}
            self.run_op(kind, effects, lambda: self.client.eval(LUA_HASH, 1, key, *argv))
        elif kind == "multi":
            other = self.key()
            if other == key:
                other = own_key(self.region, (int(key.rsplit(b":", 1)[1]) + 1) % OWN_KEYS)
            effects = {key: ("string", tag.encode(), None), other: None}
            if self.rng.random() < 0.5:
                effects[other] = ("string", (tag + ":b").encode(), None)

            def transaction() -> Any:
                pipe = self.client.pipeline(transaction=True)
                for k, effect in effects.items():
                    pipe.delete(k) if effect is None else pipe.set(k, effect[1])
                return pipe.execute()

            self.run_op(kind, effects, transaction)
        else:
            ttl = self.ttl()
            effect = _collection(kind, tag, n, self.rng)
            effects = {key: (*effect, ttl)}

            def collection() -> Any:
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(key)
                _write_collection(pipe, key, kind, effect[1])
                if ttl is not None:
                    if ttl[0] == "rel":
                        pipe.pexpire(key, ttl[1])
                    else:
                        pipe.pexpireat(key, ttl[1])
                return pipe.execute()

            self.run_op(kind, effects, collection)

    def run_op(self, kind: str, effects: dict[bytes, Effect], call: Callable[[], Any]) -> None:
        op = self.history.begin(self.region, f"writer-{self.region}", kind, effects=effects)
        try:
            result = call()
        except redis.ResponseError as exc:
            History.end(op, FAILED, error=str(exc)[:80])
        except redis.ConnectionError as exc:
            # Refused at connect: nothing was sent. Anything else: it may have run.
            refused = "connecting to" in str(exc)
            History.end(op, FAILED if refused else UNKNOWN, error=type(exc).__name__)
        except (redis.RedisError, OSError) as exc:
            History.end(op, UNKNOWN, error=type(exc).__name__)
        else:
            History.end(op, ACKED, result=result)


def _set_ttl(ttl: tuple[str, int] | None) -> dict[str, int]:
    if ttl is None:
        return {}
    return {"px": ttl[1]} if ttl[0] == "rel" else {"pxat": ttl[1]}


def _collection(kind: str, tag: str, n: int, rng: random.Random) -> tuple[str, Any]:
    members = [f"{tag}:{i}".encode() for i in range(n)]
    if kind == "hash":
        return "hash", {f"f{i}".encode(): m for i, m in enumerate(members)}
    if kind == "list":
        return "list", members
    if kind == "set":
        return "set", set(members)
    scored = [(m, float(rng.randint(0, 50))) for m in members]
    return "zset", sorted(scored, key=lambda item: (item[1], item[0]))


def _write_collection(pipe: Any, key: bytes, kind: str, value: Any) -> None:
    if kind == "hash":
        pipe.hset(key, mapping=value)
    elif kind == "list":
        pipe.rpush(key, *value)
    elif kind == "set":
        pipe.sadd(key, *sorted(value))
    else:
        pipe.zadd(key, dict(value))


class _Application(threading.Thread):
    """A payment service's thread on the failover client: writes `fc:<n>` with increasing
    sequence numbers and reads keys back (monotonic reads, nothing missing)."""

    def __init__(
        self,
        client: FailoverClient,
        history: History,
        seed: int,
        deadline: float,
        max_ops: int,
        pause_s: float,
    ) -> None:
        super().__init__(name="faults-application", daemon=True)
        self.client = client
        self.history = history
        self.rng = random.Random(f"{seed}:application")
        self.deadline = deadline
        self.max_ops = max_ops
        self.pause_s = pause_s
        self.stop_event = threading.Event()
        self.crashed: BaseException | None = None
        self.seq = 0
        self.failovers = 0

    def run(self) -> None:
        try:
            for _ in range(self.max_ops):
                if self.stop_event.is_set() or time.monotonic() > self.deadline:
                    return
                if self.rng.random() < 0.5:
                    self.write()
                else:
                    self.read()
                time.sleep(self.pause_s)
        except BaseException as exc:
            self.crashed = exc

    def write(self) -> None:
        self.seq += 1
        key = fc_key(self.rng.randrange(FC_KEYS))
        value = f"{self.seq:010d}".encode()
        op = self.history.begin(
            self.client.active_region,
            "application",
            "string",
            effects={key: ("string", value, None)},
        )
        self.call(op, lambda: self.client.set(key, value))

    def read(self) -> None:
        key = fc_key(self.rng.randrange(FC_KEYS))
        op = self.history.begin(self.client.active_region, "application", "read", key=key)
        self.call(op, lambda: self.client.get(key))

    def call(self, op: Op, call: Callable[[], Any]) -> None:
        try:
            result = call()
        except (redis.ResponseError, NoHealthyRegionError) as exc:
            History.end(op, FAILED, error=type(exc).__name__, end_region=self.region())
        except (CommandOutcomeUnknownError, redis.RedisError, OSError) as exc:
            History.end(op, UNKNOWN, error=type(exc).__name__, end_region=self.region())
        else:
            History.end(op, ACKED, result=result, end_region=self.region())

    def region(self) -> str:
        return str(self.client.active_region)


class Workload:
    """Every writer and the application thread; `start`, then `stop` (joins them)."""

    def __init__(
        self,
        ports: dict[str, int],
        client: FailoverClient,
        history: History,
        *,
        seed: int,
        duration_s: float,
        max_ops: int = 200_000,
        pause_s: float = 0.015,
    ) -> None:
        deadline = time.monotonic() + duration_s
        self.writers = [
            _Writer(r, p, history, seed, deadline, max_ops, pause_s) for r, p in ports.items()
        ]
        self.application = _Application(client, history, seed, deadline, max_ops, pause_s)
        self.threads: list[_Writer | _Application] = [*self.writers, self.application]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def crashes(self) -> list[str]:
        """Threads that died of something else than a Redis error (a bug in the suite)."""
        return [f"{t.name}: {t.crashed!r}" for t in self.threads if t.crashed is not None]
