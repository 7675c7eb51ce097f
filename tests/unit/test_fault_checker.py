"""The fault suite's checker on hand-made histories: it must see each kind of violation
(a checker that cannot fail proves nothing) and excuse only what a failure window explains."""

from __future__ import annotations

from tests.faults.checker import Windows, check, check_identical
from tests.faults.history import ACKED, Op
from tests.faults.nemesis import FaultRecord

NOW_MS = 1_000_000_000


def write(i: int, region: str, key: bytes, effect: object, start: float, client: str = "") -> Op:
    op = Op(i, region, client or f"writer-{region}", "string", start, NOW_MS + int(start * 1000))
    op.effects = {key: effect}  # type: ignore[dict-item]
    op.end, op.end_wall_ms, op.outcome = start + 0.01, op.start_wall_ms + 10, ACKED
    return op


def read(i: int, region: str, key: bytes, result: bytes | None, start: float) -> Op:
    op = Op(i, region, "application", "read", start, NOW_MS + int(start * 1000), key=key)
    op.end, op.end_wall_ms, op.outcome, op.result = (
        start + 0.01,
        op.start_wall_ms + 10,
        ACKED,
        result,
    )
    return op


class FakeHistory:
    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops

    def writes(self) -> list[Op]:
        return [o for o in self.ops if o.effects]

    def reads(self) -> list[Op]:
        return [o for o in self.ops if o.kind == "read"]


def run(ops: list[Op], final: dict[bytes, object], faults: list[FaultRecord] | None = None):  # type: ignore[no-untyped-def]
    snaps = {"eu-west": final, "us-east": dict(final)}
    return check(FakeHistory(ops), faults or [], snaps, NOW_MS + 100_000, window_s=5, after_s=15)  # type: ignore[arg-type]


K = b"own:eu-west:1"


def test_the_last_acknowledged_write_of_a_single_writer_key_must_win() -> None:
    ops = [
        write(0, "eu-west", K, ("string", b"a", None), 1),
        write(1, "eu-west", K, ("string", b"b", None), 2),
    ]
    assert run(ops, {K: ("string", b"b", 0)}).violations == []
    bad = run(ops, {K: ("string", b"a", 0)}).violations
    assert [v.invariant for v in bad] == ["no-lost-winner"]


def test_a_deleted_key_that_comes_back_is_a_resurrection() -> None:
    ops = [write(0, "eu-west", K, ("string", b"a", None), 1), write(1, "eu-west", K, None, 2)]
    assert run(ops, {}).violations == []
    assert [v.invariant for v in run(ops, {K: ("string", b"a", 0)}).violations] == [
        "no-resurrection"
    ]


def test_a_write_lost_inside_a_kill_window_is_counted_not_a_violation() -> None:
    ops = [
        write(0, "eu-west", K, ("string", b"a", None), 1),
        write(1, "eu-west", K, ("string", b"b", None), 20),
    ]
    kill = FaultRecord("redis-kill-empty", "eu-west", 22.0, 25.0)
    verdict = run(ops, {K: ("string", b"a", 0)}, [kill])
    assert verdict.violations == []
    assert [o.index for o in verdict.lost_in_window] == [1]
    assert verdict.keys_lost_newest == 1
    # The same loss with the kill long after the write: a violation.
    late = FaultRecord("redis-kill-empty", "eu-west", 40.0, 45.0)
    assert run(ops, {K: ("string", b"a", 0)}, [late]).violations


def test_writes_superseded_by_a_lost_one_count_as_lost_on_one_key() -> None:
    """Three writes lost with one kill, on one key: three lost writes, one key whose
    newest acknowledged write is gone (the soak's per-seed loss counts mostly the first
    kind)."""
    ops = [write(0, "eu-west", K, ("string", b"a", None), 1)] + [
        write(i, "eu-west", K, ("string", b"x%d" % i, None), 19 + i) for i in (1, 2, 3)
    ]
    kill = FaultRecord("redis-kill-empty", "eu-west", 23.0, 25.0)
    verdict = run(ops, {K: ("string", b"a", 0)}, [kill])
    assert verdict.violations == []
    assert sorted(o.index for o in verdict.lost_in_window) == [1, 2, 3]
    assert verdict.keys_lost_newest == 1


def test_a_write_to_a_redis_back_from_a_copy_before_capture_is_counted_only_there() -> None:
    """Made within the window after a Redis came back from an older RDB (or its own AOF),
    before its daemon captured again: dated by the copy's stamp, it may lose to what the
    region shipped after the copy. Counted as lost; after an empty restart (no stamp, such
    a write wins) or later than the window, a violation."""
    ops = [
        write(0, "eu-west", K, ("string", b"a", None), 1),
        write(1, "eu-west", K, ("string", b"b", None), 31),
    ]
    restored = FaultRecord("redis-kill-older-rdb", "eu-west", 25.0, 30.0)
    verdict = run(ops, {K: ("string", b"a", 0)}, [restored])
    assert verdict.violations == []
    assert [o.index for o in verdict.lost_in_window] == [1]
    empty = FaultRecord("redis-kill-empty", "eu-west", 25.0, 30.0)
    assert run(ops, {K: ("string", b"a", 0)}, [empty]).violations
    # Acknowledged while the fault lasted: the restarted Redis took it before the heal.
    healing = FaultRecord("redis-kill-older-rdb", "eu-west", 28.0, 31.5)
    assert run(ops, {K: ("string", b"a", 0)}, [healing]).violations == []
    long_ago = FaultRecord("redis-kill-older-rdb", "eu-west", 15.0, 20.0)
    assert run(ops, {K: ("string", b"a", 0)}, [long_ago]).violations


def test_a_delete_that_found_nothing_after_a_data_loss_is_counted_only_then() -> None:
    """A Redis back without its data answers a delete of a key it lost with 0: nothing is
    captured, and the repair brings the key back. Counted as lost when the region had just
    lost its data; a resurrection otherwise, or when the delete removed something."""
    ops = [write(0, "eu-west", K, ("string", b"a", None), 1), write(1, "eu-west", K, None, 28)]
    ops[1].kind, ops[1].result = "del", 0
    kill = FaultRecord("redis-kill-empty", "eu-west", 20.0, 24.0)
    verdict = run(ops, {K: ("string", b"a", 0)}, [kill])
    assert verdict.violations == []
    assert [o.index for o in verdict.lost_in_window] == [1]
    assert [v.invariant for v in run(ops, {K: ("string", b"a", 0)}).violations] == [
        "no-resurrection"
    ]
    multi = write(2, "eu-west", K, None, 28)  # the same delete inside a MULTI
    multi.kind, multi.effects, multi.result = (
        "multi",
        {b"other": ("string", b"x", None), K: None},
        [True, 0],
    )
    verdict = run([ops[0], multi], {K: ("string", b"a", 0), b"other": ("string", b"x", 0)}, [kill])
    assert verdict.violations == []
    ops[1].result = 1  # it deleted the key: the delete must stay
    assert [v.invariant for v in run(ops, {K: ("string", b"a", 0)}, [kill]).violations] == [
        "no-resurrection"
    ]


def test_a_write_taken_while_its_daemon_was_paused_may_lose_only_then() -> None:
    """Dated from the moment the daemon stopped, a write its Redis took during the pause
    may lose to an older write made elsewhere: counted as lost, a violation otherwise."""
    ops = [
        write(0, "us-east", b"fc:1", ("string", b"old", None), 20, client="application"),
        write(1, "eu-west", b"fc:1", ("string", b"new", None), 22, client="application"),
    ]
    pause = FaultRecord("daemon-pause", "eu-west", 19.0, 23.0)
    verdict = run(ops, {b"fc:1": ("string", b"old", 0)}, [pause])
    assert verdict.violations == []
    assert [o.index for o in verdict.lost_in_window] == [1]
    assert run(ops, {b"fc:1": ("string", b"old", 0)}).violations


def test_an_expired_relative_expiry_allows_the_key_gone() -> None:
    ops = [write(0, "eu-west", K, ("string", b"a", ("rel", 2_000)), 1)]
    assert run(ops, {}).violations == []
    assert run(ops, {K: ("string", b"a", 0)}).violations  # the expiry was dropped


def test_regions_that_differ_are_reported_and_expiries_within_a_second_are_equal() -> None:
    a = {K: ("string", b"a", NOW_MS + 60_000)}
    assert check_identical({"x": a, "y": {K: ("string", b"a", NOW_MS + 60_500)}}, NOW_MS) == []
    assert check_identical({"x": a, "y": {K: ("string", b"a", NOW_MS + 62_000)}}, NOW_MS)
    assert check_identical({"x": a, "y": {}}, NOW_MS)


F = b"fc:0"


def test_a_read_older_than_one_already_read_is_a_violation_unless_replication_explains_it() -> None:
    w1 = write(0, "eu-west", F, ("string", b"0000000001", None), 1, "application")
    w2 = write(1, "eu-west", F, ("string", b"0000000002", None), 2, "application")
    r1 = read(2, "eu-west", F, b"0000000002", 3)
    r2 = read(3, "eu-west", F, b"0000000001", 30)  # same region, long after: stale
    verdict = run([w1, w2, r1, r2], {F: ("string", b"0000000002", 0)})
    assert {v.invariant for v in verdict.violations} == {"monotonic-reads", "no-stale-read"}
    # Read elsewhere right after a failover: asynchronous replication, excused and counted.
    r3 = read(3, "us-east", F, b"0000000001", 3.5)
    verdict = run([w1, w2, r1, r3], {F: ("string", b"0000000002", 0)})
    assert verdict.violations == []
    assert verdict.reads_excused == {"replication-lag-across-failover": 1}


def test_missing_long_after_the_ack_is_a_violation_unless_in_flight_during_a_fault() -> None:
    w1 = write(0, "eu-west", F, ("string", b"0000000001", None), 1, "application")
    r1 = read(1, "us-east", F, None, 10)
    assert [v.invariant for v in run([w1, r1], {F: ("string", b"0000000001", 0)}).violations] == [
        "no-missing-read"
    ]
    paused = FaultRecord("daemon-pause", "eu-west", 0.5, 8.0)
    assert Windows([paused], 5, 15).in_flight(w1, r1) is paused
    assert run([w1, r1], {F: ("string", b"0000000001", 0)}, [paused]).violations == []


def test_a_later_write_of_the_same_client_in_another_region_supersedes_the_earlier_one() -> None:
    """What seed 1 of the soak showed: the application's earlier write in us-east, versioned
    only when that region's daemon came back, beat its later write in eu-west."""
    older = write(0, "us-east", F, ("string", b"0000000294", None), 1, "application")
    newer = write(1, "eu-west", F, ("string", b"0000000391", None), 5, "application")
    assert run([older, newer], {F: ("string", b"0000000391", 0)}).violations == []
    bad = run([older, newer], {F: ("string", b"0000000294", 0)}).violations
    assert [v.invariant for v in bad] == ["no-lost-winner"]


def test_a_stale_read_before_a_later_crash_is_not_excused_by_it() -> None:
    w1 = write(0, "eu-west", F, ("string", b"0000000001", None), 1, "application")
    w2 = write(1, "eu-west", F, ("string", b"0000000002", None), 2, "application")
    r1 = read(2, "eu-west", F, b"0000000002", 3)
    r2 = read(3, "eu-west", F, b"0000000001", 4)
    crash = FaultRecord("redis-kill-empty", "eu-west", 5.0, 8.0)
    verdict = run([w1, w2, r1, r2], {F: ("string", b"0000000002", 0)}, [crash])
    assert [v.invariant for v in verdict.violations] == ["monotonic-reads"]


def test_a_read_the_client_moved_while_in_flight_may_have_been_served_elsewhere() -> None:
    """Soak seed 15: a read sent to eu-west, reset by a cut and resent to another region,
    which had not received eu-west's write (eu-west's daemon was down)."""
    w1 = write(0, "eu-west", F, ("string", b"0000000001", None), 1, "application")
    w2 = write(1, "eu-west", F, ("string", b"0000000002", None), 2, "application")
    r1 = read(2, "eu-west", F, b"0000000002", 3)
    r2 = read(3, "eu-west", F, b"0000000001", 4)
    killed = FaultRecord("daemon-kill9", "eu-west", 1.5, 9.0)
    assert run([w1, w2, r1, r2], {F: ("string", b"0000000002", 0)}, [killed]).violations
    r2.end_region = "us-east"
    verdict = run([w1, w2, r1, r2], {F: ("string", b"0000000002", 0)}, [killed])
    assert verdict.violations == []
    assert verdict.reads_excused == {"in-flight-during-fault": 1}
