"""The fault suite's CI profile: two seeds of ~30 s each of the randomized workload and
nemesis on three real regions (redis-server and `reconciler run` each, the session's real
Kafka broker; every Redis refuses writes while its daemon's capture is detached), then the
history checker. Zero violations, and every kind of fault given to a seed really happened
(the nemesis deals each kind once before repeating); the two seeds share every kind out.
The long soak is `python -m tests.faults --seeds N --minutes M` (README, Tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import KafkaBroker
from tests.faults.harness import run_seed
from tests.faults.nemesis import KINDS
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

DURATION_S = 30.0
# Every kind, dealt between the two seeds: 30 s deal about ten faults, so each seed takes
# half of the kinds and must see every one of its half. The soak (`python -m tests.faults`)
# deals every kind in every seed.
CI_KINDS = {
    101: (
        "daemon-kill9",
        "redis-kill-empty",
        "broker-pause",
        "client-cut",
        "kafka-blackhole",
        "clock-skew",
    ),
    202: (
        "daemon-pause",
        "redis-kill-data",
        "redis-kill-older-rdb",
        "client-blackhole",
        "client-slow",
        "kafka-cut",
    ),
}


def test_the_ci_profile_deals_every_kind() -> None:
    dealt = [kind for kinds in CI_KINDS.values() for kind in kinds]
    assert sorted(dealt) == sorted(KINDS)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", sorted(CI_KINDS))
def test_randomized_overlapping_faults_break_no_invariant(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory, seed: int
) -> None:
    kinds = CI_KINDS[seed]
    result = run_seed(seed, DURATION_S, tmp_path, kafka, redis_factory, kinds=kinds)
    print(result.summary())
    assert result.problems == [], "\n".join(result.problems)
    assert {kind for kind, n in result.faults.items() if n} == set(kinds)
    assert result.ops["acknowledged"] > 1_000, result.ops
    assert result.verdict.reads_checked > 100, result.summary()
    assert result.bad_records > 0
    assert result.dead_letters >= result.bad_records
