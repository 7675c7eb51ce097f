"""The daemon's parts as the readers that report on it see them.

The admin endpoint's `/status`, the Prometheus collector and the systemd status line read
the same live objects: counters, stats and states that their owners update on the event
loop. They get them through one `DaemonParts`, built once when the daemon is wired, so they
never depend on the daemon itself (no import of it, not even for typing) and cannot reach
anything they should not touch. Readers only read: every field is single-writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.consistency.antientropy import AntiEntropy
from reconciler.consistency.catchup import CatchUp
from reconciler.consistency.control import ControlChannel
from reconciler.consistency.merkle import MerkleTree
from reconciler.consistency.peers import Peers
from reconciler.consistency.reports import ConflictJournal
from reconciler.service.regionstate import RegionState
from reconciler.service.state import DaemonState
from replication.capture.batch import ChangeSource
from replication.capture.versioner import Versioner
from replication.pipeline.inbound import Inbound
from replication.pipeline.outbound import Outbound
from replication.transport.consumer import ChangeConsumer
from replication.transport.deadletter import DeadLetters
from replication.transport.producer import ChangeProducer


@dataclass(frozen=True)
class DaemonParts:
    """What `/status`, `/metrics` and sd_notify read (see the module doc)."""

    region: str
    state: DaemonState
    region_state: RegionState
    catch_up: CatchUp
    peers: Peers
    source: ChangeSource
    outbound: Outbound
    inbound: Inbound
    consumer: ChangeConsumer
    producer: ChangeProducer
    versioner: Versioner
    dead_letters: DeadLetters
    antientropy: AntiEntropy
    control: ControlChannel
    journal: ConflictJournal
    trees: Mapping[int, MerkleTree]
