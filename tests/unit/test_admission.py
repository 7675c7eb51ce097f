"""What a daemon lets in from a verified record: a live record carries only its sender's
writes, repairs may relay any configured region's versions, clocks name configured regions
and stay within the drift bound, databases are the replicated ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from replication.model.admission import QUARANTINE_REASON, Admission
from replication.model.digest import value_digest
from replication.model.event import ChangeEvent
from replication.model.hlc import ceiling, pack
from replication.model.value import Kind
from replication.model.vclock import VectorClock
from replication.transport.deadletter import REASON_CODES

HERE = Admission("eu-west", frozenset({"us-east", "ap-south"}), frozenset({"old"}), frozenset({0}))
NOW_MS = 1_800_000_000_000
TOP = ceiling(60_000, NOW_MS)


def event(origin: str, clock: dict[str, int], db: int = 0) -> ChangeEvent:
    return ChangeEvent(
        db,
        b"k",
        Kind.STRING,
        b"v",
        0,
        VectorClock(clock),
        origin,
        value_digest(Kind.STRING, b"v", 0),
    )


def reason(ev: ChangeEvent, *, source: str = "us-east", targeted: bool = False) -> str | None:
    refusal = HERE.check(ev, source=source, targeted=targeted, ceiling=TOP)
    return None if refusal is None else refusal.reason


NOW_TS = pack(NOW_MS)


def test_a_peers_own_write_is_admitted() -> None:
    assert reason(event("us-east", {"us-east": NOW_TS, "eu-west": 5, "old": 3})) is None


@pytest.mark.parametrize("origin", ["eu-west", "ap-south"])
def test_a_live_record_claiming_another_origin_is_refused(origin: str) -> None:
    assert reason(event(origin, {origin: NOW_TS})) == "origin-mismatch"


@pytest.mark.parametrize("origin", ["eu-west", "ap-south", "us-east", "old"])
def test_a_repair_may_relay_any_configured_regions_version(origin: str) -> None:
    assert reason(event(origin, {origin: NOW_TS}), targeted=True) is None


def test_a_repair_may_not_relay_an_unknown_regions_version() -> None:
    assert reason(event("mallory", {"mallory": NOW_TS}), targeted=True) == "unknown-origin"


def test_a_clock_entry_for_an_unknown_region_is_refused() -> None:
    ev = event("us-east", {"us-east": NOW_TS, "mallory": 1})
    assert reason(ev) == "unknown-clock-region"


def test_any_entry_beyond_the_drift_bound_is_quarantined() -> None:
    assert reason(event("us-east", {"us-east": TOP})) is None
    assert reason(event("us-east", {"us-east": TOP + 1})) == QUARANTINE_REASON
    # Not only the origin's entry: a forged entry for this region would poison our next tick.
    ahead = event("us-east", {"us-east": NOW_TS, "eu-west": pack(NOW_MS + 3_600_000)})
    refusal = HERE.check(ahead, source="us-east", targeted=False, ceiling=TOP)
    assert refusal is not None
    assert refusal.reason == QUARANTINE_REASON
    assert "3540s beyond" in refusal.message


@pytest.mark.parametrize("db", [1, 15, 20, 65536])
def test_events_for_databases_not_replicated_are_refused(db: int) -> None:
    assert reason(event("us-east", {"us-east": NOW_TS}, db=db)) == "db-not-replicated"


def test_every_reason_code_the_daemon_uses_is_declared() -> None:
    """The dead-letter reasons are a fixed set (a metrics label): every code written in
    the replication package is in REASON_CODES, and REASON_CODES holds nothing else."""
    root = Path(__file__).resolve().parents[2] / "replication"
    source = "\n".join(p.read_text() for p in root.rglob("*.py"))
    patterns = [
        r'reason="([a-z-]+)"',
        r'AuthError\(\s*"([a-z-]+)"',
        r'Refusal\(\s*"([a-z-]+)"',
        r'Rejection\(\s*\w+,\s*"([a-z-]+)"',
        r'QUARANTINE_REASON = "([a-z-]+)"',
    ]
    used = {code for pattern in patterns for code in re.findall(pattern, source)}
    assert used == set(REASON_CODES)
