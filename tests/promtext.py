"""Reading samples out of a daemon's Prometheus text exposition, for assertions: the one
parser of it in the tests."""

from __future__ import annotations

import re
from collections.abc import Iterator

from devcluster.daemons import DaemonProcess

_SAMPLE = re.compile(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)(?: \d+)?")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Every sample of an exposition: (name, labels, value); comments skipped."""
    for line in text.splitlines():
        match = _SAMPLE.fullmatch(line)
        if match:
            yield match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])


def sample(text: str, name: str, **labels: str) -> float:
    """The first sample of `name` carrying at least these labels (0 when none is)."""
    for found, have, value in samples(text):
        if found == name and labels.items() <= have.items():
            return value
    return 0.0


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """The sample of `name` with exactly these labels (and the daemon's region); 0 when
    the daemon does not export it (yet)."""
    wanted = {"region": daemon.region, **labels}
    for found, have, value in samples(daemon.metrics()):
        if found == name and have == wanted:
            return value
    return 0.0


def metric_sum(daemon: DaemonProcess, name: str) -> float:
    """The sum of every sample of `name`, whatever its labels (0 when none is exported)."""
    return sum(value for found, _, value in samples(daemon.metrics()) if found == name)
