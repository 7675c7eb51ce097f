"""The status record's encoding: what the daemon writes is what the client reads."""

from __future__ import annotations

import pytest

from reconciler.status import (
    RegionStatus,
    StatusRecordError,
    decode_status,
    encode_status,
    parse_run_id,
)
from replication.model.keys import STATUS_FIELDS


def test_encoding_round_trips_through_bytes_as_hgetall_returns_them() -> None:
    status = RegionStatus("repairing", "eu-west", since_ms=10, last_repair_ms=5, updated_ms=12)
    fields = encode_status(status)
    assert tuple(sorted(fields)) == tuple(sorted(STATUS_FIELDS))
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    assert decode_status(raw) == status
    assert decode_status(fields) == status


def test_an_empty_hash_is_no_status_not_an_error() -> None:
    assert decode_status({}) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"state": "consistent"}, "lacks field"),
        (
            {
                "state": "happy",
                "region": "a",
                "since_ms": "1",
                "last_repair_ms": "0",
                "updated_ms": "1",
                "run_id": "",
            },
            "not one of consistent",
        ),
        (
            {
                "state": "consistent",
                "region": "a",
                "since_ms": "soon",
                "last_repair_ms": "0",
                "updated_ms": "1",
                "run_id": "",
            },
            "non-integer",
        ),
        (
            {
                "state": "consistent",
                "region": "",
                "since_ms": "1",
                "last_repair_ms": "0",
                "updated_ms": "1",
                "run_id": "",
            },
            "without a region",
        ),
    ],
)
def test_a_malformed_record_is_rejected_with_the_reason(
    fields: dict[str, str], message: str
) -> None:
    with pytest.raises(StatusRecordError, match=message):
        decode_status(fields)


def test_a_run_id_that_is_not_a_redis_run_id_is_rejected() -> None:
    with pytest.raises(StatusRecordError, match="40 hex"):
        RegionStatus("consistent", "a", since_ms=1, run_id="not-a-run-id")


def test_a_record_belongs_only_to_the_instance_named_by_its_run_id() -> None:
    run_id = "0123456789abcdef0123456789abcdef01234567"
    status = RegionStatus("consistent", "a", since_ms=1, run_id=run_id)
    assert status.belongs_to(run_id)
    assert not status.belongs_to("f" * 40)
    assert not status.belongs_to(None)
    # A record without a run_id (an older writer's) belongs to no instance.
    assert not RegionStatus("consistent", "a", since_ms=1).belongs_to("")


def test_run_id_is_read_from_raw_and_parsed_info_answers() -> None:
    run_id = "dffce301ff258d16572e2eb9ffd2ecc2f468e309"
    raw = f"# Server\r\nredis_version:7.0.15\r\nrun_id:{run_id}\r\ntcp_port:6379\r\n"
    assert parse_run_id(raw.encode()) == run_id
    assert parse_run_id(raw) == run_id
    assert parse_run_id({"run_id": run_id, "tcp_port": 6379}) == run_id
    assert parse_run_id(b"# Server\r\nrun_id:short\r\n") is None
    assert parse_run_id(None) is None


def test_now_stamps_since_and_updated_with_the_wall_clock() -> None:
    status = RegionStatus.now("consistent", "us-east", last_repair_ms=7)
    assert status.consistent
    assert status.since_ms == status.updated_ms > 1_600_000_000_000
    assert status.last_repair_ms == 7
    assert not RegionStatus.now("recovering", "us-east").consistent
