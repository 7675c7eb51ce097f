"""The shipped unit file, checked by systemd's own parser (`systemd-analyze verify`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "reconciler@.service"
SHIPPED_EXEC = "/opt/reconciler/.venv/bin/reconciler"


def verify(tmp_path: Path, text: str) -> str:
    """`systemd-analyze verify` of `text` as instance eu-west; returns what it printed."""
    # The unit's ExecStart names the installed path; verify checks that it is executable,
    # so the copy points at this checkout's console script instead (nothing else changes).
    here = Path(sys.prefix) / "bin" / "reconciler"
    assert here.exists(), f"{here} missing: run make bootstrap"
    unit = tmp_path / "reconciler@eu-west.service"
    unit.write_text(text.replace(SHIPPED_EXEC, str(here)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # verify exits 0 for directives it ignores; those lines name the file.
    return "\n".join(
        line for line in (result.stdout + result.stderr).splitlines() if unit.name in line
    )


def test_the_unit_is_type_notify_with_a_watchdog() -> None:
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    lines = {line.strip() for line in text.splitlines()}
    assert "Type=notify" in lines
    assert "NotifyAccess=main" in lines
    assert any(line.startswith("WatchdogSec=") for line in lines)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert verify(tmp_path, UNIT.read_text()) == ""
    # The check is real: a broken directive is reported.
    broken = UNIT.read_text().replace("Type=notify", "Type=notifyy")
    (tmp_path / "broken").mkdir()
    assert "Failed to parse service type" in verify(tmp_path / "broken", broken)
