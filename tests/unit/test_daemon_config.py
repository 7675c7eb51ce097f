"""The daemon's config: the shipped example loads, mistakes are named precisely, secrets
never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.configfile import ConfigError
from reconciler.service.config import load_config
from replication.model.auth import Keyring

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "eu-west.toml"
MINIMAL = """
region = "eu-west"
peers = ["us-east"]
[redis]
url = "redis://127.0.0.1:6379/0"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[auth]
keys_env = "TEST_RECONCILER_KEYS"
"""
KEYS = Keyring.generate_text(["eu-west", "us-east", "ap-south"])


@pytest.fixture(autouse=True)
def keys_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_RECONCILER_KEYS", KEYS)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "region.toml"
    path.write_text(text)
    return path


def test_the_shipped_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    monkeypatch.setenv("RECONCILER_KEYS", KEYS.replace("\n", ";"))
    config = load_config(EXAMPLE)
    assert config.region == "eu-west"
    assert config.redis.password is not None
    assert "s3cret" not in repr(config)
    assert config.redis.address().password == "s3cret"
    assert config.auth.signer("eu-west").region == "eu-west"
    assert KEYS.split()[2] not in repr(config)


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


def test_keys_are_required_and_never_inline(tmp_path: Path) -> None:
    without = MINIMAL.replace('[auth]\nkeys_env = "TEST_RECONCILER_KEYS"\n', "")
    with pytest.raises(ConfigError, match="missing required key 'auth'"):
        load_config(write(tmp_path, without))
    inline = MINIMAL.replace('keys_env = "TEST_RECONCILER_KEYS"', 'keys = "eu-west k1 00"')
    with pytest.raises(ConfigError, match="must not be written in the file"):
        load_config(write(tmp_path, inline))


def test_a_keyring_without_this_region_or_a_peer_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_RECONCILER_KEYS", Keyring.generate_text(["us-east"]))
    with pytest.raises(ConfigError, match="region eu-west has 0 keys"):
        load_config(write(tmp_path, MINIMAL))
    monkeypatch.setenv("TEST_RECONCILER_KEYS", Keyring.generate_text(["eu-west"]))
    with pytest.raises(ConfigError, match=r"no key for peers \['us-east'\]"):
        load_config(write(tmp_path, MINIMAL))


def test_a_rotation_names_the_signing_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rotating = KEYS + Keyring.generate_text(["eu-west"], key_id="k2")
    monkeypatch.setenv("TEST_RECONCILER_KEYS", rotating)
    with pytest.raises(ConfigError, match="signing_key_id"):
        load_config(write(tmp_path, MINIMAL))
    config = load_config(write(tmp_path, MINIMAL + 'signing_key_id = "k2"\n'))
    assert config.auth.signer("eu-west").key_id == "k2"
    with pytest.raises(ConfigError, match="no key 'k3'"):
        load_config(write(tmp_path, MINIMAL + 'signing_key_id = "k3"\n'))


def test_a_bad_secret_is_named_by_entry_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "zz" + "ab" * 31
    monkeypatch.setenv("TEST_RECONCILER_KEYS", KEYS + f"eu-west k9 {secret}\n")
    with pytest.raises(ConfigError, match="entry 4") as caught:
        load_config(write(tmp_path, MINIMAL))
    assert secret not in str(caught.value)
    assert "ab" * 31 not in str(caught.value)


def test_a_drift_bound_below_a_second_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_drift_ms"):
        load_config(write(tmp_path, MINIMAL + "[clock]\nmax_drift_ms = 10\n"))
