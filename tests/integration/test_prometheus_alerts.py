"""A real Prometheus server scrapes three real daemons with the shipped alert rules: a
peer's daemon stopped makes the peer-down and daemon-down alerts fire, its return resolves
them. The rules are observability/alerts.yml with every `for:` cut to 2 s (expressions
unchanged), and Prometheus scrapes and evaluates every second."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from devcluster.ports import free_port
from tests.prometheus import PrometheusServer, shortened_rules
from tests.regions import Regions
from tests.servers import RedisFactory, track

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "observability" / "alerts.yml"


def test_peer_down_fires_when_a_peer_daemon_stops_and_resolves_when_it_is_back(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    names = ("eu-west", "us-east", "ap-south")
    # Fixed admin ports: the stopped daemon comes back where Prometheus scrapes it.
    ports = {name: free_port() for name in names}
    regions = Regions(
        tmp_path,
        kafka,
        redis_factory,
        names=names,
        region_overrides={name: {"admin": {"port": port}} for name, port in ports.items()},
    )
    targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    prometheus = PrometheusServer(
        tmp_path / "prometheus",
        {"reconciler": list(targets.values())},
        rules=shortened_rules(RULES, for_s=2),
    )
    track(prometheus)
    try:
        regions.start()
        prometheus.start()
        wait_for(
            lambda: (
                sorted(r["metric"]["instance"] for r in prometheus.query("up == 1"))
                == sorted(targets.values())
            ),
            60,
            "Prometheus to scrape all three daemons",
            0.5,
        )
        regions.wait_status("consistent", timeout_s=90)
        # Start-up (peers not heard yet, regions recovering) may have fired alerts: wait
        # until the healthy cluster has none firing.
        wait_for(
            lambda: (
                not prometheus.alerts("ReconcilerPeerDown")
                and not prometheus.alerts("ReconcilerRegionNotConsistent")
            ),
            60,
            "start-up alerts to resolve",
            0.5,
        )
        assert prometheus.alerts("ReconcilerDaemonDown") == []

        regions.daemons["us-east"].stop()

        def peer_down_fired() -> bool:
            fired = {(a["region"], a["peer"]) for a in prometheus.alerts("ReconcilerPeerDown")}
            return fired == {("eu-west", "us-east"), ("ap-south", "us-east")}

        wait_for(peer_down_fired, 60, "ReconcilerPeerDown for us-east in both peers", 0.5)
        wait_for(
            lambda: (
                [a["instance"] for a in prometheus.alerts("ReconcilerDaemonDown")]
                == [targets["us-east"]]
            ),
            60,
            "ReconcilerDaemonDown for us-east's daemon",
            0.5,
        )
        firing = prometheus.alerts("ReconcilerPeerDown")
        assert all(a["severity"] == "page" and a["job"] == "reconciler" for a in firing)

        regions.daemons["us-east"].start()
        wait_for(
            lambda: (
                not prometheus.alerts("ReconcilerPeerDown")
                and not prometheus.alerts("ReconcilerPeerDown", state="pending")
                and not prometheus.alerts("ReconcilerDaemonDown")
            ),
            90,
            "the alerts to resolve once us-east's daemon is back",
            0.5,
        )
        assert {r["metric"]["peer"] for r in prometheus.query("reconciler_peer_up == 1")} == set(
            names
        )
    finally:
        prometheus.stop()
        regions.stop()
