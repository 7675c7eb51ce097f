"""The long soak: ``python -m tests.faults --seeds N --minutes M [--seed S]``.

Runs N seeds (S, S+1, ...), each M minutes of workload and faults on three fresh real
regions sharing one Kafka broker, one seed at a time; prints per seed the operations,
faults by kind, convergence after the heal, acknowledged writes lost inside failure
windows and every violation with the operations that show it. Exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from devcluster import KafkaBroker
from tests.faults.harness import broker_listeners, run_seed
from tests.servers import RedisFactory, stop_all, track


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (default 1)")
    parser.add_argument("--minutes", type=float, default=1.0, help="per seed (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or not 0 < args.minutes <= 24 * 60:
        parser.error("--seeds must be >= 1 and --minutes in (0, 1440]")
    base = args.dir or Path(tempfile.mkdtemp(prefix="faults-"))
    failed: list[int] = []
    broker = KafkaBroker(base / "kafka", extra_listeners=broker_listeners())
    track(broker)
    broker.start()
    try:
        for seed in range(args.seed, args.seed + args.seeds):
            started = time.monotonic()
            factory = RedisFactory(base / f"seed-{seed}" / "redis")
            try:
                result = run_seed(seed, args.minutes * 60, base / f"seed-{seed}", broker, factory)
            finally:
                factory.stop_all()
                broker.resume()
            for problem in result.problems:
                print(problem, flush=True)
            verdict = "ok" if result.ok else "FAILED"
            print(f"{verdict} {result.summary()} ({time.monotonic() - started:.0f}s)", flush=True)
            if not result.ok:
                failed.append(seed)
    finally:
        broker.stop()
        stop_all()
    print(f"seeds {args.seed}..{args.seed + args.seeds - 1}: failed {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
