"""End-to-end replication: throughput and lag from a write in region A to its apply in B.

    .venv/bin/python -m benchmarks.replication [--writes 200000] [--rates 1000,5000]

Two real regions (redis-server + `reconciler run` each) and one Kafka broker, all on this
machine. In the same run:

- *raw*: `redis-benchmark -t set` against A's Redis (the machine's ceiling for writes);
- *throughput*: `redis-benchmark` writes N distinct keys into A as fast as it can; we time
  from the first write until B has applied every change A's daemon shipped;
- *lag*: a writer sets keys in A at a fixed rate, each named with its send time; B's
  keyspace notifications say when each one was applied there. p50/p99 of the difference.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from benchmarks.report import table, write_section
from devcluster import KafkaBroker, RedisServer
from devcluster.daemons import DaemonProcess, wait_for, write_config

A, B = "eu-west", "us-east"


def redis_benchmark(port: int, n: int, *, keyspace: int, pipeline: int) -> float:
    out = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            "set",
            "-n",
            str(n),
            "-r",
            str(keyspace),
            "-P",
            str(pipeline),
            "-d",
            "32",
            "-c",
            "16",
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    # Progress lines ("SET: rps=...\r") come first; the result is the line with
    # "SET: 123456.79 requests per second".
    found = re.findall(r"SET: ([0-9.]+) requests per second", out.stdout)
    if not found:
        raise RuntimeError(f"redis-benchmark printed no result: {out.stdout[-300:]!r}")
    return float(found[-1])


def status(daemon: DaemonProcess) -> dict[str, int]:
    s = daemon.get("/status")
    # Every event B received counts, whatever its outcome (a key written in both regions
    # is a conflict, not an "applied").
    return {"changes": s["capture"]["changes"], "applied": s["apply"]["events"]}


def throughput(
    servers: dict[str, RedisServer], daemons: dict[str, DaemonProcess], n: int
) -> tuple[float, int, float]:
    """(changes/s end to end, changes, seconds)."""
    before_changes = status(daemons[A])["changes"]
    before_applied = status(daemons[B])["applied"]
    t0 = time.monotonic()
    redis_benchmark(servers[A].port, n, keyspace=1_000_000_000, pipeline=16)

    def caught_up() -> bool:
        shipped = status(daemons[A])["changes"] - before_changes
        applied = status(daemons[B])["applied"] - before_applied
        return shipped > 0 and applied >= shipped and shipped >= quiet_target[0]

    quiet_target = [0]
    # Wait until A's capture has drained the stream: its change count stops moving.
    last = -1
    while True:
        time.sleep(0.5)
        now = status(daemons[A])["changes"]
        if now == last:
            break
        last = now
    quiet_target[0] = last - before_changes
    wait_for(caught_up, 600, "B to apply everything A shipped", 0.05)
    seconds = time.monotonic() - t0
    changes = quiet_target[0]
    return changes / seconds, changes, seconds


def full_resync(
    servers: dict[str, RedisServer], daemons: dict[str, DaemonProcess]
) -> list[list[str]]:
    """Rows: B restarted with its data gone and refilled from A by its recovery (the Merkle
    repair after the gap), then an operator's full resync of B from A (POST /resync)."""
    a = redis.Redis(port=servers[A].port)
    b = redis.Redis(port=servers[B].port)
    keys = int(a.dbsize())
    servers[B].kill9()
    servers[B].wipe_data()
    t0 = time.monotonic()
    servers[B].start()

    def refilled() -> bool:
        return b.dbsize() >= keys and status_of(daemons[B]) == "consistent"

    wait_for(refilled, 900, "B to be refilled from A", 0.2)
    refill_s = time.monotonic() - t0
    t0 = time.monotonic()
    report = daemons[B].post(f"/resync?peer={A}", timeout_s=900)
    resync_s = time.monotonic() - t0
    fetched = report.get("repaired", {}).get("fetched", 0)
    return [
        [
            f"empty region refilled after a restart (recovery repair, {keys:,} Redis keys)",
            f"{refill_s:.1f}",
            f"{keys / refill_s:,.0f} keys/s",
        ],
        [
            f"operator full resync (POST /resync, {fetched:,} keys shipped)",
            f"{resync_s:.1f}",
            f"{fetched / resync_s:,.0f} keys/s" if fetched else "",
        ],
    ]


def status_of(daemon: DaemonProcess) -> str:
    try:
        return str(daemon.get("/status")["status"])
    except OSError:
        return ""


def lag_at_rate(servers: dict[str, RedisServer], rate: int, seconds: float) -> list[float]:
    """Milliseconds from each write in A to its apply in B, at a fixed write rate."""
    sub = redis.Redis(host="127.0.0.1", port=servers[B].port)
    sub.config_set("notify-keyspace-events", "E$")
    pubsub = sub.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("__keyevent@0__:set")
    sent: dict[bytes, float] = {}
    lags: list[float] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set() or len(lags) < len(sent):
            msg = pubsub.get_message(timeout=0.5)
            if msg is None:
                if done.is_set():
                    return
                continue
            key = msg["data"]
            t_sent = sent.get(key)
            if t_sent is not None:
                lags.append((time.perf_counter() - t_sent) * 1000)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    writer = redis.Redis(host="127.0.0.1", port=servers[A].port)
    interval = 1.0 / rate
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        key = f"lag:{rate}:{i}".encode()
        sent[key] = time.perf_counter()
        writer.set(key, "x" * 32)
        i += 1
    deadline = time.monotonic() + 60
    while len(lags) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.1)
    done.set()
    listener.join(5)
    pubsub.close()
    sub.close()
    writer.close()
    if len(lags) < len(sent):
        raise RuntimeError(f"only {len(lags)} of {len(sent)} writes seen at {B}")
    return lags


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=200_000)
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--lag-seconds", type=float, default=15.0)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-repl-"))
    broker = KafkaBroker(base, heap_mb=1024)
    servers = {
        r: RedisServer(r, base, config={"appendonly": "no", "repl-backlog-size": "256mb"})
        for r in (A, B)
    }
    # The raw reference runs on a Redis of its own (same settings): written through B's,
    # its load would be replicated and disturb the run.
    raw_server = RedisServer("raw", base, config={"appendonly": "no"})
    daemons: dict[str, DaemonProcess] = {}
    ok = False
    try:
        broker.start()
        for s in servers.values():
            s.start()
        raw_server.start()
        for r in (A, B):
            cfg = write_config(
                base / "cfg", r, [B if r == A else A], servers[r].url, broker.bootstrap
            )
            daemons[r] = DaemonProcess(r, cfg)
            daemons[r].start()
        wait_for(
            lambda: all(d.get("/status")["status"] == "consistent" for d in daemons.values()),
            60,
            "consistent",
            0.2,
        )

        raw = max(
            redis_benchmark(raw_server.port, args.writes, keyspace=1_000_000_000, pipeline=16)
            for _ in range(2)
        )
        raw_unpipelined = redis_benchmark(
            raw_server.port, 50_000, keyspace=1_000_000_000, pipeline=1
        )
        e2e, changes, seconds = throughput(servers, daemons, args.writes)
        rows = [
            [
                "redis-benchmark SET, pipelined 16, 16 clients (raw, a Redis of its own)",
                f"{raw:,.0f}",
                "1.00",
            ],
            [
                "redis-benchmark SET, no pipelining, 16 clients (raw, a Redis of its own)",
                f"{raw_unpipelined:,.0f}",
                f"{raw_unpipelined / raw:.2f}",
            ],
            [
                f"end to end A -> B: {changes:,} changes in {seconds:.1f}s",
                f"{e2e:,.0f}",
                f"{e2e / raw:.2f}",
            ],
        ]
        lag_rows = []
        for rate in (int(r) for r in args.rates.split(",")):
            lags = lag_at_rate(servers, rate, args.lag_seconds)
            lag_rows.append(
                [
                    f"{rate:,}/s",
                    f"{len(lags):,}",
                    f"{percentile(lags, 50):.1f}",
                    f"{percentile(lags, 99):.1f}",
                    f"{max(lags):.1f}",
                    f"{statistics.mean(lags):.1f}",
                ]
            )
            print(lag_rows[-1])
        resync_rows = full_resync(servers, daemons)
        print(resync_rows)
        rss = {}
        for r, d in daemons.items():
            metrics = d.metrics()
            for line in metrics.splitlines():
                if line.startswith("process_resident_memory_bytes"):
                    rss[r] = float(line.split()[-1]) / 1024 / 1024
        ok = True
    finally:
        for d in daemons.values():
            d.stop()
        for s in servers.values():
            s.stop()
        raw_server.stop()
        broker.stop()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")

    body = (
        "Two regions on one 2-core machine (both Redis servers, both daemons, the broker and\n"
        "the load generator share the two cores). Throughput: redis-benchmark writes distinct\n"
        "keys (32-byte values) into A as fast as it can; timed from the first write until B\n"
        "applied every change A shipped. The raw rows are redis-benchmark against a third,\n"
        "unreplicated Redis in the same run.\n\n"
        + table(["what", "writes/s", "ratio to raw"], rows)
        + "\n\nLag from a write in A to its apply in B at a fixed write rate "
        + f"({args.lag_seconds:.0f}s each;\n"
        "one writer, B's keyspace notifications time the apply):\n\n"
        + table(["rate", "writes", "p50 ms", "p99 ms", "max ms", "mean ms"], lag_rows)
        + "\n\nFull resync of B from A, with the keys the throughput run left (Redis keys\n"
        "include the metadata hashes):\n\n"
        + table(["what", "seconds", "rate"], resync_rows)
        + "\n\nDaemon resident memory after the run: "
        + ", ".join(f"{r} {m:.0f} MiB" for r, m in rss.items())
        + "\n"
    )
    write_section("Replication: end-to-end throughput and lag", body)
    print(body)


if __name__ == "__main__":
    main()
