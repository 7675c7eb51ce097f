"""The three-region demo. Until the daemon lands it starts the servers and shows them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from devcluster.cluster import describe, start_cluster, stop_cluster


def run_demo() -> int:
    with tempfile.TemporaryDirectory(prefix="reconciler-demo-") as tmp:
        base = Path(tmp)
        state = start_cluster(base)
        try:
            print("started three regions and one Kafka broker:")
            print(describe(state))
        finally:
            stop_cluster(base)
            print("stopped everything")
    return 0
