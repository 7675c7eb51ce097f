"""Connectivity metrics of one failover client, in Prometheus form.

Nothing is updated per request here: the hot path only bumps the router's time buckets,
and a custom collector turns a :meth:`Router.snapshot` into Prometheus families when
scraped. Each client has its own ``CollectorRegistry`` (every sample also carries a
``client_id`` label, so several clients can share one registry when an application
passes its own). No HTTP server starts unless :meth:`ClientMetrics.serve` is called.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from reconciler.client.router import RegionState, Router, RouterSnapshot

__all__ = ["HISTOGRAM_BOUNDS_S", "ClientMetrics"]

# Fixed bucket bounds, so the exported histogram's series never change shape.
HISTOGRAM_BOUNDS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _RouterCollector(Collector):
    def __init__(self, client_id: str, router: Router) -> None:
        self._client_id = client_id
        self._router = router

    def collect(self) -> Iterator[Any]:
        snap = self._router.snapshot()
        cid = self._client_id
        labels = ["client_id", "region"]

        requests = CounterMetricFamily(
            "reconciler_client_requests",
            "Commands sent to a region (each attempt of a retried command counts).",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "reconciler_client_failures",
            "Commands that failed because of the region (connection, timeout, LOADING, "
            "READONLY, MASTERDOWN, CLUSTERDOWN, OOM); these drive failover.",
            labels=labels,
        )
        app_errors = CounterMetricFamily(
            "reconciler_client_app_errors",
            "Commands answered with the application's own error (WRONGTYPE, syntax...).",
            labels=labels,
        )
        window_requests = GaugeMetricFamily(
            "reconciler_client_window_requests",
            "Commands sent to a region within the sliding window.",
            labels=labels,
        )
        error_rate = GaugeMetricFamily(
            "reconciler_client_error_rate",
            "Failures / requests within the sliding window.",
            labels=labels,
        )
        latency = GaugeMetricFamily(
            "reconciler_client_latency_seconds",
            "Command latency quantile within the sliding window (bucket upper bound).",
            labels=[*labels, "quantile"],
        )
        duration = HistogramMetricFamily(
            "reconciler_client_command_duration_seconds",
            "Command latency since the client started.",
            labels=labels,
        )
        healthy = GaugeMetricFamily(
            "reconciler_client_region_healthy",
            "1 when the region may receive traffic, 0 while it is failed and probed.",
            labels=labels,
        )
        active = GaugeMetricFamily(
            "reconciler_client_active_region",
            "1 for the region that receives new commands, 0 for the others.",
            labels=labels,
        )
        for region in snap.regions:
            key = [cid, region.name]
            stats = region.stats
            requests.add_metric(key, stats.requests_total)
            failures.add_metric(key, stats.failures_total)
            app_errors.add_metric(key, stats.app_errors_total)
            window_requests.add_metric(key, stats.requests)
            error_rate.add_metric(key, stats.error_rate)
            if stats.p50_s is not None and stats.p99_s is not None:
                latency.add_metric([*key, "0.5"], stats.p50_s)
                latency.add_metric([*key, "0.99"], stats.p99_s)
            duration.add_metric(
                key,
                _fixed_buckets(stats.latency_buckets, stats.latency_count_total),
                sum_value=stats.latency_sum_s,
            )
            healthy.add_metric(key, 1.0 if region.state is RegionState.HEALTHY else 0.0)
            active.add_metric(key, 1.0 if region.name == snap.active else 0.0)
        yield from (requests, failures, app_errors, window_requests, error_rate, latency)
        yield from (duration, healthy, active)
        yield from _transitions(cid, snap)


def _transitions(cid: str, snap: RouterSnapshot) -> Iterator[Any]:
    failovers = CounterMetricFamily(
        "reconciler_client_failovers",
        "Times the active region moved away from a failed region.",
        labels=["client_id"],
    )
    failovers.add_metric([cid], snap.failovers)
    failbacks = CounterMetricFamily(
        "reconciler_client_failbacks",
        "Times the active region moved back to a recovered, more preferred region.",
        labels=["client_id"],
    )
    failbacks.add_metric([cid], snap.failbacks)
    away = GaugeMetricFamily(
        "reconciler_client_away_from_home",
        "1 while the active region is not the home region (failed over), else 0.",
        labels=["client_id", "home"],
    )
    away.add_metric([cid, snap.home], 0.0 if snap.active == snap.home else 1.0)
    events = CounterMetricFamily(
        "reconciler_client_events",
        "Failover, failback, region_down and region_up events, by the region concerned.",
        labels=["client_id", "kind", "region"],
    )
    for kind, region, count in snap.event_counts:
        events.add_metric([cid, kind, region], count)
    yield failovers
    yield failbacks
    yield away
    yield events


def _fixed_buckets(
    cumulative: tuple[tuple[float, int], ...], total: int
) -> list[tuple[str, float]]:
    """Re-bucket the fine log histogram onto HISTOGRAM_BOUNDS_S (conservatively upward)."""
    out: list[tuple[str, float]] = []
    position = 0
    count = 0
    for bound in HISTOGRAM_BOUNDS_S:
        while position < len(cumulative) and cumulative[position][0] <= bound:
            count = cumulative[position][1]
            position += 1
        out.append((repr(bound), float(count)))
    out.append(("+Inf", float(total)))
    return out


class ClientMetrics:
    """The Prometheus view of one client: a registry, and an optional HTTP endpoint."""

    def __init__(
        self, client_id: str, router: Router, registry: CollectorRegistry | None = None
    ) -> None:
        self.client_id = client_id
        self.registry = registry if registry is not None else CollectorRegistry()
        self._collector = _RouterCollector(client_id, router)
        self.registry.register(self._collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Expose this client's metrics over HTTP (``/metrics``); returns the bound port.

        Binds loopback by default: exposing metrics beyond the host is a decision for the
        deployment (pass ``addr="0.0.0.0"``). Stopped by the client's ``close``.
        """
        from prometheus_client import start_http_server

        with self._lock:
            if self._server is None:
                self._server, self._thread = start_http_server(
                    port, addr=addr, registry=self.registry
                )
            bound: int = self._server.server_port
            return bound

    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        from prometheus_client import generate_latest

        text: bytes = generate_latest(self.registry)
        return text

    def close(self) -> None:
        """Stop the HTTP endpoint (if any) and leave the registry. Safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            # A shared registry must stop reporting a closed client.
            with contextlib.suppress(KeyError):
                self.registry.unregister(self._collector)
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
