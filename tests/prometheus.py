"""A real Prometheus server (Debian's `prometheus` package) for tests: loopback, a temp
directory, short scrape and evaluation intervals, always stopped."""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from devcluster.ports import LOOPBACK, free_port, wait_until
from devcluster.process import ServerProcess


def shortened_rules(source: Path, for_s: int) -> dict[str, Any]:
    """The rule file at `source` with every `for:` cut to at most `for_s` seconds, so an
    alert can fire within a test; expressions, labels and annotations unchanged."""
    data: dict[str, Any] = yaml.safe_load(source.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{for_s}s"
    return data


class PrometheusServer:
    """`prometheus` scraping `targets` (job name -> host:port list) every second."""

    def __init__(
        self,
        base_dir: Path,
        targets: dict[str, list[str]],
        *,
        rules: dict[str, Any] | None = None,
        interval_s: int = 1,
    ) -> None:
        self.name = "prometheus"
        self.dir = base_dir
        self.port = free_port()
        self._process = ServerProcess(self.name, base_dir / "prometheus.log")
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": f"{interval_s}s",
                "scrape_timeout": f"{interval_s}s",
                "evaluation_interval": f"{interval_s}s",
            },
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]}
                for job, hosts in targets.items()
            ],
        }
        base_dir.mkdir(parents=True, exist_ok=True)
        if rules is not None:
            (base_dir / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
            config["rule_files"] = [str(base_dir / "rules.yml")]
        self.config_path = base_dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def running(self) -> bool:
        return self._process.running

    def start(self, timeout_s: float = 60.0) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None, "prometheus missing: run `make bootstrap`"
        self._process.spawn(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--web.enable-lifecycle",
            ],
            cwd=self.dir,
        )

        def ready() -> bool:
            if not self._process.running:
                raise RuntimeError(f"prometheus exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(ready, timeout_s=timeout_s, what="prometheus ready")

    def stop(self) -> None:
        self._process.stop(timeout_s=20)

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url(f"/api/v1/{path}{query}"), timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, str]]:
        """The label sets of the alerts named `name` in `state` (pending, firing)."""
        return [
            a["labels"]
            for a in self.api("alerts")["alerts"]
            if a["labels"].get("alertname") == name and a["state"] == state
        ]
