"""The Redis values we replicate and their in-memory shapes.

| kind   | Python shape            | notes |
|--------|-------------------------|-------|
| string | bytes                   | |
| hash   | dict[bytes, bytes]      | |
| list   | list[bytes]             | order matters |
| set    | set[bytes]              | |
| zset   | dict[bytes, float]      | member -> score |
| none   | None                    | the key does not exist (a delete: a tombstone) |

Streams and module types are not replicated: capture refuses them with
`UnsupportedTypeError` (counted, reported, never shipped), because neither has a canonical
form we can digest identically in every region; DUMP/RESTORE payloads are tied to the
Redis version and encoding.
"""

from __future__ import annotations

import enum

from replication.errors import UnsupportedTypeError

Value = bytes | dict[bytes, bytes] | list[bytes] | set[bytes] | dict[bytes, float] | None


class Kind(enum.IntEnum):
    """A value's type; the names are what Redis's TYPE command answers."""

    NONE = 0
    STRING = 1
    HASH = 2
    LIST = 3
    SET = 4
    ZSET = 5

    @property
    def redis_name(self) -> str:
        return self.name.lower()

    @classmethod
    def from_redis(cls, name: str | bytes) -> Kind:
        text = name.decode() if isinstance(name, bytes) else name
        try:
            return _BY_NAME[text]
        except KeyError:
            raise UnsupportedTypeError(
                f"values of Redis type {text!r} are not replicated (supported: "
                "string, hash, list, set, zset); the key is left out of replication"
            ) from None


_BY_NAME = {kind.redis_name: kind for kind in Kind}
