"""Command-line parsing shared by the entry points: typed ``--section.field`` flags generated from
the config dataclasses, a ``--config`` YAML file, and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .options import ConfigError, flat_fields, merge, set_dotted, type_name


def fail(message: str) -> NoReturn:
    """A user-caused error: one line on stderr, exit code 2, nothing written."""
    one_line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))
    print(f"error: {one_line}", file=sys.stderr)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own usage errors: one line, exit 2
        if message.startswith("unrecognized arguments:"):
            flags = [a for a in message.split(":", 1)[1].split() if a.startswith("--")]
            known = [s for action in self._actions for s in action.option_strings]
            for flag in flags:
                close = difflib.get_close_matches(flag.split("=")[0], known, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        fail(" ".join(message.split()))


def build_parser(config_cls: type, prog: str, description: str, shortcuts: dict[str, str],
                 shown: dict[str, tuple[Any, str]] | None = None) -> argparse.ArgumentParser:
    """``shortcuts`` maps a short flag (e.g. ``--method``) to the dotted config field it sets; ``shown``
    maps a dotted field to the value a run will use instead of its default and where it comes from."""
    shown = shown or {}
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="YAML", help="YAML file with any of the options below (nested by section)")
    sections: dict[str, argparse._ArgumentGroup] = {}
    hints = typing.get_type_hints(config_cls)
    for name, tp, default, help_text in flat_fields(config_cls):
        flag = "--" + name.replace("_", "-") if "." not in name else "--" + name
        section = name.split(".")[0] if "." in name else "general"
        if section not in sections:  # the section dataclass's docstring (first paragraph) describes its group
            doc = inspect.getdoc(hints.get(section)) if dataclasses.is_dataclass(hints.get(section)) else None
            summary = " ".join((doc or "").split("\n\n")[0].split())
            sections[section] = parser.add_argument_group(section, summary or None)
        group = sections[section]
        dest = "cfg__" + name.replace(".", "__")
        aliases = [flag]
        for short, target in shortcuts.items():
            if target == name:
                aliases.insert(0, short)
        if "_" in name and "." in name:
            aliases.append("--" + name.replace("_", "-"))
        flag_kw = {"nargs": "?", "const": "true"} if tp is bool else {}  # a bare --flag means true
        group.add_argument(*dict.fromkeys(aliases), dest=dest, metavar=type_name(tp), default=argparse.SUPPRESS,
                           help=f"{help_text} ({_shown(default, shown.get(name))})", **flag_kw)
    return parser


def _shown(default: Any, used: tuple[Any, str] | None) -> str:
    if used is None or used[0] == default:
        return f"default: {default!r}"
    return f"runs with {used[0]!r}: {used[1]}; default: {default!r}"


def dotted_keys(data: Any, prefix: str = "") -> set[str]:
    """The dotted leaf keys of a nested dict (``{"a": {"b": 1}}`` → ``{"a.b"}``)."""
    if not isinstance(data, dict) or not data:
        return {prefix} if prefix else set()
    return {k for key, value in data.items()
            for k in dotted_keys(value, f"{prefix}.{key}" if prefix else str(key).replace("-", "_"))}


def check_moved(keys, moved: dict[str, str]) -> None:
    """A one-line error naming the new place of an option that moved (``--benchmark.split`` -> ``--tofu.split``)."""
    for key in keys:
        old = key.lstrip("-").split("=")[0].replace("-", "_")
        if old in moved:
            fail(f"--{old} is now --{moved[old]}")


def parse_config(config_cls: type, argv: list[str] | None, prog: str, description: str,
                 shortcuts: dict[str, str], explicit: bool = False, moved: dict[str, str] | None = None,
                 help_values: Callable[[Any, set[str]], tuple[str, dict]] | None = None) -> Any:
    """The config from defaults, ``--config`` YAML and flags; with ``explicit`` also the set of dotted
    keys the user set (YAML or flags), so that tuned per-method values never override them. ``moved``:
    options that moved (old dotted key -> new), refused with their new name. ``help_values(cfg,
    explicit)``: for ``--help``, a heading and the values the other arguments make a run use (dotted key ->
    (value, where it comes from)), shown beside each option's default."""
    moved = moved or {}
    argv = sys.argv[1:] if argv is None else list(argv)
    check_moved([a for a in argv if a.startswith("--")], moved)
    shown: dict = {}
    if help_values is not None and any(a in ("-h", "--help") for a in argv):
        rest = [a for a in argv if a not in ("-h", "--help")]
        heading, shown = help_values(*parse_config(config_cls, rest, prog, description, shortcuts, True, moved))
        description = f"{description}\n\n{heading}"
    parser = build_parser(config_cls, prog, description, shortcuts, shown)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__"):
            set_dotted(overrides, key[5:].replace("__", "."), value)
    try:
        cfg = config_cls()
        data: dict = {}
        if args.config:
            path = Path(args.config)
            if not path.is_file():
                fail(f"config file not found: {path}")
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                fail(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}")
            check_moved(dotted_keys(data), moved)
            cfg = merge(cfg, data, where=str(path))
        cfg = merge(cfg, overrides, where="command line")
    except ConfigError as exc:
        fail(str(exc))
    if not explicit:
        return cfg
    return cfg, dotted_keys(data) | dotted_keys(overrides)
