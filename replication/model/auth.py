"""Record authentication: HMAC-SHA256 with a key per region, key ids for rotation.

Every record a daemon produces (change records, the dead letters it forwards, control
messages) carries a `Signature`: the id of the key that made it and an HMAC-SHA256 over a
domain tag (what kind of record), the signing region, the key id and the record's fields,
each length-prefixed so no two different inputs share an encoding. A receiver looks the key
up by (claimed region, key id): a record signed with region A's key can only ever pass as
A's. Comparison is constant-time (`hmac.compare_digest`).

The keyring is text (a file or an environment variable, never the config TOML), one key a
line or separated by ';':

    # region  key-id  secret (hex, 32 to 64 bytes)
    eu-west   2026-12 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    us-east   2026-12 ...

A region may list up to `MAX_KEYS_PER_REGION` keys: receivers accept every listed key, the
region signs with one (its only key, or the one its config names). A rotation adds the new
key everywhere, then switches the signer, then removes the old key (README, security).

Trust model (HMAC keys are symmetric): whoever holds region R's key can make records every
daemon accepts as R's. A daemon holds its own key and its peers' keys (it must verify
them), so its host can forge any region it verifies; a writer to Kafka without a key
(another service, a misconfigured producer, an attacker on the network) can forge nothing.
Per-region keys let one region's key be rotated or revoked (removed everywhere: that
region is cut off) without touching the others; a shared cluster key is the same secret on
every region's line, and then any holder can forge any region.

Secrets never appear in `repr`, in logs or in error messages (errors name the line only).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from replication.errors import DecodeError, ReconcilerError
from replication.model.keys import is_valid_region_name

MAC_BYTES = 32
MIN_SECRET_BYTES = 32
MAX_SECRET_BYTES = 64
MAX_KEYS_PER_REGION = 4
MAX_KEYRING_ENTRIES = 1024
MAX_KEY_ID_LEN = 32
KEY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"
_KEY_ID_RE = re.compile(KEY_ID_PATTERN)

# Domain tags: a signature made for one kind of record never verifies as another kind.
DOMAIN_CHANGES = b"reconciler/changes/2"
DOMAIN_DEADLETTER = b"reconciler/deadletter/1"
DOMAIN_CONTROL = b"reconciler/control/2"


class KeyringError(ReconcilerError):
    """A keyring that cannot be used (the message names the line, never a secret)."""


class AuthError(DecodeError):
    """A record that fails authentication. `reason` is a short fixed code (metrics label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)


@dataclass(frozen=True, slots=True)
class Signature:
    key_id: str
    mac: bytes


def is_valid_key_id(key_id: object) -> bool:
    return type(key_id) is str and _KEY_ID_RE.fullmatch(key_id) is not None


def _prefix(domain: bytes, region: str, key_id: str) -> bytes:
    return b"".join(_framed(p) for p in (domain, region.encode(), key_id.encode()))


def _framed(part: bytes) -> bytes:
    return len(part).to_bytes(8, "big") + part


def _mac(base: hmac.HMAC, prefix: bytes, parts: Iterable[bytes]) -> bytes:
    h = base.copy()
    h.update(prefix)
    for part in parts:
        # Framing without copying the part (a record body can be megabytes).
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class _Key:
    """One secret, ready to MAC with. Never shows the secret."""

    __slots__ = ("_base", "key_id", "region")

    def __init__(self, region: str, key_id: str, secret: bytes) -> None:
        self.region = region
        self.key_id = key_id
        self._base = hmac.new(secret, digestmod=hashlib.sha256)

    def mac(self, domain: bytes, parts: Iterable[bytes]) -> bytes:
        return _mac(self._base, _prefix(domain, self.region, self.key_id), parts)

    def __repr__(self) -> str:
        return f"_Key({self.region}/{self.key_id}, secret=********)"


class Signer:
    """Signs records as one region with one of its keys."""

    __slots__ = ("_key", "key_id", "region")

    def __init__(self, key: _Key) -> None:
        self._key = key
        self.region = key.region
        self.key_id = key.key_id

    def sign(self, domain: bytes, *parts: bytes) -> Signature:
        """The signature of `parts` (in order) for records of kind `domain`."""
        return Signature(self.key_id, self._key.mac(domain, parts))

    def __repr__(self) -> str:
        return f"Signer({self.region}/{self.key_id})"


class Keyring:
    """Every region's verification keys, by (region, key id)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: dict[tuple[str, str], _Key]) -> None:
        self._keys = keys

    def __repr__(self) -> str:
        listed = ", ".join(f"{r}/{k}" for r, k in self._keys)
        return f"Keyring({listed})"

    @classmethod
    def parse(cls, text: str, *, source: str = "keyring") -> Keyring:
        """Parse the keyring text; KeyringError (naming the entry, not the secret) if bad."""
        entries = [
            e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(";")
        ]
        keys: dict[tuple[str, str], _Key] = {}
        per_region: dict[str, int] = {}
        number = 0
        for entry in entries:
            if not entry:
                continue
            number += 1
            where = f"{source}: entry {number}"
            if number > MAX_KEYRING_ENTRIES:
                raise KeyringError(f"{source}: more than {MAX_KEYRING_ENTRIES} keys")
            fields = entry.split()
            if len(fields) != 3:
                raise KeyringError(
                    f"{where}: expected '<region> <key-id> <secret-hex>' (3 fields, "
                    f"got {len(fields)})"
                )
            region, key_id, secret_hex = fields
            if not is_valid_region_name(region):
                raise KeyringError(f"{where}: {region!r} is not a valid region name")
            if not is_valid_key_id(key_id):
                raise KeyringError(
                    f"{where}: key id {key_id!r} must match {KEY_ID_PATTERN} "
                    f"(at most {MAX_KEY_ID_LEN} characters)"
                )
            try:
                secret = bytes.fromhex(secret_hex)
            except ValueError:
                raise KeyringError(
                    f"{where} ({region}/{key_id}): the secret is not hex (value not shown)"
                ) from None
            if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
                raise KeyringError(
                    f"{where} ({region}/{key_id}): the secret is {len(secret)} bytes; use "
                    f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes "
                    "(`openssl rand -hex 32`)"
                )
            if (region, key_id) in keys:
                raise KeyringError(f"{where}: key {region}/{key_id} is listed twice")
            per_region[region] = per_region.get(region, 0) + 1
            if per_region[region] > MAX_KEYS_PER_REGION:
                raise KeyringError(
                    f"{where}: region {region} has more than {MAX_KEYS_PER_REGION} keys"
                )
            keys[(region, key_id)] = _Key(region, key_id, secret)
        return cls(keys)

    @staticmethod
    def generate_text(regions: Iterable[str], key_id: str = "k1") -> str:
        """A fresh keyring text with one random key per region (test and demo clusters)."""
        return "".join(f"{r} {key_id} {secrets.token_hex(MIN_SECRET_BYTES)}\n" for r in regions)

    def regions(self) -> frozenset[str]:
        return frozenset(region for region, _ in self._keys)

    def key_ids(self, region: str) -> list[str]:
        """The ids of `region`'s keys, in the order they were listed."""
        return [kid for r, kid in self._keys if r == region]

    def signer(self, region: str, key_id: str | None = None) -> Signer:
        """A signer for `region`: with `key_id`, or its only key."""
        ids = self.key_ids(region)
        if key_id is None:
            if len(ids) != 1:
                raise KeyringError(
                    f"region {region} has {len(ids)} keys in the keyring; "
                    + (
                        "add one"
                        if not ids
                        else f"name the one to sign with in [auth] signing_key_id ({ids})"
                    )
                )
            key_id = ids[0]
        key = self._keys.get((region, key_id))
        if key is None:
            raise KeyringError(f"the keyring has no key {key_id!r} for region {region}")
        return Signer(key)

    def verify(self, region: str, domain: bytes, signature: Signature, *parts: bytes) -> None:
        """Raise AuthError unless `signature` is `region`'s over `parts` for `domain`."""
        key_id, mac = signature.key_id, signature.mac
        if not is_valid_key_id(key_id):
            raise AuthError("bad-signature", "the record's key id is malformed")
        key = self._keys.get((region, key_id))
        if key is None:
            raise AuthError(
                "unknown-key", f"signed with key {key_id!r}, which is not one of {region}'s keys"
            )
        if type(mac) is not bytes or len(mac) != MAC_BYTES:
            raise AuthError("bad-signature", f"the MAC must be {MAC_BYTES} bytes")
        if not hmac.compare_digest(key.mac(domain, parts), mac):
            raise AuthError("bad-signature", f"the MAC does not match {region}/{key_id}")
