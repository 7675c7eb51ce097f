"""The one table of Redis error codes: what the daemon retries, what the client counts."""

from __future__ import annotations

import subprocess
import sys

import hiredis
import pytest

from replication.redis.errors import CODES, RETRIABLE, UNAVAILABLE, error_code, is_retriable, lookup
from replication.redis.resp import RedisCommandError


def test_codes_are_read_from_the_first_word_of_a_reply() -> None:
    reply = hiredis.ReplyError("LOADING Redis is loading the dataset in memory")
    assert error_code(reply) == "LOADING"
    assert error_code("BUSY") == "BUSY"
    assert error_code("") == ""
    assert error_code(None) == ""
    entry = lookup(reply)
    assert entry is not None
    assert (entry.retriable, entry.unavailable, entry.executed) == (True, True, False)
    assert lookup("ERR unknown command") is None


@pytest.mark.parametrize(
    "reply",
    [
        "BUSYKEY Target key name already exists.",  # a RESTORE refusal, not a busy server
        "BUSYGROUP Consumer Group name already exists",
        "LOADINGX not a code",
        "ERR LOADING is only a word here",
        "READONLY You can't write against a read only replica.",
    ],
)
def test_only_the_exact_code_makes_an_error_retriable(reply: str) -> None:
    assert not is_retriable(reply)
    assert not RedisCommandError("x", hiredis.ReplyError(reply)).retriable


@pytest.mark.parametrize("code", sorted(RETRIABLE))
def test_a_server_that_will_serve_soon_is_retried(code: str) -> None:
    error = RedisCommandError("x", hiredis.ReplyError(f"{code} some text"))
    assert error.retriable
    assert error.code == code


def test_the_region_failures_are_the_states_that_cannot_serve() -> None:
    # What the failover client counts against a region's health (before the table it kept
    # this list itself): a request's own errors (WRONGTYPE, NOSCRIPT) are not among them.
    # NOREPLICAS: a region whose daemon's capture is detached refuses writes (guarded by
    # min-replicas-to-write); the client leaves it, the daemon's own writes wait.
    assert {"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "OOM", "NOREPLICAS"} == UNAVAILABLE
    assert "NOREPLICAS" in RETRIABLE
    assert "NOSCRIPT" in CODES
    assert not CODES["NOSCRIPT"].unavailable
    assert not CODES["NOSCRIPT"].retriable
    assert all(not entry.executed for entry in CODES.values())


def test_the_table_imports_with_the_standard_library_alone() -> None:
    code = (
        "import sys, replication.redis.errors; "
        "print(sorted(m.split('.')[0] for m in sys.modules "
        "if m.split('.')[0] in ('hiredis', 'redis', 'aiokafka', 'xxhash', 'msgpack')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
