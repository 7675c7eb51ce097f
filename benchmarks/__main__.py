"""Run benchmarks one after the other: `python -m benchmarks all` or `python -m benchmarks
replication antientropy`. Each writes its own section of BENCHMARKS.md; they run in turn
because they share the machine's cores and would disturb each other's figures."""

from __future__ import annotations

import subprocess
import sys
import time

NAMES = (
    "core_model",
    "capture_parse",
    "capture_throughput",
    "client_throughput",
    "replication",
    "antientropy",
    "mttr",
)


def main(argv: list[str]) -> int:
    names = list(NAMES) if not argv or argv == ["all"] else argv
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from: all {' '.join(NAMES)}")
        return 2
    failed = []
    for name in names:
        started = time.monotonic()
        print(f"== benchmarks.{name}", flush=True)
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode
        print(f"== benchmarks.{name}: exit {code} after {time.monotonic() - started:.0f}s")
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
