"""The daemon's one wall clock, and the fake offset the fault suite skews a region with."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from replication.clock import FAKE_OFFSET_ENV, offset_ms, wall_ms


def test_without_the_variable_the_clock_is_the_hosts() -> None:
    assert offset_ms() == 0
    assert abs(wall_ms() - time.time_ns() // 1_000_000) < 50


def test_the_offset_file_skews_the_clock_while_the_process_runs(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("+3000\n")
    script = textwrap.dedent(
        """
        import sys, time
        from replication.clock import offset_ms, wall_ms
        def skew():
            return round((wall_ms() - time.time_ns() // 1_000_000) / 1000)
        print(offset_ms(), skew(), flush=True)
        sys.stdin.readline()  # the test rewrites the file
        time.sleep(0.5)
        print(offset_ms(), skew(), flush=True)
        sys.stdin.readline()
        time.sleep(0.5)
        print(offset_ms(), skew(), flush=True)
        """
    )
    env = {**os.environ, FAKE_OFFSET_ENV: str(offset)}
    with subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["3000", "3"]
        offset.write_text("-2000")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["-2000", "-2"]
        offset.write_text("not a number")  # unreadable: no offset
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["0", "0"]
        assert proc.wait(10) == 0
