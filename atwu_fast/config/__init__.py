"""Typed options: every option is a field of a dataclass (its default and help text live there),
loaded from YAML and ``--section.field`` flags with one-line errors (:mod:`.options`, :mod:`.args`)."""

from .options import ConfigError, check, from_dict, merge, option

__all__ = ["ConfigError", "check", "from_dict", "merge", "option"]
