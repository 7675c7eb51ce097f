"""The settle watermark: when anti-entropy may start without repairing changes in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from reconciler.consistency.control import ControlMessage
from reconciler.consistency.peers import HEARTBEAT, Peers
from reconciler.consistency.settle import CaptureWatermark, Settler, covers
from replication.capture.position import CapturePosition

R = "8" * 40  # a replication id
OLD = "7" * 40  # another history's


def at(offset: int, replid: str = R) -> CapturePosition:
    return CapturePosition(replid, offset)


def test_the_capture_watermark_reaches_a_time_once_its_offset_is_acknowledged() -> None:
    w = CaptureWatermark()
    assert w.sample(1000, master=at(500), acked=at(400)) == 0
    assert w.sample(2000, master=at(900), acked=at(600)) == 1000
    # Acknowledged past both marks: the newest one counts.
    assert w.sample(3000, master=at(950), acked=at(950)) == 3000


def test_a_new_replication_history_drops_the_old_marks() -> None:
    w = CaptureWatermark()
    w.sample(1000, master=at(5000, OLD), acked=at(100, OLD))
    # Redis restarted: offsets start again; the old mark at 5000 can never be reached.
    assert w.sample(2000, master=at(20), acked=at(20)) == 2000


def test_no_lost_winner_an_offset_acknowledged_in_an_old_history_reaches_no_new_mark() -> None:
    """A restarted Redis's small offsets are below the capture's position in the old
    history: compared as numbers, every new mark was reached at once, and the region
    claimed as shipped what its capture had not even read."""
    w = CaptureWatermark()
    assert w.sample(1000, master=at(5000, OLD), acked=at(5000, OLD)) == 1000
    assert w.sample(2000, master=at(20), acked=at(5000, OLD)) == 1000
    assert w.sample(3000, master=at(40), acked=at(20)) == 2000


def test_no_lost_winner_nothing_more_is_claimed_shipped_while_redis_does_not_answer() -> None:
    """A batch the capture read before Redis went away may still wait to be versioned:
    the fault suite's seed 21 (a write 5 ms before a kill beat later writes elsewhere,
    dated by a moment claimed during the outage)."""
    w = CaptureWatermark()
    assert w.sample(1000, master=at(100), acked=at(100)) == 1000
    assert w.sample(2000, master=None, acked=at(100)) == 1000
    assert w.sample(9000, master=None, acked=at(100)) == 1000


def test_without_offsets_the_capture_counts_as_caught_up() -> None:
    w = CaptureWatermark()
    assert w.caught_up(1234) == 1234


def test_covers_compares_every_partition_of_the_target() -> None:
    assert covers({0: 5, 1: 7}, {0: 5, 1: 6})
    assert not covers({0: 5}, {0: 5, 1: 1})
    assert covers({}, {})


class World:
    """Three regions seen from eu-west: what the fakes report, changed by the tests."""

    def __init__(self) -> None:
        self.peers = Peers("eu-west", ["us-east", "ap-south"], timeout_s=60, on_peer_up=noop)
        self.master = 100
        self.acked = 100
        self.produced = {0: 10}
        self.applied: dict[str, dict[int, int]] = {"us-east": {0: 0}, "ap-south": {0: 0}}
        self.ends: dict[str, dict[int, int]] = {"us-east": {0: 0}, "ap-south": {0: 0}}
        self.settler = Settler(
            "eu-west",
            self.peers,
            master_position=self._master,
            capture_acked=lambda: at(self.acked),
            produced=lambda: self.produced,
            applied=self._applied,
            end_offsets=self._end,
            poll_s=0.01,
        )

    async def _master(self) -> CapturePosition | None:
        return at(self.master)

    async def _applied(self) -> dict[str, dict[int, int]]:
        return self.applied

    async def _end(self, region: str) -> dict[int, int]:
        return self.ends[region]

    async def beat(self, region: str, at_ms: int, shipped_through_ms: int, **body: Any) -> None:
        body = {
            "epoch": 1,
            "at_ms": at_ms,
            "shipped_through_ms": shipped_through_ms,
            "produced": {"0": 0},
            "applied": {},
        } | body
        await self.peers.handle(ControlMessage(HEARTBEAT, region, "*", "", body))


def noop(peer: str, reason: str) -> None:
    pass


async def test_settles_once_both_sides_applied_every_region_up_to_its_watermark() -> None:
    w = World()
    await w.beat("us-east", 1000, 1000, produced={"0": 40})
    await w.beat("ap-south", 1000, 1000, produced={"0": 7})
    task = asyncio.create_task(w.settler.wait("us-east", timeout_s=30))
    await asyncio.sleep(0.05)
    # New heartbeats after the wait began date its start; us-east has shipped up to 60,
    # ap-south up to 7. Neither side has applied anything yet.
    await w.beat("us-east", 2000, 2000, produced={"0": 60}, applied={"eu-west": {"0": 3}})
    await w.beat("ap-south", 2000, 2000, produced={"0": 7})
    await asyncio.sleep(0.05)
    assert not task.done()
    w.applied = {"us-east": {0: 60}, "ap-south": {0: 7}}  # we caught up on both
    await asyncio.sleep(0.05)
    assert not task.done()  # us-east has not applied our 10 nor ap-south's 7
    await w.beat(
        "us-east",
        2500,
        2000,
        produced={"0": 61},
        applied={"eu-west": {"0": 10}, "ap-south": {"0": 7}},
    )
    assert await asyncio.wait_for(task, 5)


async def test_a_peer_that_has_not_shipped_its_backlog_holds_the_session() -> None:
    w = World()
    await w.beat("us-east", 1000, 1000)
    await w.beat("ap-south", 1000, 1000)
    w.applied = {"us-east": {0: 0}, "ap-south": {0: 0}}
    task = asyncio.create_task(w.settler.wait("us-east", timeout_s=30))
    await asyncio.sleep(0.02)
    # us-east is still capturing writes it took before 2000: its target is not known yet,
    # even though everything it has produced so far is applied.
    await w.beat("us-east", 2000, 1500, applied={"eu-west": {"0": 10}})
    await w.beat("ap-south", 2000, 2000)
    await asyncio.sleep(0.05)
    assert not task.done()
    await w.beat("us-east", 3000, 2000, produced={"0": 25}, applied={"eu-west": {"0": 10}})
    await asyncio.sleep(0.05)
    assert not task.done()  # now we must apply its 25
    w.applied = {"us-east": {0: 25}, "ap-south": {0: 0}}
    assert await asyncio.wait_for(task, 5)


async def test_our_capture_backlog_holds_the_session_and_a_down_region_counts_by_its_end() -> None:
    w = World()
    await w.beat("us-east", 1000, 1000)
    await w.beat("ap-south", 1000, 1000)
    w.peers.state["ap-south"].alive = False
    w.ends["ap-south"] = {0: 5}
    w.master, w.acked = 300, 200  # our capture is behind our Redis
    task = asyncio.create_task(w.settler.wait("us-east", timeout_s=30))
    await asyncio.sleep(0.02)
    await w.beat("us-east", 2000, 2000, applied={"eu-west": {"0": 10}, "ap-south": {"0": 5}})
    w.applied = {"us-east": {0: 0}, "ap-south": {0: 5}}
    await asyncio.sleep(0.05)
    assert not task.done()
    w.acked, w.produced = 300, {0: 12}  # shipped: us-east must now apply up to 12
    await asyncio.sleep(0.05)
    assert not task.done()
    await w.beat("us-east", 3000, 3000, applied={"eu-west": {"0": 12}, "ap-south": {"0": 5}})
    assert await asyncio.wait_for(task, 5)


async def test_gives_up_after_the_timeout() -> None:
    w = World()
    await w.beat("us-east", 1000, 1000)
    await w.beat("ap-south", 1000, 1000)
    assert not await w.settler.wait("us-east", timeout_s=0.1)
