"""Canonical value digests: the same logical value gives the same 128-bit digest whatever
Redis's internal encoding (listpack, intset, hashtable, skiplist, quicklist) or version.

The digest is computed inside Redis by the Lua scripts (`replication/redis/lua/common.lua`) so
that one atomic script can read a key, digest it, compare with its metadata and version it;
Redis's Lua has SHA-1 (`redis.sha1hex`) but no xxhash, hence SHA-1, truncated to 128 bits.
This module is the byte-for-byte Python mirror, used by tests, tools and validation; the
tests check both agree on every type and encoding.

Canonical forms (`enc(b)` is `<decimal length>:<bytes>`, integers are decimal):
- string: sha1("s" enc(value) "x" expire)
- list:   sha1("l" n ":" enc(item1) enc(item2) ... "x" expire)   (ordered)
- hash:   sha1("h" n ":" lanes "x" expire), element = sha1(enc(field) enc(value))
- set:    sha1("t" n ":" lanes "x" expire), element = sha1(enc(member))
- zset:   sha1("z" n ":" lanes "x" expire), element = sha1(enc(member) enc(score))
where `lanes` sums the first 16 bytes of every element hash as four big-endian 32-bit
lanes mod 2**32 (order-independent, and unlike XOR a repeated element does not cancel),
printed as 32 hex digits; a score is printed "%.17g" ("inf", "-inf" for infinities, "0" for
-0.0, whose sign Redis does not keep).
`expire` is the absolute expiry in Unix ms, 0 for none. A deleted key (tombstone) has the
constant TOMBSTONE_DIGEST.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import cast

from replication.model.value import Kind, Value

DIGEST_BYTES = 16
_LANE_MOD = 1 << 32


def _enc(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), data)


def format_score(score: float) -> bytes:
    """A sorted-set score in canonical text form ("%.17g": round-trips every double).

    -0.0 is written as 0: Redis does not keep the sign of a zero score.
    """
    return b"%.17g" % (score if score != 0 else 0.0)


def _lanes(element_hashes: Iterable[bytes]) -> bytes:
    a = b = c = d = 0
    for h in element_hashes:
        a += int.from_bytes(h[0:4], "big")
        b += int.from_bytes(h[4:8], "big")
        c += int.from_bytes(h[8:12], "big")
        d += int.from_bytes(h[12:16], "big")
    return b"%08x%08x%08x%08x" % (a % _LANE_MOD, b % _LANE_MOD, c % _LANE_MOD, d % _LANE_MOD)


def _sha(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - an equality digest, not security


TOMBSTONE_DIGEST = _sha(b"reconciler:tombstone")[:DIGEST_BYTES]


def _finish(tag: bytes, body: bytes, expire_at_ms: int) -> bytes:
    return _sha(tag + body + b"x%d" % expire_at_ms)[:DIGEST_BYTES]


def string_digest(value: bytes, expire_at_ms: int = 0) -> bytes:
    return _finish(b"s", _enc(value), expire_at_ms)


def list_digest(items: list[bytes], expire_at_ms: int = 0) -> bytes:
    body = b"%d:" % len(items) + b"".join(_enc(item) for item in items)
    return _finish(b"l", body, expire_at_ms)


def set_digest(members: Iterable[bytes], expire_at_ms: int = 0) -> bytes:
    hashes = [_sha(_enc(m)) for m in members]
    return _finish(b"t", b"%d:%s" % (len(hashes), _lanes(hashes)), expire_at_ms)


def hash_digest(fields: Mapping[bytes, bytes], expire_at_ms: int = 0) -> bytes:
    hashes = [_sha(_enc(f) + _enc(v)) for f, v in fields.items()]
    return _finish(b"h", b"%d:%s" % (len(hashes), _lanes(hashes)), expire_at_ms)


def zset_digest(scores: Mapping[bytes, float], expire_at_ms: int = 0) -> bytes:
    hashes = [_sha(_enc(m) + _enc(format_score(sc))) for m, sc in scores.items()]
    return _finish(b"z", b"%d:%s" % (len(hashes), _lanes(hashes)), expire_at_ms)


def value_digest(kind: Kind, value: Value, expire_at_ms: int = 0) -> bytes:
    """The canonical digest of a value of `kind` with absolute expiry (0: none).

    Raises TypeError when `value` does not have the shape `kind` requires.
    """
    if kind is Kind.NONE:
        return TOMBSTONE_DIGEST
    if kind is Kind.STRING and isinstance(value, bytes):
        return string_digest(value, expire_at_ms)
    if kind is Kind.LIST and isinstance(value, list):
        return list_digest(value, expire_at_ms)
    if kind is Kind.SET and isinstance(value, set | frozenset):
        return set_digest(value, expire_at_ms)
    if kind is Kind.HASH and isinstance(value, Mapping):
        return hash_digest(cast("Mapping[bytes, bytes]", value), expire_at_ms)
    if kind is Kind.ZSET and isinstance(value, Mapping):
        return zset_digest(cast("Mapping[bytes, float]", value), expire_at_ms)
    raise TypeError(f"a {kind.redis_name} value cannot be {type(value).__name__}")
