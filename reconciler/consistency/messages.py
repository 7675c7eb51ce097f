"""The bodies of control-plane messages, as validated dataclasses with fixed bounds.

Everything a peer sends is untrusted, even once its signature checks out (a buggy or
compromised peer holds a key too). So every body is parsed here, never read as a dict:

- `bounded_unpack` decodes msgpack with a budget on the objects it may build (a generic
  decoder builds up to ~64 bytes of Python objects per input byte: 4 MiB of empty maps
  became 290 MB), so no message can make a daemon allocate beyond a fixed bound;
- each request type (`Hello`, `Children`, `Buckets`, `Entries`, `Metas`, `Ship`, `Resync`,
  `Selfcheck`) has limits on its lists, node and slot numbers and bucket counts (`n`), so
  what a responder does for one request is bounded too (a 0.5 kB `buckets` request once
  asked for billions of buckets);
- each reply is checked against the request it answers (as many hashes as children asked
  for, only keys of the slots and buckets asked for, ...): a malformed reply is a
  `BadMessageError` that fails that session with the reason, never anything else;
- the heartbeat body (`Heartbeat`) likewise.

Every parser raises only `BadMessageError` (a `SessionError`, so a session reports it); the
property tests hold them to that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from reconciler.consistency.merkle import FANOUT, LEAF_LEVEL, LEVEL_SIZES, bucket_of
from replication.errors import ReconcilerError
from replication.model.keys import STATUS_STATES, is_valid_region_name
from replication.model.slots import SLOTS, key_slot

U64 = (1 << 64) - 1
I63 = (1 << 63) - 1

MAX_OBJECTS = 400_000  # containers' elements a decoded message may hold in all
MAX_ARRAY = 262_144  # elements of one array
MAX_MAP = 4096  # entries of one map
MAX_DBS = 64
SLOTS_PER_CHUNK = 128  # slots per buckets/entries request
MAX_BUCKETS_PER_SLOT = 1024  # `n`: a slot is split into at most this many buckets
MAX_KEYS_PER_REQUEST = 2000  # keys per metas/ship request
MAX_ENTRIES = 200_000  # (key, tag) pairs per entries reply
TAG_BYTES = 8
MAX_ERROR_CHARS = 1000
MAX_SAMPLE = 20
MAX_REGIONS = 256  # regions a heartbeat may report on
MAX_PARTITIONS = 4096  # partitions per topic a heartbeat may report on


class BadMessageError(ReconcilerError):
    """A control message body that is not what it must be. `reason` is a short fixed code
    (a metrics label); the message says what exactly was wrong."""

    retriable = True

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class _OverBudgetError(Exception):
    """Raised inside the msgpack hooks to stop a decode that builds too much."""


def bounded_unpack(data: bytes, *, max_objects: int = MAX_OBJECTS) -> Any:
    """Decode msgpack, building at most `max_objects` container elements in all and no
    array over MAX_ARRAY or map over MAX_MAP (BadMessageError otherwise)."""
    budget = [max_objects]

    def count(container: Any) -> Any:
        budget[0] -= len(container) + 1
        if budget[0] < 0:
            raise _OverBudgetError
        return container

    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            use_list=True,
            list_hook=count,
            object_hook=count,
            max_array_len=MAX_ARRAY,
            max_map_len=MAX_MAP,
        )
    except _OverBudgetError:
        raise BadMessageError(
            f"message holds more than {max_objects} objects", "oversized"
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError; ExtraData, FormatError and StackError are
        # UnpackException or ValueError subclasses.
        raise BadMessageError(f"not msgpack: {type(exc).__name__}", "undecodable") from None


# ------------------------------------------------------------------------ field readers
def _field(body: Mapping[str, Any], name: str, *, default: Any = ...) -> Any:
    if name in body:
        return body[name]
    if default is ...:
        raise BadMessageError(f"'{name}' missing")
    return default


def _int(value: object, name: str, lo: int = 0, hi: int = I63) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise BadMessageError(f"'{name}' must be an integer in [{lo}, {hi}]")
    return value


def _bool(value: object, name: str) -> bool:
    if type(value) is not bool:
        raise BadMessageError(f"'{name}' must be true or false")
    return value


def _str(value: object, name: str, max_len: int) -> str:
    if type(value) is not str or len(value) > max_len:
        raise BadMessageError(f"'{name}' must be a string of at most {max_len} characters")
    return value


def _region(value: object, name: str) -> str:
    if not is_valid_region_name(value):
        raise BadMessageError(f"'{name}' must be a region name")
    return str(value)


def _list(value: object, name: str, max_len: int, min_len: int = 0) -> list[Any]:
    if type(value) is not list or not min_len <= len(value) <= max_len:
        raise BadMessageError(f"'{name}' must be an array of {min_len} to {max_len} items")
    return value


def _key(value: object, name: str) -> bytes:
    if type(value) is not bytes or not value:
        raise BadMessageError(f"'{name}' must hold non-empty binary keys")
    return value


def _keys(value: object, name: str, max_len: int) -> tuple[bytes, ...]:
    return tuple(_key(k, name) for k in _list(value, name, max_len, 1))


def _unique(values: Iterable[int], name: str) -> None:
    seen: set[int] = set()
    for v in values:
        if v in seen:
            raise BadMessageError(f"'{name}' lists {v} twice")
        seen.add(v)


def _db(body: Mapping[str, Any]) -> int:
    return _int(_field(body, "db"), "db", 0, (1 << 16) - 1)


def _slot_n(pair: object, name: str) -> tuple[int, int]:
    if type(pair) is not list or len(pair) != 2:
        raise BadMessageError(f"'{name}' items must be [slot, buckets]")
    return _int(pair[0], "slot", 0, SLOTS - 1), _int(pair[1], "n", 1, MAX_BUCKETS_PER_SLOT)


# ------------------------------------------------------------------------------ requests
@dataclass(frozen=True, slots=True)
class Request:
    """A request of an anti-entropy session; `op` names it on the wire (ae.req.<op>)."""

    op: ClassVar[str] = ""
    expensive: ClassVar[bool] = False  # a whole-keyspace job: one at a time per peer

    def body(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class Hello(Request):
    op: ClassVar[str] = "hello"
    dbs: tuple[int, ...]

    def body(self) -> dict[str, Any]:
        return {"dbs": list(self.dbs)}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Hello:
        dbs = _list(_field(body, "dbs"), "dbs", MAX_DBS)
        values = tuple(_int(db, "dbs", 0, (1 << 16) - 1) for db in dbs)
        _unique(values, "dbs")
        return cls(values)


@dataclass(frozen=True, slots=True)
class Children(Request):
    op: ClassVar[str] = "children"
    db: int
    level: int
    nodes: tuple[int, ...]

    def body(self) -> dict[str, Any]:
        return {"db": self.db, "level": self.level, "nodes": list(self.nodes)}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Children:
        level = _int(_field(body, "level"), "level", 0, LEAF_LEVEL - 1)
        size = LEVEL_SIZES[level]
        nodes = tuple(
            _int(n, "nodes", 0, size - 1) for n in _list(_field(body, "nodes"), "nodes", size)
        )
        _unique(nodes, "nodes")
        return cls(_db(body), level, nodes)

    @property
    def children_count(self) -> int:
        return len(self.nodes) * FANOUT[self.level]


@dataclass(frozen=True, slots=True)
class Buckets(Request):
    op: ClassVar[str] = "buckets"
    db: int
    slots: tuple[tuple[int, int], ...]  # (slot, buckets it is split into)

    def body(self) -> dict[str, Any]:
        return {"db": self.db, "slots": [list(p) for p in self.slots]}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Buckets:
        raw = _list(_field(body, "slots"), "slots", SLOTS_PER_CHUNK, 1)
        slots = tuple(_slot_n(p, "slots") for p in raw)
        _unique((s for s, _ in slots), "slots")
        return cls(_db(body), slots)


@dataclass(frozen=True, slots=True)
class Entries(Request):
    op: ClassVar[str] = "entries"
    db: int
    want: tuple[tuple[int, int, frozenset[int]], ...]  # (slot, n, buckets wanted)

    def body(self) -> dict[str, Any]:
        return {"db": self.db, "want": [[s, n, sorted(b)] for s, n, b in self.want]}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Entries:
        want = []
        for item in _list(_field(body, "want"), "want", SLOTS_PER_CHUNK, 1):
            if type(item) is not list or len(item) != 3:
                raise BadMessageError("'want' items must be [slot, n, [bucket, ...]]")
            slot, n = _slot_n(item[:2], "want")
            buckets = [_int(b, "buckets", 0, n - 1) for b in _list(item[2], "buckets", n, 1)]
            _unique(buckets, "buckets")
            want.append((slot, n, frozenset(buckets)))
        _unique((s for s, _, _ in want), "want")
        return cls(_db(body), tuple(want))


@dataclass(frozen=True, slots=True)
class Metas(Request):
    op: ClassVar[str] = "metas"
    db: int
    keys: tuple[bytes, ...]

    def body(self) -> dict[str, Any]:
        return {"db": self.db, "keys": list(self.keys)}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Metas:
        return cls(_db(body), _keys(_field(body, "keys"), "keys", MAX_KEYS_PER_REQUEST))


@dataclass(frozen=True, slots=True)
class Ship(Request):
    op: ClassVar[str] = "ship"
    db: int
    keys: tuple[bytes, ...]
    target: str  # must be the requester: a peer can only ask for keys to be sent to itself

    def body(self) -> dict[str, Any]:
        return {"db": self.db, "keys": list(self.keys), "target": self.target}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Ship:
        keys = _keys(_field(body, "keys"), "keys", MAX_KEYS_PER_REQUEST)
        return cls(_db(body), keys, _region(_field(body, "target"), "target"))


@dataclass(frozen=True, slots=True)
class Resync(Request):
    op: ClassVar[str] = "resync"
    expensive: ClassVar[bool] = True
    target: str

    def body(self) -> dict[str, Any]:
        return {"target": self.target}

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Resync:
        return cls(_region(_field(body, "target"), "target"))


@dataclass(frozen=True, slots=True)
class Selfcheck(Request):
    op: ClassVar[str] = "selfcheck"
    expensive: ClassVar[bool] = True

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Selfcheck:
        return cls()


REQUESTS: dict[str, Any] = {
    cls.op: cls for cls in (Hello, Children, Buckets, Entries, Metas, Ship, Resync, Selfcheck)
}


def parse_request(op: str, body: Mapping[str, Any]) -> tuple[int, Request]:
    """(seq, request) of an `ae.req.<op>` body; BadMessageError for anything else."""
    cls = REQUESTS.get(op)
    if cls is None:
        raise BadMessageError(f"unknown anti-entropy request {op[:40]!r}", "unknown-request")
    seq = _int(_field(body, "seq"), "seq", 1)
    request: Request = cls.parse(body)
    return seq, request


# ------------------------------------------------------------------------------- replies
@dataclass(frozen=True, slots=True)
class HelloReply:
    roots: dict[int, int]
    keys: dict[int, int]

    def body(self) -> dict[str, Any]:
        return {
            "roots": {str(db): h for db, h in self.roots.items()},
            "keys": {str(db): n for db, n in self.keys.items()},
        }

    @classmethod
    def parse(cls, body: Mapping[str, Any], request: Hello) -> HelloReply:
        asked = set(request.dbs)

        def per_db(name: str, hi: int) -> dict[int, int]:
            raw = _field(body, name)
            if type(raw) is not dict or len(raw) > len(asked):
                raise BadMessageError(f"'{name}' must map at most the {len(asked)} dbs asked for")
            out = {}
            for db, value in raw.items():
                if type(db) is not str or not db.isdigit() or int(db) not in asked:
                    raise BadMessageError(f"'{name}' names a database that was not asked for")
                out[int(db)] = _int(value, name, 0, hi)
            return out

        roots, keys = per_db("roots", U64), per_db("keys", I63)
        if roots.keys() != keys.keys():
            raise BadMessageError("'roots' and 'keys' name different databases")
        return cls(roots, keys)


@dataclass(frozen=True, slots=True)
class ChildrenReply:
    hashes: tuple[int, ...]

    def body(self) -> dict[str, Any]:
        return {"hashes": list(self.hashes)}

    @classmethod
    def parse(cls, body: Mapping[str, Any], request: Children) -> ChildrenReply:
        n = request.children_count
        raw = _list(_field(body, "hashes"), "hashes", n, n)
        return cls(tuple(_int(h, "hashes", 0, U64) for h in raw))


@dataclass(frozen=True, slots=True)
class BucketsReply:
    buckets: tuple[tuple[int, ...], ...]  # per slot asked for, its n bucket sums

    def body(self) -> dict[str, Any]:
        return {"buckets": [list(b) for b in self.buckets]}

    @classmethod
    def parse(cls, body: Mapping[str, Any], request: Buckets) -> BucketsReply:
        raw = _list(_field(body, "buckets"), "buckets", len(request.slots), len(request.slots))
        out = []
        for sums, (_, n) in zip(raw, request.slots, strict=True):
            out.append(tuple(_int(h, "buckets", 0, U64) for h in _list(sums, "buckets", n, n)))
        return cls(tuple(out))


@dataclass(frozen=True, slots=True)
class EntriesReply:
    entries: dict[bytes, bytes]  # key -> tag (digest prefix; b"" when logically absent)

    def body(self) -> dict[str, Any]:
        return {"entries": [x for pair in self.entries.items() for x in pair]}

    @classmethod
    def parse(cls, body: Mapping[str, Any], request: Entries) -> EntriesReply:
        flat = _list(_field(body, "entries"), "entries", 2 * MAX_ENTRIES)
        if len(flat) % 2:
            raise BadMessageError("'entries' must alternate keys and tags")
        scope = {slot: (n, buckets) for slot, n, buckets in request.want}
        out: dict[bytes, bytes] = {}
        for key, tag in zip(flat[::2], flat[1::2], strict=True):
            _key(key, "entries")
            if type(tag) is not bytes or len(tag) not in (0, TAG_BYTES):
                raise BadMessageError(f"'entries' tags must be empty or {TAG_BYTES} bytes")
            where = scope.get(key_slot(key))
            if where is None or bucket_of(key, where[0]) not in where[1]:
                raise BadMessageError(
                    "'entries' holds a key outside the slots and buckets asked for"
                )
            out[key] = tag
        return cls(out)


@dataclass(frozen=True, slots=True)
class MetasReply:
    metas: dict[bytes, bytes]  # key -> its raw stored metadata record

    def body(self) -> dict[str, Any]:
        return {"metas": [x for pair in self.metas.items() for x in pair]}

    @classmethod
    def parse(cls, body: Mapping[str, Any], request: Metas) -> MetasReply:
        flat = _list(_field(body, "metas"), "metas", 2 * len(request.keys))
        if len(flat) % 2:
            raise BadMessageError("'metas' must alternate keys and records")
        asked = set(request.keys)
        out: dict[bytes, bytes] = {}
        for key, raw in zip(flat[::2], flat[1::2], strict=True):
            if key not in asked:
                raise BadMessageError("'metas' holds a key that was not asked for")
            if type(raw) is not bytes or not raw:
                raise BadMessageError("'metas' records must be non-empty binary")
            out[key] = raw
        return cls(out)


@dataclass(frozen=True, slots=True)
class Shipped:
    """The reply to ship and resync: how many keys were shipped."""

    shipped: int

    def body(self) -> dict[str, Any]:
        return {"shipped": self.shipped}

    @classmethod
    def parse(cls, body: Mapping[str, Any], request: Request) -> Shipped:
        most = len(request.keys) if isinstance(request, Ship) else I63
        return cls(_int(_field(body, "shipped"), "shipped", 0, most))


@dataclass(frozen=True, slots=True)
class SelfcheckReply:
    checked: int
    inconsistent: int
    sample: tuple[str, ...]

    def body(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "inconsistent": self.inconsistent,
            "sample": list(self.sample),
        }

    @classmethod
    def parse(cls, body: Mapping[str, Any], request: Selfcheck) -> SelfcheckReply:
        sample = _list(_field(body, "sample", default=[]), "sample", MAX_SAMPLE)
        return cls(
            _int(_field(body, "checked"), "checked"),
            _int(_field(body, "inconsistent"), "inconsistent"),
            tuple(_str(s, "sample", 1024) for s in sample),
        )


Reply = (
    HelloReply | ChildrenReply | BucketsReply | EntriesReply | MetasReply | Shipped | SelfcheckReply
)

REPLIES: dict[type[Request], Any] = {
    Hello: HelloReply,
    Children: ChildrenReply,
    Buckets: BucketsReply,
    Entries: EntriesReply,
    Metas: MetasReply,
    Ship: Shipped,
    Resync: Shipped,
    Selfcheck: SelfcheckReply,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A reply saying the request failed, and why (shown in the requester's report)."""

    error: str


def reply_seq(body: Mapping[str, Any]) -> int | None:
    """The seq a reply body answers (None if it has none: it matches no request)."""
    seq = body.get("seq")
    return seq if type(seq) is int else None


def parse_reply(body: Mapping[str, Any], request: Request) -> Reply | Refusal:
    """The reply to `request`, checked against it; BadMessageError if it is not one."""
    ok = _bool(_field(body, "ok"), "ok")
    if not ok:
        error = _field(body, "error", default="")
        return Refusal(_str(error, "error", 10 * MAX_ERROR_CHARS)[:MAX_ERROR_CHARS])
    reply: Reply = REPLIES[type(request)].parse(body, request)
    return reply


# ----------------------------------------------------------------------------- heartbeat
def _offsets(value: object, name: str) -> dict[int, int]:
    """{partition: offset}; partitions may come as strings (JSON-minded senders)."""
    if type(value) is not dict or len(value) > MAX_PARTITIONS:
        raise BadMessageError(f"'{name}' must map at most {MAX_PARTITIONS} partitions")
    out = {}
    for raw, offset in value.items():
        partition = int(raw) if type(raw) is str and raw.isdigit() and len(raw) <= 10 else raw
        out[_int(partition, name, 0, (1 << 31) - 1)] = _int(offset, name)
    return out


def _per_region(value: object, name: str) -> dict[str, Any]:
    if type(value) is not dict or len(value) > MAX_REGIONS:
        raise BadMessageError(f"'{name}' must map at most {MAX_REGIONS} regions")
    return {_region(region, name): v for region, v in value.items()}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A peer's heartbeat (see `reconciler.consistency.peers`). Times are on its clock."""

    epoch: int = 0
    status: str = ""
    capture_offset: int = 0
    lag: dict[str, int] = field(default_factory=dict)  # its consumer lag per origin region
    at_ms: int = 0
    shipped_through_ms: int = 0
    produced: dict[int, int] = field(default_factory=dict)  # its topic: acked offsets
    applied: dict[str, dict[int, int]] = field(default_factory=dict)  # per origin region
    since_ms: int = 0
    last_repair_ms: int = 0
    deadletters: int = 0
    refused_events: int = 0
    """Events of verified records it refused (dead-lettered, not applied) since it started,
    read after `applied`: the tombstone GC must not count those as applied."""

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Heartbeat:
        """Fields missing in an older peer's heartbeat take their defaults; unknown fields
        (a newer peer's) are ignored; a field of the wrong kind rejects the heartbeat."""
        ints = {
            name: _int(body.get(name, 0), name)
            for name in (
                "epoch",
                "capture_offset",
                "at_ms",
                "shipped_through_ms",
                "since_ms",
                "last_repair_ms",
                "deadletters",
                "refused_events",
            )
        }
        status = _str(body.get("status", ""), "status", 32)
        if status and status not in STATUS_STATES:
            raise BadMessageError(f"'status' must be one of {', '.join(STATUS_STATES)}")
        lag = {r: _int(n, "lag") for r, n in _per_region(body.get("lag", {}), "lag").items()}
        produced = _offsets(body.get("produced", {}), "produced")
        applied = {
            r: _offsets(o, "applied")
            for r, o in _per_region(body.get("applied", {}), "applied").items()
        }
        return cls(status=status, lag=lag, produced=produced, applied=applied, **ints)
