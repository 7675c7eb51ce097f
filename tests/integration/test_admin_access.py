"""The admin endpoint of a real daemon: operator commands need the bearer token from
`[admin] token_file`, refusals are counted, and a burst of identical operator requests
shares one session instead of queueing one session (and blocking one thread) each."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devcluster.daemons import DaemonProcess, wait_for
from tests.promtext import metric
from tests.regions import Regions

pytestmark = pytest.mark.integration


def call(
    daemon: DaemonProcess, method: str, path: str, token: str | None = None, timeout_s: float = 60
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(daemon.admin_url() + path, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def reports(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text()) for p in sorted((daemon.state_dir / "reports").glob("*.json"))
    ]


def threads(daemon: DaemonProcess) -> int:
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)[1])  # type: ignore[index]


def test_operator_commands_need_the_bearer_token_and_refusals_are_counted(
    regions: Regions,
) -> None:
    a, b, _ = regions.names
    daemon = regions.daemons[a]
    token = daemon.admin_token()
    assert token
    regions.wait_status("consistent")
    # Reading is open on loopback.
    assert call(daemon, "GET", "/health")[0] == 200
    assert call(daemon, "GET", "/status")[0] == 200
    before = len(reports(daemon))

    code, body = call(daemon, "POST", f"/repair?peer={b}")
    assert code == 401
    assert "bearer token" in body["error"]
    assert call(daemon, "POST", f"/resync?peer={b}", token="x" * len(token))[0] == 401
    assert call(daemon, "POST", f"/verify?peer={b}", token=token[:-1])[0] == 401
    assert call(daemon, "POST", "/repair?peer=mallory", token=token)[0] == 400
    assert metric(daemon, "reconciler_admin_refused_total", reason="bad_token") == 3
    assert metric(daemon, "reconciler_admin_refused_total", reason="unknown_peer") == 1
    assert len(reports(daemon)) == before  # nothing refused started a session

    code, report = call(daemon, "POST", f"/verify?peer={b}", token=token)
    assert code == 200
    assert report["result"] == "ok"
    assert len(reports(daemon)) == before + 1
    assert daemon.running
    assert token not in daemon.log_tail(10_000)


def test_thirty_resync_requests_share_one_session_and_the_rest_are_refused_busy(
    regions: Regions,
) -> None:
    a, b, _ = regions.names
    daemon, peer = regions.daemons[a], regions.daemons[b]
    token = daemon.admin_token()
    regions.clients[b].set("k", "v")
    regions.wait_converged()
    regions.wait_status("consistent")
    before = len(reports(daemon))
    idle_threads = threads(daemon)
    # The peer is frozen, so the first session waits for it and the others pile up behind it.
    peer.pause()
    try:
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            calls = [
                pool.submit(call, daemon, "POST", f"/resync?peer={b}", token, 120)
                for _ in range(30)
            ]
            wait_for(
                lambda: metric(daemon, "reconciler_admin_refused_total", reason="busy") == 14,
                30,
                "14 requests refused as busy",
            )
            busy_threads = threads(daemon)
            assert metric(daemon, "reconciler_admin_operator_sessions") == 1
            peer.resume()
            answers = [c.result() for c in calls]
    finally:
        peer.resume()
    codes = sorted(code for code, _ in answers)
    assert codes == [200] * 16 + [429] * 14
    ids = {body["id"] for code, body in answers if code == 200}
    assert len(ids) == 1  # one session, one report for every request that waited
    resyncs = [r for r in reports(daemon)[before:] if r["mode"] == "resync"]
    assert len(resyncs) == 1
    # One thread per waiting request at most (16), not one per request sent (30).
    assert busy_threads - idle_threads <= 16 + 2
    assert daemon.running
    regions.wait_converged()


def test_without_a_token_configured_operator_commands_are_refused_naming_the_key(
    regions: Regions,
) -> None:
    a, b, c = regions.names
    daemon = regions.daemons[c]
    daemon.stop()
    text = daemon.config.read_text()
    daemon.config.write_text(re.sub(r"(?m)^token_file = .*\n", "", text))
    daemon.start()
    code, body = call(daemon, "POST", f"/repair?peer={a}", token="anything-at-all-123")
    assert code == 403
    assert "token_file" in body["error"]
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "repair",
            "--config",
            str(daemon.config),
            "--peer",
            b,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 2
    assert "token_file" in cli.stderr
    assert metric(daemon, "reconciler_admin_refused_total", reason="no_token_configured") == 2
    assert call(daemon, "GET", "/status")[0] == 200
    assert daemon.running
