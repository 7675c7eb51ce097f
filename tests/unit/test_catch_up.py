"""`consistent` waits for the applier to catch up with the peers' changes, measured on this
daemon's own clock: end offsets sampled at S are covered once they are all applied."""

from __future__ import annotations

from reconciler.consistency.catchup import CatchUp
from reconciler.service.regionstate import RegionState, Status


def test_through_is_the_newest_sample_the_applied_offsets_cover() -> None:
    catch_up = CatchUp()
    assert catch_up.lag_ms(1_000) is None
    catch_up.sample(1_000, {"us-east": {0: 10, 1: 5}}, {"us-east": {0: 4, 1: 5}})
    assert catch_up.through_ms is None  # partition 0 is behind
    catch_up.sample(2_000, {"us-east": {0: 20, 1: 5}}, {"us-east": {0: 12, 1: 5}})
    assert catch_up.through_ms == 1_000  # the first sample is covered, the second not
    assert catch_up.lag_ms(2_500) == 1_500
    catch_up.sample(3_000, {"us-east": {0: 20, 1: 6}}, {"us-east": {0: 20, 1: 6}})
    assert catch_up.through_ms == 3_000
    assert catch_up.lag_ms(3_100) == 100


def test_a_partition_never_applied_counts_as_behind() -> None:
    catch_up = CatchUp()
    catch_up.sample(1_000, {"us-east": {0: 3}, "ap-south": {0: 1}}, {"us-east": {0: 3}})
    assert catch_up.through_ms is None


def test_samples_are_bounded_while_the_applier_is_stuck() -> None:
    catch_up = CatchUp(max_samples=8)
    for i in range(1_000):
        catch_up.sample(i, {"us-east": {0: 100 + i}}, {"us-east": {0: 0}})
    assert len(catch_up._samples) == 8
    assert catch_up.through_ms is None


def test_a_verified_region_behind_its_peers_is_repairing_not_consistent() -> None:
    state = RegionState(["us-east"])
    state.start(marker_valid=True, sessions_on_start=False)
    state.peers_alive(["us-east"])
    assert state.status is Status.CONSISTENT
    state.caught_up = False
    assert state.status is Status.REPAIRING
    state.caught_up = True
    assert state.status is Status.CONSISTENT
