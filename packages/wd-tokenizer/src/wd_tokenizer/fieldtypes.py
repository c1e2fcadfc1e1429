"""Type checks for config dataclasses read from JSON: every field must hold a value of its annotated type."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal


def check_field_types(config: Any, label: str | None = None) -> None:
    """ValueError naming the first field of dataclass instance `config` whose value is not of its annotated type
    (`label.field must be an integer, got '32'`). bool is not an int, an int is a fine float, floats must be
    finite; handles unions (`int | None`), `Literal[...]` and `list[...]`."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if not _has_type(value, hints[item.name]):
            raise ValueError(f"{label or type(config).__name__}.{item.name} must be {_type_name(hints[item.name])}, "
                             f"got {value!r}")


def _has_type(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple):
        if not isinstance(value, origin):
            return False
        items = args[:1] * len(value) if origin is list or args[-1] is Ellipsis else args
        return len(items) == len(value) and all(_has_type(item, hint) for item, hint in zip(value, items, strict=True))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))


def _type_name(hint: Any) -> str:
    names = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}
    return names.get(hint, str(hint).replace("typing.", ""))
