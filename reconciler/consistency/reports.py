"""Repair reports: one per anti-entropy session (repair, dry run, verify, resync), written
as JSON (for machines) and Markdown (for people) into the reports directory."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_DECISIONS = 200_000  # a report lists every differing key up to this many


@dataclass
class KeyDecision:
    db: int
    key: str  # printable (non-UTF-8 bytes escaped)
    action: str  # "ship-to-peer" | "fetch-from-peer" | "exchange" | "none"
    winner: str  # "local" | "peer" | "equal"
    reason: str
    local: dict[str, Any] | None
    peer: dict[str, Any] | None


@dataclass
class RepairReport:
    id: str
    region: str
    peer: str
    trigger: str
    mode: str  # "repair" | "dry-run" | "verify" | "resync"
    started_at: str
    finished_at: str = ""
    result: str = "running"  # "ok" | "failed" | "running"
    error: str = ""
    durations_s: dict[str, float] = field(default_factory=dict)
    keys_in_scope: dict[str, int] = field(default_factory=dict)  # local/peer live keys
    keys_compared: int = 0  # entries exchanged and compared key by key
    leaves_differing: int = 0
    buckets_differing: int = 0
    keys_differing: int = 0
    bytes_exchanged: dict[str, int] = field(default_factory=dict)  # sent/received/total
    repaired: dict[str, int] = field(default_factory=dict)  # shipped/fetched
    local_inconsistencies: int = 0  # (verify) keys whose data does not match metadata
    peer_inconsistencies: int = 0
    decisions: list[KeyDecision] = field(default_factory=list)
    decisions_truncated: bool = False

    @classmethod
    def new(cls, region: str, peer: str, trigger: str, mode: str) -> RepairReport:
        now = dt.datetime.now(dt.UTC)
        ident = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{region}-{peer}-{uuid.uuid4().hex[:6]}"
        return cls(ident, region, peer, trigger, mode, now.isoformat(timespec="milliseconds"))

    def add_decision(self, decision: KeyDecision) -> None:
        self.keys_differing += 1
        if len(self.decisions) < MAX_DECISIONS:
            self.decisions.append(decision)
        else:
            self.decisions_truncated = True

    def finish(self, result: str, error: str = "") -> None:
        self.result = result
        self.error = error
        self.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")

    @property
    def differ(self) -> bool:
        return bool(self.keys_differing or self.local_inconsistencies or self.peer_inconsistencies)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepairReport:
        decisions = [KeyDecision(**d) for d in data.pop("decisions", [])]
        return cls(**data, decisions=decisions)

    def to_markdown(self) -> str:
        b = self.bytes_exchanged
        lines = [
            f"# Repair report {self.id}",
            "",
            f"- region: **{self.region}**, peer: **{self.peer}**",
            f"- mode: {self.mode}, trigger: {self.trigger}",
            f"- started: {self.started_at}, finished: {self.finished_at}",
            f"- result: **{self.result}**" + (f" ({self.error})" if self.error else ""),
            "- durations: " + ", ".join(f"{k} {v:.3f}s" for k, v in self.durations_s.items()),
            f"- keys in scope: {self.keys_in_scope}",
            f"- leaves (hash slots) differing: {self.leaves_differing}, "
            f"buckets differing: {self.buckets_differing}",
            f"- keys compared: {self.keys_compared}, keys differing: {self.keys_differing}",
            f"- bytes exchanged: sent {b.get('sent', 0)}, received {b.get('received', 0)}, "
            f"total {b.get('total', 0)}",
            f"- repaired: {self.repaired}",
        ]
        if self.mode == "verify":
            lines.append(
                f"- data/metadata inconsistencies: local {self.local_inconsistencies}, "
                f"peer {self.peer_inconsistencies}"
            )
        if self.decisions:
            lines += ["", "## Keys that differed", "", "| db | key | action | winner | why |"]
            lines.append("|---|---|---|---|---|")
            for d in self.decisions:
                key = d.key.replace("|", "\\|")
                lines.append(f"| {d.db} | `{key}` | {d.action} | {d.winner} | {d.reason} |")
            if self.decisions_truncated:
                lines.append(f"\n(only the first {MAX_DECISIONS} keys are listed)")
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> Path:
        """Write <id>.json and <id>.md atomically; returns the JSON path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.id}.json"
        _atomic_write(path, json.dumps(self.to_json(), indent=1) + "\n")
        _atomic_write(directory / f"{self.id}.md", self.to_markdown())
        return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def list_reports(directory: Path) -> list[RepairReport]:
    """Every report in the directory, oldest first."""
    if not directory.is_dir():
        return []
    return [load_report(directory, p.stem) for p in sorted(directory.glob("*.json"))]


def load_report(directory: Path, report_id: str) -> RepairReport:
    """A report by id (or by a unique prefix of it). FileNotFoundError if none."""
    exact = directory / f"{report_id}.json"
    if not exact.exists():
        matches = sorted(directory.glob(f"{report_id}*.json"))
        if len(matches) != 1:
            raise FileNotFoundError(f"no single report matches {report_id!r} in {directory}")
        exact = matches[0]
    return RepairReport.from_json(json.loads(exact.read_text()))
