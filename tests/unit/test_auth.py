"""The authentication primitive: a region's signature verifies only as that region's, for
that kind of record and exactly those bytes; rotations accept both keys; keyrings are
bounded and never show a secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.model.auth import (
    DOMAIN_CHANGES,
    DOMAIN_CONTROL,
    MAX_KEYS_PER_REGION,
    AuthError,
    Keyring,
    KeyringError,
    Signature,
)

TEXT = Keyring.generate_text(["eu-west", "us-east"])
RING = Keyring.parse(TEXT)


def test_a_signature_verifies_for_its_region_domain_and_parts() -> None:
    sig = RING.signer("eu-west").sign(DOMAIN_CHANGES, b"target", b"body")
    RING.verify("eu-west", DOMAIN_CHANGES, sig, b"target", b"body")


@pytest.mark.parametrize(
    ("region", "domain", "parts", "reason"),
    [
        ("us-east", DOMAIN_CHANGES, (b"target", b"body"), "unknown-key"),  # another region
        ("eu-west", DOMAIN_CONTROL, (b"target", b"body"), "bad-signature"),  # another kind
        ("eu-west", DOMAIN_CHANGES, (b"target", b"bodY"), "bad-signature"),
        ("eu-west", DOMAIN_CHANGES, (b"targetb", b"ody"), "bad-signature"),  # same bytes, split
        ("eu-west", DOMAIN_CHANGES, (b"target", b"body", b""), "bad-signature"),
    ],
)
def test_anything_else_fails_with_a_reason(
    region: str, domain: bytes, parts: tuple[bytes, ...], reason: str
) -> None:
    # Key ids differ per region here, so a signature claimed by the other region names a
    # key that region does not have.
    ring = Keyring.parse(
        Keyring.generate_text(["eu-west"], "ka") + Keyring.generate_text(["us-east"], "kb")
    )
    sig = ring.signer("eu-west").sign(DOMAIN_CHANGES, b"target", b"body")
    with pytest.raises(AuthError) as caught:
        ring.verify(region, domain, sig, *parts)
    assert caught.value.reason == reason


def test_the_same_key_id_of_another_region_does_not_verify() -> None:
    sig = RING.signer("eu-west").sign(DOMAIN_CHANGES, b"x")
    with pytest.raises(AuthError, match="does not match us-east/k1"):
        RING.verify("us-east", DOMAIN_CHANGES, sig, b"x")


def test_a_shared_cluster_key_is_still_bound_to_the_claimed_region() -> None:
    secret = "ab" * 32
    ring = Keyring.parse(f"eu-west k1 {secret}; us-east k1 {secret}")
    sig = ring.signer("eu-west").sign(DOMAIN_CHANGES, b"x")
    with pytest.raises(AuthError):
        ring.verify("us-east", DOMAIN_CHANGES, sig, b"x")


def test_during_a_rotation_both_keys_verify() -> None:
    ring = Keyring.parse(TEXT + Keyring.generate_text(["eu-west"], "k2"))
    for key_id in ("k1", "k2"):
        sig = ring.signer("eu-west", key_id).sign(DOMAIN_CHANGES, b"x")
        ring.verify("eu-west", DOMAIN_CHANGES, sig, b"x")
    after = Keyring.parse(TEXT.replace("eu-west k1", "eu-west k2"))
    old = ring.signer("eu-west", "k1").sign(DOMAIN_CHANGES, b"x")
    with pytest.raises(AuthError) as caught:
        after.verify("eu-west", DOMAIN_CHANGES, old, b"x")
    assert caught.value.reason == "unknown-key"


@given(st.binary(max_size=64), st.text(max_size=40))
def test_forged_signatures_never_raise_anything_but_auth_errors(mac: bytes, key_id: str) -> None:
    with pytest.raises(AuthError):
        RING.verify("eu-west", DOMAIN_CHANGES, Signature(key_id, mac), b"x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("eu-west k1", "3 fields"),
        ("EU k1 " + "ab" * 32, "not a valid region name"),
        ("eu-west k/1 " + "ab" * 32, "key id"),
        ("eu-west k1 " + "ab" * 8, "8 bytes"),
        ("eu-west k1 " + "ab" * 65, "65 bytes"),
        ("eu-west k1 " + "ab" * 32 + "\neu-west k1 " + "cd" * 32, "listed twice"),
        (
            "\n".join(f"eu-west k{i} {'ab' * 32}" for i in range(MAX_KEYS_PER_REGION + 1)),
            "more than",
        ),
    ],
)
def test_bad_keyrings_are_refused_by_entry(text: str, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring.parse(text)


def test_a_secret_that_is_not_hex_is_never_echoed() -> None:
    secret = "not-hex-" + "q" * 60
    with pytest.raises(KeyringError) as caught:
        Keyring.parse(f"# comment\neu-west k1 {secret}")
    assert "entry 1" in str(caught.value)
    assert secret not in str(caught.value)


def test_nothing_prints_a_secret() -> None:
    secret = TEXT.split()[2]
    signer = RING.signer("eu-west")
    for thing in (RING, signer, signer.sign(DOMAIN_CHANGES, b"x")):
        assert secret not in repr(thing)
        assert bytes.fromhex(secret).hex() not in repr(thing)


def test_a_region_with_two_keys_needs_the_signing_key_named() -> None:
    ring = Keyring.parse(TEXT + Keyring.generate_text(["eu-west"], "k2"))
    with pytest.raises(KeyringError, match="signing_key_id"):
        ring.signer("eu-west")
    with pytest.raises(KeyringError, match="no key 'k3'"):
        ring.signer("eu-west", "k3")
