"""One seed of the fault suite on three real regions (tests.regions.running_regions: a
redis-server and `reconciler run` per region, one real Kafka broker): the workload and the
nemesis for `duration_s`, bad records on the topics, heal, wait until every daemon says
consistent and the regions hold the same data, then check the history."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from devcluster import KafkaBroker, free_port
from devcluster.daemons import wait_for
from devcluster.redis_server import CAPTURE_GUARD
from devcluster.regions import REGIONS
from devcluster.workload import local_failover_policy
from reconciler.client import ClientConfig, FailoverClient, RegionConfig
from replication.clock import FAKE_OFFSET_ENV
from tests.faults import badinput
from tests.faults.checker import Verdict, Violation, check
from tests.faults.history import History, Op
from tests.faults.nemesis import KINDS, FaultRecord, Nemesis
from tests.faults.workload import Workload
from tests.regions import running_regions
from tests.servers import RedisFactory
from tests.tcpproxy import TcpProxy

# The demo's and the tests' policy: fail over at half of 5+ requests failing in 2 s, back
# after 2 s of good probes and a trusted `consistent`.
POLICY = local_failover_policy()
# Replication is asynchronous: a write acknowledged this long before a fault may still
# have been on its way (generous for two shared cores); anything older had arrived.
WINDOW_S = 5.0
# How long after a fault healed a region's backlog may still be arriving elsewhere.
AFTER_S = 15.0
HEAL_TIMEOUT_S = 180.0
# The broker listeners through which each region's daemon reaches Kafka (via a proxy that
# the nemesis cuts: `kafka-cut`, `kafka-blackhole`), by the region's position.
LISTENER_PREFIX = "REGION"


def broker_listeners(regions: int = 3) -> dict[str, tuple[int, int]]:
    """`KafkaBroker(extra_listeners=...)` for the fault suite: per region a listener port
    and the port it is advertised at, where that region's proxy listens."""
    return {f"{LISTENER_PREFIX}{i}": (free_port(), free_port()) for i in range(regions)}


@contextmanager
def kafka_links(
    kafka: KafkaBroker, names: tuple[str, ...], seed: int
) -> Iterator[dict[str, TcpProxy]]:
    """Per region a proxy from its listener's advertised port to the listener: every
    connection of that region's daemon to the broker goes through it (metadata answers
    name the advertised address)."""
    ports = [kafka.extra_listeners.get(f"{LISTENER_PREFIX}{i}") for i in range(len(names))]
    if None in ports:
        raise ValueError(
            "the fault suite's broker needs a listener per region: "
            "KafkaBroker(..., extra_listeners=broker_listeners())"
        )
    with contextlib.ExitStack() as stack:
        links = {
            name: stack.enter_context(TcpProxy(port, listen_port=advertised, seed=seed + i))
            for i, (name, (port, advertised)) in enumerate(zip(names, ports, strict=True))
        }
        yield links


def through_links(links: dict[str, TcpProxy]) -> dict[str, dict[str, Any]]:
    """`region_overrides` pointing each region's daemon at its Kafka link's proxy."""
    return {
        name: {"kafka": {"bootstrap_servers": f"127.0.0.1:{link.port}"}}
        for name, link in links.items()
    }


@dataclass
class SeedResult:
    seed: int
    duration_s: float
    ops: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    convergence_s: float | None = None
    verdict: Verdict = field(default_factory=Verdict)
    reads_by_region: dict[str, int] = field(default_factory=dict)
    bad_records: int = 0
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)
    """Rendered violations, suite errors (a thread that died, a fault that could not run)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        conv = "never" if self.convergence_s is None else f"{self.convergence_s:.1f}s"
        faults = ", ".join(f"{k}={v}" for k, v in self.faults.items() if v)
        return (
            f"seed={self.seed} duration={self.duration_s:.0f}s ops={self.ops} "
            f"faults: {faults or 'none'}; convergence after heal {conv}; "
            f"acked writes lost in failure windows {len(self.verdict.lost_in_window)} "
            f"(on {self.verdict.keys_lost_newest} keys); "
            f"application reads by region {self.reads_by_region}; "
            f"reads excused {self.verdict.reads_excused}; keys checked "
            f"{self.verdict.keys_checked}, reads checked {self.verdict.reads_checked}; "
            f"bad records {self.bad_records}, dead letters {self.dead_letters}; "
            f"violations {len(self.verdict.violations)}; problems {len(self.problems)}"
        )


def run_seed(
    seed: int,
    duration_s: float,
    base: Path,
    kafka: KafkaBroker,
    redis_factory: RedisFactory,
    *,
    kinds: tuple[str, ...] = KINDS,
) -> SeedResult:
    """Run one seed end to end; never raises for a violation (they are in the result)."""
    result = SeedResult(seed, duration_s)
    rng = random.Random(f"{seed}:harness")
    history = History()
    names = REGIONS
    clocks = {n: base / "clock" / f"{n}.offset" for n in names}
    for path in clocks.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("0\n")
    with (
        kafka_links(kafka, names, seed) as links,
        running_regions(
            base,
            kafka,
            redis_factory,
            names=names,
            redis_config=CAPTURE_GUARD,
            daemon_env={n: {FAKE_OFFSET_ENV: str(clocks[n])} for n in names},
            region_overrides=through_links(links),
        ) as regions,
    ):
        regions.wait_status("consistent", timeout_s=120)
        home = regions.names[0]
        with TcpProxy(regions.servers[home].port, seed=seed) as proxy:
            config = ClientConfig(
                regions=(
                    RegionConfig(name=home, url=proxy.url),
                    *(RegionConfig(name=n, url=regions.servers[n].url) for n in regions.names[1:]),
                ),
                policy=POLICY,
                client_name=f"faults-{seed}",
            )
            with FailoverClient(config) as client:
                ports = {n: s.port for n, s in regions.servers.items()}
                workload = Workload(ports, client, history, seed=seed, duration_s=duration_s)
                nemesis = Nemesis(
                    regions,
                    kafka,
                    proxy,
                    home,
                    seed=seed,
                    backups=base / "backups",
                    kinds=kinds,
                    kafka_links=links,
                    clock_files=clocks,
                )
                workload.start()
                try:
                    wait_for(lambda: len(history.ops) > 200, 60, "the workload to start", 0.1)
                    nemesis.take_backups()
                    nemesis.start()
                    deadline = time.monotonic() + duration_s
                    inject_at = [deadline - duration_s * f for f in (0.66, 0.33)]
                    while time.monotonic() < deadline:
                        if inject_at and time.monotonic() >= inject_at[0]:
                            try:
                                result.bad_records += badinput.inject(regions, rng)
                                inject_at.pop(0)
                            except KafkaError:  # the broker is frozen: again in a second
                                inject_at[0] = time.monotonic() + 1.0
                        time.sleep(0.1)
                finally:
                    nemesis.stop()
                    workload.stop()
            healed_at = time.monotonic()
        result.problems += [f"nemesis: {e}" for e in nemesis.log.errors]
        result.problems += [f"workload: {c}" for c in workload.crashes()]
        result.faults = nemesis.log.by_kind()
        result.ops = history.counts()
        for op in history.reads():
            result.reads_by_region[op.region] = result.reads_by_region.get(op.region, 0) + 1
        try:
            regions.wait_status("consistent", timeout_s=HEAL_TIMEOUT_S)
            regions.wait_converged(timeout_s=HEAL_TIMEOUT_S)
            result.convergence_s = time.monotonic() - healed_at
        except TimeoutError as exc:
            statuses = {n: _status(d) for n, d in regions.daemons.items()}
            result.verdict.violations.append(
                Violation("converges", f"not healed {HEAL_TIMEOUT_S:.0f}s after: {exc}; {statuses}")
            )
        at_ms = time.time_ns() // 1_000_000
        snapshots = regions.snapshots()
        verdict = check(
            history, nemesis.log.faults, snapshots, at_ms, window_s=WINDOW_S, after_s=AFTER_S
        )
        verdict.violations = result.verdict.violations + verdict.violations
        result.verdict = verdict
        forged = badinput.forged_keys(snapshots)
        if forged:
            verdict.violations.append(Violation("untouched", f"forged values applied: {forged}"))
        result.dead_letters = badinput.dead_letters(regions)
        if result.dead_letters < result.bad_records:
            verdict.violations.append(
                Violation(
                    "untouched",
                    f"{result.bad_records} bad records, only {result.dead_letters} dead letters",
                )
            )
    result.problems += [v.render(seed) for v in result.verdict.violations]
    # Every seed's, not only a failed one's: writes lost inside failure windows are not
    # violations, and are analysed from it too.
    _dump(base / "history.txt", history, nemesis.log.faults, result.verdict.lost_in_window)
    if result.problems:
        result.problems.append(f"history and faults of seed {seed}: {base / 'history.txt'}")
    return result


def _dump(path: Path, history: History, faults: list[FaultRecord], lost: list[Op]) -> None:
    """Every fault, operation and write lost inside a failure window, one per line."""
    with path.open("w") as out:
        for fault in faults:
            out.write("fault " + fault.describe() + "\n")
        for op in history.ops:
            out.write("op " + op.describe() + "\n")
        for op in lost:
            out.write("lost " + op.describe() + "\n")


def _status(daemon: object) -> str:
    try:
        return str(daemon.get("/status")["status"])  # type: ignore[attr-defined]
    except Exception as exc:
        return repr(exc)
