"""The client's TOML config: every policy key, secrets, and the errors an operator sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.client import (
    ClientConfig,
    ConfigError,
    PolicyConfig,
    RegionConfig,
    load_client_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "client.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(text)
    return path


def test_the_shipped_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_EU_WEST_PASSWORD", "REDIS_US_EAST_PASSWORD", "REDIS_AP_SOUTH_PASSWORD"):
        monkeypatch.setenv(name, "example-secret")
    config = load_client_config(EXAMPLE)
    assert [r.name for r in config.regions] == ["eu-west", "us-east", "ap-south"]
    assert config.home.name == "eu-west"
    assert config.kafka is not None
    assert "example-secret" not in repr(config)


def test_a_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load_client_config(
        write(tmp_path, '[[regions]]\nname = "eu"\nurl = "redis://127.0.0.1:6379/0"\n')
    )
    assert config.policy == PolicyConfig()
    assert config.policy.require_consistent_status is True
    assert "GET" in config.policy.retry_commands
    assert "INCR" not in config.policy.retry_commands
    assert config.kafka is None


def test_every_policy_key_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EU_PW", "pw-eu")
    config = load_client_config(
        write(
            tmp_path,
            """
            client_name = "checkout"
            [[regions]]
            name = "eu"
            url = "redis://10.0.0.1:6379/0"
            username = "app"
            password_env = "EU_PW"
            max_connections = 64
            [[regions]]
            name = "us"
            url = "rediss://10.1.0.1:6380/2"
            [policy]
            window_s = 5
            min_requests = 50
            error_rate_threshold = 0.25
            command_timeout_s = 0.2
            connect_timeout_s = 0.3
            probe_interval_s = 0.5
            probe_backoff_cap_s = 8
            failback_healthy_s = 60
            require_consistent_status = false
            retry_commands = ["get", "mget", " Set "]
            [kafka]
            bootstrap_servers = "k1:9092,k2:9092"
            topic_prefix = "payments"
            snapshot_interval_s = 2
            """,
        )
    )
    assert config.client_name == "checkout"
    eu = config.regions[0]
    assert (eu.username, eu.max_connections) == ("app", 64)
    assert eu.password is not None
    assert eu.password.reveal() == "pw-eu"
    assert "pw-eu" not in repr(config)
    policy = config.policy
    assert (policy.window_s, policy.min_requests, policy.error_rate_threshold) == (5.0, 50, 0.25)
    assert (policy.command_timeout_s, policy.connect_timeout_s) == (0.2, 0.3)
    assert (policy.probe_interval_s, policy.probe_backoff_cap_s) == (0.5, 8.0)
    assert (policy.failback_healthy_s, policy.require_consistent_status) == (60.0, False)
    assert policy.retry_commands == ("GET", "MGET", "SET")
    assert config.kafka is not None
    assert (config.kafka.bootstrap_servers, config.kafka.topic_prefix) == (
        "k1:9092,k2:9092",
        "payments",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "[policy]\ntreshold = 0.5\n",
            "client.toml: [policy] unknown key 'treshold' (did you mean 'error_rate_threshold'?)",
        ),
        (
            "[policy]\nerror_rate_threshold = 0\n",
            "client.toml: [policy] 'error_rate_threshold' = 0.0: expected > 0 and <= 1",
        ),
        ("[policy]\nmin_requests = 0\n", "client.toml: [policy] 'min_requests' = 0: expected >= 1"),
        (
            '[policy]\ncommand_timeout_s = "1s"\n',
            "client.toml: [policy] 'command_timeout_s' = '1s': expected a number",
        ),
        (
            '[policy]\nretry_commands = ["GET", ""]\n',
            "client.toml: [policy] 'retry_commands': expected command names such as 'GET'",
        ),
        (
            '[kafka]\ntopic_prefix = "x"\n',
            "client.toml: [kafka] missing required key 'bootstrap_servers'",
        ),
    ],
)
def test_bad_policy_values_are_rejected_naming_the_key(
    tmp_path: Path, body: str, message: str
) -> None:
    text = '[[regions]]\nname = "eu"\nurl = "redis://127.0.0.1:6379/0"\n' + body
    with pytest.raises(ConfigError) as info:
        load_client_config(write(tmp_path, text))
    assert str(info.value) == message


def test_region_urls_must_be_redis_urls_without_a_password() -> None:
    with pytest.raises(ConfigError, match="expected a redis://"):
        RegionConfig(name="eu", url="http://x")
    with pytest.raises(ConfigError) as info:
        RegionConfig(name="eu", url="redis://:hunter2@127.0.0.1:6379/0")
    assert "password_env" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_region_names_are_unique_and_at_least_one_region_is_required() -> None:
    region = RegionConfig(name="eu", url="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="'eu' appears twice"):
        ClientConfig(regions=(region, region))
    with pytest.raises(ConfigError, match="'regions'"):
        ClientConfig(regions=())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://10.0.0.1:6379/3", "redis://10.0.0.1:6379/0"),
        ("redis://10.0.0.1:6379", "redis://10.0.0.1:6379/0"),
        ("rediss://user@h:6380/2?ssl_cert_reqs=none", "rediss://user@h:6380/0?ssl_cert_reqs=none"),
        ("redis://h:1/5?db=5", "redis://h:1/0"),
        ("unix:///run/redis.sock?db=4", "unix:///run/redis.sock?db=0"),
    ],
)
def test_the_status_record_is_read_from_the_status_db_whatever_the_url_names(
    url: str, expected: str
) -> None:
    from reconciler.client.connections import status_url

    assert status_url(url, 0) == expected


def test_the_clients_default_topic_prefix_is_the_daemons() -> None:
    # A client left on defaults must stream where the daemons and `reconciler clients`
    # listen (<prefix>.clients), or its metrics go nowhere.
    import dataclasses

    from reconciler.client.config import KafkaConfig
    from reconciler.service.config import KafkaSection

    daemon = {f.name: f.default for f in dataclasses.fields(KafkaSection)}
    assert KafkaConfig(bootstrap_servers="127.0.0.1:9092").topic_prefix == daemon["topic_prefix"]
