"""Importing reconciler.client stays light: no Kafka, no daemon, no background work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys, threading
{imports}
print(json.dumps({{"modules": sorted(sys.modules), "threads": threading.active_count()}}))
"""


def imported_by(imports: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(imports=imports)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    loaded: dict[str, object] = json.loads(result.stdout)
    return loaded


def test_importing_the_client_loads_no_kafka_daemon_or_merkle_code() -> None:
    client = imported_by("import reconciler.client")
    modules = set(client["modules"])  # type: ignore[call-overload]
    heavy = (
        "aiokafka",
        "reconciler.service.daemon",
        "reconciler.consistency.merkle",
        "reconciler.consistency.antientropy",
        "reconciler.client.stream",  # imported only when a [kafka] table turns streaming on
        "replication.capture",
        "replication.transport",
        "replication.pipeline.applier",
    )
    forbidden = sorted(name for name in modules if name.startswith(heavy))
    assert forbidden == []


def test_xxhash_is_loaded_only_if_redis_py_itself_loads_it() -> None:
    # redis-py (>= 8) imports xxhash for its own DIGEST helper whenever it is installed; the
    # client must add nothing beyond what `import redis` already costs.
    client = set(imported_by("import reconciler.client")["modules"])  # type: ignore[call-overload]
    redis_alone = set(imported_by("import redis, redis.asyncio")["modules"])  # type: ignore[call-overload]
    assert ("xxhash" in client) <= ("xxhash" in redis_alone)


def test_importing_the_client_starts_no_thread() -> None:
    assert imported_by("import reconciler.client")["threads"] == 1
