"""The shipped Grafana dashboard: valid JSON, every query parsed by two real PromQL
parsers (promql-parser's syntax tree, and Prometheus's own through `promtool check rules`
on a rule file made of the queries). That every metric it names exists is checked against
real daemons and a real client in tests/integration/test_metric_names.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.dashboards import dashboard, dashboard_queries, metric_names, panels


def test_the_dashboard_is_grafana_json_with_unique_panel_ids_and_queries() -> None:
    data = dashboard()
    assert data["uid"]
    assert data["title"]
    ids = [p["id"] for p in panels(data)]
    assert len(ids) == len(set(ids))
    for panel in panels(data):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["type"] == "prometheus"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_dashboard_covers_what_an_operator_looks_at() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    for needed in (
        "reconciler_status",  # regions
        "reconciler_peer_lag_records",  # lag per peer
        "reconciler_stage_seconds_bucket",  # lag per stage
        "reconciler_apply_events_total",  # apply outcomes
        "reconciler_conflicts_won_total",
        "reconciler_antientropy_sessions_total",  # repairs
        "reconciler_client_failovers_total",  # client connectivity
        "reconciler_client_failures_total",  # error rate per region
        "reconciler_client_error_rate",  # per application instance
    ):
        assert needed in used, needed


def test_every_query_parses_and_names_its_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    for title, expr in queries:
        assert metric_names(expr), (title, expr)  # parse error or no selector: fails here


def test_prometheus_itself_accepts_every_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    tool = shutil.which("promtool")
    assert tool is not None, "promtool missing: run `make bootstrap` (Debian's prometheus)"
    result = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
