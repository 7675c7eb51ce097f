"""Capture: how fast the capture pipeline turns a replication stream into change events.

    .venv/bin/python -m benchmarks.capture_throughput [--commands N] [--keyspace K] [--rounds R]

One real redis-server (loopback, AOF off, 1 GiB backlog) is loaded with N mixed commands
(SET / HSET / LPUSH / SADD, equally likely, over K keys split evenly between the four types,
small values). ``benchmarks.capture_parse.generate_load`` does not fit here: its
``redis-benchmark -t hset,lpush,sadd`` write one key each (``myhash``, ``mylist``, ``myset``),
which would make versioning read three ever-growing values instead of K small keys. The
replication stream of that load is then, in the same run:

(a) parsed from memory by bare ``hiredis.Reader`` (as ``capture_parse`` does): the ceiling;
(b) tailed by :class:`ReplicationStreamSource` (``PSYNC`` from the position before the
    load), every batch acknowledged: the source alone;
(c) the capture pipeline: the same source, every batch versioned by :class:`Versioner`,
    its events put on an ``asyncio.Queue`` (drained by another task), then acknowledged.

The replayed batches are flagged ``replay``; (c) versions them as live batches
(``replay=False``), because the steady state of a running daemon is what is measured (in
replay a re-touched key is re-shipped rather than skipped). The load is finished before (c)
starts, so the first touch of a key reads its final state (a change) and later touches in
later batches are no-ops: rr_version calls outnumber changes. To show both costs apart,
(d) versions K keys without the source: all new (no metadata), then all again (no-ops).
Every round starts from no metadata (the ``__rr:m:*`` hashes are deleted in between).

Also measured: Redis-side time of the FCALLs (``INFO commandstats``), CPU of Redis and of
this process, stream bytes the versioning itself writes (its metadata HSETs are replicated),
a cProfile of one (c) round, and the memory of the metadata per key (``MEMORY USAGE`` of
the metadata hashes summed / K, beside the user keys' own average).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis

from benchmarks.capture_parse import (
    FEED_SIZES,
    capture_bench_server,
    establish_position,
    fetch_stream,
    raw_parse,
    tail,
)
from benchmarks.report import table, write_section
from replication.capture.position import CapturePosition, PositionStore
from replication.capture.stream import ReplicationStreamSource
from replication.capture.versioner import Versioner
from replication.model.event import ChangeEvent
from replication.model.hlc import HybridClock
from replication.model.keys import INTERNAL_PREFIX
from replication.redis.address import RedisAddress
from replication.redis.library import meta_key_for, version_command
from replication.redis.resp import RedisCommandError, RespConnection

REGION = "bench"
LUA_KEYS = 20_000  # string keys timed step by step inside Redis
VERSIONER_KEYS = 25_000  # keys versioned by (d)
STEP_TIMEOUT_S = 300.0
TYPES = ("s", "h", "l", "t")  # string, hash, list, set: the prefix of the keys of each type


# --------------------------------------------------------------------------- load


def mixed_commands(count: int, keyspace: int, seed: int = 7) -> Iterator[tuple[bytes, ...]]:
    """`count` writes, each type equally likely, over `keyspace` keys (a quarter per type)."""
    rng = random.Random(seed)
    per_type = max(1, keyspace // len(TYPES))
    for n in range(count):
        kind = rng.randrange(4)
        key = b"%s:%d" % (TYPES[kind].encode(), rng.randrange(per_type))
        if kind == 0:
            yield (b"SET", key, b"value-%010d" % n)
        elif kind == 1:
            yield (b"HSET", key, b"f%d" % rng.randrange(8), b"v-%08d" % n)
        elif kind == 2:
            yield (b"LPUSH", key, b"e-%08d" % n)
        else:
            yield (b"SADD", key, b"m%d" % rng.randrange(32))


async def load(conn: RespConnection, count: int, keyspace: int, chunk: int = 10_000) -> float:
    """Write the mixed load, pipelined `chunk` deep; returns the seconds taken."""
    began = time.perf_counter()
    pending: list[tuple[bytes, ...]] = []
    for command in mixed_commands(count, keyspace):
        pending.append(command)
        if len(pending) == chunk:
            await _send(conn, pending)
            pending = []
    await _send(conn, pending)
    return time.perf_counter() - began


async def _send(conn: RespConnection, commands: Sequence[tuple[bytes, ...]]) -> None:
    for reply in await conn.pipeline(commands):
        if isinstance(reply, hiredis.ReplyError):
            raise RedisCommandError(f"load command failed: {reply}")


# --------------------------------------------------------------------------- server stats


async def info(conn: RespConnection, section: str) -> dict[str, str]:
    text: bytes = await conn.execute("INFO", section)
    found = {}
    for line in text.decode().splitlines():
        if ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            found[name] = value
    return found


async def fcall_stats(conn: RespConnection) -> tuple[int, int]:
    """(calls, usec) of FCALL since the last CONFIG RESETSTAT."""
    stat = (await info(conn, "commandstats")).get("cmdstat_fcall")
    if stat is None:
        return 0, 0
    fields = dict(item.split("=") for item in stat.split(","))
    return int(fields["calls"]), int(fields["usec"])


async def redis_cpu_s(conn: RespConnection) -> float:
    cpu = await info(conn, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def master_offset(conn: RespConnection) -> int:
    return int((await info(conn, "replication"))["master_repl_offset"])


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def scan(conn: RespConnection, *match: bytes) -> list[bytes]:
    found: list[bytes] = []
    cursor = b"0"
    options: list[bytes] = [b"MATCH", match[0]] if match else []
    while True:
        cursor, keys = await conn.execute("SCAN", cursor, *options, "COUNT", 10_000)
        found += keys
        if cursor == b"0":
            return found


async def drop_metadata(conn: RespConnection) -> None:
    """Delete every metadata hash: the next versioning starts from nothing."""
    hashes = await scan(conn, INTERNAL_PREFIX + b"m:*")
    for i in range(0, len(hashes), 1000):
        await conn.execute("UNLINK", *hashes[i : i + 1000])


# --------------------------------------------------------------------------- (c) the pipeline


@dataclass
class Measure:
    seconds: float = 0.0
    commands: int = 0
    batches: int = 0
    calls: int = 0  # rr_version calls (keys versioned)
    changes: int = 0
    echoes: int = 0
    version_s: float = 0.0  # wall time inside Versioner.version()
    fcall_calls: int = 0
    fcall_usec: int = 0
    redis_cpu_s: float = 0.0
    own_cpu_s: float = 0.0
    stream_bytes_written: int = 0  # replication stream the versioning itself produced
    extra: dict[str, Any] = field(default_factory=dict)

    def rate(self, count: int) -> float:
        return count / self.seconds if self.seconds else 0.0


async def capture_pipeline(
    url: str, state_dir: Path, start: CapturePosition, end: int, admin: RespConnection
) -> Measure:
    """Source -> Versioner -> asyncio.Queue, acking each batch, until the load is through."""
    await drop_metadata(admin)
    await admin.execute("CONFIG", "RESETSTAT")
    store = PositionStore(state_dir / "pipeline.position.json")
    store.save(start, seq=0)
    source = ReplicationStreamSource(
        RedisAddress.from_url(url), position_store=store, name="pipeline"
    )
    versioner = Versioner(RedisAddress.from_url(url), REGION, HybridClock())
    queue: asyncio.Queue[ChangeEvent] = asyncio.Queue()
    received = 0

    async def consume() -> None:
        nonlocal received
        while True:
            await queue.get()
            received += 1
            queue.task_done()

    measure = Measure()
    offset_before = await master_offset(admin)
    redis_cpu = await redis_cpu_s(admin)
    await versioner.start()  # connection open and library loaded before the clock starts
    consumer = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            own_cpu = own_cpu_s()
            began = time.perf_counter()
            await source.start()
            try:
                async for batch in source.batches():
                    if batch.gap is not None:
                        raise RuntimeError(f"unexpected gap in the benchmark: {batch.gap}")
                    if batch.keys:
                        t0 = time.perf_counter()
                        report = await versioner.version(batch.keys)
                        measure.version_s += time.perf_counter() - t0
                        for change in report.changes:
                            queue.put_nowait(change.event)
                        measure.calls += batch.key_count
                        measure.changes += len(report.changes)
                        measure.echoes += report.echoes
                    await source.ack(batch.end_offset)
                    measure.commands += batch.commands
                    measure.batches += 1
                    if batch.end_offset is not None and batch.end_offset >= end:
                        break
                await queue.join()
                measure.seconds = time.perf_counter() - began
                measure.own_cpu_s = own_cpu_s() - own_cpu
            finally:
                await source.stop()
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await versioner.stop()
    measure.redis_cpu_s = await redis_cpu_s(admin) - redis_cpu
    measure.fcall_calls, measure.fcall_usec = await fcall_stats(admin)
    measure.stream_bytes_written = await master_offset(admin) - offset_before
    if received != measure.changes:
        raise RuntimeError(f"queue got {received} events, versioner made {measure.changes}")
    return measure


async def versioner_alone(url: str, keys: list[bytes], admin: RespConnection) -> Measure:
    """Version `keys` in batches of 4096 without the source (metadata left as it is)."""
    await admin.execute("CONFIG", "RESETSTAT")
    measure = Measure()
    redis_cpu = await redis_cpu_s(admin)
    async with Versioner(RedisAddress.from_url(url), REGION, HybridClock()) as versioner:
        own_cpu = own_cpu_s()
        began = time.perf_counter()
        for i in range(0, len(keys), 4096):
            report = await versioner.version({0: keys[i : i + 4096]})
            measure.calls += len(keys[i : i + 4096])
            measure.changes += len(report.changes)
            measure.echoes += report.echoes
        measure.seconds = time.perf_counter() - began
        measure.own_cpu_s = own_cpu_s() - own_cpu
    measure.redis_cpu_s = await redis_cpu_s(admin) - redis_cpu
    measure.fcall_calls, measure.fcall_usec = await fcall_stats(admin)
    return measure


# --------------------------------------------------------------------------- Lua steps

# Scripts reproducing the steps rr_version takes for a string key (see
# replication/redis/lua/reconciler.lua), each timed alone: differences between rows are the
# cost of a step. KEYS: the key, its metadata hash.
LUA_STEPS = (
    ("script call floor (`return 1`)", "return 1"),
    (
        "HGET metadata + cmsgpack.unpack",
        "local raw = redis.call('HGET', KEYS[2], KEYS[1]) "
        "local meta = raw and cmsgpack.unpack(raw) return 1",
    ),
    (
        "TYPE + PEXPIRETIME + GET (read_state)",
        "local kind = redis.call('TYPE', KEYS[1])['ok'] "
        "local exp = redis.call('PEXPIRETIME', KEYS[1]) "
        "local v = redis.call('GET', KEYS[1]) return 1",
    ),
    (
        "SHA-1 of the canonical encoding, kept as hex",
        "local v = redis.call('GET', KEYS[1]) "
        "local h = string.sub(redis.sha1hex('s' .. #v .. ':' .. v .. 'x0'), 1, 32) return 1",
    ),
    (
        "SHA-1 of the canonical encoding, hex turned into 16 raw bytes (as the library does)",
        "local v = redis.call('GET', KEYS[1]) "
        "local h = string.sub(redis.sha1hex('s' .. #v .. ':' .. v .. 'x0'), 1, 32) "
        "local raw = string.gsub(h, '..', function(x) return string.char(tonumber(x, 16)) end) "
        "return 1",
    ),
)


async def timed_calls(admin: RespConnection, commands: Sequence[Sequence[Any]], stat: str) -> float:
    """Redis-side microseconds per call of `commands` (from INFO commandstats)."""
    await admin.execute("CONFIG", "RESETSTAT")
    for i in range(0, len(commands), 1000):
        for reply in await admin.pipeline(commands[i : i + 1000]):
            if isinstance(reply, hiredis.ReplyError):
                raise RedisCommandError(f"{stat} failed: {reply}")
    fields = (await info(admin, "commandstats"))[f"cmdstat_{stat}"]
    return float(dict(item.split("=") for item in fields.split(","))["usec_per_call"])


async def lua_steps(admin: RespConnection, keys: list[bytes]) -> list[tuple[str, float]]:
    """µs per call, Redis side, of rr_version and of the steps it takes, on string keys."""
    await drop_metadata(admin)
    tick = HybridClock().now()
    versions = [version_command(key, REGION, tick) for key in keys]
    rows = [
        [
            "rr_version, a new version (no metadata yet)",
            await timed_calls(admin, versions, "fcall"),
        ],
        ["rr_version, a no-op (metadata matches)", await timed_calls(admin, versions, "fcall")],
    ]
    for what, script in LUA_STEPS:
        sha = await admin.execute("SCRIPT", "LOAD", script)
        calls = [("EVALSHA", sha, 2, key, meta_key_for(key)) for key in keys]
        rows.append([what, await timed_calls(admin, calls, "evalsha")])
    await drop_metadata(admin)
    return [(str(what), float(usec)) for what, usec in rows]


# --------------------------------------------------------------------------- memory


async def memory_per_key(admin: RespConnection) -> dict[str, float]:
    """Metadata bytes per versioned key, beside the user keys' own size."""
    meta_hashes = await scan(admin, INTERNAL_PREFIX + b"m:*")
    user = [key for key in await scan(admin) if not key.startswith(INTERNAL_PREFIX)]
    meta_bytes = entries = 0
    for i in range(0, len(meta_hashes), 2000):
        chunk = meta_hashes[i : i + 2000]
        usage = await admin.pipeline([("MEMORY", "USAGE", h, "SAMPLES", "0") for h in chunk])
        lengths = await admin.pipeline([("HLEN", h) for h in chunk])
        meta_bytes += sum(usage)
        entries += sum(lengths)
    by_type: dict[str, list[int]] = {}
    for i in range(0, len(user), 5000):
        chunk = user[i : i + 5000]
        usage = await admin.pipeline([("MEMORY", "USAGE", k, "SAMPLES", "0") for k in chunk])
        for key, size in zip(chunk, usage, strict=True):
            by_type.setdefault(key.split(b":", 1)[0].decode(), []).append(size)
    used_with = int((await info(admin, "memory"))["used_memory"])
    await drop_metadata(admin)
    used_without = int((await info(admin, "memory"))["used_memory"])
    figures = {
        "keys": float(len(user)),
        "entries": float(entries),
        "hashes": float(len(meta_hashes)),
        "meta_per_key": meta_bytes / max(entries, 1),
        "used_memory_delta_per_key": (used_with - used_without) / max(entries, 1),
        "user_per_key": sum(map(sum, by_type.values())) / max(len(user), 1),
    }
    for prefix, sizes in by_type.items():
        figures[f"user_per_key_{prefix}"] = sum(sizes) / len(sizes)
    return figures


# --------------------------------------------------------------------------- profile


def profile_summary(profile: cProfile.Profile) -> tuple[list[list[Any]], str]:
    """Rows (what, seconds) and the top functions as text."""
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]

    def where(file_part: str, name: str) -> tuple[float, float]:
        """(tottime, cumtime) summed over functions matching file part and name."""
        tot = cum = 0.0
        for (filename, _, function), (_, _, tt, ct, _) in raw.items():
            if file_part in filename and function == name:
                tot += tt
                cum += ct
        return tot, cum

    def by_caller(name: str, caller_file: str, caller_name: str) -> float:
        total = 0.0
        for (_, _, function), (_, _, _, _, callers) in raw.items():
            if name in function:
                for (cfile, _, cfunc), (_, _, tt, _) in callers.items():
                    if caller_file in cfile and cfunc == caller_name:
                        total += tt
        return total

    epoll, _ = where("~", "<method 'poll' of 'select.epoll' objects>")
    _, version_chunk = where("versioner.py", "_version_chunk")
    _, pipeline = where("resp.py", "pipeline")
    _, parse_reply = where("library.py", "parse_version_reply")
    _, commands = where("library.py", "version_command")
    gets_pipeline = by_caller("'gets' of 'hiredis.Reader'", "resp.py", "pipeline")
    pack = by_caller("pack_command", "resp.py", "<genexpr>")  # the genexpr in pipeline()
    _, read_stream = where("stream.py", "_read_stream")
    _, fill = where("stream.py", "fill")
    rows = [
        ["idle in epoll: waiting for Redis (FCALL replies, stream bytes)", epoll],
        ["Versioner._version_chunk (Python only, waits excluded)", version_chunk],
        ["↳ building FCALL argument tuples (version_command)", commands],
        ["↳ hiredis.pack_command in RespConnection.pipeline", pack],
        ["↳ hiredis Reader.gets of the FCALL replies", gets_pipeline],
        ["↳ parse_version_reply → ChangeEvent, VectorClock", parse_reply],
        [
            "↳ rest of RespConnection.pipeline (socket writes, loop)",
            pipeline - pack - gets_pipeline,
        ],
        ["ReplicationStreamSource._read_stream (stream parsing)", read_stream],
        ["↳ StreamParser.fill", fill],
    ]
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(18)
    return rows, out.getvalue()


# --------------------------------------------------------------------------- the run


async def run(commands: int, keyspace: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="capture-throughput-") as tmp:
        base = Path(tmp)
        server = capture_bench_server("capture-throughput", base)
        server.start()
        admin: RespConnection | None = None
        try:
            admin = await RespConnection.open(RedisAddress.from_url(server.url))
            endpoint = server.address
            start = await establish_position(server.url, base / "setup")
            load_s = await load(admin, commands, keyspace)
            end = await master_offset(admin)
            stream = await fetch_stream(endpoint, start, end)

            raw_rates: dict[int, float] = dict.fromkeys(FEED_SIZES, 0.0)
            tail_rates: list[float] = []
            pipelines: list[Measure] = []
            raw_commands = tail_commands = 0
            for round_ in range(rounds):
                for feed, best in list(raw_rates.items()):
                    raw_commands, raw_s = raw_parse(stream, feed)
                    raw_rates[feed] = max(best, raw_commands / raw_s)
                tail_commands, _, _, tail_s = await tail(
                    server.url, base / f"tail{round_}", start, end
                )
                tail_rates.append(tail_commands / tail_s)
                pipelines.append(
                    await capture_pipeline(server.url, base / f"pipe{round_}", start, end, admin)
                )
            # A run ends with the batch that reaches the load's end offset, which may hold a
            # few commands past it (the versioning's own metadata writes): never fewer.
            for measure in pipelines:
                if measure.commands < raw_commands or tail_commands < raw_commands:
                    raise RuntimeError(
                        f"commands: hiredis {raw_commands}, tailer {tail_commands}, "
                        f"pipeline {measure.commands}"
                    )
            memory = await memory_per_key(admin)  # after the last (c): K keys versioned
            keys = [key for key in await scan(admin) if not key.startswith(INTERNAL_PREFIX)]
            random.Random(3).shuffle(keys)
            strings = [key for key in keys if key.startswith(b"s:")][:LUA_KEYS]
            lua_rows = await lua_steps(admin, strings)

            # (d) the versioner alone, on a sample of the keys: all new, then all no-ops.
            keys = keys[:VERSIONER_KEYS]
            new: list[Measure] = []
            echo: list[Measure] = []
            for _ in range(rounds):
                await drop_metadata(admin)
                new.append(await versioner_alone(server.url, keys, admin))
                echo.append(await versioner_alone(server.url, keys, admin))

            # One more (c) round, over the first quarter of the load, under cProfile
            # (which slows Python down: only the shares are used).
            profile_end = start.offset + len(stream) // 4
            profiler = cProfile.Profile()
            profiler.enable()
            profiled = await capture_pipeline(
                server.url, base / "profiled", start, profile_end, admin
            )
            profiler.disable()
            profile_rows, profile_text = profile_summary(profiler)
        finally:
            if admin is not None:
                await admin.close()
            server.stop()
    return {
        "commands": raw_commands,
        "load_s": load_s,
        "stream_bytes": len(stream),
        "raw_rate": max(raw_rates.values()),
        "raw_feed": max(FEED_SIZES, key=raw_rates.__getitem__),
        "tail_rate": max(tail_rates),
        "pipeline": max(pipelines, key=lambda m: m.rate(m.commands)),
        "pipeline_rates": [m.rate(m.commands) for m in pipelines],
        "new": max(new, key=lambda m: m.rate(m.calls)),
        "echo": max(echo, key=lambda m: m.rate(m.calls)),
        "memory": memory,
        "profiled": profiled,
        "profile_rows": profile_rows,
        "profile_text": profile_text,
        "lua_rows": lua_rows,
        "lua_keys": len(strings),
    }


def usec_per_call(measure: Measure) -> str:
    return f"{measure.fcall_usec / max(measure.fcall_calls, 1):.1f}"


def report(figures: dict[str, Any], args: argparse.Namespace) -> str:
    raw = figures["raw_rate"]
    pipe: Measure = figures["pipeline"]
    new: Measure = figures["new"]
    echo: Measure = figures["echo"]
    memory = figures["memory"]
    commands = figures["commands"]
    lua: list[tuple[str, float]] = figures["lua_rows"]
    profile: list[list[Any]] = figures["profile_rows"]
    profiled: Measure = figures["profiled"]
    rows = [
        [
            f"(a) hiredis alone, stream from memory ({figures['raw_feed'] // 1024} KiB feeds)",
            f"{raw:,.0f}",
            "",
            "",
            "1.00",
        ],
        [
            "(b) ReplicationStreamSource alone → batches, acked",
            f"{figures['tail_rate']:,.0f}",
            "",
            "",
            f"{figures['tail_rate'] / raw:.2f}",
        ],
        [
            "(c) source → Versioner.version() → asyncio.Queue, acked",
            f"{pipe.rate(pipe.commands):,.0f}",
            f"{pipe.rate(pipe.calls):,.0f}",
            f"{pipe.rate(pipe.changes):,.0f}",
            f"{pipe.rate(pipe.commands) / raw:.3f}",
        ],
    ]
    versioner_rows = [
        [
            what,
            f"{m.rate(m.calls):,.0f}",
            usec_per_call(m),
            f"{m.fcall_usec / 1e6 / m.seconds:.0%}",
            f"{m.redis_cpu_s / m.seconds:.0%}",
            f"{m.own_cpu_s / m.seconds:.0%}",
        ]
        for what, m in (
            (
                "(c) the pipeline: "
                f"{pipe.calls:,} calls, {pipe.changes:,} changes, {pipe.echoes:,} no-ops",
                pipe,
            ),
            (f"(d) versioner alone, {new.calls:,} keys, all new (no metadata)", new),
            (f"(d) versioner alone, the same {echo.calls:,} keys again (all no-ops)", echo),
        )
    ]
    python_share = 1 - pipe.version_s / pipe.seconds
    memory_rows = [
        [
            "metadata, `MEMORY USAGE` of the `__rr:m:*` hashes summed / versioned keys",
            f"{memory['meta_per_key']:.1f}",
        ],
        [
            "metadata, drop of `used_memory` when those hashes are deleted / versioned keys",
            f"{memory['used_memory_delta_per_key']:.1f}",
        ],
        ["user keys, average `MEMORY USAGE` (all types)", f"{memory['user_per_key']:.1f}"],
    ]
    names = {"s": "string", "h": "hash", "l": "list", "t": "set"}
    memory_rows += [
        [f"user keys, average `MEMORY USAGE`, {names[p]}", f"{memory[f'user_per_key_{p}']:.1f}"]
        for p in TYPES
        if f"user_per_key_{p}" in memory
    ]
    best_note = ", ".join(f"{rate:,.0f}" for rate in figures["pipeline_rates"])
    redis_bound = 1e6 / (pipe.fcall_usec / max(pipe.fcall_calls, 1))
    bound_commands = redis_bound * pipe.commands / max(pipe.calls, 1)
    return (
        f"Load: {args.commands:,} mixed commands written (SET/HSET/LPUSH/SADD equally likely, "
        f"over {args.keyspace:,} keys, a quarter per type, values of at most 16 bytes; "
        f"pipelined, {figures['load_s']:.1f} s), {commands:,} of them in the replication "
        "stream (an `SADD` of a member already there is not replicated), "
        f"{figures['stream_bytes'] / 1e6:.1f} MB, replayed from the backlog with `PSYNC` for "
        "(b) and (c). Every figure is the "
        f"best of {args.rounds} rounds in the same run (2 shared cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end; the (c) rounds gave {best_note} commands/s). "
        "The load is finished before (c) runs, so a key's first touch in the run is a change "
        "(its final state) and later touches are no-ops: calls outnumber changes. Batches are "
        "versioned as live ones (`replay=False`); metadata is deleted before every round.\n\n"
        + table(
            ["what", "commands/s", "keys versioned/s", "changes/s", "ratio to (a)"],
            rows,
        )
        + f"\n\nThe aim was (c) ≥ half of (a); measured {pipe.rate(pipe.commands) / raw:.3f}. "
        "It is out of reach with one `rr_version` FCALL per touched key: at the "
        f"{pipe.fcall_usec / max(pipe.fcall_calls, 1):.0f} µs per call Redis spends in (c), "
        f"Redis alone caps versioning at {redis_bound:,.0f} keys/s, about "
        f"{bound_commands:,.0f} commands/s at this load's {pipe.commands / max(pipe.calls, 1):.2f} "
        f"commands per versioned key ({bound_commands / raw:.3f} of (a)) even if Python cost "
        "nothing. Only coalescing (hot keys touched many times per batch) raises commands/s "
        "above keys/s. Where the time goes, per `rr_version` call:\n\n"
        + table(
            [
                "run",
                "keys versioned/s",
                "Redis µs per FCALL",
                "Redis FCALL time / wall",
                "redis-server CPU / wall",
                "Python CPU / wall",
            ],
            versioner_rows,
        )
        + "\n\nIn (c), Redis's FCALL time and this process's CPU add up to "
        f"{(pipe.fcall_usec / 1e6 + pipe.own_cpu_s) / pipe.seconds:.0%} of the wall time: "
        "Redis and Python take turns (the versioner awaits each pipelined chunk of 512 "
        "FCALLs before it builds the next), so each side idles while the other works. "
        f"{pipe.version_s / pipe.seconds:.0%} of the wall time is spent inside "
        f"`Versioner.version()` ({python_share:.0%} outside it): the source parses the next "
        "batches in its own task meanwhile, while the versioner waits for Redis. The "
        f"versioning itself writes {pipe.stream_bytes_written / max(pipe.changes, 1):.0f} "
        "bytes of replication stream per change (its metadata `HSET`s are replicated, and "
        "tailed back by the source as internal keys).\n\n"
        "cProfile of one more (c) round (profiling slows Python down, so only the shares "
        f"matter; wall {figures['profiled'].seconds:.1f} s):\n\n"
        + table(
            ["where", "seconds", "share of wall"],
            [[what, f"{sec:.2f}", f"{sec / profiled.seconds:.0%}"] for what, sec in profile],
        )
        + f"\n\nInside Redis, per call on {figures['lua_keys']:,} string keys (µs, from "
        "`INFO commandstats`; the step rows are `EVALSHA` scripts reproducing what "
        "rr_version does, so the difference between two rows is the cost of a step):\n\n"
        + table(["what", "µs per call"], [[what, f"{usec:.1f}"] for what, usec in lua])
        + "\n\nMetadata memory after versioning "
        f"{memory['entries']:,.0f} keys ({memory['hashes']:,.0f} slot hashes):\n\n"
        + table(["what", "bytes per key"], memory_rows)
        + "\n\n"
        + conclusions(figures)
    )


def conclusions(figures: dict[str, Any]) -> str:
    """What the tables say, with the numbers of this run."""
    pipe: Measure = figures["pipeline"]
    lua = dict(figures["lua_rows"])
    steps = [usec for _, usec in figures["lua_rows"]]
    noop = steps[1]
    hex_to_raw = steps[-1] - steps[-2]
    profiled: Measure = figures["profiled"]
    profile = dict(figures["profile_rows"])
    parse = next(sec for what, sec in profile.items() if "parse_version_reply" in what)
    redis_s = pipe.fcall_usec / 1e6
    overlapped = max(redis_s, pipe.own_cpu_s)
    return (
        "**Where the time goes.** Redis's Lua is the larger part: "
        f"{redis_s / pipe.seconds:.0%} of (c)'s wall time is spent executing `rr_version`, "
        f"and this process is busy for {pipe.own_cpu_s / pipe.seconds:.0%} of it, the two in "
        f"turn. Inside Redis, of a no-op `rr_version` on a string ({noop:.1f} µs), turning "
        f"the SHA-1 hex digest into 16 raw bytes with `string.gsub` costs {hex_to_raw:.1f} µs "
        f"({hex_to_raw / noop:.0%}), more than reading the metadata "
        f"({lua[LUA_STEPS[1][0]] - lua[LUA_STEPS[0][0]]:.1f} µs over the call floor) or the "
        f"key ({lua[LUA_STEPS[2][0]] - lua[LUA_STEPS[0][0]]:.1f} µs); a new version adds "
        f"{steps[0] - noop:.1f} µs (clock, `cmsgpack.pack`, the metadata `HSET` and its "
        "replication). In Python, turning replies into `ChangeEvent`s "
        f"(`parse_version_reply`, `VectorClock.from_flat`) is the largest piece "
        f"({parse / profiled.seconds:.0%} of the profiled wall time), ahead of building the "
        "FCALL argument tuples and of the stream parsing itself. Two changes would help "
        "without changing the design: keep two pipelined chunks in flight so Redis and "
        "Python overlap (the wall time would tend to the larger of the two, "
        f"{overlapped:.1f} s instead of {pipe.seconds:.1f} s here, an estimate), and "
        "compute the raw digest without a Lua closure per byte. Neither brings (c) near "
        "half of (a): that would take one Redis call per batch rather than per key, or "
        "several Redis cores."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--commands", type=int, default=300_000)
    parser.add_argument("--keyspace", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    began = time.perf_counter()
    figures = asyncio.run(run(args.commands, args.keyspace, args.rounds))
    body = report(figures, args)
    print(body)
    print("\ncProfile, top functions by own time:\n" + figures["profile_text"])
    print(f"benchmark took {time.perf_counter() - began:.0f} s")
    if not args.no_write:
        write_section("Capture: versioning throughput", body)


if __name__ == "__main__":
    main()
