"""The daemon's config: the shipped example loads, mistakes are named precisely, secrets
never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.configfile import ConfigError
from reconciler.service.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "eu-west.toml"
MINIMAL = """
region = "eu-west"
peers = ["us-east"]
[redis]
url = "redis://127.0.0.1:6379/0"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "region.toml"
    path.write_text(text)
    return path


def test_the_shipped_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    config = load_config(EXAMPLE)
    assert config.region == "eu-west"
    assert config.redis.password is not None
    assert "s3cret" not in repr(config)
    assert config.redis.address().password == "s3cret"


def test_a_minimal_config_gets_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.kafka.settings().topic_prefix == "reconciler"
    assert config.reports_path == Path("/var/lib/reconciler/reports")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[kafka]\nlinger = 3\n", "unknown key 'linger'"),
        ('[redis]\npassword = "x"\n', "must not be written in the file"),
        ("[heartbeat]\ninterval_s = -1\n", "interval_s"),
        ('[redis]\ncapture = "aof"\n', "capture"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, extra: str, message: str) -> None:
    text = MINIMAL
    table = extra.split("\n", 1)[0]
    text = text.replace(table + "\n", extra) if table in text else text + extra
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("peers", ['["eu-west"]', '["us-east", "us-east"]', '["US East"]'])
def test_bad_peer_lists_are_refused(tmp_path: Path, peers: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, MINIMAL.replace('["us-east"]', peers)))


def test_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("redis://127.0.0.1", "redis://user:pw@127.0.0.1")
    with pytest.raises(ConfigError, match="contains a password"):
        load_config(write(tmp_path, text))
