"""Reading one sample out of a daemon's Prometheus text exposition, for assertions."""

from __future__ import annotations

import re

from devcluster.daemons import DaemonProcess

_SAMPLE = re.compile(r"(\w+)\{(.*)\} (\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """The sample of `name` with exactly these labels (and the daemon's region); 0 when
    the daemon does not export it (yet)."""
    wanted = {"region": daemon.region, **labels}
    for line in daemon.metrics().splitlines():
        match = _SAMPLE.fullmatch(line)
        if match and match[1] == name and dict(_LABEL.findall(match[2])) == wanted:
            return float(match[3])
    return 0.0


def metric_sum(daemon: DaemonProcess, name: str) -> float:
    """The sum of every sample of `name`, whatever its labels (0 when none is exported)."""
    total = 0.0
    for line in daemon.metrics().splitlines():
        match = _SAMPLE.fullmatch(line)
        if match and match[1] == name:
            total += float(match[3])
    return total
