"""Typed nested dataclass configs: dict/YAML loading, dotted overrides, argparse generation.

Every option of the engine is a field of a dataclass; defaults live only there. A config is
built from defaults, then a YAML file, then ``--section.field value`` command-line overrides.
Unknown keys and badly typed values raise :class:`ConfigError` with a one-line message
(with a close-match suggestion for typos).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A user-caused configuration problem; the message is one line."""


def option(text: str, default=None, factory=None):
    """A dataclass field with help text (shown by ``--help``)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the annotated type ``tp``."""
    optional, inner = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    tp = inner
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        out = [coerce(v.strip() if isinstance(v, str) else v, item_tp, where) for v in value]
        return out if origin is list else tuple(out)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) nested dict."""
    return merge(cls(), data, where)


def merge(obj: Any, data: dict[str, Any], where: str = "config") -> Any:
    """Return a copy of dataclass ``obj`` with the nested dict ``data`` applied."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    ftypes = _field_types(type(obj))
    changes: dict[str, Any] = {}
    for key, value in data.items():
        key_n = str(key).replace("-", "_")
        if key_n not in ftypes:
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key_n, list(ftypes))}")
        tp = ftypes[key_n]
        current = getattr(obj, key_n)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key_n] = merge(current, value, f"{where}.{key_n}")
        else:
            changes[key_n] = coerce(value, tp, f"{where}.{key_n}")
    new = dataclasses.replace(obj, **changes)
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted name, type, default, help) for every leaf field of a nested dataclass."""
    out = []
    obj = cls()
    ftypes = _field_types(cls)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.extend(flat_fields(type(value), name + "."))
        else:
            out.append((name, ftypes[f.name], value, f.metadata.get("help", "")))
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def dotted_to_nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{'a.b': 1}`` → ``{'a': {'b': 1}}``: dotted overrides in the shape :func:`merge` takes."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    origin = get_origin(inner)
    if origin is Literal:
        name = "{" + ",".join(map(str, get_args(inner))) + "}"
    elif origin in (list, tuple):
        name = "LIST"
    else:
        name = getattr(inner, "__name__", str(inner)).upper()
    return name + ("|none" if optional else "")
