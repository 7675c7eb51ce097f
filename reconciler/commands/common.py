"""What the subcommands share: loading the config, reaching the running daemon."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from reconciler.configfile import ConfigError
from reconciler.service.admin import admin_file
from reconciler.service.config import DaemonConfig, load_config

EXIT_OK = 0
EXIT_DIFFER = 1  # verify: the regions differ; repair: the session failed
EXIT_USAGE = 2


class CommandError(Exception):
    """Printed to stderr as is; the command exits with EXIT_USAGE."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the region's daemon config (TOML)")


def config_from(args: argparse.Namespace) -> DaemonConfig:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CommandError(f"config error: {exc}") from None


def admin_base_url(config: DaemonConfig) -> str:
    """The running daemon's admin URL (from the address it recorded, else the config)."""
    recorded = admin_file(Path(config.state_dir), config.region)
    host, port = config.admin.host, config.admin.port
    try:
        data = json.loads(recorded.read_text())
        host, port = data["host"], int(data["port"])
    except (OSError, ValueError, KeyError):
        pass
    return f"http://{host}:{port}"


def call_daemon(
    config: DaemonConfig,
    path: str,
    params: dict[str, str],
    *,
    method: str = "POST",
    timeout_s: float = 24 * 3600,
) -> dict[str, Any]:
    """Ask the daemon's admin endpoint (POST by default) and return its JSON answer."""
    url = f"{admin_base_url(config)}{path}?{urlencode(params)}"
    request = urllib.request.Request(url, method=method)  # noqa: S310 - our own loopback URL
    if config.admin.token is not None:
        request.add_header("Authorization", f"Bearer {config.admin.token.reveal()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise CommandError(f"daemon refused: {detail.strip()}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError(
            f"cannot reach the {config.region} daemon at {url.split('?', maxsplit=1)[0]} ({exc}); "
            "is `reconciler run` running for this config?"
        ) from None


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_USAGE
