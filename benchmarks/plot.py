"""Lag percentiles against write rate, one line per labelled run of `benchmarks.replication`
(e.g. before and after a change), from `benchmarks/results/replication-<label>.json`.

    .venv/bin/python -m benchmarks.plot [--labels before,after] [--out lag-vs-rate.png]

Writes the PNG next to BENCHMARKS.md. matplotlib comes with the dev extra.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt

from benchmarks.replication import RESULTS
from benchmarks.report import BENCHMARKS_MD


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", default="before-1,before-2,after-1,after-2")
    parser.add_argument("--out", default="lag-vs-rate.png")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    styles = {"p50": "-", "p99": "--"}
    for label in args.labels.split(","):
        path = RESULTS / f"replication-{label}.json"
        if not path.exists():
            print(f"no {path}: skipped")
            continue
        result = json.loads(path.read_text())
        rates = sorted(int(r) for r in result["lag"])
        line = None
        for stat, style in styles.items():
            ys = [result["lag"][str(r)][stat] for r in rates]
            kwargs = {"color": line.get_color()} if line is not None else {}
            load = max(result.get("load", [0]))
            (drawn,) = ax.plot(
                rates,
                ys,
                style,
                marker="o",
                label=f"{label} {stat} ({result['date']}, load avg up to {load:.0f})",
                **kwargs,
            )
            line = line or drawn
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("writes per second in region A (one writer)")
    ax.set_ylabel("lag A -> B, C (ms)")
    ax.set_title("Replication lag, three regions on one 2-core machine")
    ax.axhline(50, color="grey", linewidth=0.6)
    ax.axhline(250, color="grey", linewidth=0.6)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = BENCHMARKS_MD.parent / args.out
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
