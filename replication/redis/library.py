"""Loading the Lua function library (replication/redis/lua/reconciler.lua) into a Redis.

The library's version is the hash of its source, so a daemon with a changed library
replaces the old one at connect time; a Redis restarted empty gets it back the same way.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

import hiredis
import msgpack

from replication.model.digest import format_score
from replication.model.event import ChangeEvent
from replication.model.keys import meta_key
from replication.model.slots import key_slot
from replication.model.value import Kind, Value
from replication.model.vclock import VectorClock
from replication.redis.resp import RespConnection


@lru_cache(maxsize=1)
def library_source() -> tuple[str, str]:
    """(source with its version filled in, version)."""
    text = files("replication.redis").joinpath("lua/reconciler.lua").read_text()
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    return text.replace("__LIB_VERSION__", version), version


async def ensure_library(conn: RespConnection) -> str:
    """Load (or replace) the library unless this exact version is there; returns it."""
    source, version = library_source()
    (reply,) = await conn.pipeline([("FCALL", "rr_lib_version", 0)])
    if isinstance(reply, bytes) and reply.decode() == version:
        return version
    await conn.execute("FUNCTION", "LOAD", "REPLACE", source)
    return version


def is_missing_function(reply: object) -> bool:
    """A reply meaning the library is not loaded (e.g. the Redis restarted empty)."""
    return isinstance(reply, hiredis.ReplyError) and "Function not found" in str(reply)


# --- calling the library's functions ---------------------------------------------------------

Command = tuple[bytes | str | int | float, ...]


def meta_key_for(key: bytes) -> bytes:
    """The metadata hash holding `key`'s metadata."""
    return meta_key(key_slot(key))


def version_command(key: bytes, region: str, tick: int, *, replay: bool = False) -> Command:
    """FCALL rr_version for one key (see the Lua source for the semantics)."""
    flag = b"1" if replay else b"0"
    return ("FCALL", "rr_version", 2, key, meta_key_for(key), region, tick, flag)


def _value_args(event: ChangeEvent) -> list[bytes]:
    value: Any = event.value
    kind = event.kind
    if kind is Kind.NONE:
        return []
    if kind is Kind.STRING:
        return [value]
    if kind is Kind.LIST or kind is Kind.SET:
        return list(value)
    if kind is Kind.HASH:
        return [x for pair in value.items() for x in pair]
    return [x for m, s in value.items() for x in (m, format_score(s))]


def apply_command(event: ChangeEvent, local_region: str, retired: str = "") -> Command:
    """FCALL rr_apply for one event; `retired` is the comma-separated retired regions."""
    return (
        "FCALL",
        "rr_apply",
        2,
        event.key,
        meta_key_for(event.key),
        local_region,
        retired,
        event.kind.redis_name,
        event.expire_at_ms,
        event.digest,
        event.origin,
        msgpack.packb(event.clock.to_flat(), use_bin_type=True),
        *_value_args(event),
    )


def forget_command(key: bytes, raw_meta: bytes) -> Command:
    """FCALL rr_forget: drop a metadata entry if it is still `raw_meta` and the key is gone."""
    return ("FCALL", "rr_forget", 2, key, meta_key_for(key), raw_meta)


def read_command(keys: list[bytes]) -> Command:
    """FCALL_RO rr_read for several keys."""
    args: list[bytes] = []
    for key in keys:
        args += [key, meta_key_for(key)]
    return ("FCALL_RO", "rr_read", len(args), *args)


def parse_value(kind: Kind, raw: list[bytes]) -> Value:
    """A value from the flat form the library returns (scores arrive as text)."""
    if kind is Kind.NONE:
        return None
    if kind is Kind.STRING:
        return raw[0]
    if kind is Kind.LIST:
        return list(raw)
    if kind is Kind.SET:
        return set(raw)
    if kind is Kind.HASH:
        return dict(zip(raw[::2], raw[1::2], strict=True))
    return {m: float(s) for m, s in zip(raw[::2], raw[1::2], strict=True)}


class VersionStatus(enum.IntEnum):
    NOTHING = 0  # echo of an apply, a no-op write, an expiry
    NEW = 1  # a new local version: ship it
    RESHIP = 2  # replay after a restart: a version of ours that may not have been shipped
    UNSUPPORTED = 3  # a type we do not replicate


@dataclass(frozen=True, slots=True)
class VersionResult:
    status: VersionStatus
    event: ChangeEvent | None = None
    old_digest: bytes = b""  # the digest the key had before (b"" if none / a tombstone)
    unsupported_type: str = ""


def parse_version_reply(reply: list[Any], db: int, key: bytes) -> VersionResult:
    """Turn an rr_version reply into a result (with the event to ship, if any)."""
    status = VersionStatus(reply[0])
    if status is VersionStatus.NOTHING:
        return VersionResult(status)
    if status is VersionStatus.UNSUPPORTED:
        return VersionResult(status, unsupported_type=reply[1].decode())
    _, kind_name, raw_value, expire_at, digest, flat_clock, origin, old_digest = reply
    kind = Kind.from_redis(kind_name)
    event = ChangeEvent(
        db=db,
        key=key,
        kind=kind,
        value=parse_value(kind, raw_value),
        expire_at_ms=expire_at,
        clock=VectorClock.from_flat(flat_clock),
        origin=origin.decode(),
        digest=digest,
    )
    return VersionResult(status, event, old_digest)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    # applied | stale | conflict-remote-won | conflict-local-won | deferred | bad-digest |
    # unsupported-local
    outcome: str
    old_digest: bytes  # the key's live digest before (b"" if none / a tombstone)
    old_meta: bytes  # the raw metadata before (b"" if none)


def parse_apply_reply(reply: list[Any]) -> ApplyResult:
    outcome, old_digest, old_meta = reply
    return ApplyResult(outcome.decode(), old_digest, old_meta)


@dataclass(frozen=True, slots=True)
class KeyState:
    """A key's current state and metadata as rr_read reports them."""

    key: bytes
    kind_name: str  # may be a type we do not replicate (e.g. "stream")
    value: list[bytes]
    expire_at_ms: int
    digest: bytes  # of the current state (b"" for an unsupported type)
    meta_raw: bytes  # b"" when the key has no metadata


def parse_read_reply(keys: list[bytes], reply: list[Any]) -> list[KeyState]:
    return [
        KeyState(key, kind.decode(), value, expire_at, digest, meta)
        for key, (kind, value, expire_at, digest, meta) in zip(keys, reply, strict=True)
    ]
