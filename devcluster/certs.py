"""Throwaway certificates for local TLS servers: a CA, a server certificate for
127.0.0.1/localhost and client certificates, made with the ``openssl`` command line.

Keys are EC P-256 (quick to make) and unencrypted PKCS#8 PEM, which redis-server, Kafka's
PEM stores and Python's ssl module all read. Valid for two days: tests only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from replication.tls import TlsOptions

__all__ = ["CertificateAuthority", "KeyPair"]

_DAYS = "2"
_SERVER_EXT = """\
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""
_CLIENT_EXT = """\
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found: install the openssl package")
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed:\n{result.stderr[-2000:]}")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


class CertificateAuthority:
    """A CA made in `directory`, signing server and client certificates on demand."""

    def __init__(self, directory: Path, name: str = "reconciler-test-ca") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / f"{name}.crt"
        self.key = self.dir / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", _DAYS,
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
            cwd=self.dir,
        )  # fmt: skip

    def issue(self, name: str, *, server: bool = True) -> KeyPair:
        """A certificate signed by this CA: for 127.0.0.1 and localhost (`server`, also
        usable as a client certificate), or a client-only one."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.dir / f"{name}.ext"
        ext.write_text(_SERVER_EXT if server else _CLIENT_EXT)
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
            cwd=self.dir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", _DAYS, "-extfile", str(ext),
            cwd=self.dir,
        )  # fmt: skip
        return KeyPair(cert, key)

    def client_options(self, pair: KeyPair | None = None) -> TlsOptions:
        """TlsOptions trusting this CA, presenting `pair` if given."""
        if pair is None:
            return TlsOptions(ca_file=str(self.cert))
        return TlsOptions(ca_file=str(self.cert), cert_file=str(pair.cert), key_file=str(pair.key))
