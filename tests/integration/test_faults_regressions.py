"""Regressions for bugs the fault suite (tests/faults) found, each named after the invariant
it broke, reproduced with the fault that exposed it on real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster.daemons import wait_for
from tests.regions import Regions, key_state

pytestmark = pytest.mark.integration


def test_regions_identical_when_a_restored_peer_holds_an_older_live_version_of_an_expired_key(
    regions: Regions, tmp_path: Path
) -> None:
    """Fault suite seed 3 (Redis restarts only): us-east, restored from a backup taken before
    a newer version arrived, held the older live value; the newer one had expired in the
    other regions. Anti-entropy found the key different and decided the peer's clock
    dominates, but the peer shipped nothing for an expired key: us-east kept the old value
    for good, while every daemon reported `consistent`."""
    west, east = regions.clients["eu-west"], regions.clients["us-east"]
    west.set("k", "old")
    wait_for(lambda: east.get("k") == b"old", 30, "the old value in us-east")
    backup = regions.servers["us-east"].snapshot(tmp_path / "us-east-before.rdb")
    west.set("k", "new", px=2_500)
    wait_for(lambda: east.get("k") == b"new", 30, "the new value in us-east")
    wait_for(
        lambda: all(c.exists("k") == 0 for c in regions.clients.values()),
        30,
        "the new value to expire everywhere",
    )

    regions.servers["us-east"].restart(from_snapshot=backup)
    assert east.get("k") == b"old"  # the backup's older, live version

    # The daemon notices the restart, repairs with its peers and says consistent; the
    # regions must then hold the same data: the expiry (a newer version) wins everywhere.
    wait_for(lambda: key_state(east, b"k") is None, 60, "us-east to drop the older version")
    regions.wait_status("consistent", 60)
    assert regions.converged()
