"""End-to-end replication on three regions: throughput, lag per write rate, Redis time per
replicated write, where the lag comes from (per stage), daemon memory.

    .venv/bin/python -m benchmarks.replication [--writes 200000] [--rates 200,1000,2000,5000]
        [--label after] [--redis-shake PATH] [--rss-keys 1000000] [--resync]

Three real regions (redis-server + `reconciler run` each) and one Kafka broker, all on this
machine. In the same run:

- *raw*: `redis-benchmark -t set` against a Redis of its own (the machine's ceiling);
- *RedisShake* (only with `--redis-shake PATH` or `REDIS_SHAKE=PATH`): one-way sync of the
  same load between two Redis servers of its own, as an outside reference;
- *throughput*: `redis-benchmark` writes N distinct keys into A as fast as it can; timed from
  the first write until both other regions have applied every change A shipped;
- *Redis time*: `INFO commandstats` of each region's Redis before and after each phase; the
  daemon reaches keys only through the function library (FCALL / FCALL_RO), so their time
  divided by the writes replicated is what replicating one write costs that Redis;
- *lag*: one writer sets keys in A at a fixed rate; the other regions' keyspace
  notifications (listened to in processes of their own) say when each key is there;
- *stages*: the daemons' `reconciler_stage_seconds` histograms, read before and after each
  rate, say how the lag splits into capture, versioning, Kafka and apply.

Figures go to BENCHMARKS.md and to `benchmarks/results/replication-<label>.json` (the plot,
`python -m benchmarks.plot`, compares labels).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from benchmarks.report import table, write_section
from devcluster import KafkaBroker, RedisServer
from devcluster.daemons import DaemonProcess, wait_for
from devcluster.regions import LocalRegions

REGIONS = ("eu-west", "us-east", "ap-south")
A = REGIONS[0]
DESTS = REGIONS[1:]
RESULTS = Path(__file__).resolve().parent / "results"
STAGES = (
    ("captured_to_versioned", "origin: capture batch parsed -> versioned"),
    ("versioned_to_acked", "origin: versioned -> acknowledged by Kafka"),
    ("produced_to_consumed", "peer: record produced -> consumed"),
    ("consumed_to_applied", "peer: consumed -> applied"),
    ("produced_to_applied", "peer: record produced -> applied"),
)


# --- load generators ------------------------------------------------------------------------
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


# --- what Redis and the daemons report ------------------------------------------------------
def library_usec(port: int) -> tuple[int, float]:
    """(calls, µs) of FCALL + FCALL_RO on this Redis since its start."""
    stats = redis.Redis(port=port).info("commandstats")
    calls, usec = 0, 0.0
    for name in ("cmdstat_fcall", "cmdstat_fcall_ro"):
        entry = stats.get(name)
        if entry:
            calls += int(entry["calls"])
            usec += float(entry["usec"])
    return calls, usec


def status(daemon: DaemonProcess) -> dict[str, int]:
    s = daemon.get("/status")
    # Every event received counts, whatever its outcome (a key written in two regions is a
    # conflict, not an "applied").
    return {"changes": s["capture"]["changes"], "applied": s["apply"]["events"]}


_BUCKET = re.compile(r"^reconciler_stage_seconds_bucket\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def stage_histograms(daemons: dict[str, DaemonProcess]) -> dict[str, dict[float, float]]:
    """stage -> {upper bound s: cumulative count}, summed over every daemon (stages are
    named by where they happen, so origin and peer stages do not mix)."""
    out: dict[str, dict[float, float]] = {}
    for d in daemons.values():
        for line in d.metrics().splitlines():
            m = _BUCKET.match(line)
            if not m:
                continue
            labels = dict(_LABEL.findall(m["labels"]))
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            per = out.setdefault(labels["stage"], {})
            per[le] = per.get(le, 0.0) + float(m["value"])
    return out


def stage_rows(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> list[list[str]]:
    """Per stage: observations and p50/p99 (bucket upper bounds) of what happened between."""
    rows = []
    for stage, label in STAGES:
        b, a = before.get(stage, {}), after.get(stage, {})
        if not a:
            rows.append([label, "n/a", "", ""])
            continue
        bounds = sorted(a)
        delta = [a[le] - b.get(le, 0.0) for le in bounds]
        total = delta[-1]
        if total <= 0:
            rows.append([label, "0", "", ""])
            continue

        def quantile(q: float, bounds: list[float] = bounds, delta: list[float] = delta) -> str:
            for le, cum in zip(bounds, delta, strict=True):
                if cum >= q * delta[-1]:
                    return "> 10 s" if le == float("inf") else f"≤ {le * 1000:g}"
            return ""

        rows.append([label, f"{total:,.0f}", quantile(0.5), quantile(0.99)])
    return rows


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used (load-independent, unlike wall time)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(
    servers: dict[str, RedisServer], daemons: dict[str, DaemonProcess], broker: KafkaBroker
) -> dict[str, float]:
    out = {f"daemon {r}": cpu_seconds(d.pid) for r, d in daemons.items()}
    out |= {f"redis {r}": cpu_seconds(s.pid) for r, s in servers.items()}
    out["kafka broker"] = cpu_seconds(broker.pid)
    return out


def rss_mib(daemon: DaemonProcess) -> float:
    for line in daemon.metrics().splitlines():
        if line.startswith("process_resident_memory_bytes"):
            return float(line.split()[-1]) / 1024 / 1024
    return float("nan")


def metadata_bytes_per_key(port: int) -> tuple[float, int]:
    """(MEMORY USAGE of the metadata hashes summed / user keys, user keys)."""
    client = redis.Redis(port=port)
    total = 0
    names = list(client.scan_iter(match="__rr:m:*", count=2000, _type="hash"))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    total = sum(int(x or 0) for x in pipe.execute())
    keys = int(client.dbsize()) - len(names) - len(list(client.scan_iter(match="__rr:[!m]*")))
    return total / max(1, keys), keys


# --- profiling (optional) -----------------------------------------------------------------
class Profiler:
    """py-spy sampling the daemons of A and B during a phase (`--profile DIR`): collapsed
    stacks per region and phase, summarised by `python -m benchmarks.pyspy_summary`."""

    def __init__(self, directory: Path | None, daemons: dict[str, DaemonProcess]) -> None:
        self.directory = directory
        self.daemons = daemons
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, phase: str) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).parent / "py-spy"
        for region in (A, DESTS[0]):
            pid = self.daemons[region].pid
            out = self.directory / f"{region}-{phase}.txt"
            self._procs.append(
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--rate",
                        "100",
                        "--idle",
                        "--nonblocking",
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._procs = []


# --- phases ---------------------------------------------------------------------------------
def wait_applied(
    servers: dict[str, RedisServer],
    daemons: dict[str, DaemonProcess],
    before: dict[str, dict[str, int]],
    timeout_s: float,
) -> int:
    """Wait until A's capture has acknowledged everything written to A so far and every
    destination applied all A shipped since `before`; returns the changes A shipped."""
    offset = int(redis.Redis(port=servers[A].port).info("replication")["master_repl_offset"])
    wait_for(
        lambda: daemons[A].get("/status")["capture"]["acked_offset"] >= offset,
        timeout_s,
        "A's capture to acknowledge the load",
        0.05,
    )
    shipped = status(daemons[A])["changes"] - before[A]["changes"]

    def caught_up() -> bool:
        return all(status(daemons[r])["applied"] - before[r]["applied"] >= shipped for r in DESTS)

    wait_for(caught_up, timeout_s, "every region to apply what A shipped", 0.05)
    return shipped


def throughput(
    servers: dict[str, RedisServer],
    daemons: dict[str, DaemonProcess],
    broker: KafkaBroker,
    n: int,
    profiler: Profiler,
) -> dict[str, Any]:
    before = {r: status(d) for r, d in daemons.items()}
    cpu0 = process_cpu(servers, daemons, broker)
    profiler.start("throughput")
    usec0 = {r: library_usec(servers[r].port) for r in REGIONS}
    t0 = time.monotonic()
    redis_benchmark(servers[A].port, n, keyspace=1_000_000_000, pipeline=16)
    changes = wait_applied(servers, daemons, before, 900)
    seconds = time.monotonic() - t0
    profiler.stop()
    usec1 = {r: library_usec(servers[r].port) for r in REGIONS}
    cpu1 = process_cpu(servers, daemons, broker)
    return {
        # CPU µs each process spent per change (the load generator's SETs count in A's Redis).
        "cpu_us_per_change": {p: (cpu1[p] - cpu0[p]) * 1e6 / max(1, changes) for p in cpu1},
        "changes": changes,
        "seconds": seconds,
        "rate": changes / seconds,
        "redis_us_per_write": {r: (usec1[r][1] - usec0[r][1]) / max(1, changes) for r in REGIONS},
        "calls_per_write": {r: (usec1[r][0] - usec0[r][0]) / max(1, changes) for r in REGIONS},
    }


def listen(port: int, prefix: bytes, conn: Connection) -> None:
    """Child process: the time (monotonic, system-wide) each key with `prefix` is set here."""
    client = redis.Redis(host="127.0.0.1", port=port)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("__keyevent@0__:set")
    seen: dict[bytes, float] = {}
    conn.send("ready")
    stop_at: float | None = None
    while True:
        msg = pubsub.get_message(timeout=0.2)
        now = time.monotonic()
        if msg is not None and msg["data"].startswith(prefix):
            seen.setdefault(msg["data"], now)
        if stop_at is None and conn.poll():
            want = conn.recv()  # the number of keys written: wait for them (bounded)
            stop_at = now + 60
        if stop_at is not None and (len(seen) >= want or now > stop_at):
            break
    conn.send(seen)
    pubsub.close()
    client.close()


def lag_at_rate(
    servers: dict[str, RedisServer], rate: int, seconds: float
) -> dict[str, dict[str, Any]]:
    """Per destination: lags (ms) of every write, and when in the run each was written."""
    for r in DESTS:
        redis.Redis(port=servers[r].port).config_set("notify-keyspace-events", "E$")
    prefix = f"lag:{rate}:".encode()
    ctx = mp.get_context("spawn")
    listeners = []
    for r in DESTS:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=listen, args=(servers[r].port, prefix, child), daemon=True)
        proc.start()
        if not parent.poll(30) or parent.recv() != "ready":
            raise RuntimeError(f"listener on {r} did not start")
        listeners.append((r, proc, parent))
    writer = redis.Redis(host="127.0.0.1", port=servers[A].port)
    acked: dict[bytes, float] = {}
    value = b"x" * 32
    start = time.monotonic()
    i = 0
    # Writes are paced by the clock: every key is written at (or just after) its due time;
    # keys that fell due together go in one pipeline, each stamped with the time Redis
    # acknowledged it.
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) + 1 - i
        if due <= 0:
            time.sleep(max(0.0, start + i / rate - now))
            continue
        keys = [prefix + str(i + j).encode() for j in range(due)]
        pipe = writer.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, value)
        pipe.execute()
        t = time.monotonic()
        for key in keys:
            acked[key] = t
        i += due
    written_s = time.monotonic() - start
    writer.close()
    out: dict[str, dict[str, Any]] = {}
    for r, proc, parent in listeners:
        parent.send(len(acked))
        seen: dict[bytes, float] = parent.recv()
        proc.join(10)
        # A write still missing when the listener gave up (60 s after the run) is counted
        # with the lag it had by then: a lower bound, and the row says how many.
        gave_up = time.monotonic()
        lags = [(seen.get(k, gave_up) - t) * 1000 for k, t in acked.items()]
        at = [t - start for t in acked.values()]
        missing = len(acked) - sum(1 for k in acked if k in seen)
        out[r] = {
            "lags": lags,
            "at": at,
            "written_s": written_s,
            "writes": len(acked),
            "missing": missing,
        }
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def window_p50(lags: list[float], at: list[float], t0: float, t1: float) -> float:
    inside = [lag for lag, t in zip(lags, at, strict=True) if t0 <= t < t1]
    return statistics.median(inside) if inside else float("nan")


# --- RedisShake (outside reference) ---------------------------------------------------------
def redis_shake_rate(binary: Path, base: Path, n: int) -> float:
    """One-way sync rate of RedisShake (sync reader -> redis writer) on the same load."""
    src = RedisServer("shake-src", base, config={"appendonly": "no"})
    dst = RedisServer("shake-dst", base, config={"appendonly": "no"})
    src.start()
    dst.start()
    work = base / "shake"
    work.mkdir()
    conf = work / "shake.toml"
    conf.write_text(
        "[sync_reader]\n"
        f'address = "127.0.0.1:{src.port}"\n'
        "[redis_writer]\n"
        f'address = "127.0.0.1:{dst.port}"\n'
        "[advanced]\n"
        f'dir = "{work / "data"}"\n'
        'log_level = "warn"\n'
        'log_file = "shake.log"\n'  # relative to dir
    )
    with (work / "stdout.log").open("wb") as out:
        proc = subprocess.Popen([str(binary), str(conf)], cwd=work, stdout=out, stderr=out)
    try:
        src_client = redis.Redis(port=src.port)
        dst_client = redis.Redis(port=dst.port)

        def attached() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"RedisShake exited: see {work}")
            return int(src_client.info("replication")["connected_slaves"]) >= 1

        wait_for(
            attached,
            60,
            "RedisShake to attach to its source",
            0.1,
        )
        src_client.set("shake:probe", "1")
        wait_for(lambda: dst_client.exists("shake:probe"), 60, "RedisShake's first write", 0.05)
        t0 = time.monotonic()
        redis_benchmark(src.port, n, keyspace=1_000_000_000, pipeline=16)
        want = int(src_client.dbsize())
        wait_for(lambda: int(dst_client.dbsize()) >= want, 600, "RedisShake to catch up", 0.05)
        seconds = time.monotonic() - t0
        return (want - 1) / seconds
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        src.stop()
        dst.stop()


# --- full resync (optional) ---------------------------------------------------------------
def full_resync(
    servers: dict[str, RedisServer], daemons: dict[str, DaemonProcess]
) -> list[list[str]]:
    """An empty region refilled by its recovery, then an operator's full resync."""
    b_name = DESTS[0]
    a = redis.Redis(port=servers[A].port)
    b = redis.Redis(port=servers[b_name].port)
    keys = int(a.dbsize())
    servers[b_name].kill9()
    servers[b_name].wipe_data()
    t0 = time.monotonic()
    servers[b_name].start()

    def refilled() -> bool:
        return b.dbsize() >= keys and daemons[b_name].get("/status")["status"] == "consistent"

    wait_for(refilled, 900, f"{b_name} to be refilled", 0.2)
    refill_s = time.monotonic() - t0
    t0 = time.monotonic()
    report = daemons[b_name].post(f"/resync?peer={A}", timeout_s=900)
    resync_s = time.monotonic() - t0
    fetched = report.get("repaired", {}).get("fetched", 0)
    return [
        [
            f"empty region refilled ({keys:,} Redis keys)",
            f"{refill_s:.1f}",
            f"{keys / refill_s:,.0f}",
        ],
        [
            f"operator full resync ({fetched:,} keys)",
            f"{resync_s:.1f}",
            f"{fetched / resync_s:,.0f}",
        ],
    ]


# --- the run --------------------------------------------------------------------------------
def run(args: argparse.Namespace, shake: Path | None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-repl-"))
    # Production heartbeat timings: on a machine this loaded, the test timings' 3 s peer
    # timeout declares peers down and starts repairs that disturb the run.
    regions = LocalRegions(
        base,
        names=REGIONS,
        broker_heap_mb=1024,
        redis_config={"appendonly": "no", "repl-backlog-size": "256mb"},
        overrides={"heartbeat": {"interval_s": 1.0, "peer_timeout_s": 30.0}},
    )
    broker, servers, daemons = regions.broker, regions.servers, regions.daemons
    # The raw reference runs on a Redis of its own (same settings): written through a
    # region's, its load would be replicated and disturb the run.
    raw_server = RedisServer("raw", base, config={"appendonly": "no"})
    result: dict[str, Any] = {"label": args.label, "date": time.strftime("%Y-%m-%d")}
    ok = False
    load: list[float] = []
    try:
        regions.start()
        raw_server.start()
        regions.wait_status("consistent", timeout_s=90, interval_s=0.2)
        start_status = {r: status(d) for r, d in daemons.items()}
        load.append(os.getloadavg()[0])
        raw = [
            redis_benchmark(raw_server.port, args.writes, keyspace=1_000_000_000, pipeline=16)
            for _ in range(2)
        ]
        result["raw_pipelined"] = max(raw)
        result["raw_unpipelined"] = redis_benchmark(
            raw_server.port, 50_000, keyspace=1_000_000_000, pipeline=1
        )
        raw_server.stop()
        if shake is not None:
            result["redis_shake"] = redis_shake_rate(shake, base, args.writes)
            print(f"RedisShake: {result['redis_shake']:,.0f} keys/s", flush=True)
        profiler = Profiler(Path(args.profile) if args.profile else None, daemons)
        result["throughput"] = throughput(servers, daemons, broker, args.writes, profiler)
        print(f"throughput: {result['throughput']}", flush=True)
        load.append(os.getloadavg()[0])
        result["lag"] = {}
        for rate in (int(x) for x in args.rates.split(",") if x):
            # A backlog left by the previous phase would be counted against this rate.
            wait_applied(servers, daemons, start_status, 1800)
            seconds = args.long_seconds if rate == max_rate(args) else args.lag_seconds
            h0 = stage_histograms(daemons)
            u0 = {r: library_usec(servers[r].port) for r in REGIONS}
            c0 = status(daemons[A])["changes"]
            if rate == 1000:
                profiler.start(f"lag{rate}")
            per_dest = lag_at_rate(servers, rate, seconds)
            profiler.stop()
            time.sleep(1.0)  # the last histograms observations land
            h1 = stage_histograms(daemons)
            u1 = {r: library_usec(servers[r].port) for r in REGIONS}
            changes = status(daemons[A])["changes"] - c0
            lags = [x for d in per_dest.values() for x in d["lags"]]
            at = [x for d in per_dest.values() for x in d["at"]]
            first = next(iter(per_dest.values()))
            entry = {
                "writes": first["writes"],
                "achieved_rate": first["writes"] / first["written_s"],
                "p50": percentile(lags, 50),
                "p99": percentile(lags, 99),
                "max": max(lags),
                "mean": statistics.mean(lags),
                "per_dest_p99": {r: percentile(d["lags"], 99) for r, d in per_dest.items()},
                "missing": sum(d["missing"] for d in per_dest.values()),
                "p50_at_10s": window_p50(lags, at, 9.0, 10.0),
                # The last second of writes (an acknowledgement can land after `seconds`).
                "p50_at_end": window_p50(lags, at, max(at) - 1.0, max(at) + 1e-9),
                "stages": stage_rows(h0, h1),
                "redis_us_per_write": {r: (u1[r][1] - u0[r][1]) / max(1, changes) for r in REGIONS},
                "seconds": seconds,
            }
            result["lag"][str(rate)] = entry
            load.append(os.getloadavg()[0])
            print(
                f"{rate}/s: p50 {entry['p50']:.1f} p99 {entry['p99']:.1f} max "
                f"{entry['max']:.1f} ms; 10s {entry['p50_at_10s']:.1f} end "
                f"{entry['p50_at_end']:.1f}; redis µs {entry['redis_us_per_write']}",
                flush=True,
            )
            print(table(["stage", "observations", "p50 ms", "p99 ms"], entry["stages"]), flush=True)
        if args.rss_keys:
            # Loaded in steps, each applied everywhere before the next, with the daemons'
            # memory printed at every step (a long run still leaves figures if cut short).
            client = redis.Redis(port=servers[A].port)
            grew = True
            while grew and (have := int(client.dbsize())) < args.rss_keys:
                before = {r: status(d) for r, d in daemons.items()}
                step = min(200_000, args.rss_keys - have)
                # redis-benchmark's -r must fit an int: random keys among 1e9 (a few repeat).
                redis_benchmark(servers[A].port, step, keyspace=1_000_000_000, pipeline=16)
                grew = int(client.dbsize()) > have
                wait_applied(servers, daemons, before, 1800)
                rss = {r: round(rss_mib(d), 1) for r, d in daemons.items()}
                print(f"rss MiB {rss} with {int(client.dbsize()):,} Redis keys in A", flush=True)
            result["rss"] = {r: rss_mib(d) for r, d in daemons.items()}
            per_key, keys = metadata_bytes_per_key(servers[DESTS[0]].port)
            result["metadata_bytes_per_key"] = per_key
            result["rss_keys"] = keys
            print(f"rss {result['rss']} with {keys:,} keys; metadata {per_key:.1f} B/key")
        if args.resync:
            result["resync"] = full_resync(servers, daemons)
        load.append(os.getloadavg()[0])
        result["load"] = load
        ok = True
    finally:
        regions.stop()
        raw_server.stop()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    return result


def max_rate(args: argparse.Namespace) -> int:
    return max((int(x) for x in args.rates.split(",") if x), default=0)


def render(result: dict[str, Any], args: argparse.Namespace, shake: Path | None) -> str:
    raw = result["raw_pipelined"]
    tp = result["throughput"]
    rows = [
        [
            "redis-benchmark SET, pipelined 16, 16 clients (raw, a Redis of its own)",
            f"{raw:,.0f}",
            "1.00",
        ],
        [
            "redis-benchmark SET, no pipelining, 16 clients (raw, a Redis of its own)",
            f"{result['raw_unpipelined']:,.0f}",
            f"{result['raw_unpipelined'] / raw:.3f}",
        ],
    ]
    if "redis_shake" in result:
        rows.append(
            [
                "RedisShake one-way sync, same load (two Redis of its own)",
                f"{result['redis_shake']:,.0f}",
                f"{result['redis_shake'] / raw:.3f}",
            ]
        )
    rows.append(
        [
            f"end to end A -> B and C: {tp['changes']:,} changes in {tp['seconds']:.1f}s",
            f"{tp['rate']:,.0f}",
            f"{tp['rate'] / raw:.3f}",
        ]
    )
    shake_note = (
        f"RedisShake from `--redis-shake`/`REDIS_SHAKE` ({shake.name})."
        if shake
        else "RedisShake row skipped: no `--redis-shake PATH` / `REDIS_SHAKE` given."
    )
    lag_rows, us_rows, stage_parts = [], [], []
    for rate, e in result["lag"].items():
        lag_rows.append(
            [
                f"{int(rate):,}/s",
                f"{e['writes']:,} ({e['achieved_rate']:,.0f}/s)"
                + (f"; {e['missing']:,} not there 60 s after" if e.get("missing") else ""),
                f"{e['p50']:.1f}",
                f"{e['p99']:.1f}",
                f"{e['max']:.1f}",
                f"{e['mean']:.1f}",
                f"{e['p50_at_10s']:.1f}",
                f"{e['p50_at_end']:.1f}",
            ]
        )
        us = e["redis_us_per_write"]
        us_rows.append(
            [f"lag run, {int(rate):,}/s", f"{us[A]:.1f}"] + [f"{us[r]:.1f}" for r in DESTS]
        )
        stage_parts.append(
            f"At {int(rate):,}/s:\n\n"
            + table(["stage", "observations", "p50 ms", "p99 ms"], e["stages"])
        )
    cpu_rows = [[p, f"{v:,.0f}"] for p, v in tp.get("cpu_us_per_change", {}).items()]
    us = tp["redis_us_per_write"]
    us_rows.insert(0, ["throughput run", f"{us[A]:.1f}"] + [f"{us[r]:.1f}" for r in DESTS])
    text = (
        "Three regions on one 2-core machine (three Redis servers, three daemons, the broker\n"
        "and the load generator share the two cores; other engineers' test suites ran too:\n"
        f"load average {', '.join(f'{x:.1f}' for x in result['load'])} during the run).\n"
        "Throughput: redis-benchmark writes distinct keys (32-byte values) into A as fast as\n"
        "it can; timed from the first write until B and C applied every change A shipped.\n"
        f"{shake_note}\n\n"
        + table(["what", "writes/s", "ratio to raw"], rows)
        + "\n\nLag from a write acknowledged by A's Redis to the moment B's (and C's) Redis "
        "holds it,\none writer, "
        f"{args.lag_seconds:.0f} s per rate ({args.long_seconds:.0f} s at the highest); "
        "keyspace notifications\ntime the arrival; *at 10 s* and *at end* are the p50 of the "
        "writes of the 10th and\nthe last second (a growing backlog shows as end > 10 s):\n\n"
        + table(
            [
                "rate",
                "writes",
                "p50 ms",
                "p99 ms",
                "max ms",
                "mean ms",
                "p50 at 10 s",
                "p50 at end",
            ],
            lag_rows,
        )
        + "\n\nRedis time spent by the daemons per replicated write (µs of FCALL/FCALL_RO in\n"
        "`INFO commandstats`, divided by the changes A shipped; in B and C the applies,\n"
        "and the versioning of any echo the stream parser could not drop):\n\n"
        + table(["phase", f"origin {A}"] + [f"destination {r}" for r in DESTS], us_rows)
        + "\n\nCPU time per change in the throughput run, per process (user + system, from\n"
        "`/proc`: it grows far less with the machine's load than wall time; A's Redis includes\n"
        "the load generator's SETs):\n\n"
        + table(["process", "CPU µs per change"], cpu_rows)
        + "\n\nWhere the lag comes from (the daemons' `reconciler_stage_seconds` histograms, "
        "summed\nover regions; p50/p99 are bucket upper bounds):\n\n" + "\n\n".join(stage_parts)
    )
    if "rss" in result:
        text += (
            f"\n\nDaemon resident memory with {result['rss_keys']:,} keys: "
            + ", ".join(f"{r} {m:.0f} MiB" for r, m in result["rss"].items())
            + f"; metadata {result['metadata_bytes_per_key']:.1f} B per key "
            "(`MEMORY USAGE` of the metadata hashes / user keys)."
        )
    if "resync" in result:
        text += "\n\nFull resync:\n\n" + table(["what", "seconds", "keys/s"], result["resync"])
    return text + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=200_000)
    parser.add_argument("--rates", default="200,1000,2000,5000", help="'' for none")
    parser.add_argument("--lag-seconds", type=float, default=15.0)
    parser.add_argument("--long-seconds", type=float, default=30.0, help="at the highest rate")
    parser.add_argument("--label", default="current")
    parser.add_argument("--redis-shake", default=os.environ.get("REDIS_SHAKE"))
    parser.add_argument("--rss-keys", type=int, default=1_000_000)
    parser.add_argument("--resync", action="store_true")
    parser.add_argument("--profile", help="py-spy the daemons of A and B into this directory")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args()
    shake = Path(args.redis_shake) if args.redis_shake else None
    if shake is None:
        print("REDIS_SHAKE not set and no --redis-shake: skipping the RedisShake row")
    result = run(args, shake)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"replication-{args.label}.json").write_text(json.dumps(result, indent=1) + "\n")
    body = render(result, args, shake)
    if not args.no_write:
        write_section(f"Replication: end-to-end throughput and lag ({args.label})", body)
    print(body)


if __name__ == "__main__":
    main()
