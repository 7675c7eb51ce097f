"""The PromQL the shipped dashboard and alert rules use, for the tests that check it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

OBSERVABILITY = Path(__file__).resolve().parents[1] / "observability"
DASHBOARD = OBSERVABILITY / "dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yml"

# What Grafana substitutes before sending a query, with a value of the right kind.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])


def substituted(expr: str, variables: list[str]) -> str:
    """`expr` as Grafana would send it: dashboard variables become a regex value (they are
    used only inside `=~` matchers), Grafana's interval variables a duration."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", ".*")
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as sent) for every target of every panel."""
    data = dashboard()
    variables = [v["name"] for v in data["templating"]["list"]]
    return [
        (panel["title"], substituted(target["expr"], variables))
        for panel in panels(data)
        for target in panel.get("targets", [])
    ]


def variable_metrics() -> list[str]:
    """The metric named by each `label_values(metric, label)` variable query."""
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"]
        inner = query.removeprefix("label_values(").removesuffix(")")
        metric, _, _label = inner.partition(",")
        out.append(metric.strip())
    return out


def alert_queries() -> list[tuple[str, str]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in data["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names selected in `expr`, read from its syntax tree (promql-parser)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name is None:
                raise AssertionError(f"selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names
