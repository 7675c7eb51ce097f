"""Every metric the dashboard and the alert rules name is one that real daemons and a real
failover client export: names collected from a running daemon's /metrics and a client's
registry after real traffic (so histograms and per-stage series exist)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from reconciler.client import FailoverClient
from reconciler.client.config import ClientConfig, PolicyConfig, RegionConfig
from tests.dashboards import alert_queries, dashboard_queries, metric_names, variable_metrics
from tests.regions import running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

PROMETHEUS_OWN = {"up"}  # written by Prometheus for every target


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def exported(text: str) -> set[str]:
    """Sample names (with _total, _bucket, _sum, _count) in an exposition, including those
    of families declared with no sample yet (a labelled counter such as dead letters by
    reason has none until the first one: the series a query names appears with it)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def test_the_dashboard_and_alerts_name_only_metrics_that_are_exported(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    names: set[str] = set()
    with running_regions(tmp_path, kafka, redis_factory, names=("eu-west", "us-east")) as regions:
        regions.wait_status("consistent")
        client = FailoverClient(
            ClientConfig(
                regions=tuple(
                    RegionConfig(name=n, url=regions.servers[n].url) for n in regions.names
                ),
                policy=PolicyConfig(window_s=2.0),
                client_name="names",
            )
        )
        try:
            for i in range(200):
                client.set(f"n:{i}", i)
            wait_for(lambda: regions.clients["us-east"].exists("n:199"), 30, "replication", 0.1)
            daemon = regions.daemons["us-east"]

            def stages_exported() -> bool:
                return "reconciler_stage_seconds_bucket" in exported(daemon.metrics())

            wait_for(stages_exported, 30, "per-stage histograms on us-east", 0.2)
            for d in regions.daemons.values():
                names |= exported(d.metrics())
            names |= exported(client.metrics.exposition().decode())
        finally:
            client.close()

    used = {
        (source, name)
        for source, expr in [*dashboard_queries(), *alert_queries()]
        for name in metric_names(expr)
    }
    used |= {("dashboard variable", name) for name in variable_metrics()}
    missing = sorted((source, name) for source, name in used if name not in names | PROMETHEUS_OWN)
    assert missing == [], f"not exported by a daemon or a client: {missing}"
    # The check has teeth: both sides were really collected.
    assert "reconciler_peer_up" in names
    assert "reconciler_client_requests_total" in names
