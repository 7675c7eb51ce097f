"""The control plane of a real daemon against hostile and broken peers, over the real Kafka
broker: outsiders, forgeries, replays and broadcasts are dropped and counted; oversized
requests are refused without allocating; a flood of resync requests starts at most two
shipments; malformed replies fail the session with the reason in its report, never the
daemon; replies from the wrong peer are not taken. The daemon's data never changes and
its peak memory (VmHWM) stays within a fixed bound throughout.

One daemon runs (eu-west); its two peers are `tests.impostor.Impostor`s speaking the real
protocol with the regions' real keys (or with wrong ones, or none).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from devcluster import KafkaBroker
from devcluster.daemons import DaemonProcess, keyring_of, wait_for
from reconciler.consistency.control import ControlMessage, encode
from replication.model.auth import Keyring
from tests.impostor import Impostor
from tests.integration.test_admin_access import call
from tests.promtext import metric
from tests.regions import Regions, snapshot
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

A, B, C = "eu-west", "us-east", "ap-south"
MANUAL = {
    "antientropy": {
        "on_start": False,
        "automatic": False,
        "request_timeout_s": 10.0,
        "settle_timeout_s": 1.0,
    }
}
MEMORY_BOUND_KB = 96 * 1024  # the daemon's peak RSS may grow by at most this much


def peak_rss_kb(daemon: DaemonProcess) -> int:
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1])  # type: ignore[index]


@pytest.fixture
def lone(tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory) -> Iterator[Regions]:
    """Three configured regions, only eu-west's daemon running, with some data in it."""
    regions = Regions(tmp_path, kafka, redis_factory, overrides=MANUAL)
    try:
        client = regions.clients[A]
        for i in range(200):
            client.set(f"acct:{i}", f"balance-{i}")
        client.hset("ledger:1", mapping={"a": 1, "b": 2})
        regions.daemons[A].start()  # its first start versions and indexes all of them
        wait_for(
            lambda: regions.daemons[A].get("/status")["merkle_keys"]["0"] >= 201,
            30,
            "eu-west to index its keys",
        )
        yield regions
    finally:
        regions.stop()


def impostor(regions: Regions, region: str, keyring: Keyring | None = None) -> Impostor:
    return Impostor(
        regions.kafka.bootstrap,
        regions.prefix,
        region,
        keyring or keyring_of(regions.base / "configs"),
        [A],
    )


def replies_to(imp: Impostor, session: str, timeout_s: float = 10.0) -> list[ControlMessage]:
    """The daemon's replies in `session` that arrive within the timeout."""
    out = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            msg = imp.next_message(timeout_s=max(0.05, deadline - time.monotonic()))
        except Exception:
            break
        if msg.session == session:
            out.append(msg)
            if msg.type == "ae.reply":
                break
    return out


def request(imp: Impostor, op: str, timeout_s: float = 10.0, **body: Any) -> dict[str, Any]:
    """Send one anti-entropy request to eu-west and return its reply's body."""
    session = uuid.uuid4().hex
    imp.send(f"ae.req.{op}", A, session, seq=1, **body)
    (reply,) = [m for m in replies_to(imp, session, timeout_s) if m.type == "ae.reply"]
    assert reply.sender == A
    return reply.body


def test_outsiders_forgeries_replays_and_broadcasts_are_dropped_and_counted(
    lone: Regions,
) -> None:
    daemon = lone.daemons[A]
    before = snapshot(lone.clients[A])
    forger = Keyring.parse(Keyring.generate_text([B, "mallory"]))
    with impostor(lone, B) as b, impostor(lone, "mallory", forger) as mallory:
        # A real peer asking properly gets its answer: the path works.
        assert request(b, "hello", dbs=[0])["ok"] is True
        sessions = {}
        # mallory: not a configured peer (and not in the cluster's keyring).
        sessions["mallory"] = s = uuid.uuid4().hex
        mallory.send("ae.req.hello", A, s, seq=1, dbs=[0])
        # us-east's name, someone else's key.
        with impostor(lone, B, forger) as fake_b:
            sessions["forged"] = s = uuid.uuid4().hex
            fake_b.send("ae.req.hello", A, s, seq=1, dbs=[0])
        # A genuine record, tampered with: one byte of its payload changed.
        sessions["tampered"] = s = uuid.uuid4().hex
        record = bytearray(b.seal("ae.req.hello", A, s, seq=1, dbs=[0]))
        record[-40] ^= 0x01
        b.send_raw(bytes(record))
        # An unsigned record of the old schema, and bytes that are not msgpack at all.
        sessions["unsigned"] = s = uuid.uuid4().hex
        old = {"v": 1, "type": "ae.req.hello", "from": B, "to": A, "session": s, "body": {}}
        b.send_raw(msgpack.packb(old))
        b.send_raw(b"\xc1 not msgpack")
        # Genuine and signed, but to every region: only heartbeats may be broadcast.
        sessions["broadcast"] = s = uuid.uuid4().hex
        b.send("ae.req.resync", "*", s, seq=1, target=B)
        # A genuine record replayed an hour later (made with an old clock here).
        sessions["replayed"] = s = uuid.uuid4().hex
        stale = ControlMessage(
            "ae.req.resync", B, A, s, {"seq": 1, "target": B}, sent_ms=_now_ms() - 3_600_000
        )
        b.send_raw(encode(stale, keyring_of(lone.base / "configs").signer(B)))
        # A heartbeat of the wrong shape.
        b.send("hb", "*", epoch="yesterday", at_ms=_now_ms())

        wait_for(
            lambda: metric(daemon, "reconciler_heartbeats_rejected_total", reason="malformed") >= 1,
            30,
            "the replayed record to be rejected",
        )
        rejected = {
            reason: metric(daemon, "reconciler_control_rejected_total", reason=reason)
            for reason in (
                "unknown-sender",
                "bad-signature",
                "unsigned",
                "undecodable",
                "broadcast-refused",
                "stale",
            )
        }
        assert rejected == {
            "unknown-sender": 1,
            "bad-signature": 2,  # the foreign key and the tampered byte
            "unsigned": 1,
            "undecodable": 1,
            "broadcast-refused": 1,
            "stale": 1,
        }
        assert metric(daemon, "reconciler_heartbeats_rejected_total", reason="malformed") == 1
        # None of them got an answer (an answer to us-east's sessions would reach `b`).
        answered = {m.session for m in b.drain()} | {m.session for m in mallory.drain()}
        assert not answered & set(sessions.values())
    assert snapshot(lone.clients[A]) == before
    assert daemon.running
    assert call(daemon, "GET", "/health")[0] == 200
    assert "resync streamed" not in daemon.log_tail(5000)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


OVERSIZED: list[tuple[str, dict[str, Any]]] = [
    ("buckets", {"db": 0, "slots": [[0, 2**31]]}),  # the 0.5 kB request that took 1.2 GiB
    ("buckets", {"db": 0, "slots": [[s, 1024] for s in range(16384)]}),
    ("buckets", {"db": 0, "slots": [[0, 10**6]]}),
    ("buckets", {"db": 0, "slots": [[99999, 4]]}),
    ("entries", {"db": 0, "want": [[0, 2**40, [0]]]}),
    ("entries", {"db": 0, "want": [[0, 4, list(range(2**16))]]}),
    ("children", {"db": 0, "level": 3, "nodes": list(range(200_000))}),
    ("children", {"db": 0, "level": 9, "nodes": [0]}),
    ("children", {"db": 0, "level": 0, "nodes": [0] * 5000}),
    ("metas", {"db": 0, "keys": [b"k%d" % i for i in range(50_000)]}),
    ("ship", {"db": 0, "keys": [b"acct:1"], "target": C}),  # to a third region: refused
    ("resync", {"target": C}),
    ("hello", {"dbs": list(range(100_000))}),
    ("nosuch", {}),
]


@pytest.mark.timeout(240)
def test_oversized_and_misdirected_requests_are_refused_without_allocating(
    lone: Regions,
) -> None:
    daemon = lone.daemons[A]
    before = snapshot(lone.clients[A])
    with impostor(lone, B) as b:
        request(b, "hello", dbs=[0])
        peak0 = peak_rss_kb(daemon)
        for op, body in OVERSIZED:
            reply = request(b, op, **body)
            assert reply["ok"] is False, (op, reply)
            assert reply["error"]
        peak = peak_rss_kb(daemon)
    refused = sum(
        metric(daemon, "reconciler_antientropy_refused_total", reason=r)
        for r in ("malformed", "wrong-target", "unknown-request", "oversized")
    )
    assert refused == len(OVERSIZED)
    assert peak - peak0 < MEMORY_BOUND_KB, f"peak RSS grew {peak - peak0} kB"
    assert snapshot(lone.clients[A]) == before
    assert daemon.running


@pytest.mark.timeout(240)
def test_fifty_resync_requests_start_at_most_two_shipments(lone: Regions) -> None:
    daemon = lone.daemons[A]
    with impostor(lone, B) as b:
        sessions = [uuid.uuid4().hex for _ in range(50)]
        for s in sessions:
            b.send("ae.req.resync", A, s, seq=1, target=B)
        # The same request again (Kafka redelivers; or a replay): dropped, not answered.
        b.send("ae.req.resync", A, sessions[0], seq=1, target=B)

        answers: dict[str, dict[str, Any]] = {}

        def collect() -> bool:
            for m in b.drain():
                if m.type == "ae.reply":
                    answers.setdefault(m.session, m.body)
            return len(answers) == 50

        wait_for(collect, 120, "every resync request to be answered")
    ok = [body for body in answers.values() if body["ok"]]
    refused = [body for body in answers.values() if not body["ok"]]
    assert 1 <= len(ok) <= 2
    assert len(refused) >= 48
    assert all("refused" in body["error"] for body in refused)
    assert daemon.log_tail(5000).count("resync streamed") == len(ok)
    assert metric(daemon, "reconciler_antientropy_refused_total", reason="duplicate") == 1
    assert daemon.running


# Replies to the daemon's first request (hello) that once crashed it, and others.
MALFORMED_HELLO: list[dict[str, Any]] = [
    {"ok": True},  # KeyError: no roots
    {"ok": True, "roots": {"0": "x"}, "keys": {"0": 1}},  # ValueError
    {"ok": True, "roots": [1, 2], "keys": {}},  # TypeError / AttributeError
    {"ok": True, "roots": {"0": 1}, "keys": {"0": "many"}},
    {"ok": True, "roots": {"zero": 1}, "keys": {"zero": 1}},
    {"ok": True, "roots": {"0": -1}, "keys": {"0": 1}},
    {"ok": True, "roots": {"0": 1.5}, "keys": {"0": 1}},
    {"ok": True, "roots": {"7": 1}, "keys": {"7": 1}},  # a database not asked for
    {"ok": "yes", "roots": {}, "keys": {}},
    {"roots": {}, "keys": {}},
    {"ok": False, "error": 12},
]


def answer(imp: Impostor, reply: dict[str, Any], op: str = "hello", timeout_s: float = 30) -> str:
    """Wait for the daemon's next `op` request and answer it with `reply`; its session."""
    while True:
        msg = imp.next_message(timeout_s)
        if msg.type == f"ae.req.{op}":
            imp.send("ae.reply", A, msg.session, seq=msg.body["seq"], **reply)
            return msg.session


@pytest.mark.timeout(300)
def test_malformed_replies_fail_the_session_with_the_reason_never_the_daemon(
    lone: Regions,
) -> None:
    daemon = lone.daemons[A]
    token = daemon.admin_token()
    before = snapshot(lone.clients[A])
    with impostor(lone, B) as b:
        # Every request is answered with the reply under test: the daemon's own sessions
        # (its start was a gap: it repairs with each peer it hears) get the same answers.
        b.policy = lambda msg: MALFORMED_HELLO[0]
        b.keep_alive()
        wait_for(lambda: daemon.get("/status")["peers"][B]["alive"], 30, "us-east to be up")
        peak0 = peak_rss_kb(daemon)
        dry_run = f"/repair?peer={B}&dry_run=1"
        for reply in MALFORMED_HELLO:
            b.policy = lambda msg, reply=reply: reply
            code, report = call(daemon, "POST", dry_run, token, 60)
            assert code == 200
            assert report["result"] == "failed"
            assert f"peer {B} sent a malformed 'hello' reply" in report["error"], report["error"]
        # Deeper in a session: a plausible hello (roots differ), then broken children.
        hello = {"ok": True, "roots": {"0": 12345}, "keys": {"0": 7}}
        for broken in ({"ok": True, "hashes": [1, 2]}, {"ok": True, "hashes": "x" * 16}):
            b.policy = lambda msg, broken=broken: hello if msg.type == "ae.req.hello" else broken
            code, report = call(daemon, "POST", dry_run, token, 60)
            assert report["result"] == "failed"
            assert "malformed 'children' reply" in report["error"]
        peak = peak_rss_kb(daemon)
    assert peak - peak0 < MEMORY_BOUND_KB
    assert metric(daemon, "reconciler_antientropy_bad_replies_total", reason="malformed") >= 13
    assert snapshot(lone.clients[A]) == before
    assert daemon.running
    assert "Traceback" not in daemon.log_tail(5000)


@pytest.mark.timeout(300)
def test_a_reply_from_another_peer_is_not_taken_for_the_one_asked(lone: Regions) -> None:
    import concurrent.futures

    daemon = lone.daemons[A]
    token = daemon.admin_token()
    with (
        impostor(lone, B) as b,
        impostor(lone, C) as c,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        root = int(request(c, "hello", dbs=[0])["roots"]["0"])  # what eu-west would answer
        agree = {"ok": True, "roots": {"0": root}, "keys": {"0": 201}}
        # First the session eu-west runs by itself when it hears us-east (its start was a
        # gap) completes: nothing differs.
        b.policy = lambda msg: agree if msg.type == "ae.req.hello" else None
        b.keep_alive()
        wait_for(
            lambda: metric(daemon, "reconciler_antientropy_sessions_total", result="ok") >= 1,
            60,
            "eu-west's own session with us-east",
        )
        b.policy = None
        pending = pool.submit(call, daemon, "POST", f"/verify?peer={B}", token, 60)
        msg = b.next_message()
        assert msg.type == "ae.req.hello"
        # ap-south (a configured peer, with its real key) answers us-east's request first.
        c.send("ae.reply", A, msg.session, seq=msg.body["seq"], ok=True, roots={}, keys={})
        wait_for(
            lambda: (
                metric(daemon, "reconciler_antientropy_bad_replies_total", reason="wrong-sender")
                == 1
            ),
            30,
            "the reply from the wrong peer to be dropped",
        )
        # Then the right one answers, and is taken: equal roots, nothing differs.
        b.send("ae.reply", A, msg.session, seq=msg.body["seq"], **agree)
        answer(b, {"ok": True, "checked": 201, "inconsistent": 0, "sample": []}, "selfcheck")
        code, report = pending.result(60)
    assert code == 200
    assert report["result"] == "ok", report["error"]
    assert report["keys_in_scope"]["peer"] == 201
