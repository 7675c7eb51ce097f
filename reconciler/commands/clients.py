"""``reconciler clients --config FILE``: a live table of every failover client.

Follows ``<topic_prefix>.clients`` (the ``[kafka]`` table of a client config file) and
prints, per client, its home and active region, its traffic and error rate over the
window, latencies, failover/failback counts and its last event. Plain text, reprinted
every ``--interval-s``, so it works without a terminal (systemd, CI, a pipe).

``--once`` reads what the topic holds from ``--lookback-s`` ago up to its current end,
prints one table and exits: the bounded form for scripts and tests. ``--duration-s N``
follows for N seconds. Exit codes: 0 done, 1 the topic is missing or Kafka unreachable,
2 a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from reconciler.client.config import KafkaConfig, load_client_config
from reconciler.client.stream import decode
from reconciler.configfile import ConfigError
from replication.clock import wall_ms
from replication.errors import DecodeError
from replication.model.keys import clients_topic

__all__ = ["ClientTable", "add_arguments", "run"]

log = logging.getLogger("reconciler.commands.clients")

_CAUGHT_UP_TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``reconciler clients``."""
    parser.add_argument("--config", required=True, help="a client TOML file with a [kafka] table")
    parser.add_argument(
        "--once", action="store_true", help="print one table of what the topic holds, then exit"
    )
    parser.add_argument(
        "--duration-s", type=float, default=None, help="follow for this long, then exit"
    )
    parser.add_argument(
        "--interval-s", type=float, default=2.0, help="reprint the table this often (default 2)"
    )
    parser.add_argument(
        "--lookback-s",
        type=float,
        default=60.0,
        help="start reading this far back in the topic (default 60)",
    )
    parser.add_argument(
        "--stale-s",
        type=float,
        default=None,
        help="mark clients silent for this long as stale (default 3 snapshot intervals)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    try:
        config = load_client_config(args.config)
    except ConfigError as exc:
        print(f"reconciler clients: {exc}", file=sys.stderr)
        return 2
    if config.kafka is None:
        print(
            f"reconciler clients: {args.config} has no [kafka] table "
            "(bootstrap_servers, topic_prefix)",
            file=sys.stderr,
        )
        return 2
    stale_s = args.stale_s if args.stale_s is not None else 3 * config.kafka.snapshot_interval_s
    table = ClientTable(stale_s=stale_s)
    return asyncio.run(_follow(config.kafka, args, table, sys.stdout))


@dataclass
class _Client:
    snapshot: dict[str, Any] | None = None
    last_event: dict[str, Any] | None = None
    seen_ms: int = 0


@dataclass
class ClientTable:
    """The latest snapshot and last event of every client seen on the stream."""

    stale_s: float = 15.0
    clients: dict[str, _Client] = field(default_factory=dict)
    undecodable: int = 0

    def apply_raw(self, raw: bytes | None) -> None:
        """Take one record's value; undecodable records are counted and skipped."""
        try:
            message = decode(raw)
        except DecodeError as exc:
            self.undecodable += 1
            log.debug("skipping undecodable record: %s", exc)
            return
        self.apply(message)

    def apply(self, message: dict[str, Any]) -> None:
        """Take one decoded message (newer information wins, whatever the arrival order)."""
        client = self.clients.setdefault(message["client_id"], _Client())
        at_ms = message["at_ms"]
        if message["type"] == "snapshot":
            if client.snapshot is None or at_ms >= client.snapshot["at_ms"]:
                client.snapshot = message
        elif client.last_event is None or at_ms >= client.last_event["at_ms"]:
            client.last_event = message
        client.seen_ms = max(client.seen_ms, at_ms)

    def render(self, now_ms: int | None = None) -> str:
        """The table as text, one line per client, sorted by client id."""
        now_ms = wall_ms() if now_ms is None else now_ms
        header = (
            "CLIENT",
            "HOME",
            "ACTIVE",
            "REQ/WIN",
            "ERR%",
            "P50MS",
            "P99MS",
            "FO/FB",
            "AGE_S",
            "LAST EVENT",
        )
        rows: list[tuple[str, ...]] = [header]
        rows.extend(self._row(cid, self.clients[cid], now_ms) for cid in sorted(self.clients))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = []
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        summary = f"{len(self.clients)} client(s)"
        if self.undecodable:
            summary += f", {self.undecodable} undecodable record(s) skipped"
        return "\n".join([*lines, summary])

    def _row(self, client_id: str, client: _Client, now_ms: int) -> tuple[str, ...]:
        age_s = max(0.0, (now_ms - client.seen_ms) / 1000.0)
        stale = age_s > self.stale_s
        event = client.last_event
        last = (
            f"{event['kind']} {event.get('from_region')}->{event.get('to_region')}"
            if event and event["kind"] in ("failover", "failback")
            else (f"{event['kind']} {event.get('region')}" if event else "-")
        )
        snap = client.snapshot
        if snap is None:
            return (client_id, "?", "?", "-", "-", "-", "-", "-", f"{age_s:.0f}", last)
        active = snap["active"] + (" (stale)" if stale else "")
        if snap["active"] != snap.get("home"):
            active += " *"
        region: dict[str, Any] = next(
            (r for r in snap["regions"] if r.get("name") == snap["active"]), {}
        )
        requests = sum(int(r.get("requests", 0)) for r in snap["regions"])
        return (
            client_id,
            str(snap.get("home", "?")),
            active,
            str(requests),
            f"{100.0 * float(region.get('error_rate', 0.0)):.1f}",
            _fmt_ms(region.get("p50_ms")),
            _fmt_ms(region.get("p99_ms")),
            f"{snap.get('failovers', 0)}/{snap.get('failbacks', 0)}",
            f"{age_s:.0f}",
            last,
        )


def _fmt_ms(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.2f}"


async def _follow(
    kafka: KafkaConfig, args: argparse.Namespace, table: ClientTable, out: TextIO
) -> int:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    topic = clients_topic(kafka.topic_prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="latest",
        client_id="reconciler-clients-monitor",
        request_timeout_ms=10_000,
    )
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        await consumer.stop()
        print(
            f"reconciler clients: cannot reach Kafka at {kafka.bootstrap_servers}: {exc}",
            file=sys.stderr,
        )
        return 1
    try:
        if topic not in await consumer.topics():
            print(f"reconciler clients: topic {topic} does not exist", file=sys.stderr)
            return 1
        # Without a group, subscribing assigns every partition of the topic.
        consumer.subscribe([topic])
        assigned = await _wait_for_assignment(consumer, table)
        if not assigned:
            print(f"reconciler clients: no partitions of {topic} were assigned", file=sys.stderr)
            return 1
        since_ms = wall_ms() - int(args.lookback_s * 1000)
        starts = await consumer.offsets_for_times(dict.fromkeys(assigned, since_ms))
        for tp in assigned:
            found = starts.get(tp)
            if found is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found.offset)
        if args.once:
            await _read_to_end(consumer, assigned, table)
            print(table.render(), file=out, flush=True)
            return 0
        await _follow_for(consumer, args, table, out)
        return 0
    finally:
        await consumer.stop()


async def _wait_for_assignment(consumer: Any, table: ClientTable) -> list[Any]:
    deadline = time.monotonic() + _CAUGHT_UP_TIMEOUT_S
    while not consumer.assignment() and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=100)
        for records in batches.values():
            for record in records:
                table.apply_raw(record.value)
    return sorted(consumer.assignment())


async def _read_to_end(consumer: Any, assigned: list[Any], table: ClientTable) -> None:
    ends = await consumer.end_offsets(assigned)
    deadline = time.monotonic() + _CAUGHT_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        positions = {tp: await consumer.position(tp) for tp in assigned}
        if all(positions[tp] >= ends[tp] for tp in assigned):
            return
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                table.apply_raw(record.value)
    log.warning("stopped reading before the end of the topic (%ss)", _CAUGHT_UP_TIMEOUT_S)


async def _follow_for(
    consumer: Any, args: argparse.Namespace, table: ClientTable, out: TextIO
) -> None:
    stop_at = None if args.duration_s is None else time.monotonic() + args.duration_s
    next_print = time.monotonic() + args.interval_s
    while stop_at is None or time.monotonic() < stop_at:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                table.apply_raw(record.value)
        if time.monotonic() >= next_print:
            print(table.render() + "\n", file=out, flush=True)
            next_print = time.monotonic() + args.interval_s
    print(table.render(), file=out, flush=True)
