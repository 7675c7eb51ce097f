"""Repair reports: one per anti-entropy session (repair, dry run, verify, resync), written
as JSON (for machines) and Markdown (for people) into the reports directory, and the
conflicts journal beside them.

What goes on disk is bounded: `ReportStore` keeps the newest `max_reports` sessions within
`max_bytes`, the `ConflictJournal` rotates at `journal_max_bytes` keeping `journal_files`
old files. A disk error (full, read-only, gone) is logged and counted, never fatal: a
report is a record of a session, not part of it.

What comes off disk is untrusted: ids must match `REPORT_ID_PATTERN` (no path can be
named), a file that does not parse as a report is skipped with a warning, and everything
a peer or a key can put into a report (keys, a peer's error message) is escaped before it
reaches Markdown or a terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

MAX_DECISIONS = 200_000  # a report lists every differing key up to this many
MAX_ERROR_CHARS = 1000  # of a session's error (it may quote a peer's message)
MAX_REPORT_FILE_BYTES = 512 << 20  # a larger file is not a report this daemon wrote
REPORT_ID_PATTERN = r"[0-9A-Za-z][0-9A-Za-z_-]{0,159}"
_REPORT_ID = re.compile(REPORT_ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!])")


class ReportError(Exception):
    """A report that cannot be found or read (the message says which and why)."""


def printable(text: str, limit: int | None = None) -> str:
    """`text` with control characters (newlines, escape sequences) shown as escapes, so it
    stays on one line of a terminal or a Markdown document; cut to `limit` characters."""
    text = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text


def md_text(text: str) -> str:
    """Plain text for a Markdown line: one line, Markdown's special characters escaped."""
    return _MD_SPECIAL.sub(r"\\\1", printable(text))


def md_code(text: str) -> str:
    """`text` as an inline code span inside a Markdown table cell: one line, pipes escaped
    (GFM splits cells on them even in code), delimited by more backticks than it holds."""
    shown = printable(text).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", shown)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") or longest else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


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
        # The error may quote a peer: keep it one bounded line wherever it is shown.
        self.error = printable(error, MAX_ERROR_CHARS)
        self.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")

    @property
    def differ(self) -> bool:
        return bool(self.keys_differing or self.local_inconsistencies or self.peer_inconsistencies)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepairReport:
        """A report from its JSON form; ReportError if it is not one."""
        if not isinstance(data, dict):
            raise ReportError("not a JSON object")
        data = dict(data)
        raw_decisions = data.pop("decisions", [])
        try:
            if not isinstance(raw_decisions, list):
                raise TypeError("'decisions' is not a list")
            decisions = [_typed(KeyDecision(**d)) for d in raw_decisions]
            report = _typed(cls(**data, decisions=decisions))
        except TypeError as exc:
            raise ReportError(f"not a repair report ({exc})") from None
        if not (isinstance(report.id, str) and _REPORT_ID.fullmatch(report.id)):
            raise ReportError("not a repair report (bad id)")
        return report

    def to_markdown(self) -> str:
        b = self.bytes_exchanged
        t = md_text
        lines = [
            f"# Repair report {t(self.id)}",
            "",
            f"- region: **{t(self.region)}**, peer: **{t(self.peer)}**",
            f"- mode: {t(self.mode)}, trigger: {t(self.trigger)}",
            f"- started: {t(self.started_at)}, finished: {t(self.finished_at)}",
            f"- result: **{t(self.result)}**" + (f" ({t(self.error)})" if self.error else ""),
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
                lines.append(
                    f"| {d.db} | {md_code(d.key)} | {t(d.action)} | {t(d.winner)} | {t(d.reason)} |"
                )
            if self.decisions_truncated:
                lines.append(f"\n(only the first {MAX_DECISIONS} keys are listed)")
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> Path:
        """Write <id>.json and <id>.md atomically; returns the JSON path (OSError if the
        disk refuses: `ReportStore.save` is what the daemon calls)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.id}.json"
        _atomic_write(path, json.dumps(self.to_json(), indent=1) + "\n")
        _atomic_write(directory / f"{self.id}.md", self.to_markdown())
        return path


_T = TypeVar("_T")
_TYPES: dict[str, type] = {
    "str": str,
    "int": int,
    "bool": bool,
    "dict": dict,
    "list": list,
}


def _typed(instance: _T) -> _T:
    """`instance` if every field holds its declared kind of value (TypeError otherwise):
    a report read back from disk is only shown once it has the shape this code wrote."""
    for f in fields(instance):  # type: ignore[arg-type]
        declared = str(f.type)
        optional = declared.endswith("| None")
        kind = _TYPES.get(declared.split("[", 1)[0].removesuffix(" | None").strip())
        value = getattr(instance, f.name)
        if kind is None or (optional and value is None):
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"'{f.name}' is not a {declared}")
    return instance


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written file never stays behind
        raise


class _Throttled:
    """Logs a recurring disk error at most once a minute, with how many happened."""

    def __init__(self, what: str, every_s: float = 60.0) -> None:
        self.what = what
        self.every_s = every_s
        self.count = 0
        self._last = -every_s
        self._since = 0

    def error(self, exc: OSError) -> None:
        self.count += 1
        self._since += 1
        now = time.monotonic()
        if now - self._last >= self.every_s:
            log.error("%s failed (%d since the last message): %s", self.what, self._since, exc)
            self._last, self._since = now, 0


class ReportStore:
    """Writes session reports and keeps the directory within its bounds."""

    def __init__(self, directory: Path, *, max_reports: int = 1000, max_bytes: int = 1 << 30):
        self.directory = directory
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self._errors = _Throttled(f"writing a repair report in {directory}")
        self.pruned = 0

    @property
    def write_errors(self) -> int:
        return self._errors.count

    def save(self, report: RepairReport) -> Path | None:
        """Write the report, then remove the oldest beyond the bounds. A disk error is
        logged and counted (None returned), never raised."""
        try:
            path = report.write(self.directory)
            self.prune()
        except OSError as exc:
            self._errors.error(exc)
            return None
        return path

    def prune(self) -> int:
        """Remove the oldest reports (JSON and Markdown) beyond `max_reports` or beyond
        `max_bytes` in total; the newest report always stays. Returns how many went."""
        entries = []
        for path in self.directory.glob("*.json"):
            if not _REPORT_ID.fullmatch(path.stem):
                continue
            md = path.with_suffix(".md")
            try:
                size = path.stat().st_size + (md.stat().st_size if md.exists() else 0)
            except FileNotFoundError:
                continue
            entries.append((path.name, path, md, size))
        entries.sort()  # ids start with their UTC start time: oldest first
        total = sum(size for *_, size in entries)
        removed = 0
        while len(entries) > 1 and (len(entries) > self.max_reports or total > self.max_bytes):
            _, path, md, size = entries.pop(0)
            path.unlink(missing_ok=True)
            md.unlink(missing_ok=True)
            total -= size
            removed += 1
        self.pruned += removed
        return removed


class ConflictJournal:
    """The conflicts journal (`conflicts-<region>.jsonl`, one JSON object a line), rotated
    to `.1`, `.2`, ... at `max_bytes`, keeping `files` rotated files."""

    def __init__(self, path: Path, *, max_bytes: int = 64 << 20, files: int = 4) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.files = files
        self._errors = _Throttled(f"writing the conflicts journal {path}")
        self.rotations = 0

    @property
    def write_errors(self) -> int:
        return self._errors.count

    def append(self, entries: Iterable[dict[str, Any]]) -> bool:
        """Append one line per entry; False (logged and counted) if the disk refused."""
        text = "".join(json.dumps(e) + "\n" for e in entries)
        if not text:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(text)
                size = f.tell()
            if size >= self.max_bytes:
                self._rotate()
        except OSError as exc:
            self._errors.error(exc)
            return False
        return True

    def rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _rotate(self) -> None:
        self.rotated(self.files).unlink(missing_ok=True)
        for n in range(self.files - 1, 0, -1):
            if self.rotated(n).exists():
                self.rotated(n).replace(self.rotated(n + 1))
        self.path.replace(self.rotated(1))
        self.rotations += 1


@dataclass
class Listing:
    reports: list[RepairReport]
    skipped: list[str]  # "<file>: <why>" for every file that is not a readable report


def scan_reports(directory: Path) -> Listing:
    """Every readable report in the directory, oldest first, and the files skipped."""
    listing = Listing([], [])
    if not directory.is_dir():
        return listing
    for path in sorted(directory.glob("*.json")):
        try:
            listing.reports.append(_read(path))
        except ReportError as exc:
            listing.skipped.append(f"{printable(path.name)}: {exc}")
    for problem in listing.skipped:
        log.warning("report skipped: %s", problem)
    return listing


def list_reports(directory: Path) -> list[RepairReport]:
    """Every readable report in the directory, oldest first (bad files skipped, logged)."""
    return scan_reports(directory).reports


def load_report(directory: Path, report_id: str) -> RepairReport:
    """A report by id (or by a unique prefix of it). ReportError if none, or if the id is
    not a report id (it can never name a file outside the directory)."""
    if not _REPORT_ID.fullmatch(report_id):
        raise ReportError(
            f"{printable(report_id, 200)!r} is not a report id (letters, digits, '-' and '_')"
        )
    exact = directory / f"{report_id}.json"
    if not exact.is_file():
        matches = sorted(
            p for p in directory.glob(f"{report_id}*.json") if _REPORT_ID.fullmatch(p.stem)
        )
        if len(matches) != 1:
            raise ReportError(f"no single report matches {report_id!r} in {directory}")
        exact = matches[0]
    return _read(exact)


def _read(path: Path) -> RepairReport:
    try:
        if path.is_symlink():
            raise ReportError("a symbolic link, not a report file")
        if path.stat().st_size > MAX_REPORT_FILE_BYTES:
            raise ReportError(f"larger than {MAX_REPORT_FILE_BYTES} bytes")
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ReportError(f"cannot read it ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ReportError(f"not valid JSON ({type(exc).__name__}), truncated?") from None
    return RepairReport.from_json(data)
