"""The shipped Prometheus alerting rules, checked and unit-tested by Prometheus's own
promtool (Debian's `prometheus` package, installed by `make bootstrap`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

OBSERVABILITY = Path(__file__).resolve().parents[2] / "observability"
RULES = OBSERVABILITY / "alerts.yml"
TESTS = OBSERVABILITY / "alerts.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool missing: run `make bootstrap` (Debian's prometheus)"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=OBSERVABILITY
    )


def alert_names(path: Path) -> set[str]:
    data = yaml.safe_load(path.read_text())
    return {rule["alert"] for group in data["groups"] for rule in group["rules"]}


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_case_in_the_unit_tests() -> None:
    tests = yaml.safe_load(TESTS.read_text())
    fired = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == alert_names(RULES)


def test_every_alert_has_a_severity_a_summary_and_a_runbook_entry() -> None:
    readme = (OBSERVABILITY.parent / "README.md").read_text()
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert f"`{rule['alert']}`" in readme, f"{rule['alert']} missing from README"


def test_the_example_scrape_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", str(OBSERVABILITY / "prometheus.example.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
