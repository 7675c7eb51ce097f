"""The `reconciler` command line.

Each subcommand lives in its own module with two functions, `add_arguments(parser)` and
`run(args) -> int` (the exit code); modules are imported only when their command runs, so
`reconciler --help` and the light commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import version

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("reconciler.commands.run", "run the daemon for one region"),
    "repair": (
        "reconciler.commands.repair",
        "run an anti-entropy session with a peer now (--dry-run: report only)",
    ),
    "verify": (
        "reconciler.commands.verify",
        "compare this region's data with a peer's; exit 1 when they differ",
    ),
    "resync": (
        "reconciler.commands.resync",
        "full resync: stream a peer's whole state into this region",
    ),
    "report": ("reconciler.commands.report", "list or show repair reports"),
    "status": (
        "reconciler.commands.status",
        "one table of this region and every peer: status, lag, repairs, clients",
    ),
    "clients": (
        "reconciler.commands.clients",
        "follow the failover clients' metrics stream: a live table of clients and regions",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Active-active replication and reconciliation daemon for Redis.",
    )
    parser.add_argument("--version", action="version", version=version("redis-reconciler"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `reconciler` console script."""
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    command_parser = argparse.ArgumentParser(prog=f"reconciler {args.command}")
    module.add_arguments(command_parser)
    command_args = command_parser.parse_args(_after_command(argv, args.command))
    code: int = module.run(command_args)
    return code


def _after_command(argv: list[str] | None, command: str) -> list[str]:
    raw = list(sys.argv[1:] if argv is None else argv)
    return raw[raw.index(command) + 1 :]


if __name__ == "__main__":
    sys.exit(main())
