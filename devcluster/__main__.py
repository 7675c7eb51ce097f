"""`python -m devcluster fetch-kafka|up|down|status|demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devcluster.cluster import DEFAULT_REGIONS, describe, load_state, start_cluster, stop_cluster
from devcluster.kafka_broker import ensure_kafka_classpath

DEFAULT_DIR = Path(".devcluster")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state and data directory")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch-kafka", help="resolve and cache the Kafka broker's jars")
    up = sub.add_parser("up", help="start N redis-servers and one Kafka broker, detached")
    up.add_argument("--regions", default=",".join(DEFAULT_REGIONS))
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="print what is running")
    sub.add_parser("demo", help="the three-region demo")
    args = parser.parse_args(argv)

    if args.cmd == "fetch-kafka":
        lib = ensure_kafka_classpath()
        print(f"kafka jars: {lib}")
        return 0
    if args.cmd == "up":
        if load_state(args.dir) is not None:
            print(f"already up (see {args.dir}/state.json); run `down` first", file=sys.stderr)
            return 1
        state = start_cluster(args.dir.resolve(), tuple(args.regions.split(",")))
        print(describe(state))
        return 0
    if args.cmd == "down":
        stopped = stop_cluster(args.dir)
        print("stopped:\n" + describe(stopped) if stopped else "nothing running")
        return 0
    if args.cmd == "status":
        current = load_state(args.dir)
        print(describe(current) if current else "nothing running")
        return 0
    if args.cmd == "demo":
        from devcluster.demo import run_demo

        return run_demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
