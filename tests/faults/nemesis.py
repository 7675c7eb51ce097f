"""The seeded nemesis: overlapping faults on real processes and a real TCP proxy, each
recorded with its kind, target and interval (the failure windows the checker needs).

Kinds (a target carries one fault at a time, at most `max_concurrent` at once):
``daemon-kill9`` (SIGKILL the region's daemon, start it again), ``daemon-pause``
(SIGSTOP/SIGCONT), ``redis-kill-data`` / ``redis-kill-empty`` / ``redis-kill-older-rdb``
(SIGKILL the region's Redis, restart it with its data, empty, or from an RDB taken earlier
in the run), ``broker-pause`` (SIGSTOP the Kafka broker), ``client-cut`` / ``client-blackhole``
(the application's path to its home region resets / swallows everything) and
``client-slow`` (added latency on that path), ``kafka-cut`` / ``kafka-blackhole`` (the
region's daemon's path to the broker, a proxy in front of its own listener, resets /
swallows everything: the region keeps taking writes and cannot ship or apply),
``clock-skew`` (the region's daemon's wall clock runs 1 to 5 s ahead or behind, through
the fake offset of replication/clock.py; the Redis keeps the host's clock).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from devcluster import KafkaBroker
from tests.regions import Regions
from tests.tcpproxy import Fault, TcpProxy

KINDS = (
    "daemon-kill9",
    "daemon-pause",
    "redis-kill-data",
    "redis-kill-empty",
    "redis-kill-older-rdb",
    "broker-pause",
    "client-cut",
    "client-blackhole",
    "client-slow",
    "kafka-cut",
    "kafka-blackhole",
    "clock-skew",
)
# Faults after which writes acknowledged shortly before may be gone from their region.
DATA_LOSS_KINDS = ("redis-kill-data", "redis-kill-empty", "redis-kill-older-rdb")
# Restarted with data from a copy (its own AOF, an older RDB): until its daemon captures
# again, what the Redis takes has no date the daemon can know (docs/capture.md).
RESTORED_KINDS = ("redis-kill-data", "redis-kill-older-rdb")
# Faults during which a region's writes do not reach the others.
SHIPPING_KINDS = (
    "daemon-kill9",
    "daemon-pause",
    "broker-pause",
    "kafka-cut",
    "kafka-blackhole",
    *DATA_LOSS_KINDS,
)
# Faults on one region's own resources (its daemon, its Redis, its path to Kafka).
REGION_KINDS = ("daemon", "redis", "kafka", "clock")


@dataclass
class FaultRecord:
    kind: str
    target: str  # a region, "broker" or "client"
    start: float  # monotonic: the fault began
    end: float = 0.0  # monotonic: healed (process answering again / proxy clean)
    detail: str = ""  # what the fault occupies ("redis:eu-west"): one fault at a time
    note: str = ""  # how (a clock skew's size)

    def describe(self) -> str:
        return (
            f"{self.kind}({self.target}) [{self.start:.3f}..{self.end:.3f}] {self.detail}"
            f"{' ' + self.note if self.note else ''}"
        )


@dataclass
class _Active:
    record: FaultRecord
    heal_at: float


@dataclass
class NemesisLog:
    faults: list[FaultRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def by_kind(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for fault in self.faults:
            out[fault.kind] += 1
        return out


class Nemesis(threading.Thread):
    """Runs faults until `stop()`; then heals every fault still in force."""

    def __init__(
        self,
        regions: Regions,
        kafka: KafkaBroker,
        proxy: TcpProxy,
        home: str,
        *,
        seed: int,
        backups: Path,
        kinds: tuple[str, ...] = KINDS,
        kafka_links: dict[str, TcpProxy] | None = None,
        clock_files: dict[str, Path] | None = None,
        max_concurrent: int = 2,
        gap_s: tuple[float, float] = (0.5, 2.5),
        length_s: tuple[float, float] = (2.0, 7.0),
    ) -> None:
        super().__init__(name="faults-nemesis", daemon=True)
        self.regions = regions
        self.kafka = kafka
        self.proxy = proxy
        self.home = home
        self.rng = random.Random(f"{seed}:nemesis")
        self.backups = backups
        self.kinds = kinds
        self.kafka_links = kafka_links or {}
        self.clock_files = clock_files or {}
        if "clock-skew" in kinds and set(self.clock_files) != set(regions.names):
            raise ValueError("clock-skew needs a fake clock offset file per region's daemon")
        if any(k.startswith("kafka-") for k in kinds) and set(self.kafka_links) != set(
            regions.names
        ):
            raise ValueError("kafka-cut and kafka-blackhole need a Kafka proxy per region")
        self.max_concurrent = max_concurrent
        self.gap_s = gap_s
        self.length_s = length_s
        self.log = NemesisLog()
        self._halt = threading.Event()
        self._active: list[_Active] = []
        self._snapshots: dict[str, Path] = {}
        self._deck: list[str] = []

    def take_backups(self) -> None:
        """An RDB of every region now, for later `redis-kill-older-rdb` faults."""
        for name, server in self.regions.servers.items():
            self._snapshots[name] = server.snapshot(self.backups / f"{name}.rdb")

    def run(self) -> None:
        try:
            next_at = time.monotonic() + self.rng.uniform(*self.gap_s)
            while not self._halt.is_set():
                now = time.monotonic()
                for active in [a for a in self._active if a.heal_at <= now]:
                    if active in self._active:  # not healed already, with a daemon it held
                        self._heal(active)
                if now >= next_at:
                    if len(self._active) < self.max_concurrent:
                        self._inject()
                    next_at = time.monotonic() + self.rng.uniform(*self.gap_s)
                self._halt.wait(0.05)
        except Exception as exc:  # a fault that could not be run: reported, not hidden
            self.log.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            for active in list(self._active):
                if active not in self._active:
                    continue  # healed already, with a daemon-kill9 it held back
                try:
                    self._heal(active)
                except Exception as exc:
                    self.log.errors.append(f"heal {active.record.describe()}: {exc!r}")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=300)

    def _busy(self) -> set[str]:
        return {a.record.detail for a in self._active}

    def _targets(self, kind: str) -> list[str]:
        """Where `kind` can run now (a target carries one fault at a time)."""
        busy = self._busy()
        if kind.startswith(REGION_KINDS):
            return [r for r in self.regions.names if f"{kind[:5]}:{r}" not in busy]
        target = "broker" if kind == "broker-pause" else "client"
        return [] if target in busy else [target]

    def _inject(self) -> None:
        # A seeded deck: every kind comes once (in a shuffled order) before any repeats,
        # so a short run still sees each; a kind whose target is busy waits its turn.
        if not self._deck:
            self._deck = list(self.kinds)
            self.rng.shuffle(self._deck)
        for kind in list(self._deck):
            targets = self._targets(kind)
            if targets:
                self._deck.remove(kind)
                break
        else:
            return
        target = self.rng.choice(targets)
        length = self.rng.uniform(*self.length_s)
        record = FaultRecord(kind, target, time.monotonic())
        record.detail = f"{kind[:5]}:{target}" if kind.startswith(REGION_KINDS) else target
        self._start(record)
        self._active.append(_Active(record, time.monotonic() + length))
        self.log.faults.append(record)

    def _start(self, record: FaultRecord) -> None:
        kind, target = record.kind, record.target
        if kind == "daemon-kill9":
            self.regions.daemons[target].kill9()
        elif kind == "daemon-pause":
            self.regions.daemons[target].pause()
        elif kind in DATA_LOSS_KINDS:
            self.regions.servers[target].kill9()
        elif kind == "broker-pause":
            self.kafka.pause()
        elif kind == "client-cut":
            self.proxy.set_fault(Fault.cut_off())
        elif kind == "client-blackhole":
            self.proxy.set_fault(Fault.blackhole())
            self.proxy.reset_all()  # connections already open join the black hole
        elif kind == "client-slow":
            self.proxy.set_fault(Fault.delay(self.rng.uniform(50, 400)))
        elif kind == "clock-skew":
            skew_ms = self.rng.choice((-1, 1)) * self.rng.randrange(1_000, 5_001)
            self.clock_files[target].write_text(f"{skew_ms}\n")
            record.note = f"{skew_ms:+d}ms"
        elif kind == "kafka-cut":
            self.kafka_links[target].set_fault(Fault.cut_off())
        elif kind == "kafka-blackhole":
            link = self.kafka_links[target]
            link.set_fault(Fault.blackhole())
            link.reset_all()  # open connections join the black hole

    def _heal(self, active: _Active) -> None:
        self._active.remove(active)
        record = active.record
        kind, target = record.kind, record.target
        if kind == "daemon-kill9":
            # A daemon reports healthy only once it reaches its Redis and the broker: heal
            # those first (start() would otherwise wait for them to its timeout).
            needs = (f"redis:{target}", f"kafka:{target}", "broker")
            for other in [a for a in self._active if a.record.detail in needs]:
                self._heal(other)
            self.regions.daemons[target].start(wait_s=120)
        elif kind == "daemon-pause":
            self.regions.daemons[target].resume()
        elif kind == "redis-kill-data":
            self.regions.servers[target].start()
        elif kind == "redis-kill-empty":
            server = self.regions.servers[target]
            server.wipe_data()
            server.start()
        elif kind == "redis-kill-older-rdb":
            # Already dead: restart() only replaces the files and starts it.
            self.regions.servers[target].restart(from_snapshot=self._snapshots[target])
        elif kind == "broker-pause":
            self.kafka.resume()
        elif kind == "clock-skew":
            self.clock_files[target].write_text("0\n")
        elif kind.startswith("kafka-"):
            link = self.kafka_links[target]
            link.set_fault(Fault.none())
            if kind == "kafka-blackhole":
                # The proxy dropped what it swallowed, which a real partition does not do
                # (TCP delivers it once the link is back): those connections are broken
                # streams that only a client timeout would end. Reset them.
                link.reset_all()
        else:
            self.proxy.set_fault(Fault.none())
        record.end = time.monotonic()
