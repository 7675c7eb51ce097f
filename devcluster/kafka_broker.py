"""A real single-node Kafka broker (KRaft, combined broker+controller) on loopback.

The broker is assembled from Maven Central artifacts (scripts/kafka/pom.xml) with `mvn` and
started with `java`; the jars are cached per Kafka version so only the first run resolves.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devcluster.certs import CertificateAuthority, KeyPair
from devcluster.ports import LOOPBACK, free_port, port_open, wait_until
from devcluster.process import ServerProcess

KAFKA_VERSION = "4.0.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
REQUIRED_JARS = ("kafka_2.13-", "kafka-clients-", "kafka-server-", "kafka-raft-", "scala-library-")

LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


def cache_root() -> Path:
    """Where downloaded artifacts are kept between runs (override: RECONCILER_CACHE)."""
    explicit = os.environ.get("RECONCILER_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "redis-reconciler"


def ensure_kafka_classpath(version: str = KAFKA_VERSION) -> Path:
    """Return the folder holding the broker's jars, resolving them with mvn on first use."""
    lib = cache_root() / f"kafka-{version}" / "lib"
    stamp = lib / ".complete"
    want = hashlib.sha256(POM.read_bytes() + version.encode()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want:
        return lib
    if shutil.which("mvn") is None:
        raise RuntimeError("mvn not found: run scripts/bootstrap.sh (installs maven)")
    staging = lib.with_name("lib.partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"resolving Kafka {version} jars failed:\n{result.stdout[-3000:]}")
    names = [p.name for p in staging.glob("*.jar")]
    missing = [prefix for prefix in REQUIRED_JARS if not any(n.startswith(prefix) for n in names)]
    if missing:
        raise RuntimeError(f"Kafka classpath incomplete, missing jars starting with {missing}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    stamp.write_text(want + "\n")
    return lib


def _run_in_thread_loop(coro_factory: object) -> None:
    """Run an async probe on a private loop in a worker thread (callers may own a loop)."""

    def target() -> None:
        asyncio.run(coro_factory())  # type: ignore[operator]

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(target).result()


async def _metadata_ok(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        await admin.describe_cluster()
    finally:
        await admin.close()


async def _warm_group_coordinator(bootstrap: str) -> None:
    """Create the offsets topic up front: the first group request otherwise races it."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic("__warmup", 1, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        "__warmup", bootstrap_servers=bootstrap, group_id="__warmup", enable_auto_commit=False
    )
    # The first coordinator requests fail until the offsets topic exists: expected here
    # (it is what the warm-up is for), so aiokafka's error lines about them are muted.
    coordinator_log = logging.getLogger("aiokafka.consumer.group_coordinator")
    level = coordinator_log.level
    coordinator_log.setLevel(logging.CRITICAL)
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=200)
        await consumer.commit()
    finally:
        await consumer.stop()
        coordinator_log.setLevel(level)


SASL_SSL_LISTENER = "SASL_SSL"
SCRAM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaSaslSsl:
    """An extra SASL_SSL listener: TLS with `server` (signed by `ca`), SCRAM-SHA-512 users
    created when the storage is formatted (`users`: name -> password)."""

    ca: CertificateAuthority
    server: KeyPair
    users: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, directory: Path, users: Mapping[str, str]) -> KafkaSaslSsl:
        """A fresh CA and broker certificate in `directory`."""
        ca = CertificateAuthority(directory)
        return cls(ca, ca.issue("kafka-broker"), dict(users))

    def keystore(self) -> Path:
        """Key and certificate in one PEM file, as Kafka's PEM keystore reads it."""
        path = self.server.cert.with_name("kafka-keystore.pem")
        path.write_text(self.server.key.read_text() + self.server.cert.read_text())
        return path


class KafkaBroker:
    """One broker+controller process with its own data directory and log files.

    With `sasl_ssl`, it also listens on ``sasl_ssl_port`` with SASL_SSL (SCRAM-SHA-512
    over TLS); the PLAINTEXT listener stays for the broker's own readiness checks and for
    inter-broker traffic.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        heap_mb: int = 512,
        version: str = KAFKA_VERSION,
        extra_listeners: Mapping[str, tuple[int, int]] | None = None,
        sasl_ssl: KafkaSaslSsl | None = None,
    ) -> None:
        """`extra_listeners`: name -> (port, advertised port), more PLAINTEXT listeners
        whose clients are told to reach the broker at the advertised port: put a TCP proxy
        there and every connection of those clients goes through it (the metadata answer
        of a listener names that listener's advertised address)."""
        self.dir = base_dir / "kafka"
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap_mb = heap_mb
        self.version = version
        self.extra_listeners = dict(extra_listeners or {})
        for name in self.extra_listeners:
            if not name.isupper() or name in ("PLAINTEXT", "CONTROLLER", SASL_SSL_LISTENER):
                raise ValueError(f"listener name {name!r}: expected a new upper-case name")
        self.sasl_ssl = sasl_ssl
        self.sasl_ssl_port = free_port() if sasl_ssl is not None else None
        self._process = ServerProcess("kafka", self.dir / "console.log")

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """host:port of the SASL_SSL listener (only with `sasl_ssl`)."""
        if self.sasl_ssl_port is None:
            raise RuntimeError("this broker has no SASL_SSL listener")
        return f"{LOOPBACK}:{self.sasl_ssl_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _sasl_ssl_properties(self) -> dict[str, str]:
        if self.sasl_ssl is None:
            return {}
        prefix = f"listener.name.{SASL_SSL_LISTENER.lower()}"
        return {
            "sasl.enabled.mechanisms": SCRAM,
            f"{prefix}.sasl.enabled.mechanisms": SCRAM,
            f"{prefix}.{SCRAM.lower()}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            f"{prefix}.ssl.keystore.type": "PEM",
            f"{prefix}.ssl.keystore.location": str(self.sasl_ssl.keystore()),
            f"{prefix}.ssl.truststore.type": "PEM",
            f"{prefix}.ssl.truststore.location": str(self.sasl_ssl.ca.cert),
        }

    @property
    def running(self) -> bool:
        return self._process.running

    def _properties(self) -> str:
        extra = list(self.extra_listeners.items())
        protocols = ",".join(f"{n}:PLAINTEXT" for n in self.extra_listeners)
        if self.sasl_ssl_port is not None:
            extra.append((SASL_SSL_LISTENER, (self.sasl_ssl_port, self.sasl_ssl_port)))
            protocols = ",".join(filter(None, [protocols, f"{SASL_SSL_LISTENER}:SASL_SSL"]))
        listeners = ",".join(f"{n}://{LOOPBACK}:{port}" for n, (port, _) in extra)
        advertised = ",".join(f"{n}://{LOOPBACK}:{adv}" for n, (_, adv) in extra)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": ",".join(
                filter(
                    None,
                    [
                        f"PLAINTEXT://{LOOPBACK}:{self.port}",
                        f"CONTROLLER://{LOOPBACK}:{self.controller_port}",
                        listeners,
                    ],
                )
            ),
            "advertised.listeners": ",".join(
                filter(None, [f"PLAINTEXT://{LOOPBACK}:{self.port}", advertised])
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": ",".join(
                filter(None, ["PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT", protocols])
            ),
            "controller.quorum.bootstrap.servers": f"{LOOPBACK}:{self.controller_port}",
            "log.dirs": str(self.dir / "data"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            **self._sasl_ssl_properties(),
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def start(self, *, detach: bool = False, warm: bool = True, timeout_s: float = 90.0) -> None:
        """Format storage on first start, launch the broker, wait until it serves metadata."""
        lib = ensure_kafka_classpath(self.version)
        classpath = f"{lib}/*"
        self.dir.mkdir(parents=True, exist_ok=True)
        props = self.dir / "server.properties"
        props.write_text(self._properties())
        log4j = self.dir / "log4j.properties"
        log4j.write_text(LOG4J.format(log=self.dir / "server.log"))
        java_log = f"-Dlog4j.configuration=file:{log4j}"
        if not (self.dir / "data" / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    "java",
                    java_log,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    # One argument with "=": an id may begin with "-" (1 in 64), which
                    # the tool's parser would take for an option.
                    f"--cluster-id={_cluster_id()}",
                    "-c",
                    str(props),
                    "--standalone",
                    *self._scram_arguments(),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise RuntimeError(f"kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}")
        argv = [
            "java",
            f"-Xms{min(256, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            java_log,
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
        self._process.spawn(argv, cwd=self.dir, detach=detach)
        try:
            wait_until(
                lambda: self._process.running and port_open(self.port),
                timeout_s=timeout_s,
                what=f"kafka on port {self.port}",
            )
            self.wait_ready(timeout_s=timeout_s)
            if warm:
                _run_in_thread_loop(lambda: _warm_group_coordinator(self.bootstrap))
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"kafka did not start: {exc}\n{self.log_tail()}") from exc

    def _scram_arguments(self) -> list[str]:
        """SCRAM users written into the metadata log at format time (KRaft has no
        ZooKeeper to add them to later, before the broker can authenticate anyone)."""
        if self.sasl_ssl is None:
            return []
        args: list[str] = []
        for name, password in self.sasl_ssl.users.items():
            args += ["--add-scram", f"{SCRAM}=[name={name},password={password}]"]
        return args

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until a metadata request succeeds (not merely an open port)."""

        def ready() -> bool:
            try:
                _run_in_thread_loop(lambda: _metadata_ok(self.bootstrap))
            except Exception:  # noqa: BLE001 - any failure here just means "not yet"
                return False
            return True

        wait_until(ready, timeout_s=timeout_s, what=f"kafka metadata on {self.bootstrap}")

    def stop(self) -> None:
        self._process.stop(timeout_s=30)

    def kill9(self) -> None:
        self._process.kill9()

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open, nothing is answered."""
        self._process.pause()

    def resume(self) -> None:
        self._process.resume()

    def log_tail(self, lines: int = 30) -> str:
        server_log = self.dir / "server.log"
        try:
            text = server_log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return "\n".join(text) + "\n" + self._process.log_tail(10)


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
