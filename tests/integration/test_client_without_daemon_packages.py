"""The failover client on an application's base install: no aiokafka, xxhash, msgpack or
hiredis (the daemon's packages). A fresh interpreter refuses to import them, then imports
and uses both clients against a real redis-server, and a [kafka] table without the extra is
refused with what to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devcluster import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_PROGRAM = """
import asyncio, importlib.abc, json, sys

BLOCKED = {"aiokafka", "xxhash", "msgpack", "hiredis"}

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]

from reconciler.client import (
    AsyncFailoverClient, ClientConfig, ConfigError, FailoverClient, KafkaConfig, RegionConfig,
)

url = sys.argv[1]
config = ClientConfig(regions=(RegionConfig(name="eu-west", url=url),))
out = {}
with FailoverClient(config) as client:
    client.set("light:sync", "ok")
    out["sync"] = client.get("light:sync").decode()
    with client.pipeline() as pipe:
        out["pipeline"] = pipe.incr("light:n").incr("light:n").execute()

async def main():
    async with AsyncFailoverClient(config) as client:
        await client.set("light:async", "ok")
        return (await client.get("light:async")).decode()

out["async"] = asyncio.run(main())
try:
    FailoverClient(
        ClientConfig(regions=config.regions, kafka=KafkaConfig(bootstrap_servers="127.0.0.1:1"))
    )
except ConfigError as exc:
    out["kafka"] = str(exc)
out["loaded"] = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


def test_the_client_imports_and_works_without_the_daemons_packages(
    redis_server: RedisServer,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROGRAM, redis_server.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert (out["sync"], out["async"]) == ("ok", "ok")
    assert out["pipeline"] == [1, 2]
    assert "pip install 'redis-reconciler[client-kafka]'" in out["kafka"]
