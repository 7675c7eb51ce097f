"""`reconciler repair|verify|resync --config FILE --peer REGION`: sessions run by the
running daemon of this region, reported here."""

from __future__ import annotations

import argparse
import json
from typing import Any

from reconciler.commands.common import (
    EXIT_DIFFER,
    EXIT_OK,
    CommandError,
    add_config_argument,
    call_daemon,
    config_from,
    fail,
)


def add_common(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--peer", required=True, help="the other region")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")


def summary(report: dict[str, Any]) -> str:
    b = report.get("bytes_exchanged", {})
    lines = [
        f"{report['mode']} {report['region']} <-> {report['peer']}: {report['result']}"
        + (f" ({report['error']})" if report.get("error") else ""),
        f"  report: {report['id']}",
        f"  keys in scope: {report.get('keys_in_scope')}, leaves differing: "
        f"{report.get('leaves_differing')}, keys differing: {report.get('keys_differing')}",
        f"  bytes exchanged: {b.get('total', 0)}, repaired: {report.get('repaired')}",
        "  seconds: " + ", ".join(f"{k}={v:.3f}" for k, v in report.get("durations_s", {}).items()),
    ]
    if report["mode"] == "verify":
        lines.append(
            f"  data/metadata inconsistencies: local {report.get('local_inconsistencies')}, "
            f"peer {report.get('peer_inconsistencies')}"
        )
    lines.extend(
        f"  - db {d['db']} {d['key']!r}: {d['action']} ({d['reason']})"
        for d in report.get("decisions", [])[:20]
    )
    if report.get("keys_differing", 0) > 20:
        lines.append(f"  ... {report['keys_differing'] - 20} more in the report")
    return "\n".join(lines)


def session(args: argparse.Namespace, path: str, params: dict[str, str]) -> dict[str, Any] | int:
    try:
        config = config_from(args)
        report = call_daemon(config, path, {"peer": args.peer, **params})
    except CommandError as exc:
        return fail(str(exc))
    print(json.dumps(report, indent=1) if args.json else summary(report))
    return report


class Repair:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common(parser)
        parser.add_argument("--dry-run", action="store_true", help="report, repair nothing")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        report = session(args, "/repair", {"dry_run": "1"} if args.dry_run else {})
        if isinstance(report, int):
            return report
        return EXIT_OK if report["result"] == "ok" else EXIT_DIFFER


class Verify:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Exit 0 when the regions hold the same data, 1 when they differ, 2 on error."""
        report = session(args, "/verify", {})
        if isinstance(report, int):
            return report
        if report["result"] != "ok":
            return fail(f"verify could not complete: {report.get('error')}")
        differ = (
            report["keys_differing"]
            or report["local_inconsistencies"]
            or report["peer_inconsistencies"]
        )
        return EXIT_DIFFER if differ else EXIT_OK


class Resync:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        report = session(args, "/resync", {})
        if isinstance(report, int):
            return report
        return EXIT_OK if report["result"] == "ok" else EXIT_DIFFER
