"""The bytes between PSYNC and the command stream: reply line, keep-alives, RDB in both forms.

Also the small pieces around the link: the address (its password never shows) and the
bounded batch channel (the backpressure point).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.capture.batch import CaptureConnectionError, CaptureProtocolError
from replication.capture.handshake import PsyncReplyParser
from replication.capture.link import ServerError
from replication.capture.notifications import REQUIRED_FLAGS, missing_flags
from replication.capture.source import BatchChannel
from replication.redis.address import RedisAddress

REPLID = "8b090c1d5f6e0643d6d9f3419776ca404fa00a57"
MARK = b"476f0dcf348bf41cd211c8ae055c4642238bdaab"
STREAM = b"*1\r\n$4\r\nPING\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n"
# An RDB-like payload full of near-misses of the EOF mark and of RESP-looking bytes.
PAYLOAD = b"REDIS0010\xfa\tredis-ver" + MARK[:39] + b"\r\n$EOF:\n+CONTINUE\r\n" + MARK[1:] + b"\xff"

DISK = (
    b"\n\n+FULLRESYNC " + REPLID.encode() + b" 314\r\n\n\n$%d\r\n" % len(PAYLOAD) + PAYLOAD + STREAM
)
DISKLESS = b"\n+FULLRESYNC " + REPLID.encode() + b" 7\r\n$EOF:" + MARK + b"\r\n" + PAYLOAD + MARK
DISKLESS += STREAM
CONTINUE_SAME = b"+CONTINUE\r\n" + STREAM
CONTINUE_NEW = b"\n+CONTINUE " + REPLID.encode() + b"\r\n" + STREAM

CASES = {
    "disk": (DISK, (True, REPLID, 314), len(PAYLOAD)),
    "diskless": (DISKLESS, (True, REPLID, 7), len(PAYLOAD)),
    "continue": (CONTINUE_SAME, (False, None, None), 0),
    "continue-new-replid": (CONTINUE_NEW, (False, REPLID, None), 0),
}


def consume(chunks: list[bytes]) -> tuple[PsyncReplyParser, bytes]:
    parser = PsyncReplyParser()
    stream = b"".join(parser.feed(chunk) for chunk in chunks)
    return parser, stream


def check(parser: PsyncReplyParser, stream: bytes, name: str) -> None:
    _, reply, rdb_bytes = CASES[name]
    assert parser.done
    assert parser.reply is not None
    assert (parser.reply.full, parser.reply.replid, parser.reply.offset) == reply
    assert parser.rdb_bytes == rdb_bytes
    assert stream == STREAM


@pytest.mark.parametrize("name", sorted(CASES))
def test_rdb_is_skipped_whatever_byte_the_chunks_split_at(name: str) -> None:
    data = CASES[name][0]
    for cut in range(len(data) + 1):
        parser, stream = consume([data[:cut], data[cut:]])
        check(parser, stream, name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rdb_is_skipped_when_fed_one_byte_at_a_time(name: str) -> None:
    data = CASES[name][0]
    parser, stream = consume([data[i : i + 1] for i in range(len(data))])
    check(parser, stream, name)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(CASES)),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_rdb_is_skipped_for_any_chunking(name: str, cuts: list[int]) -> None:
    data = CASES[name][0]
    bounds = [0, *sorted({min(cut, len(data)) for cut in cuts}), len(data)]
    parser, stream = consume([data[a:b] for a, b in itertools.pairwise(bounds)])
    check(parser, stream, name)


def test_stream_bytes_glued_to_the_rdb_are_not_lost_in_disk_mode() -> None:
    # Disk mode puts the replica online right after the file: commands may share a read.
    parser, stream = consume([DISK])
    check(parser, stream, "disk")


def test_empty_rdb_goes_straight_to_the_stream() -> None:
    parser, stream = consume([b"+FULLRESYNC " + REPLID.encode() + b" 0\r\n$0\r\n" + STREAM])
    assert parser.done
    assert stream == STREAM


def test_psync_error_reply_is_raised_for_classification() -> None:
    with pytest.raises(ServerError) as caught:
        consume([b"\n-NOPERM this user has no permissions to run the 'psync' command\r\n"])
    assert caught.value.code == "NOPERM"


def test_master_aborting_the_full_sync_is_a_connection_error() -> None:
    with pytest.raises(CaptureConnectionError):
        consume([b"+FULLRESYNC " + REPLID.encode() + b" 1\r\n-ERR BGSAVE failed\r\n"])


@pytest.mark.parametrize(
    "reply",
    [b"+OK\r\n", b"+FULLRESYNC x\r\n", b"+FULLRESYNC " + REPLID.encode() + b" 1\r\nREDIS\r\n"],
)
def test_unexpected_replies_are_protocol_errors(reply: bytes) -> None:
    with pytest.raises(CaptureProtocolError):
        consume([reply])


def test_a_reply_line_that_never_ends_is_refused() -> None:
    with pytest.raises(CaptureProtocolError):
        consume([b"+" + b"x" * 10_000])


# -- address ---------------------------------------------------------------------------------


def test_address_password_never_appears_in_repr_or_str() -> None:
    address = RedisAddress.from_url("redis://capture:s3cr%40t@10.0.0.5:6380/0")
    assert address.username == "capture"
    assert address.password == "s3cr@t"
    assert (address.host, address.port) == ("10.0.0.5", 6380)
    for text in (repr(address), str(address), f"{address!r} {address}"):
        assert "s3cr" not in text
    assert "********" in repr(address)
    assert address.auth_command() == ("AUTH", "capture", "s3cr@t")
    assert RedisAddress.from_url("redis://:pw@h").auth_command() == ("AUTH", "pw")
    assert RedisAddress.from_url("redis://h").auth_command() is None


def test_only_redis_and_rediss_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="rediss://"):
        RedisAddress.from_url("unix:///tmp/redis.sock")
    assert RedisAddress.from_url("redis://h:6379").tls is None
    assert RedisAddress.from_url("rediss://h:6379").tls is not None
    with pytest.raises(ValueError, match="host"):
        RedisAddress.from_url("redis:///0")
    with pytest.raises(ValueError, match="database"):
        RedisAddress.from_url("redis://h/zero")


def test_an_explicit_password_wins_and_the_database_is_kept() -> None:
    address = RedisAddress.from_url("redis://u:inurl@h:7000/3", password="given")
    assert (address.host, address.port, address.db, address.password) == ("h", 7000, 3, "given")
    assert address.for_db(5).db == 5
    assert address.for_db(5).password == "given"
    assert str(address) == "redis://h:7000/3"


# -- channel ---------------------------------------------------------------------------------


async def test_a_full_channel_makes_the_producer_wait() -> None:
    channel: BatchChannel[int] = BatchChannel(2)
    assert await channel.put(1)
    assert await channel.put(2)
    third = asyncio.ensure_future(channel.put(3))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not third.done()  # backpressure: the producer is held
    assert await channel.get() == 1
    assert await asyncio.wait_for(third, 1)
    assert [await channel.get(), await channel.get()] == [2, 3]


async def test_a_failed_channel_delivers_what_it_holds_then_the_error() -> None:
    channel: BatchChannel[int] = BatchChannel(4)
    await channel.put(1)
    channel.close(CaptureProtocolError("boom"))
    assert await channel.get() == 1
    with pytest.raises(CaptureProtocolError):
        await channel.get()
    assert not await channel.put(2)


async def test_a_stopped_channel_wakes_its_consumer_with_the_end() -> None:
    channel: BatchChannel[int] = BatchChannel(4)
    waiting = asyncio.ensure_future(channel.get())
    await asyncio.sleep(0)
    channel.close(drop=True)
    assert await asyncio.wait_for(waiting, 1) is None
    assert not await channel.put(1)
    assert await channel.get() is None


# -- notification config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "missing"),
    [
        ("", set(REQUIRED_FLAGS)),
        ("KEA", set()),
        ("AE", set()),
        ("Eg$lshzxet", set()),
        ("KA", {"E"}),
        ("Ex", set("g$lshzet")),
        ("EAm", set()),
    ],
)
def test_notification_flags_we_need_account_for_the_all_alias(
    value: str, missing: set[str]
) -> None:
    assert missing_flags(value) == missing
