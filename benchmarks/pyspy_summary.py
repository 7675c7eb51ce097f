"""Where a daemon's time goes, from py-spy's collapsed stacks (`py-spy record --format raw
--idle`, as `benchmarks.replication --profile DIR` takes them).

    .venv/bin/python -m benchmarks.pyspy_summary FILE [FILE ...]

Each sample is one stack of the main thread, taken 100 times a second whether the thread
runs or waits (`--idle`), so a share of samples is a share of wall time. Prints the share
of samples inside each pipeline part (a sample counts for the innermost part its stack
passes through) and the functions with the most samples of their own.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

# Innermost match wins: a frame from this list, searched from the leaf up.
PARTS: tuple[tuple[str, str], ...] = (
    ("waiting (event loop idle: select/epoll)", "select (selectors.py"),
    ("capture: stream parsing", "StreamParser."),
    ("capture: stream source", "ReplicationStreamSource."),
    ("versioning: parse replies -> events", "parse_version"),
    ("versioning: build FCALLs", "version_many_command"),
    ("versioning: build FCALLs", "version_command"),
    ("versioning: other", "Versioner."),
    ("Redis connection (pack, socket, hiredis)", "RespConnection."),
    ("producer: pack events", "pack_event"),
    ("producer: pack events", "ChangeProducer.pack"),
    ("producer: aiokafka", "aiokafka/producer"),
    ("consumer: decode + validate", "decode_batch"),
    ("consumer: aiokafka", "aiokafka/consumer"),
    ("apply: build FCALLs", "apply_many_command"),
    ("apply: build FCALLs", "apply_command"),
    ("apply: other", "Applier."),
    ("merkle index", "merkle"),
    ("kafka client (network)", "aiokafka/"),
    ("metrics/admin", "prometheus_client"),
)


def part_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for label, needle in PARTS:
            if needle in frame:
                return label
    return "other"


def summarise(paths: list[Path]) -> tuple[Counter[str], Counter[str], int]:
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not stack_text or not count_text.isdigit():
                continue
            count = int(count_text)
            stack = stack_text.split(";")
            # Only the event loop's thread: the admin server and executor threads idle.
            if "run_forever" not in stack_text:
                continue
            total += count
            parts[part_of(stack)] += count
            leaves[stack[-1].split(" (")[0]] += count
    return parts, leaves, total


def table(parts: Counter[str], total: int) -> list[tuple[str, float]]:
    return [(label, n / total) for label, n in parts.most_common()]


def main(argv: list[str]) -> int:
    parts, leaves, total = summarise([Path(a) for a in argv])
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples of the event loop thread")
    for label, share in table(parts, total):
        print(f"{share:6.1%}  {label}")
    print("\nown samples (leaf functions):")
    for name, n in leaves.most_common(15):
        print(f"{n / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
