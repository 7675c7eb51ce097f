"""Metrics: Prometheus exposition, the stream's messages, and the monitor's table."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.client.config import PolicyConfig
from reconciler.client.metrics import ClientMetrics
from reconciler.client.router import Router
from reconciler.client.stream import decode, encode, event_message, snapshot_message
from reconciler.commands.clients import ClientTable
from replication.errors import DecodeError


def busy_router() -> Router:
    router = Router(("eu", "us"), PolicyConfig(min_requests=5, window_s=60.0))
    for _ in range(90):
        router.record_ok(0, 0.0004)
    for _ in range(3):
        router.record_app_error(0, 0.0004)
    for _ in range(7):
        router.record_failure(0, 0.002, "test")  # 7/100 < 0.5: no failover
    return router


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_prometheus_exposition_carries_requests_errors_rate_latency_and_active() -> None:
    metrics = ClientMetrics("app@h:1/1", busy_router())
    try:
        values = samples(metrics.exposition())
    finally:
        metrics.close()
    eu = (("client_id", "app@h:1/1"), ("region", "eu"))
    assert values["reconciler_client_requests_total", eu] == 100
    assert values["reconciler_client_failures_total", eu] == 7
    assert values["reconciler_client_app_errors_total", eu] == 3
    assert values["reconciler_client_error_rate", eu] == pytest.approx(0.07)
    assert values["reconciler_client_active_region", eu] == 1
    us = (("client_id", "app@h:1/1"), ("region", "us"))
    assert values["reconciler_client_active_region", us] == 0
    assert values["reconciler_client_region_healthy", us] == 1
    p50 = values["reconciler_client_latency_seconds", tuple(sorted((*eu, ("quantile", "0.5"))))]
    p99 = values["reconciler_client_latency_seconds", tuple(sorted((*eu, ("quantile", "0.99"))))]
    assert 0.0004 <= p50 < 0.0005
    assert 0.002 <= p99 < 0.0025
    le = tuple(sorted((*eu, ("le", "+Inf"))))
    assert values["reconciler_client_command_duration_seconds_bucket", le] == 100
    assert values["reconciler_client_failovers_total", (("client_id", "app@h:1/1"),)] == 0


def test_failover_events_are_counted_by_kind() -> None:
    router = Router(("eu", "us"), PolicyConfig(min_requests=5))
    metrics = ClientMetrics("c", router)
    for _ in range(5):
        router.record_failure(0, 0.001, "refused")
    values = samples(metrics.exposition())
    metrics.close()
    assert values["reconciler_client_failovers_total", (("client_id", "c"),)] == 1
    key = (("client_id", "c"), ("kind", "failover"), ("region", "eu"))
    assert values["reconciler_client_events_total", key] == 1


def test_metrics_are_served_over_http_only_when_asked_and_stop_on_close() -> None:
    metrics = ClientMetrics("c", busy_router())
    port = metrics.serve(0)
    assert metrics.serve(0) == port  # one endpoint per client
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read()
    assert b"reconciler_client_requests_total" in body
    metrics.close()
    metrics.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_stream_messages_round_trip_and_carry_the_window() -> None:
    router = busy_router()
    message = decode(encode(snapshot_message("c1", router.snapshot(), at_ms=5)))
    assert message["type"] == "snapshot"
    assert message["active"] == "eu"
    assert message["home"] == "eu"
    eu = message["regions"][0]
    assert (eu["requests"], eu["failures"], eu["app_errors"]) == (100, 7, 3)
    assert eu["error_rate"] == pytest.approx(0.07)
    assert eu["p50_ms"] == pytest.approx(0.5, abs=0.1)
    for _ in range(100):
        router.record_failure(0, 0.001, "refused")
    event = router.snapshot().events[-1]
    decoded = decode(encode(event_message("c1", event)))
    assert (decoded["kind"], decoded["from_region"], decoded["to_region"]) == (
        "failover",
        "eu",
        "us",
    )


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({"schema": 99, "type": "snapshot"}).encode(),
        json.dumps({"schema": 1, "type": "gossip", "client_id": "c", "at_ms": 1}).encode(),
        json.dumps({"schema": 1, "type": "snapshot", "client_id": "c", "at_ms": 1}).encode(),
        json.dumps({"schema": 1, "type": "event", "client_id": "c", "at_ms": "x"}).encode(),
    ],
)
def test_undecodable_records_are_rejected_with_a_reason(raw: bytes | None) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


def test_the_monitor_table_shows_each_client_its_active_region_and_last_event() -> None:
    router = busy_router()
    table = ClientTable(stale_s=10.0)
    table.apply_raw(encode(snapshot_message("b-client", router.snapshot(), at_ms=1_000)))
    for _ in range(100):
        router.record_failure(0, 0.001, "refused")
    for event in router.snapshot().events:
        table.apply_raw(encode(event_message("a-client", event)))
    table.apply_raw(encode(snapshot_message("a-client", router.snapshot(), at_ms=2_000)))
    table.apply_raw(encode(snapshot_message("a-client", busy_router().snapshot(), at_ms=1_500)))
    table.apply_raw(b"garbage")
    lines = table.render(now_ms=3_000).splitlines()
    assert lines[0].split()[:3] == ["CLIENT", "HOME", "ACTIVE"]
    a_line, b_line = lines[1], lines[2]
    assert a_line.startswith("a-client")
    assert b_line.startswith("b-client")
    assert a_line.split()[2] == "us"
    assert "*" in a_line
    assert "failover eu->us" in a_line
    assert b_line.split()[2] == "eu"
    assert lines[-1] == "2 client(s), 1 undecodable record(s) skipped"
    stale = table.render(now_ms=60_000)
    assert "(stale)" in stale


def test_clients_sharing_a_registry_report_side_by_side_until_closed() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    shared = CollectorRegistry()
    first = ClientMetrics("first", busy_router(), shared)
    second = ClientMetrics("second", busy_router(), shared)
    text = generate_latest(shared).decode()
    assert 'client_id="first"' in text
    assert 'client_id="second"' in text
    first.close()
    text = generate_latest(shared).decode()
    assert 'client_id="first"' not in text
    assert 'client_id="second"' in text
    second.close()
