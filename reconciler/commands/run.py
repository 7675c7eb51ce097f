"""`reconciler run --config FILE`: the daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse
import asyncio

from reconciler.commands.common import CommandError, add_config_argument, config_from, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except CommandError as exc:
        return fail(str(exc))
    from reconciler.service.daemon import Daemon
    from reconciler.service.logs import setup_logging

    setup_logging(config.log_format, config.log_level, region=config.region)
    return asyncio.run(Daemon(config).run())
