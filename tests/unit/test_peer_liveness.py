"""Peer liveness from heartbeats: a goodbye is final for the daemon that said it."""

from __future__ import annotations

from typing import Any

from reconciler.consistency.control import ControlMessage
from reconciler.consistency.peers import BYE, HEARTBEAT, Peers


def beat(epoch: int, at_ms: int) -> ControlMessage:
    body: dict[str, Any] = {
        "epoch": epoch,
        "at_ms": at_ms,
        "shipped_through_ms": at_ms,
        "produced": {"0": 0},
        "applied": {},
    }
    return ControlMessage(HEARTBEAT, "us-east", "*", "", body)


async def test_a_heartbeat_delivered_after_the_goodbye_does_not_bring_the_peer_back() -> None:
    ups: list[str] = []
    downs: list[str] = []
    peers = Peers(
        "eu-west",
        ["us-east"],
        timeout_s=60,
        on_peer_up=lambda peer, reason: ups.append(reason),
        on_peer_down=lambda peer, reason: downs.append(reason),
    )
    await peers.handle(beat(1, 1000))
    assert peers.alive() == ["us-east"]
    await peers.handle(ControlMessage(BYE, "us-east", "*", "", {}))
    assert peers.alive() == []
    assert downs == ["stopped"]

    # Sent before the goodbye on another partition, or by the loop still finishing.
    await peers.handle(beat(1, 1500))
    assert peers.alive() == []
    assert peers.rejected["after-bye"] == 1
    assert ups == ["first heartbeat"]

    # The restarted daemon (a new epoch) is taken at once.
    await peers.handle(beat(2, 2000))
    assert peers.alive() == ["us-east"]
    assert ups == ["first heartbeat", "heard again after missing heartbeats"]
