"""The replication-stream parser, sans I/O: offsets to the byte, dbs, keys, batches, gaps."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.capture.batch import CaptureBatch, CaptureProtocolError
from replication.capture.commands import KeyTable
from replication.capture.parser import StreamParser, command_size
from tests.unit.test_capture_commands import RECORDED_COMMAND_REPLY

TABLE = KeyTable.from_command_reply(RECORDED_COMMAND_REPLY)
REPLID = "a" * 40


def resp(*commands: Sequence[bytes]) -> bytes:
    return b"".join(hiredis.pack_command(tuple(argv)) for argv in commands)


def parser(**kwargs: object) -> StreamParser:
    options: dict[str, object] = {"dbs": frozenset({0}), "offset": 0, "replid": REPLID}
    options.update(kwargs)
    return StreamParser(TABLE, **options)  # type: ignore[arg-type]


def run(p: StreamParser, chunks: Iterable[bytes]) -> list[CaptureBatch]:
    """Feed chunk by chunk, taking batches as the stream source does."""
    batches = []
    for chunk in chunks:
        p.feed(chunk)
        while p.fill():
            batches.append(p.take())
    if p.pending:
        batches.append(p.take())
    return batches


def union(batches: Iterable[CaptureBatch]) -> dict[int, set[bytes]]:
    found: dict[int, set[bytes]] = {}
    for batch in batches:
        for db, keys in batch.keys.items():
            found.setdefault(db, set()).update(keys)
    return found


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# -- offsets ---------------------------------------------------------------------------------

boundary_lengths = st.sampled_from([0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535, 65536])
args = st.one_of(
    st.binary(max_size=40),
    boundary_lengths.map(lambda n: b"x" * n),
)


@settings(deadline=None)  # 64 KiB arguments: CPU time on a shared machine varies a lot
@given(argv=st.lists(args, min_size=1, max_size=6))
def test_command_size_is_the_canonical_resp_length(argv: list[bytes]) -> None:
    assert command_size(argv) == len(hiredis.pack_command(tuple(argv)))


@settings(max_examples=60, deadline=None)
@given(commands=st.lists(st.lists(args, min_size=1, max_size=5), min_size=1, max_size=12))
def test_parsed_offset_is_exactly_the_stream_length(commands: list[list[bytes]]) -> None:
    # Arbitrary arguments (the inline size computation must match byte for byte,
    # across the 64 KiB table edge too); commands whose names are unknown are fine.
    stream = resp(*commands)
    p = parser(offset=1000, on_unknown=lambda name, why: None)
    batches = run(p, [stream])
    assert p.offset == 1000 + len(stream)
    assert sum(batch.commands for batch in batches) == len(commands)
    assert batches[-1].end_offset == 1000 + len(stream)


SCRIPT: list[list[bytes]] = [
    [b"PING"],
    [b"SELECT", b"0"],
    [b"SET", b"a", b"1"],
    [b"hset", b"h", b"f", b"v"],
    [b"MULTI"],
    [b"INCR", b"counter"],
    [b"PEXPIREAT", b"a", b"1795588819897"],
    [b"EXEC"],
    [b"SELECT", b"1"],
    [b"SET", b"other-db", b"1"],
    [b"SELECT", b"0"],
    [b"DEL", b"x", b"y"],
    [b"REPLCONF", b"GETACK", b"*"],
    [b"SET", b"big", b"v" * 70_000],
    [b"MSET", b"m1", b"1", b"m2", b"2"],
]
SCRIPT_KEYS = {0: {b"a", b"h", b"counter", b"x", b"y", b"big", b"m1", b"m2"}}
SMALL_SCRIPT = [argv for argv in SCRIPT if argv[1:2] != [b"big"]]
SMALL_SCRIPT_KEYS = {0: SCRIPT_KEYS[0] - {b"big"}}


@settings(max_examples=80, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=80_000), max_size=20))
def test_any_chunking_gives_the_same_keys_and_offset(cuts: list[int]) -> None:
    stream = resp(*SCRIPT)
    getacks: list[int] = []
    p = parser(offset=5, on_getack=lambda: getacks.append(1))
    batches = run(p, split(stream, cuts))
    assert union(batches) == SCRIPT_KEYS
    assert p.offset == 5 + len(stream)
    assert sum(batch.commands for batch in batches) == len(SCRIPT)
    assert len(getacks) == 1
    ends = [batch.end_offset for batch in batches]
    assert ends == sorted(ends)


@settings(max_examples=60, deadline=None)
@given(
    slice_bytes=st.integers(min_value=1, max_value=300),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=6),
    newlines_at=st.lists(st.integers(min_value=0, max_value=len(SMALL_SCRIPT)), max_size=3),
)
def test_hiredis_fed_in_slices_of_any_size_gives_the_same_offset_and_keys(
    slice_bytes: int, cuts: list[int], newlines_at: list[int]
) -> None:
    # The parser hands hiredis small slices of what it read (hiredis slows down with the
    # bytes it holds); slice edges must be invisible, keep-alive recovery included.
    pieces = [hiredis.pack_command(tuple(argv)) for argv in SMALL_SCRIPT]
    for index in sorted(newlines_at, reverse=True):
        pieces.insert(index, b"\n")
    p = parser(feed_slice_bytes=slice_bytes, max_commands=3)
    batches = run(p, split(b"".join(pieces), cuts))
    assert p.offset == len(resp(*SMALL_SCRIPT))
    assert union(batches) == SMALL_SCRIPT_KEYS
    assert sum(batch.commands for batch in batches) == len(SMALL_SCRIPT)


def test_every_single_split_point_gives_the_same_result() -> None:
    stream = resp(*SCRIPT[:13])
    for cut in range(len(stream) + 1):
        p = parser()
        batches = run(p, split(stream, [cut]))
        assert p.offset == len(stream), cut
        assert union(batches) == {0: SCRIPT_KEYS[0] - {b"big", b"m1", b"m2"}}, cut


@settings(max_examples=60, deadline=None)
@given(
    where=st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=80_100), max_size=10),
)
def test_bare_newline_keepalives_between_commands_are_skipped_and_not_counted(
    where: list[int], cuts: list[int]
) -> None:
    # A replica whose own master is down sends "\n" to its replicas between commands.
    pieces = [hiredis.pack_command(tuple(argv)) for argv in SCRIPT]
    for index in sorted(where, reverse=True):
        pieces.insert(index, b"\n")
    with_newlines = b"".join(pieces)
    p = parser()
    batches = run(p, split(with_newlines, cuts))
    assert p.offset == len(resp(*SCRIPT))
    assert p.skipped_newlines == len(where)
    assert union(batches) == SCRIPT_KEYS


@pytest.mark.parametrize(
    "garbage", [b"?what\r\n", b"+OK\r\n", b":5\r\n", b"$3\r\nabc\r\n", b"-ERR x\r\n", b"*0\r\n"]
)
def test_anything_but_commands_in_the_stream_is_a_protocol_error(garbage: bytes) -> None:
    # The master only ever writes arrays of bulk strings after the RDB.
    with pytest.raises(CaptureProtocolError):
        run(parser(), [resp([b"SET", b"a", b"1"]) + garbage])


# -- dbs, keys, gaps ----------------------------------------------------------------------------


def test_select_routes_keys_and_uncaptured_dbs_are_ignored() -> None:
    p = parser(dbs=frozenset({0, 2}))
    batches = run(
        p,
        [
            resp(
                [b"SET", b"zero", b"1"],
                [b"SELECT", b"1"],
                [b"SET", b"one", b"1"],
                [b"SELECT", b"2"],
                [b"SET", b"two", b"1"],
            )
        ],
    )
    assert union(batches) == {0: {b"zero"}, 2: {b"two"}}
    assert p.db == 2


def test_a_continuation_starts_in_the_db_of_its_position() -> None:
    p = parser(dbs=frozenset({0, 3}), db=3)
    assert union(run(p, [resp([b"SET", b"k", b"v"])])) == {3: {b"k"}}


def test_flush_starts_a_new_batch_carrying_the_flush_gap() -> None:
    p = parser()
    batches = run(
        p,
        [
            resp(
                [b"SET", b"before", b"1"],
                [b"FLUSHDB"],
                [b"SET", b"after", b"1"],
            )
        ],
    )
    assert [dict(b.keys) for b in batches] == [{0: {b"before"}}, {0: {b"after"}}]
    assert batches[0].gap is None
    assert batches[0].flushed_dbs == frozenset()
    assert batches[1].flushed_dbs == {0}
    assert batches[1].gap is not None
    assert batches[1].gap.reason == "flush"
    assert batches[1].commands == 2
    assert batches[0].end_offset == len(resp([b"SET", b"before", b"1"]))


def test_flushall_empties_every_captured_db_and_flushdb_elsewhere_is_no_gap() -> None:
    p = parser(dbs=frozenset({0, 5}))
    batches = run(
        p,
        [resp([b"SELECT", b"3"], [b"FLUSHDB"], [b"SET", b"k", b"v"], [b"FLUSHALL", b"ASYNC"])],
    )
    assert [b.gap.reason if b.gap else None for b in batches] == [None, "flush"]
    assert batches[1].flushed_dbs == {0, 5}
    assert batches[1].commands == 1


def test_two_gaps_never_share_a_batch() -> None:
    p = parser(dbs=frozenset({0, 1}))
    batches = run(p, [resp([b"FLUSHALL"], [b"SWAPDB", b"0", b"1"], [b"SWAPDB", b"7", b"8"])])
    assert [b.gap.reason if b.gap else None for b in batches] == ["flush", "swapdb"]
    assert batches[1].commands == 2  # the SWAPDB of uncaptured dbs is no gap


def test_move_and_copy_write_keys_in_their_target_db() -> None:
    p = parser(dbs=frozenset({0, 2}))
    batches = run(
        p,
        [
            resp(
                [b"MOVE", b"moved", b"2"],
                [b"COPY", b"src", b"copied", b"DB", b"2"],
                [b"COPY", b"src", b"here"],
                [b"MOVE", b"gone", b"9"],
            )
        ],
    )
    assert union(batches) == {0: {b"moved", b"here", b"gone"}, 2: {b"moved", b"copied"}}


def test_internal_keys_are_never_reported() -> None:
    p = parser()
    batches = run(p, [resp([b"HSET", b"__rr:meta:1", b"k", b"v"], [b"SET", b"user", b"1"])])
    assert union(batches) == {0: {b"user"}}
    only_internal = run(parser(), [resp([b"HSET", b"__rr:meta:1", b"k", b"v"])])
    assert only_internal[0].keys == {}
    assert only_internal[0].commands == 1


def test_unknown_commands_are_reported_and_counted() -> None:
    seen: list[bytes] = []
    p = parser(on_unknown=lambda name, why: seen.append(name))
    batches = run(p, [resp([b"MYMODULE.SET", b"k", b"v"], [b"SET", b"a", b"1"])])
    assert seen == [b"MYMODULE.SET"]
    assert union(batches) == {0: {b"a"}}


def test_batches_hold_at_most_max_commands() -> None:
    commands = [[b"SET", b"k%d" % i, b"v"] for i in range(25)]
    batches = run(parser(max_commands=10), [resp(*commands)])
    assert [b.commands for b in batches] == [10, 10, 5]
    assert union(batches) == {0: {argv[1] for argv in commands}}


# -- replay window ------------------------------------------------------------------------------


@settings(deadline=None)
@given(window=st.integers(min_value=0, max_value=400), cuts=st.lists(st.integers(0, 400)))
def test_batches_never_straddle_the_replay_window(window: int, cuts: list[int]) -> None:
    commands = [[b"SET", b"k%d" % i, b"v%d" % i] for i in range(12)]
    stream = resp(*commands)
    batches = run(parser(replay_until=window, max_commands=4), split(stream, cuts))
    for batch in batches:
        assert batch.end_offset is not None
        if batch.replay:
            assert batch.end_offset <= window
        else:
            assert batch.end_offset > window
    # A straddling batch would be non-replay while holding commands inside the window.
    ends = [0]
    for argv in commands:
        ends.append(ends[-1] + command_size(argv))
    replayed = sum(batch.commands for batch in batches if batch.replay)
    assert replayed == sum(1 for end in ends[1:] if end <= window)


# -- echoes of applies -----------------------------------------------------------------------

META = b"__rr:m:{" + b"a" + b"}"
APPLY_BLOCK = [
    [b"MULTI"],
    [b"SET", b"applied", b"v"],
    [b"HSET", META, b"applied", b"packed-metadata"],
    [b"EXEC"],
]


def test_an_apply_block_is_an_echo_and_its_keys_are_not_reported() -> None:
    # What Redis replicates for one rr_apply: the script's effects in MULTI/EXEC.
    stream = resp([b"SET", b"local-before", b"1"], *APPLY_BLOCK, [b"SET", b"local-after", b"1"])
    p = parser()
    batches = run(p, [stream])
    assert union(batches) == {0: {b"local-before", b"local-after"}}
    assert p.echo_keys_dropped == 1
    assert p.offset == len(stream)
    assert sum(b.commands for b in batches) == 6


def test_an_applications_transaction_is_reported_whole() -> None:
    stream = resp([b"MULTI"], [b"SET", b"a", b"1"], [b"INCR", b"n"], [b"EXEC"])
    p = parser()
    assert union(run(p, [stream])) == {0: {b"a", b"n"}}
    assert p.echo_keys_dropped == 0


@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
@settings(max_examples=60, deadline=None)
def test_an_apply_block_seen_in_pieces_is_reported_never_lost(cuts: list[int]) -> None:
    # A batch cut inside the block (command budget): the keys are reported, the versioner
    # decides. Whatever the chunking, a key is either dropped as an echo or reported.
    stream = resp(*APPLY_BLOCK, [b"SET", b"after", b"1"])
    p = parser(max_commands=2)
    found = union(run(p, split(stream, cuts)))
    assert found == {0: {b"applied", b"after"}}
    assert p.echo_keys_dropped == 0


def test_a_block_that_switches_databases_is_reported() -> None:
    stream = resp(
        [b"MULTI"], [b"SET", b"a", b"1"], [b"SELECT", b"0"], [b"HSET", META, b"a", b"m"], [b"EXEC"]
    )
    p = parser()
    assert union(run(p, [stream])) == {0: {b"a"}}
    assert p.echo_keys_dropped == 0


def test_an_apply_block_in_a_database_not_captured_reports_nothing() -> None:
    stream = resp([b"SELECT", b"3"], *APPLY_BLOCK, [b"SELECT", b"0"], [b"SET", b"z", b"1"])
    p = parser()
    assert union(run(p, [stream])) == {0: {b"z"}}
