"""The status record's encoding: what the daemon writes is what the client reads."""

from __future__ import annotations

import pytest

from reconciler.status import RegionStatus, StatusRecordError, decode_status, encode_status
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


def test_now_stamps_since_and_updated_with_the_wall_clock() -> None:
    status = RegionStatus.now("consistent", "us-east", last_repair_ms=7)
    assert status.consistent
    assert status.since_ms == status.updated_ms > 1_600_000_000_000
    assert status.last_repair_ms == 7
    assert not RegionStatus.now("recovering", "us-east").consistent
