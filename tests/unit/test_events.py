"""State-change log lines: stable event names, one parseable line each."""

from __future__ import annotations

import json
import logging
import shlex

import pytest

from reconciler.events import EVENTS, REGION_STATUS, format_event, log_event
from reconciler.service.logs import JsonFormatter


def test_an_event_line_starts_with_its_name_and_splits_into_key_value_pairs() -> None:
    line = format_event(
        REGION_STATUS, {"from_": "recovering", "to": "repairing", "reason": 'gap "full" x=1'}
    )
    assert line.startswith("event=region.status from=recovering to=repairing ")
    # Values with spaces, quotes or '=' are quoted, so the line splits back as logged.
    pairs = dict(part.split("=", 1) for part in shlex.split(line))
    assert pairs == {
        "event": "region.status",
        "from": "recovering",
        "to": "repairing",
        "reason": 'gap "full" x=1',
    }


def test_event_names_are_unique_and_dotted() -> None:
    assert len(set(EVENTS)) == len(EVENTS)
    for name in EVENTS:
        kind, _, what = name.partition(".")
        assert kind in ("region", "peer", "client")
        assert what


def test_json_lines_carry_the_event_and_its_fields_as_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.events")
    with caplog.at_level(logging.INFO, logger="test.events"):
        log_event(logger, REGION_STATUS, from_="repairing", to="consistent", lag=3)
    (record,) = caplog.records
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "event=region.status from=repairing to=consistent lag=3"
    assert entry["event"] == "region.status"
    assert (entry["from"], entry["to"], entry["lag"]) == ("repairing", "consistent", 3)


def test_every_event_name_is_in_the_readme_table() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in EVENTS:
        assert f"| `{name}` |" in readme, name
