"""The failover client answers like redis-py: every command family, run through plain
redis-py and through each failover client against the same real redis-server (flushed in
between), must give the same replies, step for step.

A family is a list of steps written once (:class:`Step`: a method name, its arguments, and
how to compare a reply whose order Redis does not fix); the runners play it on a sync or
an asyncio client, and as a pipeline. docs/client.md's compatibility table names the
families; each "same" family is here for both clients.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from devcluster import RedisServer
from reconciler.client import (
    AsyncFailoverClient,
    ClientConfig,
    FailoverClient,
    PolicyConfig,
    RegionConfig,
)

pytestmark = pytest.mark.integration

# Short enough that a blocking command of 1 s would time out if the client applied it.
COMMAND_TIMEOUT_S = 0.4
BLOCK_S = 1


@dataclass(frozen=True)
class Step:
    """One call of a redis-py method; `normal` makes an unordered reply comparable."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    normal: Callable[[Any], Any]


def as_is(reply: Any) -> Any:
    return reply


def s(method: str, *args: Any, normal: Callable[[Any], Any] | None = None, **kwargs: Any) -> Step:
    return Step(method, args, kwargs, normal or as_is)


def unordered(reply: Any) -> Any:
    return sorted(reply, key=repr) if isinstance(reply, list | set | tuple) else reply


def keys_of(reply: Any) -> Any:
    return sorted(reply) if isinstance(reply, dict) else reply


FAMILIES: dict[str, list[Step]] = {
    "strings": [
        s("set", "s", "v"),
        s("get", "s"),
        s("append", "s", "-more"),
        s("getrange", "s", 0, 2),
        s("setrange", "s", 1, "XY"),
        s("strlen", "s"),
        s("set", "s", "w", xx=True, get=True),
        s("set", "s", "z", nx=True),
        s("setnx", "fresh", "1"),
        s("getset", "fresh", "2"),
        s("getdel", "fresh"),
        s("incr", "n"),
        s("incrby", "n", 41),
        s("incrbyfloat", "f", 1.5),
        s("decr", "n"),
        s("decrby", "n", 2),
        s("mset", {"a": "1", "b": "2"}),
        s("msetnx", {"a": "x", "c": "3"}),
        s("mget", "a", "b", "c", "missing"),
        s("set", "e", "v", ex=100),
        s("getex", "e", persist=True),
        s("ttl", "e"),
        s("lcs", "a", "b"),
        s("setbit", "bits", 7, 1),
        s("getbit", "bits", 7),
        s("bitcount", "bits"),
        s("bitpos", "bits", 1),
        s("bitop", "OR", "bits2", "bits", "bits"),
    ],
    "keys": [
        s("mset", {"k1": "1", "k2": "2", "k3": "3"}),
        s("exists", "k1", "k2", "missing"),
        s("type", "k1"),
        s("keys", "k*", normal=unordered),
        s("rename", "k3", "k4"),
        s("renamenx", "k4", "k1"),
        s("expire", "k1", 100),
        s("persist", "k1"),
        s("pexpireat", "k2", 32503680000000),
        s("expiretime", "k2"),
        s("copy", "k1", "k5"),
        s("delete", "k1", "missing"),
        s("unlink", "k2"),
        s("dbsize"),
        s("scan_iter", match="k*", normal=unordered),
        s("object", "encoding", "k4"),
        s("dump", "k4"),
        s("touch", "k4", "k5"),
    ],
    "hashes": [
        s("hset", "h", mapping={"a": "1", "b": "2"}),
        s("hset", "h", "c", "3"),
        s("hget", "h", "a"),
        s("hgetall", "h"),
        s("hmget", "h", "a", "missing", "c"),
        s("hincrby", "h", "a", 5),
        s("hincrbyfloat", "h", "f", 0.5),
        s("hkeys", "h", normal=unordered),
        s("hvals", "h", normal=unordered),
        s("hlen", "h"),
        s("hexists", "h", "b"),
        s("hsetnx", "h", "b", "x"),
        s("hstrlen", "h", "a"),
        s("hdel", "h", "b", "missing"),
        s("hscan_iter", "h", normal=unordered),
    ],
    "lists": [
        s("rpush", "l", "a", "b", "c"),
        s("lpush", "l", "z"),
        s("lrange", "l", 0, -1),
        s("linsert", "l", "BEFORE", "b", "x"),
        s("lindex", "l", 1),
        s("lset", "l", 0, "y"),
        s("lpos", "l", "c"),
        s("lrem", "l", 0, "x"),
        s("llen", "l"),
        s("lmove", "l", "l2", "LEFT", "RIGHT"),
        s("rpoplpush", "l", "l2"),
        s("ltrim", "l", 0, 0),
        s("lpop", "l2"),
        s("rpop", "l2"),
        s("rpush", "l3", "1", "2", "3"),
        s("lpop", "l3", 2),
        s("lmpop", 2, "missing", "l3", direction="LEFT"),
    ],
    "blocking": [
        s("rpush", "q", "job-1", "job-2"),
        s("blpop", ["q"], timeout=BLOCK_S),
        s("brpop", ["q"], timeout=BLOCK_S),
        # Nothing arrives: each blocks its whole BLOCK_S, longer than the command timeout.
        s("blpop", ["empty"], timeout=BLOCK_S),
        s("rpush", "q", "job-3"),
        s("brpoplpush", "q", "q2", timeout=BLOCK_S),
        s("blmove", "q2", "q", BLOCK_S, "LEFT", "RIGHT"),
        s("blmpop", BLOCK_S, 2, "empty", "q", direction="LEFT"),
        s("zadd", "zq", {"a": 1, "b": 2, "c": 3}),
        s("bzpopmin", ["zq"], timeout=BLOCK_S),
        s("bzpopmax", ["zq"], timeout=BLOCK_S),
        s("bzmpop", BLOCK_S, 1, ["zq"], min=True),
        s("bzpopmin", ["empty-z"], timeout=BLOCK_S),
        s("xadd", "bs", {"f": "v"}, id="1-0"),
        s("xread", {"bs": "0-0"}, block=BLOCK_S * 1000),
        s("xread", {"bs": "1-0"}, block=BLOCK_S * 1000),
        s("wait", 0, BLOCK_S * 1000),
    ],
    "sets": [
        s("sadd", "s1", "a", "b", "c"),
        s("sadd", "s2", "b", "c", "d"),
        s("smembers", "s1"),
        s("sismember", "s1", "a"),
        s("smismember", "s1", ["a", "z"]),
        s("scard", "s1"),
        s("sinter", ["s1", "s2"]),
        s("sunion", ["s1", "s2"]),
        s("sdiff", ["s1", "s2"]),
        s("sinterstore", "s3", ["s1", "s2"]),
        s("sintercard", 2, ["s1", "s2"]),
        s("smove", "s1", "s2", "a"),
        s("srem", "s2", "a", "z"),
        s("sscan_iter", "s2", normal=unordered),
    ],
    "sorted sets": [
        s("zadd", "z", {"a": 1, "b": 2, "c": 3}),
        s("zadd", "z", {"a": 5}, incr=True),
        s("zrange", "z", 0, -1, withscores=True),
        s("zrevrange", "z", 0, 1),
        s("zrangebyscore", "z", 2, 10),
        s("zrangebylex", "z", "-", "+"),
        s("zscore", "z", "b"),
        s("zmscore", "z", ["a", "missing"]),
        s("zincrby", "z", 2, "b"),
        s("zrank", "z", "c"),
        s("zrevrank", "z", "c"),
        s("zcard", "z"),
        s("zcount", "z", 0, 4),
        s("zlexcount", "z", "-", "+"),
        s("zrangestore", "z2", "z", 0, 1),
        s("zunionstore", "z3", ["z", "z2"]),
        s("zinterstore", "z4", ["z", "z2"]),
        s("zpopmin", "z"),
        s("zpopmax", "z", 1),
        s("zrem", "z", "b", "missing"),
        s("zscan_iter", "z3", normal=unordered),
    ],
    "hyperloglog and geo": [
        s("pfadd", "hll", "a", "b", "c"),
        s("pfcount", "hll"),
        s("pfadd", "hll2", "c", "d"),
        s("pfmerge", "hll3", "hll", "hll2"),
        s("pfcount", "hll3"),
        s("geoadd", "geo", [13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"]),
        s("geodist", "geo", "Palermo", "Catania", unit="km"),
        s("geohash", "geo", "Palermo"),
        s("geopos", "geo", "Catania"),
        s("geosearch", "geo", longitude=15, latitude=37, radius=200, unit="km", sort="ASC"),
    ],
    "streams and groups": [
        s("xadd", "st", {"f": "1"}, id="1-0"),
        s("xadd", "st", {"f": "2"}, id="2-0"),
        s("xadd", "st", {"f": "3"}, id="3-0"),
        s("xlen", "st"),
        s("xrange", "st"),
        s("xrevrange", "st", count=2),
        s("xgroup_create", "st", "g", id="0"),
        s("xreadgroup", "g", "c1", {"st": ">"}, count=2),
        s("xack", "st", "g", "1-0"),
        s("xpending", "st", "g"),
        s("xclaim", "st", "g", "c2", 0, ["2-0"], justid=True),
        s("xautoclaim", "st", "g", "c1", 0, justid=True),
        s("xinfo_groups", "st", normal=lambda groups: [g["name"] for g in groups]),
        s("xgroup_createconsumer", "st", "g", "c3"),
        s("xgroup_delconsumer", "st", "g", "c3"),
        s("xdel", "st", "3-0"),
        s("xtrim", "st", maxlen=1, approximate=False),
        s("xgroup_destroy", "st", "g"),
    ],
    "scripting and functions": [
        s("eval", "return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "ev", 3),
        s("script_load", "return ARGV[1]"),
        s("evalsha", "098e0f0d1448c0a81dafe820f66d460eb09263da", 0, "echoed"),
        s("script_exists", "098e0f0d1448c0a81dafe820f66d460eb09263da"),
        s("eval_ro", "return redis.call('GET', KEYS[1])", 1, "ev"),
        s(
            "function_load",
            "#!lua name=compat\nredis.register_function('twice', function(keys, args) "
            "return tonumber(args[1]) * 2 end)",
            replace=True,
        ),
        s("fcall", "twice", 0, 21),
        s("function_delete", "compat"),
    ],
    "server and connection": [
        s("ping"),
        s("echo", "hello"),
        s("set", "srv", "v"),
        s("dbsize"),
        s("config_get", "maxmemory-policy"),
        s("memory_usage", "srv"),
        s("object", "refcount", "srv"),
        s("command_count"),
        s("lastsave", normal=lambda reply: type(reply).__name__),
        s("info", "keyspace"),
        s("slowlog_len", normal=lambda reply: type(reply).__name__),
        s("slowlog_get", 1, normal=lambda reply: type(reply).__name__),
        s("pubsub_channels"),
        s("pubsub_numsub", "nobody"),
        s("publish", "nobody", "hello"),
        s("acl_whoami"),
        s("acl_setuser", "compat-user", enabled=True, passwords=["+pw"], keys=["~c:*"]),
        s("acl_getuser", "compat-user", normal=lambda user: (user["flags"], user["keys"])),
        s("acl_users", normal=unordered),
        s("acl_deluser", "compat-user"),
        s("client_setname", "compat-name"),
        s("swapdb", 0, 1),
        s("swapdb", 0, 1),
    ],
}


def plain_kwargs(protocol: int) -> dict[str, Any]:
    return {"protocol": protocol}


def failover_config(server: RedisServer) -> ClientConfig:
    return ClientConfig(
        regions=(RegionConfig(name="eu-west", url=server.url),),
        policy=PolicyConfig(command_timeout_s=COMMAND_TIMEOUT_S, probe_interval_s=0.5),
    )


def flush(server: RedisServer) -> None:
    with redis.Redis.from_url(server.url) as admin:
        admin.flushall()
        admin.function_flush()
        admin.script_flush()


def play_sync(client: Any, steps: list[Step]) -> list[Any]:
    replies = []
    for step in steps:
        try:
            reply = getattr(client, step.method)(*step.args, **step.kwargs)
            if inspect.isgenerator(reply) or isinstance(reply, Iterator):
                reply = list(reply)
            replies.append(step.normal(reply))
        except redis.RedisError as exc:
            replies.append(("error", type(exc).__name__, str(exc)))
    return replies


async def play_async(client: Any, steps: list[Step]) -> list[Any]:
    replies = []
    for step in steps:
        try:
            reply = getattr(client, step.method)(*step.args, **step.kwargs)
            if inspect.isasyncgen(reply):
                reply = [item async for item in reply]
            elif inspect.isawaitable(reply):
                reply = await reply
            replies.append(step.normal(reply))
        except redis.RedisError as exc:
            replies.append(("error", type(exc).__name__, str(exc)))
    return replies


def pipelined(client: Any, steps: list[Step], *, transaction: bool) -> list[Any]:
    iterators = {"scan_iter", "hscan_iter", "sscan_iter", "zscan_iter"}
    queued = [step for step in steps if step.method not in iterators]
    with client.pipeline(transaction=transaction) as pipe:
        for step in queued:
            getattr(pipe, step.method)(*step.args, **step.kwargs)
        replies = pipe.execute(raise_on_error=False)
    return [
        (type(r).__name__, str(r)) if isinstance(r, Exception) else step.normal(r)
        for step, r in zip(queued, replies, strict=True)
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    from tests.servers import track

    server = RedisServer("compat", tmp_path_factory.mktemp("compat"))
    track(server)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_sync_client_answers_every_family_like_redis_py(
    server: RedisServer, family: str, protocol: int
) -> None:
    steps = FAMILIES[family]
    flush(server)
    with redis.Redis.from_url(server.url, **plain_kwargs(protocol)) as plain:
        expected = play_sync(plain, steps)
    flush(server)
    with FailoverClient(failover_config(server), protocol=protocol) as client:
        got = play_sync(client, steps)
        assert client.router.snapshot().regions[0].stats.failures_total == 0
    assert got == expected


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "blocking"])
@pytest.mark.parametrize("transaction", [False, True])
def test_the_sync_clients_pipelines_answer_like_redis_pys(
    server: RedisServer, family: str, transaction: bool
) -> None:
    steps = FAMILIES[family]
    flush(server)
    with redis.Redis.from_url(server.url) as plain:
        expected = pipelined(plain, steps, transaction=transaction)
    flush(server)
    with FailoverClient(failover_config(server)) as client:
        got = pipelined(client, steps, transaction=transaction)
    assert got == expected


@pytest.mark.parametrize("family", list(FAMILIES))
async def test_the_async_client_answers_every_family_like_redis_py(
    server: RedisServer, family: str
) -> None:
    steps = FAMILIES[family]
    await asyncio.to_thread(flush, server)
    async with aioredis.Redis.from_url(server.url) as plain:
        expected = await play_async(plain, steps)
    await asyncio.to_thread(flush, server)
    async with AsyncFailoverClient(failover_config(server)) as client:
        got = await play_async(client, steps)
        assert client.router.snapshot().regions[0].stats.failures_total == 0
    assert got == expected
