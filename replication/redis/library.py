"""Loading the Lua function library (replication/redis/lua/reconciler.lua) into a Redis.

The library's version is the hash of its source, so a daemon with a changed library
replaces the old one at connect time; a Redis restarted empty gets it back the same way.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

import hiredis
import msgpack

from replication.model.digest import format_score
from replication.model.event import ChangeEvent
from replication.model.keys import meta_key
from replication.model.metadata import decode_meta
from replication.model.slots import key_slot
from replication.model.value import Kind, Value
from replication.model.vclock import MAX_CLOCK_ENTRY, VectorClock
from replication.redis.resp import RedisCommandError, RespConnection


@lru_cache(maxsize=1)
def library_source() -> tuple[str, str]:
    """(source with its version filled in, version)."""
    text = files("replication.redis").joinpath("lua/reconciler.lua").read_text()
    # One bound for Python and Lua: the library gets the very constant the decoder uses.
    text = text.replace("__MAX_CLOCK_ENTRY__", str(MAX_CLOCK_ENTRY))
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


def version_many_command(
    keys: Sequence[bytes],
    region: str,
    tick: int,
    *,
    replay: bool = False,
    delete_tick: int | None = None,
    expect: Sequence[bytes] | None = None,
) -> Command:
    """FCALL rr_version_many for several keys (one script call, replies in one array);
    `delete_tick` dates the deletes when it must differ from `tick`; `expect`: the state
    token each key was probed with (`probe_many_command`), a key whose state changed since
    is left alone."""
    args: list[bytes] = []
    for key in keys:
        args += [key, meta_key_for(key)]
    command: Command = (
        "FCALL",
        "rr_version_many",
        len(args),
        *args,
        region,
        tick,
        b"1" if replay else b"0",
    )
    if expect is not None:
        if len(expect) != len(keys):
            raise ValueError("one expected state token per key")
        return (*command, tick if delete_tick is None else delete_tick, *expect)
    return command if delete_tick is None else (*command, delete_tick)


def probe_many_command(keys: Sequence[bytes]) -> Command:
    """FCALL_RO rr_probe_many: for each key b"" if versioning it would find nothing, else
    the token of its state now (see the library)."""
    args: list[bytes] = []
    for key in keys:
        args += [key, meta_key_for(key)]
    return ("FCALL_RO", "rr_probe_many", len(args), *args)


def parse_probe_many_reply(reply: Any, keys: Sequence[bytes]) -> dict[bytes, bytes]:
    """The keys of a `probe_many_command` that versioning would change, with their tokens."""
    if not isinstance(reply, list) or len(reply) != len(keys):
        raise RedisCommandError(f"rr_probe_many answered {type(reply).__name__}, not a list", reply)
    return {key: token for key, token in zip(keys, reply, strict=True) if token}


def apply_many_command(
    events: Sequence[ChangeEvent], local_region: str, retired: str = ""
) -> Command:
    """FCALL rr_apply_many for several events of one db (one script call)."""
    keys: list[bytes] = []
    args: list[bytes | str | int] = [local_region, retired]
    for event in events:
        key = event.key
        keys += [key, meta_key_for(key)]
        values = _value_args(event)
        args += [
            event.kind.redis_name,
            event.expire_at_ms,
            event.digest,
            event.origin,
            msgpack.packb(event.clock.to_flat(), use_bin_type=True),
            len(values),
            *values,
        ]
    return ("FCALL", "rr_apply_many", len(keys), *keys, *args)


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
    CLOCK_REFUSED = 4  # the tick would pass MAX_CLOCK_ENTRY: nothing written, not shipped


@dataclass(frozen=True, slots=True)
class VersionResult:
    status: VersionStatus
    event: ChangeEvent | None = None
    old_digest: bytes = b""  # the digest the key had before (b"" if none / a tombstone)
    unsupported_type: str = ""
    refused: str = ""  # for CLOCK_REFUSED: which entry, and what it would have become


_NOTHING = VersionResult(VersionStatus.NOTHING)


def _clock_refused(region: bytes, entry: bytes) -> VersionResult:
    return VersionResult(
        VersionStatus.CLOCK_REFUSED,
        refused=f"the entry of {region.decode(errors='replace')} would become "
        f"{entry.decode(errors='replace')}",
    )


def parse_version_reply(reply: list[Any], db: int, key: bytes) -> VersionResult:
    """Turn an rr_version reply into a result (with the event to ship, if any)."""
    status = VersionStatus(reply[0])
    if status is VersionStatus.NOTHING:
        return VersionResult(status)
    if status is VersionStatus.UNSUPPORTED:
        return VersionResult(status, unsupported_type=reply[1].decode())
    if status is VersionStatus.CLOCK_REFUSED:
        return _clock_refused(reply[1], reply[2])
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


def parse_version_many_reply(
    reply: list[Any], db: int, keys: Sequence[bytes]
) -> list[VersionResult]:
    """The per-key results of an rr_version_many reply, in the order of `keys`."""
    results: list[VersionResult] = []
    i = 0
    for key in keys:
        code = reply[i]
        if code == 0:
            results.append(_NOTHING)
            i += 1
            continue
        if code == 3:
            results.append(
                VersionResult(VersionStatus.UNSUPPORTED, None, b"", reply[i + 1].decode())
            )
            i += 2
            continue
        if code == 4:
            results.append(_clock_refused(reply[i + 1], reply[i + 2]))
            i += 3
            continue
        kind_name, raw_value, meta_raw, old_digest = reply[i + 1 : i + 5]
        i += 5
        kind = _KIND_BY_NAME[kind_name]
        meta = decode_meta(meta_raw)
        if kind is Kind.STRING:
            value: Value = raw_value
        elif kind is Kind.NONE:
            value = None
        else:
            value = parse_value(kind, raw_value)
        event = ChangeEvent(
            db, key, kind, value, meta.expire_at_ms, meta.clock, meta.origin, meta.digest
        )
        results.append(VersionResult(VersionStatus(code), event, old_digest))
    if i != len(reply):
        raise ValueError(f"rr_version_many replied {len(reply)} items, parsed {i}")
    return results


_KIND_BY_NAME = {kind.redis_name.encode(): kind for kind in Kind}


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


def parse_apply_many_reply(reply: list[Any], count: int) -> list[ApplyResult]:
    """The per-event results of an rr_apply_many reply (old_meta only for conflicts)."""
    if len(reply) != 3 * count:
        raise ValueError(f"rr_apply_many replied {len(reply)} items for {count} events")
    return [
        ApplyResult(reply[i].decode(), reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)
    ]


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
