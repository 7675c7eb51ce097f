"""Writing benchmark figures into BENCHMARKS.md: one section per benchmark, replaced in
place on every run, each with the machine, the command and the date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    """CPU model, core count, memory and OS: what the figures were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{model}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def command_line() -> str:
    """How this benchmark was started, as a reader would retype it."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    target = f"-m {spec.name}" if spec is not None else sys.argv[0]
    args = shlex.join(sys.argv[1:])
    return f".venv/bin/python {target}" + (f" {args}" if args else "")


def write_section(title: str, body: str, *, command: str | None = None) -> None:
    """Replace (or append) the section `## title` in BENCHMARKS.md."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    header = (
        f"## {title}\n\n"
        f"- command: `{command or command_line()}`\n"
        f"- machine: {machine()}\n"
        f"- date: {today}\n\n"
    )
    section = header + body.strip() + "\n"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS_MD.write_text(text.rstrip("\n") + "\n")


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
