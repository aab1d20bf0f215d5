"""The values a method runs with, and where each comes from — one order for every run:

1. ``default``: the option's default in the dataclass of its section (what ``--help`` lists);
2. ``method``: the fields a method fixes (an ATWU variant's scorer objective, e.g. ``atwu_logfit``'s
   ``lambda_fit = 1``); for that method they win over everything (run ``atwu`` to set them freely);
3. ``tuned``: the values tuned for the method on this benchmark (``--tuned``, shipped with the benchmark);
4. ``user``: the ``--config`` file and the command line (win over tuned values).

:func:`resolve` applies the layers and records the source of every value that is not its default;
``config.yaml`` of each method and ``--print-config`` show the result (:func:`annotated_yaml`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import yaml

from ..config import merge
from ..config.options import dotted_to_nested
from ..methods import get_method

LAYERS = ("default", "method", "tuned", "user")


@dataclass
class Resolved:
    cfg: object  # the experiment config the method's run reads (tuned values merged)
    tuned: dict  # the tuned values applied (dotted key -> value)
    values: dict  # nested: every option as the method runs it (its fixed fields applied)
    sources: dict  # dotted key -> layer, for every value that is not its default


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def resolve(cfg, suite, name: str, explicit: frozenset[str] = frozenset()) -> Resolved:
    """The layers above for method ``name`` on ``suite``; ``explicit``: the dotted keys the user set."""
    tuned = {}
    if cfg.tuned:
        tuned = {k: v for k, v in suite.tuned().get(name, {}).items() if k not in explicit}
    run_cfg = merge(cfg, dotted_to_nested(tuned), where=f"tuned values of {name}") if tuned else cfg
    fixed = {f"{section}.{key}": value for section, values in get_method(name).fixed_values().items()
             for key, value in values.items()}
    values = flatten(dataclasses.asdict(run_cfg))
    values.update({k: v for k, v in fixed.items() if k in values})
    defaults = flatten(dataclasses.asdict(type(cfg)()))
    sources = {}
    for key, value in values.items():
        if key in fixed:
            sources[key] = "method"
        elif key in tuned:
            sources[key] = "tuned"
        elif key in explicit or value != defaults.get(key):
            sources[key] = "user"
    return Resolved(run_cfg, tuned, dotted_to_nested(values), sources)


SOURCE_TEXT = {"method": "fixed by the method", "tuned": "tuned for it on this benchmark", "user": "yours"}


def help_values(cfg, explicit: set[str]) -> tuple[str, dict]:
    """What ``--help`` shows beside each option's default: the value the first method of this command
    runs with on its benchmark, and its layer (``python -m atwu_fast.unlearn --method wga --benchmark
    tofu_tiny --help``)."""
    from ..suites import make_suite

    name = cfg.method_list()[0]
    resolved = resolve(cfg, make_suite(cfg), name, frozenset(explicit))
    values = flatten(resolved.values)
    label = "tofu_tiny" if cfg.benchmark.model == "tiny" else cfg.benchmark.name
    shown = {key: (values[key], SOURCE_TEXT[source]) for key, source in resolved.sources.items()}
    return (f"Values shown for method {name} on benchmark {label} (--method/--benchmark choose; 'runs with' marks a "
            f"value other than the option's default: {len(shown)} here).", shown)


def annotated_yaml(resolved: Resolved, title: str = "") -> str:
    """The values as YAML (loadable with ``--config``), each value not at its default followed by a
    comment naming its layer."""
    lines = [f"# {title}"] if title else []
    lines.append("# a value without a comment is its option's default; otherwise: # method (fixed by the method), "
                 "# tuned (for this method on this benchmark), # user (--config / command line)")

    def emit(data: dict, prefix: str, indent: str) -> None:
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                emit(value, name, indent + "  ")
                continue
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            text = text[:-4].rstrip() if text.endswith("\n...") or text.endswith(" ...") else text
            source = resolved.sources.get(name)
            lines.append(f"{indent}{key}: {text}" + (f"  # {source}" if source else ""))

    emit(resolved.values, "", "")
    return "\n".join(lines) + "\n"
