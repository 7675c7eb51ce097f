"""Reports are untrusted when read back and bounded when written: ids cannot name a path,
bad files are skipped with a warning, keys and a peer's words cannot inject Markdown or
terminal escapes, the directory and the conflicts journal stay within their bounds, and
a disk error is counted, never raised. Real files, the real `reconciler report` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.consistency.reports import (
    ConflictJournal,
    KeyDecision,
    RepairReport,
    ReportError,
    ReportStore,
    load_report,
    md_code,
    scan_reports,
)

CONFIG = """
region = "eu-west"
peers = ["us-east"]
state_dir = "{state}"
[redis]
url = "redis://127.0.0.1:6379/0"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[auth]
keys_file = "{keys}"
"""


def report_with(key: str = "k", error: str = "") -> RepairReport:
    report = RepairReport.new("eu-west", "us-east", "operator command", "repair")
    report.add_decision(KeyDecision(0, key, "fetch-from-peer", "peer", "why", None, None))
    report.finish("failed" if error else "ok", error)
    return report


def config_file(tmp_path: Path) -> tuple[Path, Path]:
    """A daemon config whose reports directory is <tmp>/state/reports."""
    from replication.model.auth import Keyring

    keys = tmp_path / "keys"
    keys.write_text(Keyring.generate_text(["eu-west", "us-east"]))
    state = tmp_path / "state"
    path = tmp_path / "eu-west.toml"
    path.write_text(CONFIG.format(state=state, keys=keys))
    return path, state / "reports"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "bad_id", ["../x", "../../etc/passwd", "/etc/passwd", "a/b", "*", "x?", "", ".hidden", "a\nb"]
)
def test_an_id_that_is_not_a_report_id_is_refused(tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(ReportError, match="not a report id"):
        load_report(tmp_path / "reports", bad_id)


def test_report_show_cannot_read_outside_the_reports_directory(tmp_path: Path) -> None:
    config, reports = config_file(tmp_path)
    reports.mkdir(parents=True)
    outside = report_with("outside-secret")
    outside.write(reports.parent)  # a valid report one level up: <state>/<id>.json
    shown = cli("report", "show", f"../{outside.id}", "--config", str(config))
    assert shown.returncode == 2
    assert "not a report id" in shown.stderr
    assert "outside-secret" not in shown.stdout + shown.stderr


def test_a_symbolic_link_in_the_reports_directory_is_not_followed(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    report_with("linked").write(tmp_path)
    target = next(tmp_path.glob("*.json"))
    (reports / "20990101T000000Z-eu-west-us-east-aaaaaa.json").symlink_to(target)
    listing = scan_reports(reports)
    assert listing.reports == []
    assert "symbolic link" in listing.skipped[0]


def test_truncated_and_foreign_files_are_skipped_with_a_warning_and_the_rest_listed(
    tmp_path: Path,
) -> None:
    config, reports = config_file(tmp_path)
    good = [report_with(f"k{i}") for i in range(2)]
    for r in good:
        r.write(reports)
    text = (reports / f"{good[0].id}.json").read_text()
    (reports / "20261201T000000Z-eu-west-us-east-trunc1.json").write_text(text[: len(text) // 2])
    (reports / "20261201T000001Z-eu-west-us-east-types1.json").write_text(
        json.dumps({**good[0].to_json(), "keys_differing": "many"})
    )
    (reports / "20261201T000002Z-eu-west-us-east-list01.json").write_text("[1, 2, 3]")
    (reports / "20261201T000003Z-eu-west-us-east-binary.json").write_bytes(b"\xff\xfe\x00")
    listing = scan_reports(reports)
    assert sorted(r.id for r in listing.reports) == sorted(r.id for r in good)
    assert len(listing.skipped) == 4
    listed = cli("report", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    for r in good:
        assert r.id in listed.stdout
    assert listed.stderr.count("warning: skipped") == 4
    assert "Traceback" not in listed.stderr
    shown = cli(
        "report", "show", "20261201T000000Z-eu-west-us-east-trunc1", "--config", str(config)
    )
    assert shown.returncode == 2
    assert "not valid JSON" in shown.stderr


def test_a_key_with_newlines_and_markdown_cannot_inject_into_the_report() -> None:
    hostile = "k\n# Injected heading\n| 0 | `x` | ship | local | forged |\n`` ` ``|"
    report = report_with(hostile)
    report.add_decision(KeyDecision(0, "plain", "ship-to-peer", "local", "why", None, None))
    text = report.to_markdown()
    lines = text.splitlines()
    assert not any(line.startswith("# Injected") for line in lines)
    rows = [line for line in lines if line.startswith("| 0 |")]
    assert len(rows) == 2  # one row per decision, nothing more
    hostile_row = rows[0]
    # Every '|' of the key is escaped: the row still has exactly the table's six separators.
    assert hostile_row.count("|") - hostile_row.count("\\|") == 6
    assert md_code("a`b") == "`` a`b ``"


def test_a_peers_error_message_is_kept_to_one_bounded_printable_line(tmp_path: Path) -> None:
    report = report_with(error="peer failed: \x1b[2J\x1b[31mpwned\n# Heading" + "x" * 5000)
    assert "\x1b" not in report.error
    assert "\n" not in report.error
    assert len(report.error) < 1100
    assert "\n# Heading" not in report.to_markdown()


def test_the_store_keeps_the_newest_reports_within_count_and_bytes(tmp_path: Path) -> None:
    store = ReportStore(tmp_path, max_reports=3, max_bytes=1 << 30)
    saved = []
    for i in range(6):
        report = report_with(f"k{i}")
        report.id = f"20261201T00000{i}Z-eu-west-us-east-abcdef"
        saved.append(report.id)
        assert store.save(report) is not None
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == saved[-3:]
    assert sorted(p.stem for p in tmp_path.glob("*.md")) == saved[-3:]
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    small = ReportStore(tmp_path, max_reports=100, max_bytes=size // 2)
    assert small.prune() >= 1
    assert len(list(tmp_path.glob("*.json"))) < 3
    assert saved[-1] in [p.stem for p in tmp_path.glob("*.json")]  # the newest stays


def test_the_conflicts_journal_rotates_and_keeps_a_bounded_number_of_files(
    tmp_path: Path,
) -> None:
    journal = ConflictJournal(tmp_path / "conflicts-eu-west.jsonl", max_bytes=4096, files=2)
    for i in range(200):
        assert journal.append([{"key": f"k{i}", "winner": "local", "pad": "x" * 80}])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "conflicts-eu-west.jsonl",
        "conflicts-eu-west.jsonl.1",
        "conflicts-eu-west.jsonl.2",
    ]
    assert journal.rotations >= 3
    assert all(p.stat().st_size < 4096 + 200 for p in tmp_path.iterdir())
    last = (tmp_path / "conflicts-eu-west.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["key"] == "k199"


def test_disk_errors_are_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = ReportStore(blocker / "reports")
    journal = ConflictJournal(blocker / "reports" / "conflicts-eu-west.jsonl")
    assert store.save(report_with()) is None
    assert store.save(report_with()) is None
    assert journal.append([{"key": "k"}]) is False
    assert (store.write_errors, journal.write_errors) == (2, 1)
