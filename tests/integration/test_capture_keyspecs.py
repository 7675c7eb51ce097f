"""Our key extraction agrees with the server's own: COMMAND GETKEYSANDFLAGS, minus reads."""

from __future__ import annotations

import pytest

from devcluster import RedisServer
from replication.capture.commands import KeyTable
from replication.capture.link import RespLink, pack

pytestmark = pytest.mark.integration

# Write commands as they can appear in a replication stream (with their options).
WRITES: list[list[str]] = [
    ["SET", "k", "v", "PXAT", "1795588819901"],
    ["SET", "k", "v", "GET"],
    ["SETEX", "k", "10", "v"],
    ["APPEND", "k", "v"],
    ["INCRBYFLOAT", "k", "1.5"],
    ["GETDEL", "k"],
    ["GETEX", "k", "PERSIST"],
    ["MSET", "a", "1", "b", "2", "c", "3"],
    ["MSETNX", "a", "1", "b", "2"],
    ["DEL", "a", "b", "c"],
    ["UNLINK", "a", "b"],
    ["RENAME", "a", "b"],
    ["RENAMENX", "a", "b"],
    ["PEXPIREAT", "k", "1795588819901"],
    ["PERSIST", "k"],
    ["HSET", "h", "f", "v", "g", "w"],
    ["HDEL", "h", "f"],
    ["HINCRBY", "h", "f", "1"],
    ["LPUSH", "l", "a", "b"],
    ["LPOP", "l", "2"],
    ["LMOVE", "l1", "l2", "LEFT", "RIGHT"],
    ["RPOPLPUSH", "l1", "l2"],
    ["LINSERT", "l", "BEFORE", "a", "b"],
    ["LTRIM", "l", "0", "5"],
    ["LMPOP", "2", "l1", "l2", "LEFT", "COUNT", "3"],
    ["SADD", "s", "m"],
    ["SMOVE", "s1", "s2", "m"],
    ["SPOP", "s", "2"],
    ["SUNIONSTORE", "dst", "s1", "s2"],
    ["SDIFFSTORE", "dst", "s1", "s2", "s3"],
    ["ZADD", "z", "1", "m"],
    ["ZINCRBY", "z", "1", "m"],
    ["ZUNIONSTORE", "dst", "2", "z1", "z2", "WEIGHTS", "1", "2"],
    ["ZINTERSTORE", "dst", "2", "z1", "z2"],
    ["ZRANGESTORE", "dst", "z", "0", "-1"],
    ["ZREMRANGEBYSCORE", "z", "0", "10"],
    ["ZMPOP", "2", "z1", "z2", "MIN"],
    ["XADD", "x", "MAXLEN", "100", "*", "f", "v"],
    ["XTRIM", "x", "MAXLEN", "10"],
    ["XDEL", "x", "1-1"],
    ["XGROUP", "CREATE", "x", "g", "$", "MKSTREAM"],
    ["XGROUP", "SETID", "x", "g", "0"],
    ["XGROUP", "CREATECONSUMER", "x", "g", "c"],
    ["XCLAIM", "x", "g", "c", "0", "1-1"],
    ["XAUTOCLAIM", "x", "g", "c", "0", "0-0"],
    ["XACK", "x", "g", "1-1"],
    ["XSETID", "x", "5-5"],
    ["PFADD", "hll", "a"],
    ["PFMERGE", "dst", "h1", "h2"],
    ["PFCOUNT", "h1", "h2"],
    ["BITOP", "AND", "dst", "a", "b"],
    ["SETBIT", "b", "7", "1"],
    ["SETRANGE", "k", "2", "xx"],
    ["BITFIELD", "b", "SET", "u8", "0", "255"],
    ["GEOADD", "g", "13.36", "38.11", "palermo"],
    ["GEORADIUS", "g", "15", "37", "200", "km", "STORE", "dst"],
    ["GEOSEARCHSTORE", "dst", "g", "FROMLONLAT", "15", "37", "BYRADIUS", "200", "km"],
    ["RESTORE", "k", "0", "payload", "REPLACE"],
    ["EVAL", "return 1", "2", "k1", "k2", "arg"],
    ["EVALSHA", "a" * 40, "1", "k1"],
    ["FCALL", "fn", "2", "k1", "k2"],
    ["SORT", "l", "BY", "w_*", "GET", "#", "STORE", "dst"],
    ["COPY", "src", "dst", "REPLACE"],
    ["MOVE", "k", "3"],
    ["OBJECT", "FREQ", "k"],
]


async def test_written_keys_match_the_servers_keys_minus_read_only_ones(
    redis_server: RedisServer,
) -> None:
    link = await RespLink.open(redis_server.address, high_water=1 << 20, timeout_s=5)
    try:
        link.write(pack("COMMAND"))
        table = KeyTable.from_command_reply(await link.reply("COMMAND", 5))
        compared = 0
        for argv in WRITES:
            link.write(pack("COMMAND", "GETKEYSANDFLAGS", *argv))
            reply = await link.reply("COMMAND GETKEYSANDFLAGS", 5)
            server_writes = [key for key, flags in reply if b"RO" not in flags]
            ours = table.written_keys([arg.encode() for arg in argv])
            assert ours == server_writes, argv
            compared += len(ours)
        assert compared > len(WRITES)  # keys were really compared, not empty lists
    finally:
        await link.close()
