"""The control plane's decoder and message parsers on untrusted input: the real channel's
`accept` (signature checked with a real keyring) and every body parser raise nothing but
their own errors, and no input makes them allocate beyond a fixed bound (tracemalloc)."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.consistency.control import ControlChannel, ControlMessage, encode
from reconciler.consistency.messages import (
    MAX_BUCKETS_PER_SLOT,
    REQUESTS,
    BadMessageError,
    Buckets,
    Children,
    Entries,
    Heartbeat,
    Hello,
    Metas,
    Request,
    Resync,
    Selfcheck,
    Ship,
    bounded_unpack,
    parse_reply,
    parse_request,
)
from replication.model.auth import Keyring
from replication.transport.settings import KafkaSettings

KEYRING = Keyring.parse(Keyring.generate_text(["eu-west", "us-east", "ap-south"]))
MIB = 1 << 20


def channel() -> ControlChannel:
    def no_producer() -> Any:
        raise AssertionError("nothing is sent here")

    chan = ControlChannel(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        "eu-west",
        no_producer,
        keyring=KEYRING,
        signer=KEYRING.signer("eu-west"),
        peers=["us-east", "ap-south"],
    )

    async def handler(msg: ControlMessage) -> None:
        return None

    chan.on("ae.", handler)
    chan.on("hb", handler, broadcast=True)
    return chan


def peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def signed_raw_payload(payload: bytes, sender: str = "us-east", to: str = "eu-west") -> bytes:
    """A correctly signed record around any payload bytes (what a keyed peer could send)."""
    signature = KEYRING.signer(sender).sign(b"reconciler/control/2", to.encode(), payload)
    packed: bytes = msgpack.packb([2, sender, signature.key_id, to, payload, signature.mac])
    return packed


def array_of(n: int, item: bytes) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + item * n


BOMBS = {
    "4 MiB of empty maps": array_of(4 * MIB - 16, b"\x80"),
    "4 MiB of empty arrays": array_of(4 * MIB - 16, b"\x90"),
    "4 MiB of negative fixints": array_of(4 * MIB - 16, b"\xe0"),
    "arrays of 1000 maps": array_of(4000, b"\xdc\x03\xe8" + b"\x80" * 1000),
    "deep nesting": b"\x91" * 100_000 + b"\xc0",
    "a map with 10**6 keys": b"\xdf" + (10**6).to_bytes(4, "big") + b"\x01\xc0" * 10**6,
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decoding_bombs_are_refused_within_a_fixed_memory_bound(name: str) -> None:
    data = BOMBS[name]

    def bounded() -> None:
        with pytest.raises(BadMessageError):
            bounded_unpack(data)

    # Unbounded, msgpack builds 165 MB (fixints) to 290 MB (empty maps) from 4 MiB.
    peak = peak_bytes(bounded)
    assert peak < 40 * MIB, f"{name}: {peak / MIB:.1f} MiB"


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_signed_bomb_is_rejected_by_the_channel_within_the_bound(name: str) -> None:
    chan = channel()
    record = signed_raw_payload(BOMBS[name])
    peak = peak_bytes(lambda: chan.accept(record))
    assert chan.accept(record) is None
    assert sum(chan.rejected.values()) == 2
    assert peak < 48 * MIB, f"{peak / MIB:.1f} MiB"


def test_a_valid_record_is_accepted_and_tampering_anywhere_is_not() -> None:
    chan = channel()
    us_east = KEYRING.signer("us-east")
    msg = ControlMessage("ae.req.hello", "us-east", "eu-west", "s1", {"seq": 1, "dbs": [0]})
    record = encode(ControlMessage(**{**_as_dict(msg), "sent_ms": _now()}), us_east)
    accepted = chan.accept(record)
    assert accepted is not None
    assert accepted[0].body == {"seq": 1, "dbs": [0]}
    for i in range(len(record)):
        tampered = bytearray(record)
        tampered[i] ^= 0x40
        result = chan.accept(bytes(tampered))
        # Either rejected, or (a flipped bit in the recipient) for another region.
        assert result is None
    assert chan.rejected["bad-signature"] > 0


def _as_dict(msg: ControlMessage) -> dict[str, Any]:
    return {f: getattr(msg, f) for f in ("type", "sender", "to", "session", "body", "size")}


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 4, 16, 1023, 1024, 1025, 4095, 4096, 16383, 16384, 2**31, 2**63]),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.binary(max_size=20),
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 20)), inner, max_size=6)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(
    st.sampled_from(
        [
            "seq",
            "ok",
            "error",
            "db",
            "dbs",
            "level",
            "nodes",
            "slots",
            "want",
            "keys",
            "target",
            "roots",
            "hashes",
            "buckets",
            "entries",
            "metas",
            "shipped",
            "checked",
            "inconsistent",
            "sample",
            "epoch",
            "status",
            "at_ms",
            "lag",
            "applied",
            "produced",
        ]
    )
    | st.text(max_size=6),
    junk,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_the_channel(data: bytes) -> None:
    chan = channel()
    assert chan.accept(data) is None or isinstance(chan.accept(data), tuple)


@settings(max_examples=150, deadline=None)
@given(payload=junk, sender=st.sampled_from(["us-east", "ap-south", "eu-west"]))
def test_arbitrary_signed_payloads_never_escape_the_channel(payload: Any, sender: str) -> None:
    chan = channel()
    record = signed_raw_payload(msgpack.packb(payload), sender)
    peak = peak_bytes(lambda: chan.accept(record))
    assert peak < 4 * MIB


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from([*sorted(REQUESTS), "nope"]), body=bodies)
def test_request_parsing_raises_only_bad_message(op: str, body: dict[str, Any]) -> None:
    try:
        seq, request = parse_request(op, body)
    except BadMessageError:
        return
    assert seq >= 1
    assert isinstance(request, Request)


REQUEST_EXAMPLES: list[Request] = [
    Hello((0, 1)),
    Children(0, 0, (0,)),
    Children(0, 3, (7, 8, 4095)),
    Buckets(0, ((1, 4), (16383, MAX_BUCKETS_PER_SLOT))),
    Entries(0, ((1, 4, frozenset({0, 3})),)),
    Metas(0, (b"a", b"b")),
    Ship(0, (b"a",), "us-east"),
    Resync("us-east"),
    Selfcheck(),
]


@settings(max_examples=400, deadline=None)
@given(request=st.sampled_from(REQUEST_EXAMPLES), body=bodies)
def test_reply_parsing_raises_only_bad_message(request: Request, body: dict[str, Any]) -> None:
    with contextlib.suppress(BadMessageError):
        parse_reply(body, request)


@settings(max_examples=200, deadline=None)
@given(body=bodies)
def test_heartbeat_parsing_raises_only_bad_message(body: dict[str, Any]) -> None:
    with contextlib.suppress(BadMessageError):
        Heartbeat.parse(body)


@pytest.mark.parametrize("request_", REQUEST_EXAMPLES, ids=lambda r: r.op)
def test_every_request_round_trips_through_the_wire(request_: Request) -> None:
    body = bounded_unpack(msgpack.packb({"seq": 5, **request_.body()}, use_bin_type=True))
    assert parse_request(request_.op, body) == (5, request_)


@pytest.mark.parametrize(
    ("op", "body"),
    [
        ("buckets", {"seq": 1, "db": 0, "slots": [[0, 2**31]]}),
        ("buckets", {"seq": 1, "db": 0, "slots": [[s, 4] for s in range(129)]}),
        ("buckets", {"seq": 1, "db": 0, "slots": [[1, 4], [1, 4]]}),
        ("children", {"seq": 1, "db": 0, "level": 4, "nodes": [0]}),
        ("children", {"seq": 1, "db": 0, "level": 1, "nodes": [16]}),
        ("children", {"seq": 1, "db": 0, "level": 0, "nodes": [0, 0]}),
        ("entries", {"seq": 1, "db": 0, "want": [[0, 4, [4]]]}),
        ("entries", {"seq": 1, "db": 0, "want": [[0, 4, [0, 1, 2, 3, 0]]]}),
        ("metas", {"seq": 1, "db": 0, "keys": [b"k"] * 2001}),
        ("metas", {"seq": 1, "db": 0, "keys": ["text"]}),
        ("ship", {"seq": 1, "db": 0, "keys": [b"k"], "target": "*"}),
        ("hello", {"seq": 0, "dbs": [0]}),
        ("hello", {"seq": True, "dbs": [0]}),
        ("hello", {"seq": 1, "dbs": [70000]}),
    ],
)
def test_requests_beyond_the_bounds_are_refused(op: str, body: dict[str, Any]) -> None:
    with pytest.raises(BadMessageError):
        parse_request(op, body)


def test_replies_are_checked_against_their_request() -> None:
    children = Children(0, 0, (0,))
    with pytest.raises(BadMessageError, match="hashes"):
        parse_reply({"ok": True, "hashes": [1] * 15}, children)
    entries = Entries(0, ((1, 4, frozenset({0})),))
    # A key of another slot (or another bucket) than those asked for is refused.
    with pytest.raises(BadMessageError, match="outside"):
        parse_reply({"ok": True, "entries": [b"not-in-slot-1", b""]}, entries)
    metas = Metas(0, (b"a",))
    with pytest.raises(BadMessageError, match="not asked"):
        parse_reply({"ok": True, "metas": [b"b", b"\x01"]}, metas)
    with pytest.raises(BadMessageError):
        parse_reply({"ok": True, "shipped": 2}, Ship(0, (b"a",), "us-east"))
    refusal = parse_reply({"ok": False, "error": "x" * 5000}, metas)
    assert len(refusal.error) <= 1000  # type: ignore[union-attr]
