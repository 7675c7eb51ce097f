"""How the demo and the failback test tell an asynchronous-replication loss from a read of
an unrepaired region: only writes acknowledged just before the kill may go missing."""

from __future__ import annotations

from devcluster.workload import IdempotencyLoad, MissingRead

KILL, DEAD, HOME = 100.0, 100.1, 130.0


def load_with(acked: dict[str, float], missing: list[MissingRead]) -> IdempotencyLoad:
    load = IdempotencyLoad(client=None, workers=1)
    worker = load._workers[0]
    worker.acked = [(key, b"v", at) for key, at in acked.items()]
    worker.missing = missing
    return load


def test_a_key_acknowledged_just_before_the_kill_and_gone_everywhere_is_a_counted_loss() -> None:
    load = load_with({"a": 99.9}, [MissingRead("a", 99.9, 104.0, "us-east")])
    verdict = load.judge_failure(set(), killed_at=KILL, dead_at=DEAD, home_again=HOME, window_s=5)
    assert verdict.lost_in_window == ["a"]
    assert verdict.violations == []
    assert verdict.ok


def test_an_older_key_gone_everywhere_is_a_violation() -> None:
    load = load_with({"a": 80.0}, [])
    verdict = load.judge_failure(set(), killed_at=KILL, dead_at=DEAD, home_again=HOME, window_s=5)
    assert verdict.lost_outside_window == ["a"]
    assert not verdict.ok


def test_a_recent_key_read_elsewhere_before_it_arrived_is_asynchronous_not_a_violation() -> None:
    read = MissingRead("a", 98.0, 102.0, "eu-west")
    load = load_with({"a": 98.0}, [read])
    verdict = load.judge_failure({"a"}, killed_at=KILL, dead_at=DEAD, home_again=HOME, window_s=5)
    assert verdict.read_before_arrival == [read]
    assert verdict.ok


def test_a_missing_read_after_failback_is_a_violation_however_recent_the_key() -> None:
    read = MissingRead("a", 99.0, HOME + 1, "eu-west")
    load = load_with({"a": 99.0}, [read])
    verdict = load.judge_failure({"a"}, killed_at=KILL, dead_at=DEAD, home_again=HOME, window_s=5)
    assert verdict.violations == [read]
    assert not verdict.ok


def test_a_missing_read_of_an_old_key_during_the_failover_is_a_violation() -> None:
    read = MissingRead("a", 50.0, 105.0, "us-east")
    load = load_with({"a": 50.0}, [read])
    verdict = load.judge_failure({"a"}, killed_at=KILL, dead_at=DEAD, home_again=HOME, window_s=5)
    assert verdict.violations == [read]
