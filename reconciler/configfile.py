"""Typed configuration from TOML: frozen dataclasses, built and validated once at start.

Every configuration in this project (the failover client's, the daemon's) is a tree of
frozen dataclasses loaded from a TOML file with this module. The rules, so that every config
file behaves the same for an operator:

* A TOML table maps to a dataclass, an array of tables to a ``tuple`` of dataclasses, and a
  key to the field of the same name. Names carry their unit (``window_s``, ``max_bytes``).
* Unknown keys are rejected, naming the file, the table and the key (with a suggestion when
  it looks like a typo): ``client.toml: [policy] unknown key 'treshold' (did you mean
  'threshold'?)``. Missing required keys and values of the wrong type or out of range are
  rejected the same way, saying what was expected.
* Secrets are never written inline. A field typed :class:`Secret` named ``password`` is
  read from ``password_env`` (the name of an environment variable) or ``password_file`` (a
  file holding the secret); ``password = "..."`` in the file is an error. A ``Secret``
  never shows its value in ``repr`` or ``str``, so printing a config or logging it is safe.
* Numbers are finite (no ``inf``/``nan``) and integers fit in 64 bits; strings hold no
  control characters. A message never shows a secret: a password inside a URL is masked
  wherever it would appear (:func:`mask_secrets`).
* Range constraints live next to the field (:func:`setting`) and are checked by
  :func:`check_fields`, which each dataclass calls from ``__post_init__``, so a config
  built in code (tests, benchmarks) is validated exactly like one read from a file.
  Cross-field rules go in the same ``__post_init__`` and raise :class:`ConfigError`.

Supported field types: ``str``, ``int``, ``float`` (an integer is accepted), ``bool``,
``Literal[...]`` of strings, ``tuple[X, ...]`` of any supported ``X``, nested dataclasses,
``Secret``, and ``X | None`` of any of these (``None`` is what an absent key gives when it is
the default: TOML has no null).

Standard library only, so that light modules (``reconciler.client``) can use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hmac
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from replication.errors import ReconcilerError

T = TypeVar("T")

_CHECK = "reconciler.configfile.check"
_MASK = "********"
_INT64 = (-(1 << 63), (1 << 63) - 1)
# user:password@ in a URL, and password=... in a query string or option list.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<tail>@)")
_PASSWORD_PARAM = re.compile(r"(?P<head>(?:password|passwd|pwd|token)=)[^&\s'\"]*", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """`text` with any password written in a URL (``redis://u:pw@h``) or as a
    ``password=`` parameter replaced by a mask, for messages and logs."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{_MASK}{m['tail']}", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['head']}{_MASK}", text)


class ConfigError(ReconcilerError):
    """A configuration that cannot be used. The message names the file, table and key.

    `problem` is the message without the file and table, for callers that add their own
    location; `located` tells whether the location is already in the message.
    """

    retriable = False

    def __init__(self, problem: str, *, located: bool = False) -> None:
        # Every message passes through here, so no caller can echo a secret by mistake.
        problem = mask_secrets(problem)
        super().__init__(problem)
        self.problem = problem
        self.located = located


class Secret:
    """A secret string (a password). Its ``repr`` and ``str`` never show the value.

    Call :meth:`reveal` at the one place the value is needed (handing it to a driver).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself. Never log or print what this returns."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time, as befits a secret, even though nothing here is an auth check.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


@dataclasses.dataclass(frozen=True)
class _Check:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    min_len: int | None = None

    def describe(self) -> str:
        parts = []
        for op, bound in (("> ", self.gt), (">= ", self.ge), ("< ", self.lt), ("<= ", self.le)):
            if bound is not None:
                parts.append(f"{op}{bound:g}")
        if self.min_len is not None:
            parts.append(f"at least {self.min_len} long")
        return " and ".join(parts)

    def passes(self, value: object) -> bool:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isnan(number):
                return False
            if self.gt is not None and not number > self.gt:
                return False
            if self.ge is not None and not number >= self.ge:
                return False
            if self.lt is not None and not number < self.lt:
                return False
            if self.le is not None and not number <= self.le:
                return False
        if self.min_len is not None and isinstance(value, str | tuple):
            return len(value) >= self.min_len
        return True


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    min_len: int | None = None,
    repr: bool = True,  # mirrors dataclasses.field's own parameter name
) -> Any:
    """A dataclass field with range constraints, checked by :func:`check_fields`.

    ``window_s: float = setting(10.0, gt=0)``; ``min_len`` applies to strings and tuples.
    """
    check = _Check(gt=gt, ge=ge, lt=lt, le=le, min_len=min_len)
    metadata = {_CHECK: check}
    if default_factory is not dataclasses.MISSING:
        field: Any = dataclasses.field(
            default_factory=default_factory, metadata=metadata, repr=repr
        )
        return field
    return dataclasses.field(default=default, metadata=metadata, repr=repr)


def check_fields(instance: object) -> None:
    """Check every :func:`setting` constraint of a dataclass instance.

    Call it first thing in ``__post_init__``. Raises :class:`ConfigError` naming the key
    and what was expected.
    """
    for field in dataclasses.fields(instance):  # type: ignore[arg-type]
        value = getattr(instance, field.name)
        problem = _value_problem(value)
        if problem:
            raise ConfigError(f"'{field.name}' = {value!r}: {problem}")
        check = field.metadata.get(_CHECK)
        if check is None or value is None:
            continue
        if not check.passes(value):
            shown = "<secret>" if isinstance(value, Secret) else repr(value)
            raise ConfigError(f"'{field.name}' = {shown}: expected {check.describe()}")


def _value_problem(value: object) -> str:
    """What is wrong with a value whatever its field ("" if nothing): every number finite
    and within 64 bits, every string free of control characters (recursively in tuples)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "expected a finite number"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and not _INT64[0] <= value <= _INT64[1]:  # type: ignore[operator]
        return "expected an integer that fits in 64 bits"
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters (a newline, a tab, NUL)"
    if isinstance(value, tuple):
        for item in value:
            problem = _value_problem(item)
            if problem:
                return problem
    return ""


def load_file(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read a TOML file into the frozen dataclass `cls`, validating everything.

    Raises :class:`ConfigError` for an unreadable file, invalid TOML, unknown or missing
    keys, wrong types, out-of-range values and unresolvable secrets.
    """
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}", located=True) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: config file is not UTF-8: {exc}", located=True) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}", located=True) from exc
    return from_mapping(cls, data, source=file.name)


def from_mapping(
    cls: type[T], data: Mapping[str, Any], *, source: str = "<config>", table: str = ""
) -> T:
    """Build the dataclass `cls` from parsed TOML (`data`), validating as :func:`load_file`.

    `source` (the file name) and `table` (the TOML path of `data`) only appear in messages.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    where = _where(source, table)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    secret_names = {name for name in fields if _is_secret(hints[name])}
    accepted = set(fields) - secret_names
    for name in secret_names:
        accepted |= {f"{name}_env", f"{name}_file"}

    for key in data:
        if key in secret_names:
            raise ConfigError(
                f"{where}'{key}' must not be written in the file: "
                f"set '{key}_env' (an environment variable name) or '{key}_file'",
                located=True,
            )
        if key not in accepted:
            hint = _suggest(key, accepted)
            suggestion = f" (did you mean '{hint}'?)" if hint else ""
            raise ConfigError(f"{where}unknown key '{key}'{suggestion}", located=True)

    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        hint = hints[name]
        if name in secret_names:
            secret = _read_secret(name, data, where)
            if secret is not None:
                kwargs[name] = secret
            elif _required(field):
                raise ConfigError(
                    f"{where}missing required secret: set '{name}_env' or '{name}_file'",
                    located=True,
                )
            continue
        if name not in data:
            if _required(field):
                raise ConfigError(f"{where}missing required key '{name}'", located=True)
            continue
        child_table = f"{table}.{name}" if table else name
        kwargs[name] = _convert(hint, data[name], name, where, source=source, table=child_table)

    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.located:
            raise
        raise ConfigError(f"{where}{exc.problem}", located=True) from exc


def _suggest(key: str, accepted: set[str]) -> str | None:
    """The accepted key `key` was probably meant to be, matching whole names and their
    tails too (``treshold`` -> ``error_rate_threshold``)."""
    aliases: dict[str, str] = {}
    for name in sorted(accepted):
        parts = name.split("_")
        for start in range(len(parts)):
            aliases.setdefault("_".join(parts[start:]), name)
    match = difflib.get_close_matches(key, list(aliases), n=1, cutoff=0.75)
    return aliases[match[0]] if match else None


def _where(source: str, table: str) -> str:
    return f"{source}: [{table}] " if table else f"{source}: "


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _is_secret(hint: Any) -> bool:
    return hint is Secret or (_is_optional(hint) and _strip_optional(hint) is Secret)


def _is_optional(hint: Any) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint)


def _strip_optional(hint: Any) -> Any:
    if not _is_optional(hint):
        return hint
    rest = [arg for arg in get_args(hint) if arg is not type(None)]
    if len(rest) != 1:
        raise TypeError(f"unsupported config type {hint!r}: one type or None")
    return rest[0]


def _read_secret(name: str, data: Mapping[str, Any], where: str) -> Secret | None:
    env_key, file_key = f"{name}_env", f"{name}_file"
    if env_key in data and file_key in data:
        raise ConfigError(f"{where}set either '{env_key}' or '{file_key}', not both", located=True)
    if env_key in data:
        variable = data[env_key]
        if not isinstance(variable, str) or not variable:
            raise ConfigError(
                f"{where}'{env_key}': expected the name of an environment variable", located=True
            )
        value = os.environ.get(variable)
        if value is None:
            raise ConfigError(
                f"{where}'{env_key}': environment variable {variable} is not set", located=True
            )
        return Secret(value)
    if file_key in data:
        path = data[file_key]
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}'{file_key}': expected a file path", located=True)
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{where}'{file_key}': cannot read {path}: {exc.strerror}", located=True
            ) from exc
        # Editors and `echo` add a final newline that is never part of the secret.
        return Secret(raw.rstrip("\r\n"))
    return None


def _describe(hint: Any) -> str:
    hint = _strip_optional(hint)
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(hint))
    if get_origin(hint) is tuple:
        return f"an array of {_plural(get_args(hint)[0])}"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return repr(hint)


def _plural(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "tables"
    return _describe(hint).removeprefix("a ").removeprefix("an ") + "s"


def _convert(hint: Any, value: Any, key: str, where: str, *, source: str, table: str) -> Any:
    hint = _strip_optional(hint)

    def bad(expected: str = "") -> ConfigError:
        shown = repr(value) if not isinstance(value, dict) else "a table"
        expected = expected or _describe(hint)
        return ConfigError(f"{where}'{key}' = {shown}: expected {expected}", located=True)

    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad()
        if not _INT64[0] <= value <= _INT64[1]:
            raise bad("an integer that fits in 64 bits")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise bad()
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if get_origin(hint) is Literal:
        if value not in get_args(hint) or not isinstance(value, str):
            raise bad()
        return value
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported config type {hint!r}: use tuple[X, ...]")
        if not isinstance(value, list):
            raise bad()
        return tuple(
            _convert(args[0], item, f"{key}[{i}]", where, source=source, table=f"{table}[{i}]")
            for i, item in enumerate(value)
        )
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise bad()
        return from_mapping(hint, value, source=source, table=table)
    raise TypeError(f"unsupported config type {hint!r} for key {key!r}")
