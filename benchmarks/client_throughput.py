"""Failover client: throughput beside plain redis-py, and failover/failback times.

    .venv/bin/python -m benchmarks.client_throughput [--seconds 2] [--rounds 3] [--cycles 20]

Part 1 runs the same GET/SET loop through plain ``redis.Redis`` (and
``redis.asyncio.Redis``) and through the failover client, against the same local
redis-server, in alternating rounds within one run; the figure is the ratio of the medians.
Part 2 induces ``--cycles`` failures of the home region with the TCP fault proxy (every
connection reset) under load from 4 threads, and measures the time from the fault to the
failover, and from the repair to the failback (which includes the configured
``failback_healthy_s``: the region must answer probes that long, and its status record,
refreshed by a stand-in daemon, must say ``consistent``). Bounded: about two and a half
minutes with the defaults.
Writes the section "Failover client" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from benchmarks.report import table, write_section
from devcluster import RedisServer
from reconciler.client import (
    AsyncFailoverClient,
    ClientConfig,
    FailoverClient,
    PolicyConfig,
    RegionConfig,
)
from tests.daemonstub import DaemonStub
from tests.tcpproxy import Fault, TcpProxy

KEYS = 1000


def sync_worker(client: Any, stop: threading.Event, counts: list[int], slot: int) -> None:
    n = 0
    value = b"x" * 64
    while not stop.is_set():
        key = f"bench:{n % KEYS}"
        if n & 1:
            client.get(key)
        else:
            client.set(key, value)
        n += 1
    counts[slot] = n


def sync_rate(client: Any, threads: int, seconds: float) -> float:
    stop = threading.Event()
    counts = [0] * threads
    workers = [
        threading.Thread(target=sync_worker, args=(client, stop, counts, i)) for i in range(threads)
    ]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


async def async_rate(client: Any, tasks: int, seconds: float) -> float:
    value = b"x" * 64
    deadline = time.perf_counter() + seconds

    async def worker() -> int:
        n = 0
        while time.perf_counter() < deadline:
            key = f"bench:{n % KEYS}"
            if n & 1:
                await client.get(key)
            else:
                await client.set(key, value)
            n += 1
        return n

    start = time.perf_counter()
    done = await asyncio.gather(*(worker() for _ in range(tasks)))
    return sum(done) / (time.perf_counter() - start)


def config(home_url: str, other_url: str, **policy: Any) -> ClientConfig:
    return ClientConfig(
        regions=(
            RegionConfig(name="home", url=home_url),
            RegionConfig(name="other", url=other_url),
        ),
        policy=PolicyConfig(**policy),
        client_name="bench",
    )


def compare(
    label: str, plain: Callable[[], float], failover: Callable[[], float], rounds: int
) -> list[str]:
    plain_rates, failover_rates = [], []
    for _ in range(rounds):  # alternate, so drift on a shared machine hits both alike
        plain_rates.append(plain())
        failover_rates.append(failover())
    p, f = statistics.median(plain_rates), statistics.median(failover_rates)
    print(f"{label}: redis-py {p:,.0f}/s  failover client {f:,.0f}/s  ratio {f / p:.3f}")
    return [label, f"{p:,.0f}", f"{f:,.0f}", f"{f / p:.2f}"]


def throughput(
    home: RedisServer, other: RedisServer, seconds: float, rounds: int
) -> list[list[str]]:
    rows: list[list[str]] = []
    cfg = config(home.url, other.url)
    with redis.Redis.from_url(home.url) as plain, FailoverClient(cfg) as client:
        rows.extend(
            compare(
                f"sync, {threads} thread(s)",
                functools.partial(sync_rate, plain, threads, seconds),
                functools.partial(sync_rate, client, threads, seconds),
                rounds,
            )
            for threads in (1, 8)
        )

    async def async_rows() -> list[list[str]]:
        out: list[list[str]] = []
        async with aioredis.Redis.from_url(home.url) as plain, AsyncFailoverClient(cfg) as client:
            for tasks in (1, 8):
                plain_rates, failover_rates = [], []
                for _ in range(rounds):
                    plain_rates.append(await async_rate(plain, tasks, seconds))
                    failover_rates.append(await async_rate(client, tasks, seconds))
                p, f = statistics.median(plain_rates), statistics.median(failover_rates)
                print(f"asyncio, {tasks} task(s): redis-py {p:,.0f}/s  client {f:,.0f}/s")
                out.append([f"asyncio, {tasks} task(s)", f"{p:,.0f}", f"{f:,.0f}", f"{f / p:.2f}"])
        return out

    rows += asyncio.run(async_rows())
    return rows


def wait(predicate: Callable[[], bool], timeout_s: float) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("the client did not switch region in time")
        time.sleep(0.001)
    return time.perf_counter() - start


def failover_times(home: RedisServer, other: RedisServer, cycles: int) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "window_s": 1.0,
        "min_requests": 20,
        "error_rate_threshold": 0.5,
        "command_timeout_s": 0.5,
        "connect_timeout_s": 0.5,
        "probe_interval_s": 0.1,
        "probe_backoff_cap_s": 0.5,
        "failback_healthy_s": 1.0,
    }
    failovers, failbacks = [], []
    # Stands in for the home region's daemon: a fresh `consistent` record every 100 ms.
    with TcpProxy(home.port) as proxy, DaemonStub(home.url, "home") as daemon:
        daemon.set("consistent")
        cfg = config(proxy.url, other.url, **policy)
        with FailoverClient(cfg) as client:
            stop = threading.Event()
            counts = [0] * 4
            workers = [
                threading.Thread(target=sync_worker, args=(client, stop, counts, i))
                for i in range(4)
            ]
            for worker in workers:
                worker.start()
            try:
                time.sleep(0.5)
                for cycle in range(cycles):
                    proxy.set_fault(Fault.cut_off())
                    failovers.append(wait(lambda: client.active_region == "other", 10.0))
                    # Stay failed a moment, as a real outage would, then repair.
                    time.sleep(0.2)
                    proxy.set_fault(Fault.none())
                    failbacks.append(wait(lambda: client.active_region == "home", 30.0))
                    print(
                        f"cycle {cycle + 1}: failover {failovers[-1] * 1000:.0f} ms, "
                        f"failback {failbacks[-1] * 1000:.0f} ms"
                    )
                    # Let the region count as stable again: a failure sooner would be a flap
                    # and (by design) double the next required healthy time.
                    time.sleep(policy["window_s"] + policy["failback_healthy_s"] + 0.2)
            finally:
                stop.set()
                for worker in workers:
                    worker.join()
            snap = client.router.snapshot()
    return {
        "policy": policy,
        "failovers": failovers,
        "failbacks": failbacks,
        "events": (snap.failovers, snap.failbacks),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per mode")
    parser.add_argument("--cycles", type=int, default=20, help="induced failures")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    # Every induced failure is logged as a warning by the client; the figures say enough.
    logging.getLogger("reconciler.client").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        home = RedisServer("home", Path(tmp), config={"appendonly": "no"})
        other = RedisServer("other", Path(tmp), config={"appendonly": "no"})
        home.start()
        other.start()
        try:
            rows = throughput(home, other, args.seconds, args.rounds)
            times = failover_times(home, other, args.cycles)
        finally:
            home.stop()
            other.stop()

    fo = [t * 1000 for t in times["failovers"]]
    fb = [t * 1000 for t in times["failbacks"]]
    policy = times["policy"]
    body = "\n\n".join(
        [
            "GET/SET mix (64-byte values, 1000 keys) against one local redis-server; baseline "
            "= plain redis-py (`redis.Redis` / `redis.asyncio.Redis`, defaults) on the same "
            f"server in the same run, alternating {args.rounds} runs of {args.seconds:g} s "
            "each, medians. Aim: ratio >= 0.90.",
            table(["mode", "redis-py ops/s", "failover client ops/s", "ratio"], rows),
            f"Failover and failback over {len(fo)} induced failures (TCP proxy resets every "
            "connection to the home region), spaced so that none counts as a flap, under 4 "
            "threads of the same load. Policy: "
            f"window {policy['window_s']:g} s, min {policy['min_requests']} requests, "
            f"threshold {policy['error_rate_threshold']:g}, probes every "
            f"{policy['probe_interval_s']:g} s, failback after "
            f"{policy['failback_healthy_s']:g} s healthy and a fresh `consistent` status "
            "(refreshed every 0.1 s). Failover: fault to the active region moving; failback: "
            "repair to the active region moving back (includes the healthy time). An "
            "outage is noticed once failures make up the threshold's share of the window's "
            "requests: threshold x window if failing requests came as fast as successful "
            "ones, longer here because each one first tries the cut region, then is resent.",
            table(
                ["", "p50 ms", "p99 ms", "max ms"],
                [
                    ["failover", f"{pct(fo, 0.5):.0f}", f"{pct(fo, 0.99):.0f}", f"{max(fo):.0f}"],
                    ["failback", f"{pct(fb, 0.5):.0f}", f"{pct(fb, 0.99):.0f}", f"{max(fb):.0f}"],
                ],
            ),
            f"The client counted {times['events'][0]} failovers and {times['events'][1]} "
            f"failbacks for {len(fo)} induced failures (no flapping). Load average at the end "
            f"of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine: "
            "absolute rates are depressed, the ratios are measured side by side).",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("Failover client", body)


if __name__ == "__main__":
    main()
