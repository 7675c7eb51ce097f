"""Keys a replicated command writes, computed from a recorded Redis 7.0.15 COMMAND reply.

(The same extraction is checked against a live server's COMMAND GETKEYSANDFLAGS in
tests/integration/test_capture_keyspecs.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.capture.commands import KeyTable, Special, copy_target_db, is_getack


@pytest.fixture(scope="module")
def table() -> KeyTable:
    return KeyTable.from_command_reply(RECORDED_COMMAND_REPLY)


def test_single_key_writes_compile_to_a_plain_index(table: KeyTable) -> None:
    # The hot path relies on this: most writes cost one dict lookup and one index.
    for name in (b"SET", b"set", b"HSET", b"LPUSH", b"SADD", b"ZADD", b"EXPIRE", b"PEXPIREAT"):
        assert table.fast[name] == 1, name
    assert table.fast[b"MSET"] == slice(1, None, 2)
    assert table.fast[b"DEL"] == slice(1, None, 1)
    assert table.fast[b"PING"] == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([b"SET", b"k", b"v", b"GET"], [b"k"]),
        ([b"MSET", b"a", b"1", b"b", b"2"], [b"a", b"b"]),
        ([b"DEL", b"a", b"b", b"c"], [b"a", b"b", b"c"]),
        ([b"UNLINK", b"a"], [b"a"]),
        ([b"RENAME", b"old", b"new"], [b"old", b"new"]),
        ([b"RENAMENX", b"old", b"new"], [b"old", b"new"]),
        ([b"LMOVE", b"src", b"dst", b"LEFT", b"RIGHT"], [b"src", b"dst"]),
        ([b"LMPOP", b"2", b"l1", b"l2", b"LEFT"], [b"l1", b"l2"]),
        ([b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"], [b"k1", b"k2"]),
        ([b"FCALL", b"fn", b"1", b"k1", b"arg"], [b"k1"]),
        ([b"EVAL", b"return 1", b"0"], []),
        ([b"XGROUP", b"CREATE", b"stream", b"group", b"$"], [b"stream"]),
        ([b"xgroup", b"createconsumer", b"stream", b"group", b"c"], [b"stream"]),
        ([b"SORT", b"list", b"BY", b"store", b"STORE", b"dest"], [b"dest"]),
        ([b"SORT", b"list", b"GET", b"#", b"LIMIT", b"0", b"10"], []),
        ([b"GEORADIUS", b"g", b"1", b"2", b"3", b"km", b"STORE", b"dest"], [b"dest"]),
        ([b"GETEX", b"k", b"PERSIST"], [b"k"]),
        ([b"PFCOUNT", b"h1", b"h2"], [b"h1", b"h2"]),
        ([b"FUNCTION", b"LOAD", b"#!lua name=x\n"], []),
        ([b"PUBLISH", b"channel", b"message"], []),
        ([b"MULTI"], []),
        ([b"EXEC"], []),
    ],
)
def test_written_keys_follow_the_server_key_specs(
    table: KeyTable, argv: list[bytes], expected: list[bytes]
) -> None:
    assert table.written_keys(argv) == expected


def test_read_only_and_not_key_arguments_are_never_reported(table: KeyTable) -> None:
    # Sources are only read: their state did not change, the consumer need not read it.
    assert table.written_keys([b"SUNIONSTORE", b"dst", b"s1", b"s2"]) == [b"dst"]
    assert table.written_keys([b"ZUNIONSTORE", b"dst", b"2", b"z1", b"z2"]) == [b"dst"]
    assert table.written_keys([b"BITOP", b"AND", b"dst", b"a", b"b"]) == [b"dst"]
    assert table.written_keys([b"OBJECT", b"FREQ", b"k"]) == []
    # A shard channel is routed like a key but is not one.
    assert table.written_keys([b"SPUBLISH", b"channel", b"m"]) == []


def test_commands_with_effects_beyond_the_current_db_are_special(table: KeyTable) -> None:
    for name, special in [
        (b"SELECT", Special.SELECT),
        (b"FLUSHDB", Special.FLUSHDB),
        (b"flushall", Special.FLUSHALL),
        (b"SWAPDB", Special.SWAPDB),
        (b"MOVE", Special.MOVE),
        (b"COPY", Special.COPY),
        (b"REPLCONF", Special.REPLCONF),
    ]:
        assert table.resolve(name) is special
    assert copy_target_db([b"COPY", b"a", b"b", b"DB", b"3", b"REPLACE"]) == 3
    assert copy_target_db([b"COPY", b"a", b"b", b"REPLACE"]) is None
    assert table.written_keys([b"COPY", b"a", b"b"]) == [b"b"]
    assert table.written_keys([b"COPY", b"a", b"b", b"db", b"2"]) == []  # lands in db 2
    assert table.written_keys([b"MOVE", b"k", b"1"]) == [b"k"]
    assert is_getack([b"REPLCONF", b"GETACK", b"*"])
    assert not is_getack([b"REPLCONF", b"ACK", b"10"])


def test_any_spelling_of_a_name_resolves_and_is_memoised(table: KeyTable) -> None:
    assert b"sEt" not in table.fast
    assert table.resolve(b"sEt") == 1
    assert table.fast[b"sEt"] == 1
    assert table.written_keys([b"hSeT", b"h", b"f", b"v"]) == [b"h"]


def test_unknown_and_incomplete_commands_are_flagged_not_guessed(table: KeyTable) -> None:
    assert table.resolve(b"MODULE.WRITE") is Special.UNKNOWN
    assert table.written_keys([b"MODULE.WRITE", b"k"]) == []
    # MIGRATE's specs are "incomplete": flagged, with what its complete parts still find.
    assert table.resolve(b"MIGRATE") is Special.INCOMPLETE
    keys = table.written_keys([b"MIGRATE", b"h", b"6379", b"", b"0", b"5", b"KEYS", b"a", b"b"])
    assert keys[-2:] == [b"a", b"b"]


def test_commands_without_key_specs_fall_back_to_legacy_ranges() -> None:
    # Redis 6 has no key specs: name, arity, flags, first key, last key, step.
    legacy = KeyTable.from_command_reply(
        [
            [b"set", -3, [b"write"], 1, 1, 1],
            [b"mset", -3, [b"write"], 1, -1, 2],
            [b"eval", -3, [b"noscript", b"movablekeys"], 0, 0, 0],
        ]
    )
    assert legacy.written_keys([b"SET", b"k", b"v"]) == [b"k"]
    assert legacy.written_keys([b"MSET", b"a", b"1", b"b", b"2"]) == [b"a", b"b"]
    assert legacy.resolve(b"EVAL") is Special.INCOMPLETE


keys_strategy = st.lists(st.binary(min_size=0, max_size=20), min_size=1, max_size=12)


@given(keys=keys_strategy, args=st.lists(st.binary(max_size=8), max_size=4))
def test_keynum_commands_give_exactly_the_counted_keys(
    keys: list[bytes], args: list[bytes]
) -> None:
    table = KeyTable.from_command_reply(RECORDED_COMMAND_REPLY)
    count = str(len(keys)).encode()
    assert table.written_keys([b"EVAL", b"script", count, *keys, *args]) == keys
    assert table.written_keys([b"FCALL", b"fn", count, *keys, *args]) == keys
    assert table.written_keys([b"LMPOP", count, *keys, b"LEFT"]) == keys


@given(pairs=st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=10)), min_size=1))
def test_range_commands_give_every_key_position(pairs: list[tuple[bytes, bytes]]) -> None:
    table = KeyTable.from_command_reply(RECORDED_COMMAND_REPLY)
    flat = [part for pair in pairs for part in pair]
    assert table.written_keys([b"MSET", *flat]) == [key for key, _ in pairs]
    assert table.written_keys([b"DEL", *flat]) == flat


# The reply of COMMAND from redis-server 7.0.15 (Debian), for the commands the tests use:
# [name, arity, flags, first key, last key, step, acl categories, tips, key specs, subcommands].
RECORDED_COMMAND_REPLY: list[Any] = [
    [
        b"spublish",
        3,
        [b"pubsub", b"loading", b"stale", b"fast"],
        1,
        1,
        1,
        [b"@pubsub", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"not_key"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"lmpop",
        -4,
        [b"write", b"movablekeys"],
        0,
        0,
        0,
        [b"@write", b"@list", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"RW", b"access", b"delete"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"keynum", b"spec", [b"keynumidx", 0, b"firstkey", 1, b"keystep", 1]],
            ]
        ],
        [],
    ],
    [
        b"swapdb",
        3,
        [b"write", b"fast"],
        0,
        0,
        0,
        [b"@keyspace", b"@write", b"@fast", b"@dangerous"],
        [],
        [],
        [],
    ],
    [
        b"exec",
        1,
        [b"noscript", b"loading", b"stale", b"skip_slowlog"],
        0,
        0,
        0,
        [b"@slow", b"@transaction"],
        [],
        [],
        [],
    ],
    [
        b"copy",
        -3,
        [b"write", b"denyoom"],
        1,
        2,
        1,
        [b"@keyspace", b"@write", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"sunionstore",
        -3,
        [b"write", b"denyoom"],
        1,
        -1,
        1,
        [b"@write", b"@set", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"replconf",
        -1,
        [b"admin", b"noscript", b"loading", b"stale", b"allow_busy"],
        0,
        0,
        0,
        [b"@admin", b"@slow", b"@dangerous"],
        [],
        [],
        [],
    ],
    [
        b"multi",
        1,
        [b"noscript", b"loading", b"stale", b"fast", b"allow_busy"],
        0,
        0,
        0,
        [b"@fast", b"@transaction"],
        [],
        [],
        [],
    ],
    [
        b"lmove",
        5,
        [b"write", b"denyoom"],
        1,
        2,
        1,
        [b"@write", b"@list", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"RW", b"access", b"delete"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"RW", b"insert"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"move",
        3,
        [b"write", b"fast"],
        1,
        1,
        1,
        [b"@keyspace", b"@write", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"access", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"hset",
        -4,
        [b"write", b"denyoom", b"fast"],
        1,
        1,
        1,
        [b"@write", b"@hash", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"incr",
        2,
        [b"write", b"denyoom", b"fast"],
        1,
        1,
        1,
        [b"@write", b"@string", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"access", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"expire",
        -3,
        [b"write", b"fast"],
        1,
        1,
        1,
        [b"@keyspace", b"@write", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"zunionstore",
        -4,
        [b"write", b"denyoom", b"movablekeys"],
        1,
        1,
        1,
        [b"@write", b"@sortedset", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"keynum", b"spec", [b"keynumidx", 0, b"firstkey", 1, b"keystep", 1]],
            ],
        ],
        [],
    ],
    [
        b"select",
        2,
        [b"loading", b"stale", b"fast"],
        0,
        0,
        0,
        [b"@fast", b"@connection"],
        [],
        [],
        [],
    ],
    [
        b"rename",
        3,
        [b"write"],
        1,
        2,
        1,
        [b"@keyspace", b"@write", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"RW", b"access", b"delete"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"getex",
        -2,
        [b"write", b"fast"],
        1,
        1,
        1,
        [b"@write", b"@string", b"@fast"],
        [],
        [
            [
                b"notes",
                b"RW and UPDATE because it changes the TTL",
                b"flags",
                [b"RW", b"access", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"del",
        -2,
        [b"write"],
        1,
        -1,
        1,
        [b"@keyspace", b"@write", b"@slow"],
        [b"request_policy:multi_shard", b"response_policy:agg_sum"],
        [
            [
                b"flags",
                [b"RM", b"delete"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"fcall",
        -3,
        [b"noscript", b"stale", b"skip_monitor", b"no_mandatory_keys", b"movablekeys"],
        0,
        0,
        0,
        [b"@slow", b"@scripting"],
        [],
        [
            [
                b"notes",
                b"We cannot tell how the keys will be used so we assume the worst, RW and UPDATE",
                b"flags",
                [b"RW", b"access", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"keynum", b"spec", [b"keynumidx", 0, b"firstkey", 1, b"keystep", 1]],
            ]
        ],
        [],
    ],
    [
        b"sort",
        -2,
        [b"write", b"denyoom", b"movablekeys"],
        1,
        1,
        1,
        [b"@write", b"@set", b"@sortedset", b"@list", b"@slow", b"@dangerous"],
        [],
        [
            [
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"notes",
                b"For the optional BY/GET keyword. It is marked 'unknown' because the key names "
                b"derive from the content of the key we sort",
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"unknown", b"spec", []],
                b"find_keys",
                [b"type", b"unknown", b"spec", []],
            ],
            [
                b"notes",
                b"For the optional STORE keyword. It is marked 'unknown' because the keyword can "
                b"appear anywhere in the argument array",
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"unknown", b"spec", []],
                b"find_keys",
                [b"type", b"unknown", b"spec", []],
            ],
        ],
        [],
    ],
    [
        b"eval",
        -3,
        [b"noscript", b"stale", b"skip_monitor", b"no_mandatory_keys", b"movablekeys"],
        0,
        0,
        0,
        [b"@slow", b"@scripting"],
        [],
        [
            [
                b"notes",
                b"We cannot tell how the keys will be used so we assume the worst, RW and UPDATE",
                b"flags",
                [b"RW", b"access", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"keynum", b"spec", [b"keynumidx", 0, b"firstkey", 1, b"keystep", 1]],
            ]
        ],
        [],
    ],
    [
        b"flushdb",
        -1,
        [b"write"],
        0,
        0,
        0,
        [b"@keyspace", b"@write", b"@slow", b"@dangerous"],
        [b"request_policy:all_shards", b"response_policy:all_succeeded"],
        [],
        [],
    ],
    [
        b"sadd",
        -3,
        [b"write", b"denyoom", b"fast"],
        1,
        1,
        1,
        [b"@write", b"@set", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"insert"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"ping",
        -1,
        [b"fast"],
        0,
        0,
        0,
        [b"@fast", b"@connection"],
        [b"request_policy:all_shards", b"response_policy:all_succeeded"],
        [],
        [],
    ],
    [
        b"pfcount",
        -2,
        [b"readonly"],
        1,
        -1,
        1,
        [b"@read", b"@hyperloglog", b"@slow"],
        [],
        [
            [
                b"notes",
                b"RW because it may change the internal representation of the key, and propagate "
                b"to replicas",
                b"flags",
                [b"RW", b"access"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"persist",
        2,
        [b"write", b"fast"],
        1,
        1,
        1,
        [b"@keyspace", b"@write", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"renamenx",
        3,
        [b"write", b"fast"],
        1,
        2,
        1,
        [b"@keyspace", b"@write", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"access", b"delete"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"OW", b"insert"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"xgroup",
        -2,
        [],
        0,
        0,
        0,
        [b"@slow"],
        [],
        [],
        [
            [
                b"xgroup|delconsumer",
                5,
                [b"write"],
                2,
                2,
                1,
                [b"@write", b"@stream", b"@slow"],
                [],
                [
                    [
                        b"flags",
                        [b"RW", b"delete"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"xgroup|create",
                -5,
                [b"write", b"denyoom"],
                2,
                2,
                1,
                [b"@write", b"@stream", b"@slow"],
                [],
                [
                    [
                        b"flags",
                        [b"RW", b"insert"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"xgroup|createconsumer",
                5,
                [b"write", b"denyoom"],
                2,
                2,
                1,
                [b"@write", b"@stream", b"@slow"],
                [],
                [
                    [
                        b"flags",
                        [b"RW", b"insert"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"xgroup|destroy",
                4,
                [b"write"],
                2,
                2,
                1,
                [b"@write", b"@stream", b"@slow"],
                [],
                [
                    [
                        b"flags",
                        [b"RW", b"delete"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"xgroup|setid",
                -5,
                [b"write"],
                2,
                2,
                1,
                [b"@write", b"@stream", b"@slow"],
                [],
                [
                    [
                        b"flags",
                        [b"RW", b"update"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"xgroup|help",
                2,
                [b"loading", b"stale"],
                0,
                0,
                0,
                [b"@stream", b"@slow"],
                [],
                [],
                [],
            ],
        ],
    ],
    [
        b"object",
        -2,
        [],
        0,
        0,
        0,
        [b"@slow"],
        [],
        [],
        [
            [
                b"object|idletime",
                3,
                [b"readonly"],
                2,
                2,
                1,
                [b"@keyspace", b"@read", b"@slow"],
                [b"nondeterministic_output"],
                [
                    [
                        b"flags",
                        [b"RO"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"object|encoding",
                3,
                [b"readonly"],
                2,
                2,
                1,
                [b"@keyspace", b"@read", b"@slow"],
                [b"nondeterministic_output"],
                [
                    [
                        b"flags",
                        [b"RO"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"object|help",
                2,
                [b"loading", b"stale"],
                0,
                0,
                0,
                [b"@keyspace", b"@slow"],
                [],
                [],
                [],
            ],
            [
                b"object|freq",
                3,
                [b"readonly"],
                2,
                2,
                1,
                [b"@keyspace", b"@read", b"@slow"],
                [b"nondeterministic_output"],
                [
                    [
                        b"flags",
                        [b"RO"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
            [
                b"object|refcount",
                3,
                [b"readonly"],
                2,
                2,
                1,
                [b"@keyspace", b"@read", b"@slow"],
                [b"nondeterministic_output"],
                [
                    [
                        b"flags",
                        [b"RO"],
                        b"begin_search",
                        [b"type", b"index", b"spec", [b"index", 2]],
                        b"find_keys",
                        [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
                    ]
                ],
                [],
            ],
        ],
    ],
    [
        b"georadius",
        -6,
        [b"write", b"denyoom", b"movablekeys"],
        1,
        1,
        1,
        [b"@write", b"@geo", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"keyword", b"spec", [b"keyword", b"STORE", b"startfrom", 6]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"keyword", b"spec", [b"keyword", b"STOREDIST", b"startfrom", 6]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"function",
        -2,
        [],
        0,
        0,
        0,
        [b"@slow"],
        [],
        [],
        [
            [
                b"function|load",
                -3,
                [b"write", b"denyoom", b"noscript"],
                0,
                0,
                0,
                [b"@write", b"@slow", b"@scripting"],
                [b"request_policy:all_shards", b"response_policy:all_succeeded"],
                [],
                [],
            ],
            [
                b"function|delete",
                3,
                [b"write", b"noscript"],
                0,
                0,
                0,
                [b"@write", b"@slow", b"@scripting"],
                [b"request_policy:all_shards", b"response_policy:all_succeeded"],
                [],
                [],
            ],
            [
                b"function|flush",
                -2,
                [b"write", b"noscript"],
                0,
                0,
                0,
                [b"@write", b"@slow", b"@scripting"],
                [b"request_policy:all_shards", b"response_policy:all_succeeded"],
                [],
                [],
            ],
            [
                b"function|restore",
                -3,
                [b"write", b"denyoom", b"noscript"],
                0,
                0,
                0,
                [b"@write", b"@slow", b"@scripting"],
                [b"request_policy:all_shards", b"response_policy:all_succeeded"],
                [],
                [],
            ],
            [
                b"function|list",
                -2,
                [b"noscript"],
                0,
                0,
                0,
                [b"@slow", b"@scripting"],
                [b"nondeterministic_output_order"],
                [],
                [],
            ],
            [b"function|dump", 2, [b"noscript"], 0, 0, 0, [b"@slow", b"@scripting"], [], [], []],
            [
                b"function|kill",
                2,
                [b"noscript", b"allow_busy"],
                0,
                0,
                0,
                [b"@slow", b"@scripting"],
                [b"request_policy:all_shards", b"response_policy:one_succeeded"],
                [],
                [],
            ],
            [
                b"function|help",
                2,
                [b"loading", b"stale"],
                0,
                0,
                0,
                [b"@slow", b"@scripting"],
                [],
                [],
                [],
            ],
            [
                b"function|stats",
                2,
                [b"noscript", b"allow_busy"],
                0,
                0,
                0,
                [b"@slow", b"@scripting"],
                [
                    b"nondeterministic_output",
                    b"request_policy:all_shards",
                    b"response_policy:special",
                ],
                [],
                [],
            ],
        ],
    ],
    [
        b"lpush",
        -3,
        [b"write", b"denyoom", b"fast"],
        1,
        1,
        1,
        [b"@write", b"@list", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"insert"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"bitop",
        -4,
        [b"write", b"denyoom"],
        2,
        -1,
        1,
        [b"@write", b"@bitmap", b"@slow"],
        [],
        [
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 2]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 3]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"migrate",
        -6,
        [b"write", b"movablekeys"],
        3,
        3,
        1,
        [b"@keyspace", b"@write", b"@slow", b"@dangerous"],
        [b"nondeterministic_output"],
        [
            [
                b"flags",
                [b"RW", b"access", b"delete"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 3]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ],
            [
                b"flags",
                [b"RW", b"access", b"delete", b"incomplete"],
                b"begin_search",
                [b"type", b"keyword", b"spec", [b"keyword", b"KEYS", b"startfrom", -2]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]],
            ],
        ],
        [],
    ],
    [
        b"flushall",
        -1,
        [b"write"],
        0,
        0,
        0,
        [b"@keyspace", b"@write", b"@slow", b"@dangerous"],
        [b"request_policy:all_shards", b"response_policy:all_succeeded"],
        [],
        [],
    ],
    [
        b"xread",
        -4,
        [b"readonly", b"blocking", b"movablekeys"],
        0,
        0,
        0,
        [b"@read", b"@stream", b"@slow", b"@blocking"],
        [],
        [
            [
                b"flags",
                [b"RO", b"access"],
                b"begin_search",
                [b"type", b"keyword", b"spec", [b"keyword", b"STREAMS", b"startfrom", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 2]],
            ]
        ],
        [],
    ],
    [
        b"pexpireat",
        -3,
        [b"write", b"fast"],
        1,
        1,
        1,
        [b"@keyspace", b"@write", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"set",
        -3,
        [b"write", b"denyoom"],
        1,
        1,
        1,
        [b"@write", b"@string", b"@slow"],
        [],
        [
            [
                b"notes",
                b"RW and ACCESS due to the optional `GET` argument",
                b"flags",
                [b"RW", b"access", b"update", b"variable_flags"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"unlink",
        -2,
        [b"write", b"fast"],
        1,
        -1,
        1,
        [b"@keyspace", b"@write", b"@fast"],
        [b"request_policy:multi_shard", b"response_policy:agg_sum"],
        [
            [
                b"flags",
                [b"RM", b"delete"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"zadd",
        -4,
        [b"write", b"denyoom", b"fast"],
        1,
        1,
        1,
        [b"@write", b"@sortedset", b"@fast"],
        [],
        [
            [
                b"flags",
                [b"RW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", 0, b"keystep", 1, b"limit", 0]],
            ]
        ],
        [],
    ],
    [
        b"publish",
        3,
        [b"pubsub", b"loading", b"stale", b"fast"],
        0,
        0,
        0,
        [b"@pubsub", b"@fast"],
        [],
        [],
        [],
    ],
    [
        b"mset",
        -3,
        [b"write", b"denyoom"],
        1,
        -1,
        2,
        [b"@write", b"@string", b"@slow"],
        [b"request_policy:multi_shard", b"response_policy:all_succeeded"],
        [
            [
                b"flags",
                [b"OW", b"update"],
                b"begin_search",
                [b"type", b"index", b"spec", [b"index", 1]],
                b"find_keys",
                [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 2, b"limit", 0]],
            ]
        ],
        [],
    ],
]
