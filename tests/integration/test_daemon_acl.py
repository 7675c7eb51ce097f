"""The daemon works as the documented least-privilege ACL user, its password read from
the environment (and never written to its logs or config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import KafkaBroker
from tests.regions import running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Passw0rd"
# The ACL the README documents for the daemon's Redis user.
DAEMON_ACL = f"reconciler on >{PASSWORD} ~* &* +@all -@dangerous +psync +replconf +sync +info"


def test_two_regions_replicate_and_repair_as_the_documented_acl_user(
    tmp_path: Path,
    kafka: KafkaBroker,
    redis_factory: RedisFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RR_TEST_REDIS_PASSWORD", PASSWORD)
    with running_regions(
        tmp_path,
        kafka,
        redis_factory,
        names=("eu-west", "us-east"),
        redis_config={"user": DAEMON_ACL},
        daemon_user="reconciler",
        overrides={"redis": {"password_env": "RR_TEST_REDIS_PASSWORD"}},
    ) as regions:
        regions.clients["eu-west"].hset("acct:1", mapping={"balance": 10})
        regions.clients["us-east"].set("fx", "1.1", px=3_600_000)
        regions.clients["us-east"].delete("nothing")
        regions.wait_converged()
        regions.wait_status("consistent")
        report = regions.daemons["eu-west"].post("/verify?peer=us-east")
        assert report["result"] == "ok"
        assert report["keys_differing"] == 0
        assert report["local_inconsistencies"] == report["peer_inconsistencies"] == 0
        for daemon in regions.daemons.values():
            assert PASSWORD not in daemon.log_tail(10_000)
            assert PASSWORD not in daemon.config.read_text()
