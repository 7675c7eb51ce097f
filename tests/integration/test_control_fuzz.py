"""Hypothesis drives a real daemon's control plane, as responder and as initiator, with
arbitrary messages from a peer holding a real key (signed, so they get past
authentication: a buggy or compromised peer), over the real Kafka broker.

Responder: arbitrary anti-entropy requests, of every kind and of none, with junk and
extreme field values (bucket counts, node lists, slots, levels, sizes). Initiator: the
daemon's own sessions get plausible answers up to one step, then an arbitrary reply there.

After every example the daemon is running, its data is unchanged, and its peak resident
memory (VmHWM, which only ever grows) is within MEMORY_BOUND_KB of what it was before the
first example: neither side crashes nor allocates beyond a fixed bound.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devcluster import KafkaBroker
from devcluster.daemons import keyring_of, wait_for
from reconciler.consistency.control import ControlMessage
from reconciler.consistency.merkle import FANOUT, bucket_of
from replication.model.slots import key_slot
from tests.impostor import Impostor
from tests.integration.test_admin_access import call
from tests.integration.test_control_plane import MANUAL, peak_rss_kb
from tests.promtext import metric, metric_sum
from tests.regions import Regions, snapshot
from tests.servers import RedisFactory

pytestmark = [
    pytest.mark.integration,
    # The impostor's Kafka clients run in another thread and use the `random` module (to
    # pick partitions and brokers) while hypothesis draws; hypothesis cannot tell that
    # from a strategy using it, and warns. The strategies here do not use it.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

A, B = "eu-west", "us-east"
KEYS = [f"acct:{i}".encode() for i in range(300)]
MEMORY_BOUND_KB = 96 * 1024
REFUSED = "reconciler_antientropy_refused_total"


class Fuzzed:
    def __init__(self, regions: Regions, b: Impostor) -> None:
        self.regions = regions
        self.daemon = regions.daemons[A]
        self.b = b
        self.data = snapshot(regions.clients[A])
        self.peak0 = peak_rss_kb(self.daemon)
        self.seq = itertools.count(1)

    def dropped(self) -> float:
        """Requests dropped unanswered: by the control plane (e.g. a type it does not
        take) or by anti-entropy (no valid seq to answer with)."""
        return metric(self.daemon, REFUSED, reason="malformed") + metric_sum(
            self.daemon, "reconciler_control_rejected_total"
        )

    def check(self) -> None:
        assert self.daemon.running
        grown = peak_rss_kb(self.daemon) - self.peak0
        assert grown < MEMORY_BOUND_KB, f"peak RSS grew by {grown} kB"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, kafka_broker: KafkaBroker) -> Iterator[Fuzzed]:
    base = tmp_path_factory.mktemp("fuzz")
    factory = RedisFactory(base / "redis")
    regions = Regions(base, kafka_broker, factory, names=(A, B, "ap-south"), overrides=MANUAL)
    try:
        client = regions.clients[A]
        for key in KEYS:
            client.set(key, b"v-" + key)
        regions.daemons[A].start()
        wait_for(
            lambda: regions.daemons[A].get("/status")["merkle_keys"]["0"] >= len(KEYS),
            30,
            "eu-west to index its keys",
        )
        keyring = keyring_of(base / "configs")
        with Impostor(kafka_broker.bootstrap, regions.prefix, B, keyring, [A]) as b:
            # eu-west's own session with us-east (its start was a gap) first completes.
            root = int(ask(b, "hello", {"dbs": [0]})["roots"]["0"])
            agree = {"ok": True, "roots": {"0": root}, "keys": {"0": len(KEYS)}}
            b.policy = lambda msg: agree if msg.type == "ae.req.hello" else None
            b.keep_alive()
            wait_for(
                lambda: (
                    metric(regions.daemons[A], "reconciler_antientropy_sessions_total", result="ok")
                    >= 1
                ),
                60,
                "eu-west's own session with us-east",
            )
            b.policy = None
            fuzz = Fuzzed(regions, b)
            yield fuzz
            assert snapshot(regions.clients[A]) == fuzz.data
    finally:
        regions.stop()
        factory.stop_all()


def ask(imp: Impostor, op: str, body: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """One request to eu-west; its reply's body ({} if none came in time)."""
    session = uuid.uuid4().hex
    imp.send(f"ae.req.{op}", A, session, **({"seq": 1} | body))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            msg = imp.next_message(timeout_s=max(0.05, deadline - time.monotonic()))
            if msg.session == session and msg.type == "ae.reply":
                return msg.body
    return {}


# ---------------------------------------------------------------------------- strategies
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 3, 4, 15, 16, 255, 256, 1023, 1024, 1025, 4095, 4096, 16383]),
    st.sampled_from([16384, 65535, 65536, 2**31, 2**32, 2**53, 2**63 - 1, 2**64 - 1]),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=24),
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
numbers = st.one_of(st.integers(0, 20), scalars)
pairs = st.lists(st.lists(numbers, max_size=3), max_size=160)
keys = st.lists(st.one_of(st.sampled_from(KEYS), st.binary(max_size=16), scalars), max_size=60)

SHAPES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "hello": st.fixed_dictionaries({"dbs": st.one_of(st.lists(numbers, max_size=80), junk)}),
    "children": st.fixed_dictionaries(
        {"db": numbers, "level": numbers, "nodes": st.one_of(st.lists(numbers, max_size=300), junk)}
    ),
    "buckets": st.fixed_dictionaries({"db": numbers, "slots": st.one_of(pairs, junk)}),
    "entries": st.fixed_dictionaries(
        {
            "db": numbers,
            "want": st.lists(
                st.tuples(numbers, numbers, st.lists(numbers, max_size=40)).map(list), max_size=140
            ),
        }
    ),
    "metas": st.fixed_dictionaries({"db": numbers, "keys": keys}),
    "ship": st.fixed_dictionaries(
        {"db": numbers, "keys": keys, "target": st.sampled_from([B, A, "ap-south", "mallory", ""])}
    ),
    "resync": st.fixed_dictionaries({"target": st.one_of(st.sampled_from([B, "ap-south"]), junk)}),
    "selfcheck": st.dictionaries(st.text(max_size=6), junk, max_size=3),
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    op = draw(st.one_of(st.sampled_from(sorted(SHAPES)), st.text(max_size=10)))
    shape = SHAPES.get(op)
    body = draw(shape) if shape is not None else draw(st.dictionaries(st.text(max_size=6), junk))
    if draw(st.booleans()):
        body.update(draw(st.dictionaries(st.text(max_size=6), junk, max_size=3)))
    return op, body


@pytest.mark.timeout(900)
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(request=requests(), seq=st.one_of(st.integers(1, 2**40), scalars))
def test_arbitrary_requests_never_crash_the_responder_nor_grow_its_memory(
    fuzzed: Fuzzed, request: tuple[str, dict[str, Any]], seq: Any
) -> None:
    op, body = request
    session = uuid.uuid4().hex
    body = dict(body)
    body["seq"] = next(fuzzed.seq) if isinstance(seq, int) and seq > 0 else seq
    op_type = f"ae.req.{op}"
    if all(c.isalnum() or c in "._-" for c in op_type) and len(op_type) <= 32:
        numbered = type(body["seq"]) is int and body["seq"] >= 1
        dropped = fuzzed.dropped()
        fuzzed.b.send(op_type, A, session, **body)
        # Answered (done or refused), or dropped unanswered and counted (a type the
        # control plane does not take; no seq a reply could carry), unless it was a
        # whole-keyspace job still running. Waiting out a reply that cannot come cost
        # 10 s an example.
        deadline = time.monotonic() + 10
        settled = False
        while not settled and time.monotonic() < deadline:
            try:
                msg = fuzzed.b.next_message(timeout_s=0.2)
            except queue.Empty:
                settled = fuzzed.dropped() > dropped
                continue
            if msg.session == session:
                assert numbered, "a reply to a request without a valid seq"
                assert msg.type == "ae.reply"
                assert isinstance(msg.body.get("ok"), bool)
                settled = True
        assert settled or numbered, "a request without a valid seq, neither answered nor counted"
    fuzzed.check()


# --------------------------------------------------------------------- initiator side
def plausible(msg: ControlMessage, wanted: str, reply: dict[str, Any]) -> dict[str, Any] | None:
    """Answers that lead a session down to `wanted`, where `reply` is given instead."""
    op = msg.type.removeprefix("ae.req.")
    body = msg.body
    if op == wanted:
        return reply
    if op == "hello":
        return {"ok": True, "roots": {"0": 1}, "keys": {"0": len(KEYS)}}
    if op == "children":
        # Every child differs, but only the first node's: the session descends one path.
        count = FANOUT[body["level"]]
        return {"ok": True, "hashes": [1] * count + [0] * (len(body["nodes"]) - 1) * count}
    if op == "buckets":
        return {"ok": True, "buckets": [[1] * n for _, n in body["slots"]]}
    if op == "entries":
        scope = {s: (n, set(b)) for s, n, b in body["want"]}
        mine = [
            k
            for k in KEYS
            if key_slot(k) in scope and bucket_of(k, scope[key_slot(k)][0]) in scope[key_slot(k)][1]
        ]
        return {"ok": True, "entries": [x for k in mine for x in (k, b"\x01" * 8)]}
    if op == "metas":
        return {"ok": True, "metas": []}
    return None


replies = st.one_of(
    junk.map(lambda v: {"ok": True, "payload": v}),
    st.dictionaries(
        st.sampled_from(
            [
                "ok",
                "error",
                "roots",
                "keys",
                "hashes",
                "buckets",
                "entries",
                "metas",
                "checked",
                "inconsistent",
                "sample",
                "shipped",
            ]
        ),
        junk,
        max_size=5,
    ),
    st.fixed_dictionaries({"ok": st.just(True), "hashes": st.lists(scalars, max_size=40)}),
    st.fixed_dictionaries(
        {"ok": st.just(True), "buckets": st.lists(st.lists(scalars, max_size=8), max_size=8)}
    ),
    st.fixed_dictionaries(
        {
            "ok": st.just(True),
            "entries": st.lists(st.one_of(st.sampled_from(KEYS), scalars), max_size=40),
        }
    ),
    st.fixed_dictionaries(
        {
            "ok": st.just(True),
            "metas": st.lists(st.one_of(st.sampled_from(KEYS), scalars), max_size=40),
        }
    ),
)


@pytest.mark.timeout(900)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    wanted=st.sampled_from(["hello", "children", "buckets", "entries", "metas", "selfcheck"]),
    reply=replies,
)
def test_arbitrary_replies_fail_the_session_never_the_initiator(
    fuzzed: Fuzzed, wanted: str, reply: dict[str, Any]
) -> None:
    daemon = fuzzed.daemon
    event(f"reply to {wanted}")
    fuzzed.b.policy = lambda msg: plausible(msg, wanted, reply)
    try:
        path = f"/verify?peer={B}" if wanted == "selfcheck" else f"/repair?peer={B}&dry_run=1"
        code, report = call(daemon, "POST", path, daemon.admin_token(), 120)
    finally:
        fuzzed.b.policy = None
    assert code == 200
    assert report["result"] in ("ok", "failed")
    if report["result"] == "failed":
        assert report["error"]
        assert "internal error" not in report["error"], report["error"]
    fuzzed.check()
