"""The generic TOML -> frozen dataclass loader: every bad input is named precisely."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from reconciler.configfile import (
    ConfigError,
    Secret,
    check_fields,
    from_mapping,
    load_file,
    setting,
)


@dataclass(frozen=True)
class Server:
    name: str = setting(min_len=1)
    port: int = setting(6379, ge=1, le=65535)
    password: Secret | None = None

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Tuning:
    threshold: float = setting(0.5, gt=0, le=1)
    window_s: float = setting(10.0, gt=0)
    enabled: bool = True
    mode: Literal["fast", "safe"] = "safe"
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self)
        if self.mode == "fast" and self.window_s > 60:
            raise ConfigError("'window_s' must be at most 60 in fast mode")


@dataclass(frozen=True)
class Root:
    servers: tuple[Server, ...] = setting(min_len=1)
    tuning: Tuning = field(default_factory=Tuning)
    label: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)


def write(tmp_path: Path, text: str, name: str = "app.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_complete_file_loads_into_frozen_typed_dataclasses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        label = "x"
        [[servers]]
        name = "a"
        port = 7000
        [[servers]]
        name = "b"
        [tuning]
        threshold = 1          # an integer is a valid number
        mode = "fast"
        names = ["GET", "SET"]
        """,
    )
    root = load_file(Root, path)
    assert root.servers == (Server("a", 7000), Server("b", 6379))
    assert root.tuning == Tuning(threshold=1.0, mode="fast", names=("GET", "SET"))
    assert isinstance(root.tuning.threshold, float)
    assert root.label == "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        root.label = "y"  # type: ignore[misc]


def test_absent_tables_and_keys_take_their_defaults(tmp_path: Path) -> None:
    root = load_file(Root, write(tmp_path, '[[servers]]\nname = "a"\n'))
    assert root.tuning == Tuning()
    assert root.label is None


def test_an_unknown_key_is_rejected_naming_file_table_key_and_a_suggestion(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[[servers]]\nname = "a"\n[tuning]\ntreshold = 0.3\n', "client.toml")
    with pytest.raises(ConfigError) as info:
        load_file(Root, path)
    assert str(info.value) == (
        "client.toml: [tuning] unknown key 'treshold' (did you mean 'threshold'?)"
    )


def test_an_unknown_top_level_key_and_an_unknown_key_in_an_array_of_tables() -> None:
    with pytest.raises(ConfigError, match=r"^c.toml: unknown key 'colour'$"):
        from_mapping(Root, {"servers": [{"name": "a"}], "colour": 1}, source="c.toml")
    with pytest.raises(ConfigError, match=r"^c.toml: \[servers\[1\]\] unknown key 'host'"):
        from_mapping(Root, {"servers": [{"name": "a"}, {"host": "b"}]}, source="c.toml")


def test_a_missing_required_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^c.toml: missing required key 'servers'$"):
        from_mapping(Root, {}, source="c.toml")
    with pytest.raises(ConfigError, match=r"\[servers\[0\]\] missing required key 'name'"):
        from_mapping(Root, {"servers": [{"port": 1}]}, source="c.toml")


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        ({"threshold": "high"}, "'threshold' = 'high': expected a number"),
        ({"threshold": True}, "'threshold' = True: expected a number"),
        ({"enabled": "yes"}, "'enabled' = 'yes': expected true or false"),
        ({"mode": "turbo"}, "'mode' = 'turbo': expected one of 'fast', 'safe'"),
        ({"names": "GET"}, "'names' = 'GET': expected an array of strings"),
        ({"names": ["GET", 3]}, "'names[1]' = 3: expected a string"),
        ({"threshold": 0}, "'threshold' = 0.0: expected > 0 and <= 1"),
        ({"threshold": 1.5}, "'threshold' = 1.5: expected > 0 and <= 1"),
        ({"window_s": -1}, "'window_s' = -1.0: expected > 0"),
    ],
)
def test_a_bad_value_is_rejected_naming_the_key_and_what_was_expected(
    tuning: dict[str, object], message: str
) -> None:
    data = {"servers": [{"name": "a"}], "tuning": tuning}
    with pytest.raises(ConfigError) as info:
        from_mapping(Root, data, source="c.toml")
    assert str(info.value) == f"c.toml: [tuning] {message}"


def test_a_table_where_a_value_belongs_and_an_integer_out_of_range() -> None:
    with pytest.raises(ConfigError, match=r"^c.toml: 'tuning' = 3: expected a table$"):
        from_mapping(Root, {"servers": [{"name": "a"}], "tuning": 3}, source="c.toml")
    with pytest.raises(ConfigError, match=r"\[servers\[0\]\] 'port' = 0: expected >= 1"):
        from_mapping(Root, {"servers": [{"name": "a", "port": 0}]}, source="c.toml")


def test_cross_field_rules_raised_in_post_init_are_located_in_the_file() -> None:
    data = {"servers": [{"name": "a"}], "tuning": {"mode": "fast", "window_s": 120}}
    with pytest.raises(ConfigError, match=r"^c.toml: \[tuning\] 'window_s' must be at most 60"):
        from_mapping(Root, data, source="c.toml")


def test_the_same_rules_hold_for_a_config_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"'threshold' = 2: expected > 0 and <= 1"):
        Tuning(threshold=2)
    with pytest.raises(ConfigError, match=r"'servers' = \(\): expected at least 1 long"):
        Root(servers=())


def test_a_secret_comes_from_the_environment_and_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_REDIS_PASSWORD", "hunter2")
    server = from_mapping(Server, {"name": "a", "password_env": "APP_REDIS_PASSWORD"})
    assert server.password is not None
    assert server.password.reveal() == "hunter2"
    for shown in (repr(server), str(server), repr(server.password), f"{server.password}"):
        assert "hunter2" not in shown
    assert "********" in repr(server)


def test_a_secret_comes_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    server = from_mapping(Server, {"name": "a", "password_file": str(secret_file)})
    assert server.password == Secret("s3cret")


def test_secret_errors_name_the_key_and_variable_but_never_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match=r"'password_env': environment variable NOPE_PASSWORD"):
        from_mapping(Server, {"name": "a", "password_env": "NOPE_PASSWORD"}, source="c.toml")
    with pytest.raises(ConfigError, match=r"'password_file': cannot read .*missing"):
        from_mapping(Server, {"name": "a", "password_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"either 'password_env' or 'password_file'"):
        from_mapping(Server, {"name": "a", "password_env": "X", "password_file": "y"})
    with pytest.raises(ConfigError) as inline:
        from_mapping(Server, {"name": "a", "password": "hunter2"}, source="c.toml")
    assert "must not be written in the file" in str(inline.value)
    assert "hunter2" not in str(inline.value)


def test_unreadable_and_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_file(Root, tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(Root, write(tmp_path, "[servers\nname = 1"))


def test_config_errors_are_not_retriable_reconciler_errors() -> None:
    from replication.errors import ReconcilerError

    assert issubclass(ConfigError, ReconcilerError)
    assert ConfigError.retriable is False
