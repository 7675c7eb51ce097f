"""TLS options in the daemon's and the client's configs: rediss:// and Kafka SSL/SASL_SSL
accepted with CA/cert/key files; every mistake fails at load naming the key; the options
reach the address type, aiokafka's options and redis-py's."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from devcluster.certs import CertificateAuthority, KeyPair
from reconciler.client import ClientConfig, RegionConfig
from reconciler.client.connections import region_kwargs
from reconciler.configfile import ConfigError, from_mapping
from reconciler.service.config import DaemonConfig, load_config
from replication.model.auth import Keyring
from replication.redis.address import RedisAddress
from replication.tls import TlsError, TlsOptions

KEYS = Keyring.generate_text(["eu-west", "us-east"])
PASSWORD = "kafka-s3cret-pw"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, KeyPair]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("certs"))
    return ca, ca.issue("client", server=False)


@pytest.fixture(autouse=True)
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_RECONCILER_KEYS", KEYS)
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", PASSWORD)


def config(redis: str, kafka: str = "") -> str:
    return f"""
region = "eu-west"
peers = ["us-east"]
[redis]
{redis}
[kafka]
bootstrap_servers = "127.0.0.1:9093"
{kafka}
[auth]
keys_env = "TEST_RECONCILER_KEYS"
"""


def load(tmp_path: Path, text: str) -> DaemonConfig:
    path = tmp_path / "region.toml"
    path.write_text(text)
    return load_config(path)


def test_rediss_with_ca_cert_and_key_reaches_the_address(
    tmp_path: Path, certs: tuple[CertificateAuthority, KeyPair]
) -> None:
    ca, client = certs
    cfg = load(
        tmp_path,
        config(
            f'url = "rediss://127.0.0.1:6380/0"\ntls_ca_file = "{ca.cert}"\n'
            f'tls_cert_file = "{client.cert}"\ntls_key_file = "{client.key}"'
        ),
    )
    address = cfg.redis.address(3)
    assert address.tls == TlsOptions(str(ca.cert), str(client.cert), str(client.key))
    assert str(address) == "rediss://127.0.0.1:6380/3"
    ctx = address.tls.context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_rediss_without_options_verifies_with_the_system_cas(tmp_path: Path) -> None:
    cfg = load(tmp_path, config('url = "rediss://redis.example:6380/0"'))
    assert cfg.redis.address().tls == TlsOptions()
    assert cfg.redis.address().tls.context().check_hostname  # type: ignore[union-attr]
    assert load(tmp_path, config('url = "redis://h:1/0"')).redis.address().tls is None


@pytest.mark.parametrize(
    ("redis", "named"),
    [
        ('url = "redis://h:1/0"\ntls_ca_file = "{ca}"', ("'url'", "rediss://", "tls_ca_file")),
        ('url = "redis://h:1/0"\ntls_check_hostname = false', ("'url'", "rediss://")),
        ('url = "rediss://h:1/0"\ntls_ca_file = "/nonexistent/ca.pem"', ("'tls_ca_file'", "exist")),
        ('url = "rediss://h:1/0"\ntls_cert_file = "{cert}"', ("'tls_cert_file'", "tls_key_file")),
        ('url = "rediss://h:1/0"\ntls_key_file = "{key}"', ("'tls_key_file'", "tls_cert_file")),
        ('url = "rediss://h:1/0"\ntls_ca_file = "{key}"', ("'tls_ca_file'", "PEM")),
        (
            'url = "rediss://h:1/0"\ntls_cert_file = "{ca}"\ntls_key_file = "{key}"',
            ("'tls_cert_file'", "'tls_key_file'", "cannot load"),
        ),
        ('url = "rediss://u:pw@h:1/0"', ("'url'", "password")),
    ],
)
def test_redis_tls_mistakes_fail_at_load_naming_the_key(
    tmp_path: Path,
    certs: tuple[CertificateAuthority, KeyPair],
    redis: str,
    named: tuple[str, ...],
) -> None:
    ca, client = certs
    text = config(redis.format(ca=ca.cert, cert=client.cert, key=client.key))
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "[redis]" in message
    for part in named:
        assert part in message
    assert "pw" not in message.replace("password", "")


def test_kafka_sasl_ssl_with_scram_builds_a_verifying_context(
    tmp_path: Path, certs: tuple[CertificateAuthority, KeyPair]
) -> None:
    ca, _ = certs
    cfg = load(
        tmp_path,
        config(
            'url = "redis://h:1/0"',
            f'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
            f'sasl_username = "eu"\npassword_env = "TEST_KAFKA_PASSWORD"\n'
            f'tls_ca_file = "{ca.cert}"',
        ),
    )
    settings = cfg.kafka.settings()
    options = settings.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "eu"
    assert options["sasl_plain_password"] == PASSWORD
    ctx = options["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert PASSWORD not in repr(cfg)
    assert PASSWORD not in repr(settings)


def test_kafka_ssl_without_options_uses_the_system_cas(tmp_path: Path) -> None:
    cfg = load(tmp_path, config('url = "redis://h:1/0"', 'security_protocol = "SSL"'))
    ctx = cfg.kafka.settings().client_options()["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname
    plain = load(tmp_path, config('url = "redis://h:1/0"')).kafka.settings()
    assert "ssl_context" not in plain.client_options()


@pytest.mark.parametrize(
    ("kafka", "named"),
    [
        ('tls_ca_file = "{ca}"', ("'security_protocol'", "'PLAINTEXT'", "SSL")),
        (
            'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
            'sasl_username = "u"\npassword_env = "TEST_KAFKA_PASSWORD"\ntls_ca_file = "{ca}"',
            ("'security_protocol'", "SASL_SSL"),
        ),
        ('security_protocol = "SSL"\ntls_cert_file = "{cert}"', ("'tls_cert_file'",)),
        ('security_protocol = "SSL"\ntls_ca_file = "/nonexistent"', ("'tls_ca_file'",)),
        ('security_protocol = "SASL_SSL"', ("'sasl_mechanism'", "'sasl_username'")),
        (
            'security_protocol = "SASL_SSL"\nsasl_mechanism = "GSSAPI"\nsasl_username = "u"\n'
            'password_env = "TEST_KAFKA_PASSWORD"',
            ("'sasl_mechanism'", "SCRAM-SHA-512"),
        ),
        (
            'security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"\n'
            f'password = "{PASSWORD}"',
            ("'password'", "password_env"),
        ),
        ('sasl_mechanism = "PLAIN"', ("'sasl_mechanism'", "SASL_SSL")),
    ],
)
def test_kafka_tls_and_sasl_mistakes_fail_at_load_naming_the_key(
    tmp_path: Path,
    certs: tuple[CertificateAuthority, KeyPair],
    kafka: str,
    named: tuple[str, ...],
) -> None:
    ca, client = certs
    text = config('url = "redis://h:1/0"', kafka.format(ca=ca.cert, cert=client.cert))
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "[kafka]" in message
    for part in named:
        assert part in message
    assert PASSWORD not in message


def test_the_client_passes_the_region_tls_options_to_redis_py(
    certs: tuple[CertificateAuthority, KeyPair],
) -> None:
    ca, client = certs
    region = RegionConfig(
        name="eu",
        url="rediss://127.0.0.1:6380/0",
        tls_ca_file=str(ca.cert),
        tls_cert_file=str(client.cert),
        tls_key_file=str(client.key),
    )
    cfg = ClientConfig(regions=(region,))
    kwargs = region_kwargs(region, cfg.policy, "app@host:1/1", {})
    assert kwargs["ssl_ca_certs"] == str(ca.cert)
    assert kwargs["ssl_certfile"] == str(client.cert)
    assert kwargs["ssl_keyfile"] == str(client.key)
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True
    plain = RegionConfig(name="eu", url="redis://127.0.0.1:6379/0")
    assert not any(k.startswith("ssl") for k in region_kwargs(plain, cfg.policy, "a", {}))
    # The region's tls_* keys win over the application's ssl_* keywords...
    app = {"ssl_ca_certs": "/app/ca.pem", "ssl_check_hostname": False}
    assert region_kwargs(region, cfg.policy, "a", app)["ssl_ca_certs"] == str(ca.cert)
    assert region_kwargs(region, cfg.policy, "a", app)["ssl_check_hostname"] is True
    # ...and without any, the application's apply, over verifying defaults.
    bare = RegionConfig(name="eu", url="rediss://127.0.0.1:6380/0")
    kwargs = region_kwargs(bare, cfg.policy, "a", app)
    assert kwargs["ssl_ca_certs"] == "/app/ca.pem"
    assert kwargs["ssl_check_hostname"] is False
    assert kwargs["ssl_cert_reqs"] == "required"


@pytest.mark.parametrize(
    ("region", "named"),
    [
        ({"url": "redis://h:1/0", "tls_ca_file": "{ca}"}, ("'url'", "rediss://")),
        ({"url": "unix:///tmp/r.sock", "tls_check_hostname": False}, ("'url'", "rediss://")),
        ({"url": "rediss://h:1/0", "tls_ca_file": "/nonexistent"}, ("'tls_ca_file'",)),
        ({"url": "rediss://h:1/0", "tls_cert_file": "{cert}"}, ("'tls_key_file'",)),
    ],
)
def test_client_region_tls_mistakes_name_the_key(
    certs: tuple[CertificateAuthority, KeyPair], region: dict[str, object], named: tuple[str, ...]
) -> None:
    ca, client = certs
    table = {
        k: v.format(ca=ca.cert, cert=client.cert) if isinstance(v, str) else v
        for k, v in region.items()
    }
    with pytest.raises(ConfigError) as info:
        from_mapping(ClientConfig, {"regions": [{"name": "eu", **table}]}, source="client.toml")
    for part in named:
        assert part in str(info.value)


def test_the_address_type_refuses_tls_options_on_redis_url() -> None:
    with pytest.raises(ValueError, match="rediss://"):
        RedisAddress.from_url("redis://h:1/0", tls=TlsOptions())
    assert RedisAddress.from_url("rediss://h:1/2").tls == TlsOptions()
    with pytest.raises(ValueError, match="scheme"):
        RedisAddress.from_url("http://h:1/0")


def test_tls_options_check_names_the_key_of_a_missing_file() -> None:
    with pytest.raises(TlsError, match=re.escape("'tls_key_file' = '/nonexistent/k.pem'")):
        TlsOptions(cert_file=__file__, key_file="/nonexistent/k.pem").check()
