"""A reports directory the daemon cannot write (here: its parent is a regular file, which
fails even as root) costs the reports and the conflicts journal, nothing else: sessions
still run and repair, conflicts are still resolved, the failures are counted in
`reconciler_disk_errors_total`, and the daemons stay up."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from tests.promtext import metric
from tests.regions import running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_failed_report_and_journal_writes_are_counted_and_not_fatal(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be\n")
    overrides = {"reports_dir": str(blocker / "reports")}
    with running_regions(
        tmp_path, kafka, redis_factory, names=("eu-west", "us-east"), overrides=overrides
    ) as regions:
        a, b = regions.names
        da, db_ = regions.daemons[a], regions.daemons[b]
        # Sessions at start write reports: each write fails and is counted.
        wait_for(
            lambda: metric(da, "reconciler_disk_errors_total", what="report") >= 1,
            60,
            "a failed report write to be counted",
        )
        regions.wait_status("consistent")
        # A conflict: both regions write the same key while neither daemon reads.
        da.pause()
        db_.pause()
        try:
            regions.clients[a].set("acct:7", "from-a")
            regions.clients[b].set("acct:7", "from-b")
        finally:
            da.resume()
            db_.resume()
        data = regions.wait_converged()
        assert data[b"acct:7"][1] in (b"from-a", b"from-b")
        wait_for(
            lambda: (
                metric(da, "reconciler_disk_errors_total", what="journal")
                + metric(db_, "reconciler_disk_errors_total", what="journal")
                >= 1
            ),
            30,
            "a failed journal write to be counted",
        )
        # An operator session still runs and answers (its report just is not on disk).
        report = da.post(f"/verify?peer={b}")
        assert report["result"] == "ok"
        assert report["keys_differing"] == 0
        assert da.running
        assert db_.running
        assert "writing a repair report" in da.log_tail(2000)
        assert "Traceback" not in da.log_tail(2000)
