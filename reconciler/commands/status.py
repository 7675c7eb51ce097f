"""``reconciler status --config FILE``: one table of this region and every peer.

Per region: whether its daemon is heard, its status and for how long, its apply lag (Kafka
records it still has to apply from the other regions), its last completed repair, its
capture position, its dead letters, and the failover clients whose commands go there.
This region's row comes from its daemon's admin endpoint (``GET /status``), the peers'
rows from what their heartbeats told it; the clients from the clients' metrics stream
(``<topic_prefix>.clients``, the last ``--clients-lookback-s``), read with the region's
Kafka settings.

``--json`` prints the same as one JSON object; ``--watch`` reprints every ``--interval-s``
(at least 0.5 s) until Ctrl-C, or ``--count`` times. Exit codes: 0 shown, 1 the daemon does
not answer, 2 a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from reconciler.client.stream import decode
from reconciler.commands.common import CommandError, add_config_argument, call_daemon, config_from
from reconciler.service.config import DaemonConfig
from replication.clock import wall_ms
from replication.errors import DecodeError
from replication.model.keys import clients_topic

log = logging.getLogger("reconciler.commands.status")

MIN_INTERVAL_S = 0.5
CLIENTS_READ_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--watch", action="store_true", help="reprint until Ctrl-C")
    parser.add_argument(
        "--interval-s", type=float, default=2.0, help="--watch: reprint this often (default 2)"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="--watch: stop after this many tables (0: Ctrl-C)"
    )
    parser.add_argument(
        "--clients-lookback-s",
        type=float,
        default=60.0,
        help="clients seen on the metrics stream this far back count (default 60)",
    )
    parser.add_argument(
        "--no-clients", action="store_true", help="do not read the clients' stream from Kafka"
    )


@dataclass
class RegionRow:
    name: str
    this: bool
    heard: bool
    status: str
    since_ms: int
    lag_records: int | None
    last_repair_ms: int
    capture_offset: int
    deadletters: int
    clients_here: int = 0
    clients_home: int = 0
    clients_away: int = 0  # homed here, active elsewhere


@dataclass
class ClientRow:
    client_id: str
    home: str
    active: str
    failovers: int
    failbacks: int
    seen_ms: int


@dataclass
class StatusView:
    region: str
    admin: str
    at_ms: int
    regions: list[RegionRow]
    clients: list[ClientRow] | None  # None: the stream was not read
    clients_note: str = ""
    pending_peers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_view(
    status: dict[str, Any], admin: str, clients: list[ClientRow] | None, now_ms: int
) -> StatusView:
    """The table's rows from a daemon's ``/status`` answer and the clients seen."""
    region = str(status["region"])
    inbound = status.get("inbound_lag") or {}
    rows = [
        RegionRow(
            name=region,
            this=True,
            heard=True,
            status=str(status["status"]),
            since_ms=int(status.get("since_ms", 0)),
            lag_records=max((int(v) for v in inbound.values()), default=0),
            last_repair_ms=int(status.get("last_repair_ms", 0)),
            capture_offset=int(status.get("capture", {}).get("acked_offset", 0)),
            deadletters=int(status.get("deadletters", 0)),
        )
    ]
    for name, peer in sorted(status.get("peers", {}).items()):
        lag = peer.get("lag") or {}
        heard = bool(peer.get("alive"))
        rows.append(
            RegionRow(
                name=name,
                this=False,
                heard=heard,
                status=str(peer.get("status") or "unknown"),
                since_ms=int(peer.get("since_ms", 0)),
                lag_records=max((int(v) for v in lag.values()), default=0) if heard else None,
                last_repair_ms=int(peer.get("last_repair_ms", 0)),
                capture_offset=int(peer.get("capture_offset", 0)),
                deadletters=int(peer.get("deadletters", 0)),
            )
        )
    by_name = {row.name: row for row in rows}
    for client in clients or []:
        if client.active in by_name:
            by_name[client.active].clients_here += 1
        if client.home in by_name:
            by_name[client.home].clients_home += 1
            if client.active != client.home:
                by_name[client.home].clients_away += 1
    return StatusView(
        region=region,
        admin=admin,
        at_ms=now_ms,
        regions=rows,
        clients=clients,
        pending_peers=list(status.get("pending_peers", [])),
    )


def _ago(ms: int, now_ms: int) -> str:
    if ms <= 0:
        return "never"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _for(ms: int, now_ms: int) -> str:
    return "" if ms <= 0 else " " + _ago(ms, now_ms).removesuffix(" ago")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render(view: StatusView) -> str:
    """The view as plain text: a regions table, then a clients table."""
    now = view.at_ms
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now / 1000))
    lines = [f"region {view.region} (admin {view.admin}) at {stamp}", ""]
    header = ("REGION", "DAEMON", "STATUS", "LAG", "LAST REPAIR", "CAPTURE", "DEAD", "CLIENTS")
    rows: list[tuple[str, ...]] = [header]
    for r in view.regions:
        clients = "?" if view.clients is None else str(r.clients_here)
        if view.clients is not None and r.clients_home:
            clients += f" (home of {r.clients_home}"
            clients += f", {r.clients_away} away)" if r.clients_away else ")"
        rows.append(
            (
                r.name + (" *" if r.this else ""),
                "this" if r.this else ("up" if r.heard else "DOWN"),
                # A peer not heard: what it said last, not what it is now.
                ("" if r.this or r.heard else "last: ") + r.status + _for(r.since_ms, now),
                "-" if r.lag_records is None else str(r.lag_records),
                _ago(r.last_repair_ms, now),
                str(r.capture_offset),
                str(r.deadletters),
                clients,
            )
        )
    lines.extend(_table(rows))
    if view.pending_peers:
        lines.append(f"needs a repair with: {', '.join(view.pending_peers)}")
    lines.append("")
    if view.clients is None:
        lines.append(f"clients: {view.clients_note or 'not read'}")
    elif not view.clients:
        lines.append("clients: none seen on the metrics stream")
    else:
        crow: list[tuple[str, ...]] = [("CLIENT", "HOME", "ACTIVE", "FO/FB", "SEEN")]
        crow.extend(
            (
                c.client_id,
                c.home,
                c.active + (" (failed over)" if c.active != c.home else ""),
                f"{c.failovers}/{c.failbacks}",
                _ago(c.seen_ms, now),
            )
            for c in view.clients
        )
        lines.extend(_table(crow))
    return "\n".join(lines)


def clients_from(messages: list[dict[str, Any]], since_ms: int) -> list[ClientRow]:
    """The latest snapshot of every client seen since `since_ms`, sorted by id."""
    latest: dict[str, dict[str, Any]] = {}
    for message in messages:
        if message["type"] != "snapshot" or message["at_ms"] < since_ms:
            continue
        known = latest.get(message["client_id"])
        if known is None or message["at_ms"] >= known["at_ms"]:
            latest[message["client_id"]] = message
    return [
        ClientRow(
            client_id=cid,
            home=str(m.get("home", "?")),
            active=str(m["active"]),
            failovers=int(m.get("failovers", 0)),
            failbacks=int(m.get("failbacks", 0)),
            seen_ms=int(m["at_ms"]),
        )
        for cid, m in sorted(latest.items())
    ]


async def read_clients_stream(config: DaemonConfig, lookback_s: float) -> list[dict[str, Any]]:
    """Every decodable message on the clients' topic from `lookback_s` ago to its end
    (bounded by CLIENTS_READ_TIMEOUT_S); undecodable records are skipped."""
    from aiokafka import AIOKafkaConsumer

    settings = config.kafka.settings()
    topic = clients_topic(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        **settings.client_options(),
        enable_auto_commit=False,
        group_id=None,
        client_id=f"reconciler-status-{config.region}",
    )
    await consumer.start()
    messages: list[dict[str, Any]] = []
    try:
        if topic not in await consumer.topics():
            return messages
        # Without a group, subscribing assigns every partition once metadata arrives
        # (topics() filled another metadata object than the one assignment reads).
        consumer.subscribe([topic])
        deadline = time.monotonic() + CLIENTS_READ_TIMEOUT_S
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)  # nothing is read before the seek
        tps = sorted(consumer.assignment())
        if not tps:
            raise CommandError(f"no partitions of {topic} were assigned")
        since_ms = wall_ms() - int(lookback_s * 1000)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        messages.append(decode(record.value))
                    except DecodeError as exc:
                        log.debug("skipping undecodable client record: %s", exc)
    finally:
        await consumer.stop()
    return messages


def collect(config: DaemonConfig, args: argparse.Namespace) -> StatusView:
    """One view: the daemon's /status, and the clients unless --no-clients."""
    from reconciler.commands.common import admin_base_url

    status = call_daemon(config, "/status", {}, method="GET", timeout_s=10)
    clients: list[ClientRow] | None = None
    note = "not read (--no-clients)"
    if not args.no_clients:
        try:
            messages = asyncio.run(read_clients_stream(config, args.clients_lookback_s))
        except Exception as exc:  # noqa: BLE001 - Kafka trouble must not hide the regions
            note = f"unknown: cannot read the clients' stream ({type(exc).__name__}: {exc})"
        else:
            since_ms = wall_ms() - int(args.clients_lookback_s * 1000)
            clients = clients_from(messages, since_ms)
    view = build_view(status, admin_base_url(config), clients, wall_ms())
    view.clients_note = note if clients is None else ""
    return view


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except CommandError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    interval = max(MIN_INTERVAL_S, args.interval_s)
    shown = 0
    try:
        while True:
            try:
                view = collect(config, args)
            except CommandError as exc:
                print(str(exc), file=sys.stderr)
                if not args.watch:
                    return 1
            else:
                text = json.dumps(view.to_json(), indent=1) if args.json else render(view)
                print(text + ("\n" if args.watch and not args.json else ""), flush=True)
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
