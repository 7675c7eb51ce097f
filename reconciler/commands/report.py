"""`reconciler report list|show ID --config FILE`: the repair reports of this region."""

from __future__ import annotations

import argparse
import json
import sys

from reconciler.commands.common import CommandError, add_config_argument, config_from, fail
from reconciler.consistency.reports import ReportError, load_report, printable, scan_reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="one line per report, oldest first")
    add_config_argument(listing)
    show = sub.add_parser("show", help="one report (Markdown, or --json)")
    add_config_argument(show)
    show.add_argument("id", help="report id, or a unique prefix of it")
    show.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except CommandError as exc:
        return fail(str(exc))
    directory = config.reports_path
    if args.action == "list":
        listing = scan_reports(directory)
        for problem in listing.skipped:
            print(f"warning: skipped {problem}", file=sys.stderr)
        if not listing.reports:
            print(f"no reports in {directory}")
        for r in listing.reports:
            print(
                f"{r.id}  {printable(r.mode):<8} {printable(r.result):<7} "
                f"peer={printable(r.peer):<12} differing={r.keys_differing:<7} "
                f"trigger={printable(r.trigger, 200)}"
            )
        return 0
    try:
        report = load_report(directory, args.id)
    except ReportError as exc:
        return fail(str(exc))
    print(json.dumps(report.to_json(), indent=1) if args.json else report.to_markdown())
    return 0
