"""Broken daemon configs, table-driven: each is refused at load time with a ConfigError
that names the key, never with a traceback, and never showing a secret.

Each case edits one key of a valid config (`KEY = VALUE` under `[TABLE]`, or at the top
level for table ""), loads it with the real loader and checks the message names the key.
The `reconciler run` command is also run on a few of them, as an operator would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.configfile import ConfigError
from reconciler.service.config import load_config
from replication.model.auth import Keyring

BASE: dict[str, dict[str, str]] = {
    "": {
        "region": '"eu-west"',
        "peers": '["us-east", "ap-south"]',
        "state_dir": '"/tmp/rr-state"',
    },
    "redis": {"url": '"redis://127.0.0.1:6379/0"'},
    "kafka": {"bootstrap_servers": '"127.0.0.1:9092"'},
    "auth": {"keys_env": '"TEST_RECONCILER_KEYS"'},
}
KEYS = Keyring.generate_text(["eu-west", "us-east", "ap-south"])


@pytest.fixture(autouse=True)
def keys_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Also inherited by the `reconciler run` subprocesses below.
    monkeypatch.setenv("TEST_RECONCILER_KEYS", KEYS)


SECRET = "hunter2-hunter2"

# (table, key, value, words the message must contain)
BROKEN: list[tuple[str, str, str, tuple[str, ...]]] = [
    # numbers that are not finite, or out of 64 bits
    ("heartbeat", "interval_s", "inf", ("interval_s", "finite")),
    ("heartbeat", "interval_s", "nan", ("interval_s", "finite")),
    ("heartbeat", "peer_timeout_s", "inf", ("peer_timeout_s", "finite")),
    ("status", "refresh_s", "nan", ("refresh_s",)),
    ("tombstones", "gc_interval_s", "inf", ("gc_interval_s", "finite")),
    ("antientropy", "repair_keys_per_s", "inf", ("repair_keys_per_s", "finite")),
    ("antientropy", "request_timeout_s", "-inf", ("request_timeout_s",)),
    ("antientropy", "settle_timeout_s", "nan", ("settle_timeout_s",)),
    ("kafka", "partitions", "100000000000000000000", ("partitions", "64 bits")),
    ("capture", "max_batch_commands", "0", ("max_batch_commands",)),
    # cross-field rules
    ("tombstones", "min_age_s", "700000.0", ("min_age_s", "horizon_s")),
    ("tombstones", "horizon_s", "1", ("horizon_s", "at least")),
    ("tombstones", "horizon_s", "500.0", ("horizon_s",)),
    ("tombstones", "gc_interval_s", "700000.0", ("gc_interval_s", "horizon_s")),
    ("heartbeat", "peer_timeout_s", "0.5", ("peer_timeout_s", "interval_s")),
    ("heartbeat", "peer_timeout_s", "1.5", ("peer_timeout_s", "twice")),
    ("status", "ttl_s", "0.5", ("ttl_s", "refresh_s")),
    ("status", "ttl_s", "1.0", ("ttl_s", "refresh_s")),
    ("kafka", "record_max_bytes", "16777216", ("record_max_bytes", "max_message_bytes")),
    ("kafka", "record_max_bytes", "8388608", ("record_max_bytes", "max_message_bytes")),
    ("redis", "dbs", "[0, 0]", ("dbs", "twice")),
    ("redis", "dbs", "[]", ("dbs",)),
    ("redis", "dbs", "[-1]", ("dbs",)),
    # Kafka topic names
    ("kafka", "topic_prefix", '"my prefix"', ("topic_prefix",)),
    ("kafka", "topic_prefix", '"caf\u00e9"', ("topic_prefix",)),
    ("kafka", "topic_prefix", '"a/b"', ("topic_prefix",)),
    ("kafka", "topic_prefix", '".."', ("topic_prefix",)),
    ("kafka", "topic_prefix", '""', ("topic_prefix",)),
    ("kafka", "topic_prefix", '"' + "p" * 240 + '"', ("topic_prefix", "too long")),
    ("kafka", "bootstrap_servers", '"localhost"', ("bootstrap_servers",)),
    ("kafka", "bootstrap_servers", '"h:99999"', ("bootstrap_servers",)),
    ("kafka", "security_protocol", '"SASL_SSL"', ("security_protocol", "sasl_mechanism")),
    ("kafka", "sasl_username", '"u"', ("sasl_username",)),
    # the Redis URL, parsed at load time
    ("redis", "url", '"redis://127.0.0.1:notaport/0"', ("url", "not a valid Redis URL")),
    ("redis", "url", '"redis://127.0.0.1:6379/zero"', ("url",)),
    ("redis", "url", '"redis://127.0.0.1:0/0"', ("url", "port")),
    ("redis", "url", '"http://127.0.0.1:6379/0"', ("url", "redis://")),
    ("redis", "url", f'"redis://user:{SECRET}@127.0.0.1:6379/0"', ("url", "password")),
    ("redis", "url", f'"http://user:{SECRET}@127.0.0.1:6379/0"', ("url",)),
    ("redis", "url", '""', ("url",)),
    ("redis", "url", f'"redis://127.0.0.1:6379/0?password={SECRET}"', ("url", "options")),
    ("redis", "capture", '"aof"', ("capture",)),
    # strings with control characters
    ("", "state_dir", '"/var/lib/\\u0000x"', ("state_dir", "control characters")),
    ("", "reports_dir", '"/tmp/a\\nb"', ("reports_dir", "control characters")),
    # region names and peer lists
    ("", "region", '"EU West"', ("region",)),
    ("", "peers", '["eu-west"]', ("peers",)),
    ("", "peers", '["us-east", "us-east"]', ("peers", "twice")),
    ("", "peers", "[]", ("peers",)),
    ("", "retired_regions", '["us-east"]', ("retired_regions",)),
    ("", "log_level", '"verbose"', ("log_level",)),
    # the admin endpoint
    ("admin", "host", '"0.0.0.0"', ("host", "token_file")),
    ("admin", "host", '"10.0.0.5"', ("host", "token_file")),
    ("admin", "host", '"admin.example.internal"', ("host", "token_file")),
    ("admin", "host", '""', ("host",)),
    ("admin", "port", "70000", ("port",)),
    ("admin", "token", f'"{SECRET}"', ("token", "must not be written in the file")),
    # reports and journal bounds
    ("reports", "max_reports", "0", ("max_reports",)),
    ("reports", "journal_max_bytes", "10", ("journal_max_bytes",)),
    ("reports", "journal_files", "0", ("journal_files",)),
    ("reports", "max_bytes", "inf", ("max_bytes",)),
    # wrong types, unknown keys
    ("heartbeat", "interval_s", '"1s"', ("interval_s",)),
    ("kafka", "partitions", "8.5", ("partitions",)),
    ("antientropy", "on_start", '"yes"', ("on_start",)),
    ("kafka", "lingerms", "5", ("lingerms",)),
    # the keyring
    ("auth", "signing_key_id", '"k2"', ("signing_key_id", "k2")),
    ("auth", "signing_key_id", '"bad id"', ("signing_key_id",)),
    ("auth", "keys_env", '"RR_TEST_NO_SUCH_VARIABLE"', ("keys_env",)),
    ("", "peer", '["us-east"]', ("peer",)),
]


def render(table: str, key: str, value: str) -> str:
    tables = {name: dict(keys) for name, keys in BASE.items()}
    tables.setdefault(table, {})[key] = value
    lines = [f"{k} = {v}" for k, v in tables.pop("").items()]
    for name, keys in tables.items():
        lines += ["", f"[{name}]", *(f"{k} = {v}" for k, v in keys.items())]
    return "\n".join(lines) + "\n"


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "eu-west.toml"
    path.write_text(render("", "log_level", '"info"'))
    assert load_config(path).region == "eu-west"


@pytest.mark.parametrize(
    ("table", "key", "value", "words"),
    BROKEN,
    ids=[f"{t or 'top'}.{k}={v[:24]}" for t, k, v, _ in BROKEN],
)
def test_a_broken_config_is_refused_naming_the_key(
    tmp_path: Path, table: str, key: str, value: str, words: tuple[str, ...]
) -> None:
    path = tmp_path / "eu-west.toml"
    path.write_text(render(table, key, value))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith("eu-west.toml: "), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert SECRET not in message


def test_a_secret_inside_any_url_is_masked_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "eu-west.toml"
    for url in (
        f"redis://app:{SECRET}@10.0.0.1:6379/0",
        f"rediss://app:{SECRET}@10.0.0.1/0",
        f"redis://10.0.0.1:6379/0?password={SECRET}",
    ):
        path.write_text(render("redis", "url", f'"{url}"'))
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert SECRET not in str(caught.value)
        assert "'url'" in str(caught.value)


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("redis", "url", '"redis://127.0.0.1:notaport/0"'),
        ("redis", "url", f'"http://user:{SECRET}@127.0.0.1:6379/0"'),
        ("heartbeat", "interval_s", "inf"),
        ("admin", "host", '"0.0.0.0"'),
    ],
)
def test_reconciler_run_refuses_a_broken_config_with_one_line_and_no_traceback(
    tmp_path: Path, table: str, key: str, value: str
) -> None:
    path = tmp_path / "eu-west.toml"
    path.write_text(render(table, key, value))
    result = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert key in result.stderr
    assert SECRET not in result.stderr + result.stdout
