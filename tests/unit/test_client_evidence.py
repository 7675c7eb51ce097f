"""What a probe's reading proves about a region's data: only a record of this region and
this very instance, with its expiry, saying consistent, vouches for it."""

from __future__ import annotations

import pytest

from reconciler.client.evidence import Finding, Reading, judge, reading_of
from reconciler.client.probing import REFUSING_WRITES, outcome_of_replies, writes_refused
from reconciler.status import RegionStatus, encode_status

RUN = "1" * 40
OLD_RUN = "2" * 40


def record(
    state: str = "consistent", *, region: str = "eu-west", run_id: str = RUN
) -> RegionStatus:
    return RegionStatus(state, region, since_ms=5, updated_ms=9, run_id=run_id)


def info(run_id: str) -> bytes:
    return f"# Server\r\nredis_version:7.0.15\r\nrun_id:{run_id}\r\ntcp_port:6379\r\n".encode()


def test_a_record_of_this_instance_and_region_with_expiry_saying_consistent_vouches() -> None:
    verdict = judge("eu-west", Reading(RUN, record(), 4000))
    assert verdict.finding is Finding.CONSISTENT
    assert verdict.vouches
    assert not verdict.against_data


@pytest.mark.parametrize(
    ("reading", "finding"),
    [
        # A restart from an AOF/RDB or a restored backup: the record names the old instance.
        (Reading(RUN, record(run_id=OLD_RUN), 4000), Finding.FOREIGN),
        (Reading(RUN, record(), -1), Finding.NO_EXPIRY),
        (Reading(RUN, record(region="us-east"), 4000), Finding.OTHER_REGION),
        # INFO refused (NOPERM) or answered without a run_id: nothing ties it to the instance.
        (Reading(None, record(), 4000, problem="INFO refused"), Finding.UNBOUND),
        (Reading(RUN, record(run_id=""), 4000), Finding.UNBOUND),
        (Reading(RUN, None, -2), Finding.ABSENT),
        (Reading(RUN, None, 4000, problem="unreadable status record: x"), Finding.UNREADABLE),
        (Reading(RUN, record("repairing"), 4000), Finding.NOT_CONSISTENT),
        (Reading(RUN, record("recovering"), 4000), Finding.NOT_CONSISTENT),
    ],
)
def test_anything_else_never_vouches(reading: Reading, finding: Finding) -> None:
    verdict = judge("eu-west", reading)
    assert verdict.finding is finding, verdict
    assert not verdict.vouches
    assert verdict.reason


def test_only_a_left_over_record_or_the_daemons_own_word_is_evidence_against_the_data() -> None:
    against = {
        finding for finding in Finding if judge("eu-west", _reading_for(finding)).against_data
    }
    assert against == {Finding.FOREIGN, Finding.NOT_CONSISTENT}


def _reading_for(finding: Finding) -> Reading:
    return {
        Finding.CONSISTENT: Reading(RUN, record(), 4000),
        Finding.NOT_CONSISTENT: Reading(RUN, record("recovering"), 4000),
        Finding.RECHECKING: Reading(RUN, record("repairing"), 4000, RUN),
        Finding.FOREIGN: Reading(RUN, record(run_id=OLD_RUN), 4000),
        Finding.ABSENT: Reading(RUN, None, -2),
        Finding.UNBOUND: Reading(None, record(), 4000),
        Finding.NO_EXPIRY: Reading(RUN, record(), -1),
        Finding.OTHER_REGION: Reading(RUN, record(region="x"), 4000),
        Finding.UNREADABLE: Reading(RUN, None, 4000, problem="unreadable status record: x"),
    }[finding]


def test_a_daemon_rechecking_data_a_repair_verified_on_this_instance_is_no_evidence() -> None:
    rechecking = judge("eu-west", Reading(RUN, record("repairing"), 4000, verified_run_id=RUN))
    assert rechecking.finding is Finding.RECHECKING
    assert not rechecking.against_data
    assert not rechecking.vouches
    # A marker that a previous instance left (restored from disk) proves nothing.
    restored = judge("eu-west", Reading(RUN, record("repairing"), 4000, verified_run_id=OLD_RUN))
    assert restored.finding is Finding.NOT_CONSISTENT


def test_recovering_is_evidence_against_the_data_even_with_this_instances_marker() -> None:
    # A gap since the last repair (its change stream broke, a FLUSHALL it saw): the daemon
    # has not verified the instance again, whatever an older marker says.
    verdict = judge("eu-west", Reading(RUN, record("recovering"), 4000, verified_run_id=RUN))
    assert verdict.finding is Finding.NOT_CONSISTENT
    assert verdict.against_data
    assert "not verified since its last gap" in verdict.reason


def test_reading_of_the_raw_replies_of_the_probe() -> None:
    fields = {k.encode(): v.encode() for k, v in encode_status(record()).items()}
    reading = reading_of(info(RUN), fields, 4000, f"{RUN}:nonce-1".encode())
    assert reading == Reading(RUN, record(), 4000, RUN)
    # redis-py's parsed INFO (a dict) and decoded strings work the same.
    parsed = reading_of({"run_id": RUN}, encode_status(record()), 4000, f"{RUN}:n")
    assert parsed == reading


def test_reading_of_an_undecodable_record_or_an_info_without_run_id() -> None:
    broken = reading_of(info(RUN), {b"state": b"consistent"}, 4000)
    assert broken.status is None
    assert broken.problem.startswith("unreadable status record")
    assert judge("eu-west", broken).finding is Finding.UNREADABLE
    no_run_id = reading_of(b"# Server\r\n", {}, -2, b"garbage")
    assert (no_run_id.run_id, no_run_id.verified_run_id) == (None, None)


def replication_info(good: int | None) -> bytes:
    lines = ["# Replication", "role:master", "connected_slaves:1"]
    if good is not None:  # Redis shows it only while enforcing min-replicas-to-write
        lines.append(f"min_slaves_good_slaves:{good}")
    return ("\r\n".join(lines) + "\r\n").encode()


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        (replication_info(None), False),  # not enforcing: nothing to tell
        (replication_info(1), False),
        (replication_info(0), True),  # enforcing, and the capture does not acknowledge
        ({"role": "master", "min_slaves_good_slaves": 0}, True),  # redis-py's parsed form
        ({"role": "master", "min_slaves_good_slaves": 2}, False),
        ({"role": "master"}, False),
        (None, False),
    ],
)
def test_a_probe_tells_a_region_that_refuses_writes_for_want_of_its_capture(
    answer: object, refused: bool
) -> None:
    assert writes_refused(answer) is refused
    outcome = outcome_of_replies([info(RUN), encode_status(record()), 4000, None, answer])
    # Refusing writes fails the probe (no failback to it), whatever its record says.
    assert outcome.ok is not refused
    assert outcome.reading is not None
    assert outcome.reading.run_id == RUN
    assert outcome.detail == (REFUSING_WRITES if refused else "")
