"""Redis's own work per replicated write, counted in instructions (callgrind), so that it
can be compared between library versions on a shared, noisy machine: instruction counts
do not depend on what else runs.

    .venv/bin/python -m benchmarks.redis_cost [--keys 5000] [--baseline-lua FILE]

A redis-server runs under `valgrind --tool=callgrind` with instrumentation switched on only
around each measured phase (`callgrind_control -i on/off`); each phase's instructions are
divided by its keys. Phases, on string keys of 32 bytes (what the replication benchmark
writes): a plain pipelined SET (the write being replicated: the reference), versioning a
new write and a no-op (the origin's cost), and applying a new version, an overwrite and a
stale duplicate (each destination's cost); with the library as it is, and with
`--baseline-lua` (an older reconciler.lua) through its one-key calls, for comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from benchmarks.report import table, write_section
from devcluster.ports import free_port, wait_until
from replication.model.digest import value_digest
from replication.model.event import ChangeEvent
from replication.model.value import Kind
from replication.model.vclock import VectorClock
from replication.redis.library import (
    apply_command,
    apply_many_command,
    library_source,
    version_command,
    version_many_command,
)

Command = tuple[object, ...]


class CallgrindRedis:
    """redis-server under callgrind; `measure()` counts the instructions of one phase."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.out = base / "callgrind.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CallgrindRedis:
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={self.out}.%p",
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base),
            ],
            cwd=self.base,
            stdout=subprocess.DEVNULL,
            stderr=(self.base / "valgrind.log").open("wb"),
        )
        client = redis.Redis(port=self.port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, timeout_s=120, what="redis under callgrind", interval_s=0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)

    def _control(self, *args: str) -> str:
        assert self.proc is not None
        return subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout

    def measure(self, run: Callable[[], None]) -> int:
        """Instructions Redis executed during `run()`."""
        self._control("--zero")
        self._control("--instr=on")
        run()
        self._control("--instr=off")
        self._control("--dump")
        time.sleep(0.5)
        dumps = sorted(self.base.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        text = dumps[-1].read_text(errors="replace")
        found = re.search(r"^totals: (\d+)", text, re.M)
        if not found:
            raise RuntimeError(f"no totals in {dumps[-1]}")
        return int(found.group(1))


def send(client: redis.Redis, commands: list[Command], per_round_trip: int = 64) -> None:
    for i in range(0, len(commands), per_round_trip):
        pipe = client.pipeline(transaction=False)
        for command in commands[i : i + per_round_trip]:
            pipe.execute_command(*command)
        pipe.execute()


def event(key: bytes, value: bytes, ts: int) -> ChangeEvent:
    return ChangeEvent(
        0,
        key,
        Kind.STRING,
        value,
        0,
        VectorClock({"us-east": ts}),
        "us-east",
        value_digest(Kind.STRING, value, 0),
    )


def phases(server: CallgrindRedis, source: str, n: int, *, batched: bool) -> dict[str, float]:
    """Instructions per key of each phase with the library `source` loaded."""
    client = redis.Redis(port=server.port)
    client.flushall()
    client.function_load(source, replace=True)
    keys = [b"key:%012d" % i for i in range(n)]
    out: dict[str, float] = {}

    def measure(name: str, commands: list[Command]) -> None:
        out[name] = server.measure(lambda: send(client, commands)) / n

    measure("SET (the write itself)", [("SET", k, b"x" * 32) for k in keys])
    if batched:
        versions: list[Command] = [
            version_many_command(keys[i : i + 64], "eu-west", 1000) for i in range(0, n, 64)
        ]
    else:
        versions = [version_command(k, "eu-west", 1000) for k in keys]
    measure("version a new write (origin)", versions)
    measure("version a no-op or an echo (origin; destination echo)", versions)

    def applies(value: bytes, ts: int) -> list[Command]:
        events = [event(k, value, ts) for k in keys]
        if batched:
            return [apply_many_command(events[i : i + 32], "ap-south") for i in range(0, n, 32)]
        return [apply_command(e, "ap-south") for e in events]

    client.flushall()
    measure("apply a new key (destination)", applies(b"y" * 32, 5))
    measure("apply an overwrite (destination)", applies(b"z" * 32, 6))
    measure("apply a stale duplicate (destination)", applies(b"z" * 32, 6))
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--baseline-lua", help="an older reconciler.lua, for comparison")
    parser.add_argument("--baseline-name", default="baseline")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cost-"))
    results: dict[str, dict[str, float]] = {}
    try:
        with CallgrindRedis(base) as server:
            if args.baseline_lua:
                text = Path(args.baseline_lua).read_text()
                version = hashlib.sha256(text.encode()).hexdigest()[:16]
                old = text.replace("__LIB_VERSION__", version)
                results[args.baseline_name] = phases(server, old, args.keys, batched=False)
            results["now"] = phases(server, library_source()[0], args.keys, batched=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    names = list(results)
    rows = []
    for phase in results["now"]:
        row = [phase, *(f"{results[name][phase]:,.0f}" for name in names)]
        set_now = results["now"]["SET (the write itself)"]
        row.append(f"{results['now'][phase] / set_now:.1f}")
        if len(names) > 1:
            row.append(f"{results['now'][phase] / results[names[0]][phase]:.2f}")
        rows.append(row)
    headers = ["phase (per key)"] + [f"instructions, {n}" for n in names] + ["now / SET"]
    if len(names) > 1:
        headers.append(f"now / {names[0]}")
    body = (
        f"Redis's instructions per key (callgrind, {args.keys:,} string keys of 32 bytes per "
        "phase, pipelined; the versioning and apply phases as the daemon calls them now: "
        "64 keys per `rr_version_many`, 32 events per `rr_apply_many`"
        + (
            f"; *{names[0]}*: the library before, one key per `rr_version` / `rr_apply` call"
            if len(names) > 1
            else ""
        )
        + "). Instruction counts do not depend on the machine's load, unlike µs:\n\n"
        + table(headers, rows)
        + "\n"
    )
    write_section("Redis cost per replicated write (instructions)", body)
    print(body)


if __name__ == "__main__":
    main()
