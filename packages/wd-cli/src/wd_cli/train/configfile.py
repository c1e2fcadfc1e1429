"""Config files (TOML or YAML) mapped strictly onto dataclasses, with `key.sub=value` overrides.

Every mistake is one `ConfigError` line naming the key path: `optim.lr: expected float, got 'abc'`. Floats must be
finite (TOML and `--set` accept `inf` and `nan`; no field means anything by them).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, override or field value that cannot run; the message is one line."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (.toml) or YAML (.yaml/.yml) file -> nested dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            values = yaml.safe_load(path.read_text()) or {}
        else:
            raise ConfigError(f"config file {path}: expected a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"config file {path} does not parse: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of sections")
    return values


def parse_scalar(text: str) -> Any:
    """A value as TOML reads it (`1e-4`, `true`, `[1, 2]`, `"x"`); anything else is the bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings to nested `values` in place (a number indexes a list); returns it."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r}: expected key.sub=value")
        *parents, last = key.strip().split(".")
        node: Any = values
        for part in parents:
            if isinstance(node, list):
                node = _list_item(node, part, key)
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise ConfigError(f"override {key}: {part} is not a section")
        value = parse_scalar(text.strip())
        if isinstance(node, list):
            node[_list_index(node, last, key)] = value
        else:
            node[last] = value
    return values


def _list_index(items: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"override {key}: {part!r} is not an index of a list of {len(items)}")
    return int(part)


def _list_item(items: list, part: str, key: str) -> Any:
    return items[_list_index(items, part, key)]


def from_dict(cls: type[T], values: Any, path: str = "") -> T:
    """Build dataclass `cls` from nested `values`, checking every key and type (bool is not an int; an
    int is a fine float; lists become tuples where the field is a tuple)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'}: expected a table, got {values!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key = _join(path, name)
        if name in values:
            kwargs[name] = _convert(hints[name], values[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path or 'config'}: {error}") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _convert(option, value, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item_types = [args[0]] * len(value) if origin is list or args[-1] is Ellipsis else list(args)
        items = [_convert(item, element, f"{key}.{index}") for index, (item, element)
                 in enumerate(zip(item_types, value, strict=True))]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if origin is not None:  # another generic (e.g. Sequence[str]): check the container type only
        hint = origin
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (isinstance(value, bool) and hint is not bool):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return value


def to_plain(config: Any) -> Any:
    """A dataclass -> nested dicts/lists of plain values (tuples as lists), what a config file holds."""
    if dataclasses.is_dataclass(config):
        return {field.name: to_plain(getattr(config, field.name)) for field in dataclasses.fields(config)}
    if isinstance(config, list | tuple):
        return [to_plain(item) for item in config]
    if isinstance(config, dict):
        return {key: to_plain(value) for key, value in config.items()}
    return config


def dump_yaml(config: Any) -> str:
    """The YAML text of a config dataclass (YAML rather than TOML: it keeps None, and stdlib has no TOML writer)."""
    return yaml.safe_dump(to_plain(config), sort_keys=False)


def load_config(cls: type[T], path: str | Path, overrides: list[str] = ()) -> T:
    """Read `path`, apply `overrides` (`key.sub=value`) and map the result onto `cls`."""
    return from_dict(cls, apply_overrides(read_config_file(path), list(overrides)))
