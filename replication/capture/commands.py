"""Which keys a replicated command writes, from the server's own key specifications.

Redis 7 describes the keys of every command (modules included) in ``COMMAND``: a list of
*key specs*, each a ``begin_search`` step (a fixed ``index``, or a ``keyword`` searched
from ``startfrom``) and a ``find_keys`` step (a ``range`` of ``lastkey``/``keystep``/``limit``
relative to where the search began, or a ``keynum`` argument giving the count), with flags
saying how the key is accessed. :meth:`KeyTable.from_command_reply` compiles that reply
once per connection into one cheap extractor per command name, because the stream parser
runs it for every command of the stream:

* an ``int`` ``i`` > 0: the single key ``argv[i]`` (most write commands), ``0``: no keys;
* a ``slice``: the keys ``argv[slice]`` (``DEL``, ``MSET``, ``UNLINK``...);
* a callable ``argv -> list[bytes]`` for everything else (keyword and keynum specs,
  several specs, subcommands such as ``XGROUP CREATE``);
* a :class:`Special` for the commands the stream parser handles itself.

Policies
--------
* Only keys the command may **write** are reported: a spec flagged ``RO`` (the sources of
  ``SUNIONSTORE``, ``COPY``, ``BITOP``...) or ``not_key`` (``SPUBLISH`` channels) is skipped,
  because the consumer reads the state of reported keys and a read key did not change.
* ``MULTI``/``EXEC`` have no keys; the commands between them count. A block that writes a
  metadata hash is the effects of the library's apply (a script's effects are replicated
  wrapped in ``MULTI``/``EXEC``): its user keys are echoes and are not reported (see
  :mod:`replication.capture.parser`).
  Scripts (``EVAL``, ``FCALL``) are replicated by their effects in Redis 7, so the stream
  carries the commands they ran; if a script command does appear, its key specs apply.
* Expiries and evictions reach the stream as ``DEL``/``UNLINK`` of the key: the key is
  simply touched, and the consumer reads that it is gone.
* ``SELECT`` switches the db; ``MOVE key db`` writes the key in both dbs; ``COPY src dst
  [DB n]`` writes ``dst`` in db ``n`` (or the current db); ``RENAME``/``RENAMENX`` write both
  keys (from their key specs).
* ``FLUSHDB``/``FLUSHALL`` are not replicated: the parser reports the emptied dbs and a
  ``"flush"`` gap, and anti-entropy refills the region from its peers. A mistaken
  ``FLUSHALL`` in one region must not wipe every region, and a flush has no per-key
  causality that clocks could order against concurrent writes elsewhere.
* ``SWAPDB`` changes every key of both dbs at once: a ``"swapdb"`` gap.
* ``PING``, ``REPLCONF``, ``PUBLISH``, ``FUNCTION LOAD``... have no keys. ``REPLCONF GETACK``
  is answered by the stream source.
* A command absent from the table (a module loaded after we read ``COMMAND``) or whose
  key specs are incomplete is :attr:`Special.UNKNOWN` / :attr:`Special.INCOMPLETE`: the
  parser logs it once, counts it, and keeps what the complete specs give.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

# Past this many distinct spellings of command names (b"SET", b"set", b"Set"...) we stop
# memoising new ones, so a client sending odd casings cannot grow the table without bound.
_MAX_FAST_ENTRIES = 8192


class Special(enum.Enum):
    """Commands whose effect is more than "these keys in the current db"."""

    SELECT = "select"
    FLUSHDB = "flushdb"
    FLUSHALL = "flushall"
    SWAPDB = "swapdb"
    MOVE = "move"
    COPY = "copy"
    REPLCONF = "replconf"
    MULTI = "multi"
    EXEC = "exec"
    UNKNOWN = "unknown"
    """Not in the server's command table."""
    INCOMPLETE = "incomplete"
    """Key specs that do not locate every written key (``incomplete`` or ``unknown``)."""


KeyFunc: TypeAlias = Callable[[Sequence[bytes]], list[bytes]]
Extractor: TypeAlias = int | slice | KeyFunc | Special

_SPECIAL_BY_NAME: dict[bytes, Special] = {
    b"select": Special.SELECT,
    b"flushdb": Special.FLUSHDB,
    b"flushall": Special.FLUSHALL,
    b"swapdb": Special.SWAPDB,
    b"move": Special.MOVE,
    b"copy": Special.COPY,
    b"replconf": Special.REPLCONF,
    b"multi": Special.MULTI,
    b"exec": Special.EXEC,
}

_WRITE_FLAGS_EXCLUDED = (b"RO", b"not_key")


def _pairs(flat: Sequence[Any]) -> dict[bytes, Any]:
    """A RESP2 map (flat key, value, key, value... list) as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _range_keys(
    argv: Sequence[bytes], first: int, lastkey: int, step: int, limit: int
) -> list[bytes]:
    """Keys of a ``range`` find_keys step that began at argv[first] (Redis semantics)."""
    argc = len(argv)
    if lastkey >= 0:
        last = first + lastkey
    elif limit <= 1:
        last = argc + lastkey
    else:
        last = first + ((argc - first) // limit + lastkey)
    if first >= argc or last >= argc or last < first:
        return []
    return list(argv[first : last + 1 : max(step, 1)])


def _keyword_start(argv: Sequence[bytes], keyword: bytes, startfrom: int) -> int:
    """Index after `keyword` (searched as Redis does), or 0 when it is absent."""
    argc = len(argv)
    if startfrom > 0:
        # Forward, never at the last argument: a keyword there would have no key after it.
        indices: Iterable[int] = range(startfrom, argc - 1)
    else:
        indices = range(argc + startfrom, 1, -1)
    for i in indices:
        if i >= argc or i < 1:
            break
        if argv[i].lower() == keyword:
            return i + 1
    return 0


@dataclass(frozen=True, slots=True)
class _Spec:
    """One compiled key spec."""

    bs_index: int = 0
    keyword: bytes = b""
    startfrom: int = 0
    kind: str = "range"  # "range" | "keynum"
    lastkey: int = 0
    step: int = 1
    limit: int = 0
    keynumidx: int = 0
    firstkey: int = 1

    def keys(self, argv: Sequence[bytes]) -> list[bytes]:
        if self.keyword:
            first = _keyword_start(argv, self.keyword, self.startfrom)
            if not first:
                return []
        else:
            first = self.bs_index
        if self.kind == "range":
            return _range_keys(argv, first, self.lastkey, self.step, self.limit)
        try:
            numkeys = int(argv[first + self.keynumidx])
        except (IndexError, ValueError):
            return []
        start = first + self.firstkey
        last = start + numkeys - 1
        if numkeys <= 0 or last >= len(argv):
            return []
        return list(argv[start : last + 1 : max(self.step, 1)])

    def fast(self) -> Extractor:
        """The cheapest equivalent extractor: an int, a slice, or this spec's `keys`."""
        if self.keyword or self.kind != "range":
            return self.keys
        if self.lastkey == 0:
            return self.bs_index
        if self.lastkey > 0:
            return slice(self.bs_index, self.bs_index + self.lastkey + 1, self.step)
        if self.limit <= 1:
            stop = None if self.lastkey == -1 else self.lastkey + 1
            return slice(self.bs_index, stop, self.step)
        return self.keys


def _compile_spec(raw: Sequence[Any]) -> tuple[_Spec | None, bool]:
    """(the compiled spec, or None when it locates no written key; whether it is complete).

    A spec flagged ``incomplete`` still finds some keys: it is compiled, and the command
    is marked incomplete so that its use is logged.
    """
    spec = _pairs(raw)
    flags = set(spec.get(b"flags", ()))
    if flags.intersection(_WRITE_FLAGS_EXCLUDED):
        return None, True
    begin = _pairs(spec.get(b"begin_search", ()))
    find = _pairs(spec.get(b"find_keys", ()))
    bs_args = _pairs(begin.get(b"spec", ()))
    fk_args = _pairs(find.get(b"spec", ()))
    compiled: dict[str, Any] = {}
    if begin.get(b"type") == b"index":
        compiled["bs_index"] = int(bs_args[b"index"])
    elif begin.get(b"type") == b"keyword":
        compiled["keyword"] = bytes(bs_args[b"keyword"]).lower()
        compiled["startfrom"] = int(bs_args[b"startfrom"])
    else:
        return None, False
    if find.get(b"type") == b"range":
        compiled.update(
            kind="range",
            lastkey=int(fk_args[b"lastkey"]),
            step=int(fk_args[b"keystep"]),
            limit=int(fk_args[b"limit"]),
        )
    elif find.get(b"type") == b"keynum":
        compiled.update(
            kind="keynum",
            keynumidx=int(fk_args[b"keynumidx"]),
            firstkey=int(fk_args[b"firstkey"]),
            step=int(fk_args[b"keystep"]),
        )
    else:
        return None, False
    return _Spec(**compiled), b"incomplete" not in flags


def _combine(specs: Sequence[_Spec]) -> Extractor:
    """One extractor for all of a command's (write) specs."""
    if not specs:
        return 0
    if len(specs) == 1:
        return specs[0].fast()
    parts = tuple(spec.keys for spec in specs)

    def keys(argv: Sequence[bytes]) -> list[bytes]:
        found: list[bytes] = []
        for part in parts:
            found.extend(part(argv))
        return found

    return keys


def _sort_keys(argv: Sequence[bytes]) -> list[bytes]:
    """SORT key [BY p] [LIMIT o c] [GET p ...] [ASC|DESC] [ALPHA] [STORE dst]: dst only.

    Its key specs mark STORE as "unknown" (the keyword may be anywhere), so walk the options
    the way SORT reads them, skipping option arguments that could read "STORE".
    """
    i, argc = 2, len(argv)
    dest: list[bytes] = []
    while i < argc:
        option = argv[i].lower()
        if option == b"limit":
            i += 3
        elif option in (b"by", b"get"):
            i += 2
        elif option == b"store" and i + 1 < argc:
            dest = [argv[i + 1]]
            i += 2
        else:
            i += 1
    return dest


_CUSTOM_BY_NAME: dict[bytes, KeyFunc] = {b"sort": _sort_keys}


def apply(extractor: Extractor, argv: Sequence[bytes]) -> list[bytes]:
    """The keys `extractor` finds in argv (the general, slower path)."""
    if isinstance(extractor, Special):
        return []
    if isinstance(extractor, int):
        return [argv[extractor]] if extractor and extractor < len(argv) else []
    if isinstance(extractor, slice):
        return list(argv[extractor])
    return extractor(argv)


@dataclass(slots=True)
class _Command:
    """One compiled command: its extractor, plus the partial one when incomplete."""

    extractor: Extractor
    partial: Extractor = 0


def _compile_entry(entry: Sequence[Any]) -> _Command:
    """Compile one COMMAND entry (with its subcommands, if a container)."""
    name = bytes(entry[0]).lower()
    if name in _SPECIAL_BY_NAME:
        return _Command(_SPECIAL_BY_NAME[name])
    if name in _CUSTOM_BY_NAME:
        return _Command(_CUSTOM_BY_NAME[name])
    subcommands = entry[9] if len(entry) > 9 and entry[9] else []
    if subcommands:
        subs = {
            bytes(sub[0]).lower().partition(b"|")[2]: _compile_entry(sub) for sub in subcommands
        }
        return _container(subs)
    if len(entry) > 8:
        return _from_key_specs(entry[8])
    return _from_legacy(entry)


def _from_key_specs(raw_specs: Sequence[Any]) -> _Command:
    specs: list[_Spec] = []
    complete = True
    for raw in raw_specs:
        spec, spec_complete = _compile_spec(raw)
        complete = complete and spec_complete
        if spec is not None:
            specs.append(spec)
    if complete:
        return _Command(_combine(specs))
    return _Command(Special.INCOMPLETE, _combine(specs))


def _from_legacy(entry: Sequence[Any]) -> _Command:
    """Redis before 7 (no key specs): first key, last key, step."""
    first, last, step = int(entry[3]), int(entry[4]), int(entry[5])
    flags = set(entry[2])
    if first <= 0:
        extractor: Extractor = 0
    elif last == first:
        extractor = first
    else:
        extractor = slice(first, None if last == -1 else last + 1, max(step, 1))
    if b"movablekeys" in flags:
        return _Command(Special.INCOMPLETE, extractor)
    return _Command(extractor)


def _container(subs: dict[bytes, _Command]) -> _Command:
    """A command with subcommands (OBJECT, XGROUP...): dispatch on argv[1]."""
    incomplete = any(sub.extractor is Special.INCOMPLETE for sub in subs.values())

    def keys(argv: Sequence[bytes]) -> list[bytes]:
        if len(argv) < 2:
            return []
        sub = subs.get(argv[1].lower())
        if sub is None:
            return []
        if sub.extractor is Special.INCOMPLETE:
            return apply(sub.partial, argv)
        return apply(sub.extractor, argv)

    if incomplete:
        return _Command(Special.INCOMPLETE, keys)
    return _Command(keys)


@dataclass(slots=True)
class KeyTable:
    """Command name -> extractor, compiled from one ``COMMAND`` reply.

    ``fast`` is keyed by the exact bytes seen on the wire (``b"SET"``, ``b"set"``): the hot
    path does one dict lookup, and :meth:`resolve` fills it for new spellings.
    """

    commands: dict[bytes, _Command]
    fast: dict[bytes, Extractor] = field(default_factory=dict)

    @classmethod
    def from_command_reply(cls, reply: Sequence[Any]) -> KeyTable:
        """Compile the reply of ``COMMAND`` (RESP2, as hiredis parses it)."""
        commands = {bytes(entry[0]).lower(): _compile_entry(entry) for entry in reply}
        table = cls(commands)
        for name, command in commands.items():
            table.fast[name] = command.extractor
            table.fast[name.upper()] = command.extractor
        return table

    def resolve(self, name: bytes) -> Extractor:
        """The extractor for a command name in any case (slow path; memoised)."""
        command = self.commands.get(name.lower())
        extractor = Special.UNKNOWN if command is None else command.extractor
        if len(self.fast) < _MAX_FAST_ENTRIES:
            self.fast[name] = extractor
        return extractor

    def partial(self, name: bytes) -> Extractor:
        """For an INCOMPLETE command, what its complete specs still find."""
        command = self.commands.get(name.lower())
        return 0 if command is None else command.partial

    def written_keys(self, argv: Sequence[bytes]) -> list[bytes]:
        """The keys `argv` writes in the db it runs in (specials give their same-db keys).

        The general path, for tests and tools; the stream parser inlines the common cases.
        """
        extractor = self.fast.get(argv[0])
        if extractor is None:
            extractor = self.resolve(argv[0])
        if extractor is Special.INCOMPLETE:
            return apply(self.partial(argv[0]), argv)
        if extractor is Special.MOVE:
            return [argv[1]]
        if extractor is Special.COPY:
            return [argv[2]] if copy_target_db(argv) is None else []
        return apply(extractor, argv)


def parse_db(arg: bytes) -> int:
    """A db index argument (SELECT, MOVE, SWAPDB, COPY ... DB n)."""
    return int(arg)


def copy_target_db(argv: Sequence[bytes]) -> int | None:
    """The ``DB n`` option of ``COPY src dst [DB n] [REPLACE]``, or None (same db)."""
    i = 3
    while i < len(argv):
        if argv[i].lower() == b"db" and i + 1 < len(argv):
            return parse_db(argv[i + 1])
        i += 1
    return None


def is_getack(argv: Sequence[bytes]) -> bool:
    """``REPLCONF GETACK *``: the master asks for our acknowledged offset now."""
    return len(argv) >= 2 and argv[1].lower() == b"getack"
