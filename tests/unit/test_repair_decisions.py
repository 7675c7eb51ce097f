"""Anti-entropy decides per key exactly as replication would resolve it; logically equal
states (absent, deleted, expired on both sides) are never repaired; metadata GC never
forgets a tombstone a stale write could still undo."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from reconciler.consistency.antientropy import decide
from reconciler.consistency.reports import KeyDecision, RepairReport, list_reports, load_report
from reconciler.consistency.tombstones import removable
from replication.model.digest import TOMBSTONE_DIGEST
from replication.model.event import Version
from replication.model.hlc import pack
from replication.model.metadata import Meta
from replication.model.resolver import Outcome, resolve
from replication.model.vclock import VectorClock

NOW = 1_800_000_000_000
REGIONS = ["ap-south", "eu-west", "us-east"]


def meta(
    clock: dict[str, int],
    origin: str,
    digest: bytes = b"d" * 16,
    *,
    deleted: bool = False,
    expire: int = 0,
) -> Meta:
    stored = TOMBSTONE_DIGEST if deleted else digest
    return Meta(stored, origin, expire, deleted, VectorClock(clock))


@st.composite
def metas(draw: st.DrawFn) -> Meta:
    clock = draw(st.dictionaries(st.sampled_from(REGIONS), st.integers(1, 5), min_size=1))
    origin = draw(st.sampled_from(REGIONS))
    clock.setdefault(origin, 1)
    digest = draw(st.sampled_from([b"a" * 16, b"b" * 16]))
    return meta(clock, origin, digest, deleted=draw(st.booleans()))


@given(st.none() | metas(), st.none() | metas())
def test_the_winner_of_a_repair_is_the_resolvers_winner(
    mine: Meta | None, theirs: Meta | None
) -> None:
    decision = decide(mine, theirs, NOW)
    if decision is None or mine is None or theirs is None:
        return
    local = Version(mine.clock, mine.origin, mine.digest)
    res = resolve(local, Version(theirs.clock, theirs.origin, theirs.digest))
    if res.outcome is Outcome.APPLIED:
        assert decision.action == "fetch-from-peer"
    elif res.outcome is Outcome.REMOTE_WON:
        assert (decision.action, decision.winner) == ("exchange", "peer")
    elif res.outcome is Outcome.LOCAL_WON:
        assert (decision.action, decision.winner) == ("exchange", "local")
    else:
        assert decision.action in ("ship-to-peer", "exchange")


def test_logically_equal_states_need_no_repair() -> None:
    live = meta({"eu-west": 3}, "eu-west")
    gone = meta({"eu-west": 4}, "eu-west", deleted=True)
    expired = meta({"eu-west": 3}, "eu-west", expire=NOW - 1)
    assert decide(live, live, NOW) is None
    assert decide(None, gone, NOW) is None  # never seen vs deleted: both absent
    assert decide(expired, None, NOW) is None
    assert decide(gone, gone, NOW) is None
    assert decide(None, live, NOW) is not None
    assert decide(live, gone, NOW).action == "fetch-from-peer"  # type: ignore[union-attr]
    assert decide(gone, live, NOW).action == "ship-to-peer"  # type: ignore[union-attr]


def test_a_tombstone_is_kept_until_its_origins_frontier_passes_it_and_min_age_passed() -> None:
    written = NOW - 3_600_000
    tomb = meta({"eu-west": pack(written)}, "eu-west", deleted=True)
    kw = {"min_age_ms": 600_000, "horizon_ms": 86_400_000}
    assert not removable(tomb, NOW, safe_before={}, **kw)  # no frontier for its origin
    assert not removable(tomb, NOW, safe_before={"eu-west": written}, **kw)  # not past it
    # Another region's frontier says nothing about eu-west's deletes (another clock).
    assert not removable(tomb, NOW, safe_before={"us-east": NOW}, **kw)
    assert removable(tomb, NOW, safe_before={"eu-west": written + 1}, **kw)
    young = meta({"eu-west": pack(NOW - 1000)}, "eu-west", deleted=True)
    assert not removable(young, NOW, safe_before={"eu-west": NOW}, **kw)  # min age
    ancient = meta({"eu-west": pack(NOW - 2 * 86_400_000)}, "eu-west", deleted=True)
    assert removable(ancient, NOW, safe_before={}, **kw)  # past the horizon
    expired = meta({"eu-west": 5}, "eu-west", expire=NOW - 700_000)
    assert removable(expired, NOW, safe_before={}, **kw)
    assert not removable(meta({"eu-west": 5}, "eu-west"), NOW, safe_before={"eu-west": NOW}, **kw)


def test_reports_round_trip_through_json_and_render_markdown(tmp_path: Path) -> None:
    report = RepairReport.new("eu-west", "us-east", "operator command", "repair")
    report.add_decision(KeyDecision(0, "k|1", "fetch-from-peer", "peer", "why", None, {"x": 1}))
    report.finish("ok")
    report.write(tmp_path)
    loaded = load_report(tmp_path, report.id)
    assert loaded == report
    assert [r.id for r in list_reports(tmp_path)] == [report.id]
    text = (tmp_path / f"{report.id}.md").read_text()
    assert "`k\\|1`" in text
    assert "keys differing: 1" in text
