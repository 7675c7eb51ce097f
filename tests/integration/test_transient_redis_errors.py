"""A Redis that answers with a transient error (BUSY with a long script; LOADING after a
restart) is waited for, not treated as a fatal error that stops the daemon."""

from __future__ import annotations

import logging
import threading
import time

import hiredis
import pytest
import redis

from devcluster import RedisServer
from replication.backoff import retrying
from replication.capture.versioner import Versioner
from replication.model.hlc import HybridClock
from replication.redis.address import RedisAddress
from replication.redis.resp import RedisCommandError

# Holds the server for about 1.5 s: every other client gets BUSY meanwhile.
BUSY_SCRIPT = """
local s = redis.call('TIME')
while true do
  local n = redis.call('TIME')
  if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 1500000 then break end
end
return 1
"""


def test_only_transient_error_replies_are_retriable() -> None:
    for reply, retriable in [
        ("LOADING Redis is loading the dataset in memory", True),
        ("BUSY Redis is busy running a script.", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("NOPERM this user has no permissions", False),
    ]:
        error = RedisCommandError(f"'FUNCTION' failed: {reply}", hiredis.ReplyError(reply))
        assert error.retriable is retriable, reply


async def test_versioning_waits_out_a_busy_redis(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis(port=redis_server.port)
    admin.config_set("busy-reply-threshold", 100)
    admin.set("k", "v")
    async with Versioner(RedisAddress.from_url(redis_server.url), "eu-west", HybridClock()) as v:
        busy = threading.Thread(
            target=lambda: redis.Redis(port=redis_server.port).eval(BUSY_SCRIPT, 0)
        )
        busy.start()
        try:
            wait_until_busy(admin)
            with caplog.at_level(logging.WARNING, logger="replication.backoff"):
                report = await retrying(lambda: v.version({0: [b"k"]}), what="versioning")
        finally:
            busy.join(10)
    assert [c.event.key for c in report.changes] == [b"k"]
    assert any("BUSY" in r.getMessage() for r in caplog.records), "never saw Redis busy"


def wait_until_busy(client: redis.Redis) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            client.ping()
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("BUSY"):
                raise
            return
        time.sleep(0.01)
    raise AssertionError("the script never made Redis busy")
