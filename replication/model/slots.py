"""Redis Cluster hash slots: CRC16 (XMODEM) of the key or its {hash tag}, mod 16384.

Metadata for a key lives in a hash whose name carries a tag mapping to the key's slot, so a
script can touch a key and its metadata together (also under Redis Cluster), and each
Merkle leaf (one slot) is listed with one HSCAN.
"""

from __future__ import annotations

import binascii
from functools import lru_cache

SLOTS = 16384


def key_slot(key: bytes) -> int:
    """The cluster hash slot of `key`, honouring {hash tags} exactly as Redis does."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    # binascii.crc_hqx with initial value 0 is CRC16-CCITT/XMODEM, Redis's cluster CRC.
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


def _base36(n: int) -> bytes:
    digits = b"0123456789abcdefghijklmnopqrstuvwxyz"
    out = bytearray()
    while True:
        n, rem = divmod(n, 36)
        out.append(digits[rem])
        if n == 0:
            return bytes(reversed(out))


@lru_cache(maxsize=1)
def slot_tags() -> tuple[bytes, ...]:
    """For every slot, the first short base-36 string (in counting order) hashing to it.

    Deterministic, so every region and every process computes the same names.
    """
    tags: list[bytes | None] = [None] * SLOTS
    missing = SLOTS
    n = 0
    while missing:
        candidate = _base36(n)
        slot = binascii.crc_hqx(candidate, 0) & (SLOTS - 1)
        if tags[slot] is None:
            tags[slot] = candidate
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> bytes:
    """A string whose hash slot is `slot`, for naming per-slot internal keys."""
    return slot_tags()[slot]
