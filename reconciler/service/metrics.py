"""Prometheus metrics of the daemon, read from its counters at scrape time.

The hot paths only bump plain integers in their stats objects; this collector turns them
into metric families when Prometheus scrapes, so metrics cost nothing per event.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from reconciler.service.parts import DaemonParts
from reconciler.service.state import now_ms
from replication.model.keys import STATUS_STATES

P = "reconciler_"


class DaemonCollector(Collector):
    """The daemon's metrics, from its parts (see reconciler.service.parts)."""

    def __init__(self, parts: DaemonParts) -> None:
        self.parts = parts

    def _stages(self) -> HistogramMetricFamily:
        """Replication lag split by stage (see replication.latency), counted in changes."""
        d = self.parts
        family = HistogramMetricFamily(
            P + "stage_seconds",
            "Time changes spent per replication stage: captured_to_versioned and "
            "versioned_to_acked here as origin; produced_to_consumed, consumed_to_applied "
            "and produced_to_applied here as destination",
            labels=["region", "stage"],
        )
        for latency in (d.outbound.latency, d.inbound.latency):
            for stage, hist in latency.stages.items():
                buckets = [
                    ("+Inf" if bound == float("inf") else repr(bound), float(n))
                    for bound, n in hist.cumulative()
                ]
                family.add_metric([d.region, stage], buckets, hist.total_s)
        return family

    def collect(self) -> Iterator[Metric]:
        d = self.parts
        region = d.region
        out = d.outbound.stats
        inb = d.inbound.stats
        src = getattr(d.source, "stats", None)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(P + name, doc, labels=["region"])
            family.add_metric([region], value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(P + name, doc, labels=["region"])
            family.add_metric([region], value)
            return family

        yield counter("capture_commands", "Commands read from the change stream", out.commands)
        yield counter("capture_batches", "Capture batches processed", out.batches)
        yield counter("capture_changes", "Local changes versioned and shipped", out.changes)
        yield counter("capture_reshipped", "Versions re-shipped after a restart", out.reshipped)
        yield counter("capture_echoes", "Touched keys that were echoes or no-ops", out.echoes)
        yield counter("capture_unsupported", "Writes to unreplicated types", out.unsupported)
        yield counter(
            "capture_late_batches",
            "Batches written while the daemon did not run (paused, stalled): dated as late",
            out.late_batches,
        )
        yield gauge("capture_acked_offset", "Stream offset acknowledged", out.acked_offset)
        yield gauge(
            "capture_unshipped_events",
            "Versioned changes not yet handed to Kafka (grows while Kafka is slow or cut off)",
            d.outbound.unshipped_events,
        )
        behind_ms = d.catch_up.lag_ms(now_ms())
        yield gauge(
            "applier_behind_seconds",
            "Age of the oldest peer change that may be unapplied here (NaN: not known yet)",
            math.nan if behind_ms is None else behind_ms / 1000,
        )
        if src is not None:
            yield counter("capture_reconnects", "Capture reconnects", getattr(src, "reconnects", 0))
            yield counter(
                "capture_echoes_dropped",
                "Keys written by this daemon's applies, dropped from the stream unversioned",
                getattr(src, "echo_keys_dropped", 0),
            )
        gaps = CounterMetricFamily(
            P + "capture_gaps", "Gaps by reason", labels=["region", "reason"]
        )
        for reason, n in d.state.gaps.items():
            gaps.add_metric([region, reason], n)
        yield gaps

        outcomes = CounterMetricFamily(
            P + "apply_events", "Remote events by outcome", labels=["region", "outcome"]
        )
        for outcome, n in (
            ("applied", inb.applied),
            ("stale", inb.stale),
            ("conflict_remote_won", inb.remote_won),
            ("conflict_local_won", inb.local_won),
            ("rejected", inb.rejected),
            ("superseded", inb.superseded),
            ("given_up_to_gap", inb.given_up),
        ):
            outcomes.add_metric([region, outcome], n)
        yield outcomes
        yield self._stages()
        yield counter("apply_deferred", "Applies deferred behind a local write", inb.deferred)
        yield counter(
            "apply_deferred_to_capture",
            "Deferred applies whose local write the capture versioned in time (dated when read)",
            inb.deferred_to_capture,
        )
        yield counter(
            "apply_deferred_found_late",
            "Deferred applies whose local write was from before a gap not swept yet "
            "(dated as the recovery sweep dates it)",
            inb.deferred_found_late,
        )
        yield counter("apply_retried", "Event applies retried after a transient error", inb.retried)
        # Alert on this one: a peer whose clock runs ahead, or forged timestamps.
        yield counter(
            "apply_quarantined",
            "Remote events refused for a clock beyond clock.max_drift_ms",
            d.consumer.quarantined,
        )
        yield counter(
            "rejected_records",
            "Records refused as a whole (signature, source, decoding)",
            d.consumer.rejected_records,
        )
        letters = CounterMetricFamily(
            P + "deadletters",
            "Records and events sent to the dead-letter topic, by reason",
            labels=["region", "reason"],
        )
        for reason, n in sorted(d.dead_letters.by_reason.items()):
            letters.add_metric([region, reason], n)
        yield letters
        yield counter(
            "deadletters_failed", "Dead letters Kafka did not take", d.dead_letters.failed
        )
        yield counter(
            "clock_refused",
            "Local versions refused for a clock entry at MAX_CLOCK_ENTRY",
            d.versioner.clock_refused_total + d.producer.clock_refused,
        )
        yield counter("kafka_records_sent", "Change records produced", d.producer.records_sent)
        yield counter("kafka_resends", "Records re-sent after a failure", d.producer.resends)

        peer_up = GaugeMetricFamily(P + "peer_up", "Peer heard recently", labels=["region", "peer"])
        peer_lag = GaugeMetricFamily(
            P + "peer_lag_records", "Peer's consumer lag on our topic", labels=["region", "peer"]
        )
        for peer in d.peers.state.values():
            peer_up.add_metric([region, peer.region], 1.0 if peer.alive else 0.0)
            peer_lag.add_metric([region, peer.region], peer.lag.get(region, 0))
        yield peer_up
        yield peer_lag

        keys = GaugeMetricFamily(
            P + "merkle_keys", "Live keys in the index", labels=["region", "db"]
        )
        for db, tree in d.trees.items():
            keys.add_metric([region, str(db)], tree.keys)
        yield keys
        yield gauge(
            "merkle_rebuild_progress", "Index rebuild progress (0-1)", d.state.rebuild_progress
        )

        ae = d.antientropy
        sessions = CounterMetricFamily(
            P + "antientropy_sessions", "Sessions by result", labels=["region", "result"]
        )
        sessions.add_metric([region, "ok"], ae.sessions_ok)
        sessions.add_metric([region, "failed"], ae.sessions_failed)
        yield sessions
        yield counter("antientropy_keys_repaired", "Keys shipped or fetched", ae.keys_repaired)
        yield counter("antientropy_bytes", "Control bytes exchanged", ae.bytes_exchanged)
        yield counter(
            "gc_tombstones_removed", "Tombstones collected", d.state.gc_tombstones_removed
        )
        yield counter(
            "gc_expired_removed", "Expired metadata collected", d.state.gc_expired_removed
        )
        yield gauge(
            "gc_tombstones_held",
            "Tombstones past min_age kept in the last GC pass: a region has not applied past them",
            d.state.gc_tombstones_held,
        )
        yield counter("conflicts_won", "Conflicts won by the local version", d.state.conflicts_won)
        yield counter(
            "conflicts_lost", "Conflicts won by the remote version", d.state.conflicts_lost
        )

        def by_reason(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
            family = CounterMetricFamily(P + name, doc, labels=["region", "reason"])
            for reason, n in sorted(counts.items()):
                family.add_metric([region, reason], n)
            return family

        yield by_reason(
            "control_rejected",
            "Control messages dropped (unknown sender, bad signature, malformed, replayed...)",
            d.control.rejected,
        )
        yield by_reason(
            "heartbeats_rejected",
            "Peers' heartbeats not taken (malformed, out of order)",
            d.peers.rejected,
        )
        yield by_reason(
            "antientropy_refused",
            "Peers' anti-entropy requests refused or failed (busy, rate-limited, malformed...)",
            ae.refused,
        )
        yield by_reason(
            "antientropy_bad_replies",
            "Anti-entropy replies dropped or malformed (wrong sender, unexpected, malformed)",
            ae.bad_replies,
        )

        disk = CounterMetricFamily(
            P + "disk_errors",
            "Writes to the reports directory that failed (logged, not fatal)",
            labels=["region", "what"],
        )
        disk.add_metric([region, "report"], ae.reports.write_errors)
        disk.add_metric([region, "journal"], d.journal.write_errors)
        yield disk
        yield counter(
            "reports_pruned", "Old reports removed to stay within [reports]", ae.reports.pruned
        )
        yield counter("journal_rotations", "Conflicts journal rotations", d.journal.rotations)

        status = GaugeMetricFamily(
            P + "status", "1 for the current state", labels=["region", "state"]
        )
        for state in STATUS_STATES:
            status.add_metric([region, state], 1.0 if d.state.status == state else 0.0)
        yield status
        yield gauge(
            "status_since_timestamp_seconds",
            "When the current state began (wall clock)",
            d.state.since_ms / 1000,
        )
        # Failover clients fail back only on a fresh record: one that stops being written
        # (Redis refusing the write, an ACL without the function) keeps them away.
        yield gauge(
            "status_record_written_timestamp_seconds",
            "Last successful write of the status record (wall clock; 0 never)",
            d.state.status_written_ms / 1000,
        )
        yield gauge(
            "last_repair_timestamp_seconds",
            "Last completed repair session (wall clock; 0 never)",
            d.state.last_repair_ms / 1000,
        )
