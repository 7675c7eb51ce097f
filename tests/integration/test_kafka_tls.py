"""Kafka over SASL_SSL, against a real broker with a SASL_SSL listener (certificate made by
the test, SCRAM-SHA-512 users created when its storage is formatted): two daemons
replicate through it; a wrong password or an untrusted certificate stops the daemon at
start with an error naming what to fix, instead of retrying for ever."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.daemons import DaemonProcess, write_config
from devcluster.kafka_broker import SCRAM, KafkaBroker, KafkaSaslSsl
from tests.regions import running_regions
from tests.servers import RedisFactory, track

pytestmark = pytest.mark.integration

NAMES = ("eu-west", "us-east")
PASSWORDS = {name: f"{name}-scram-pw-7f3a" for name in NAMES}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker with a SASL_SSL listener and one SCRAM user per region."""
    base = tmp_path_factory.mktemp("kafka-sasl-ssl")
    broker = KafkaBroker(base, sasl_ssl=KafkaSaslSsl.make(base / "certs", PASSWORDS))
    track(broker)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def kafka_table(
    broker: KafkaBroker, user: str, password_file: Path, **extra: Any
) -> dict[str, Any]:
    assert broker.sasl_ssl is not None
    table: dict[str, Any] = {
        "bootstrap_servers": broker.sasl_ssl_bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": SCRAM,
        "sasl_username": user,
        "password_file": str(password_file),
        "tls_ca_file": str(broker.sasl_ssl.ca.cert),
    }
    table.update(extra)
    return {key: value for key, value in table.items() if value is not None}


def password_file(directory: Path, name: str, password: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"kafka-password-{name}"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def test_two_daemons_replicate_through_a_sasl_ssl_listener(
    tmp_path: Path, secure_broker: KafkaBroker, redis_factory: RedisFactory
) -> None:
    secrets = tmp_path / "secrets"
    per_region = {
        name: {"kafka": kafka_table(secure_broker, name, password_file(secrets, name, pw))}
        for name, pw in PASSWORDS.items()
    }
    with running_regions(
        tmp_path, secure_broker, redis_factory, names=NAMES, region_overrides=per_region
    ) as regions:
        for name, client in regions.clients.items():
            client.set(f"{name}:k", name)
            client.sadd(f"{name}:s", "a", "b")
        data = regions.wait_converged(timeout_s=60)
        assert data[b"eu-west:k"][1] == b"eu-west"
        assert data[b"us-east:k"][1] == b"us-east"
        for daemon in regions.daemons.values():
            # The password never reaches the daemon's log.
            assert not any(pw in daemon.log_tail(400) for pw in PASSWORDS.values())


@pytest.mark.parametrize(
    ("password", "trust_ca", "reason"),
    [
        ("not-the-password", True, "refused the SASL credentials of user 'eu-west'"),
        (PASSWORDS["eu-west"], False, "certificate was not accepted"),
    ],
    ids=["wrong-password", "untrusted-certificate"],
)
def test_a_refused_credential_stops_the_daemon_with_the_reason(
    tmp_path: Path,
    secure_broker: KafkaBroker,
    redis_factory: RedisFactory,
    password: str,
    trust_ca: bool,
    reason: str,
) -> None:
    server = redis_factory.start("eu-west")
    kafka = kafka_table(
        secure_broker,
        "eu-west",
        password_file(tmp_path / "secrets", "eu-west", password),
        tls_ca_file=None if not trust_ca else str(secure_broker.sasl_ssl.ca.cert),  # type: ignore[union-attr]
    )
    config = write_config(
        tmp_path / "configs",
        "eu-west",
        ["us-east"],
        server.url,
        secure_broker.sasl_ssl_bootstrap,
        topic_prefix="refused",
        overrides={"kafka": kafka},
    )
    daemon = DaemonProcess("eu-west", config)
    track(daemon)
    with pytest.raises(RuntimeError, match="exited"):
        daemon.start(wait_s=60)
    assert daemon.returncode() == 1
    log = daemon.log_tail(60)
    assert reason in log
    assert "kafka not reachable yet" not in log  # stopped at the first refusal
    assert password not in log
