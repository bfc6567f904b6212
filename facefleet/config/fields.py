"""Declaring a setting once: its default, its help text and its checks, in the dataclass field.

A setting is a field of a frozen config dataclass made with :func:`setting`. Its help text lives in
the field's ``metadata["help"]`` rather than in an attribute docstring: metadata is there at run time
without the source file (wheels compiled to ``.pyc``, zip apps) and costs nothing to read, whereas
attribute docstrings need ``inspect.getsource`` and an ``ast`` parse of the module whenever a parser
is built (``facefleet --help`` would parse source). The same text serves as the field's
documentation, the CLI flag's ``--help`` and the error messages.

:func:`check_value` validates one value of one field (type from the annotation, choices, bounds,
a custom check) and names the key in its :class:`ConfigError`; :func:`check_fields` runs it over every
field of a dataclass instance (called from each section's ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any


class ConfigError(ValueError):
    """An unknown key or an invalid value; the message names the key (``run.unit_size``) and, where
    the value came from a file or a flag, that too."""


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    cli: bool = True,
) -> Any:
    """A config field: ``default``, its ``help`` text (docs, ``--help``), allowed ``choices``,
    inclusive bounds, a ``check`` returning an error text or None, and whether it gets a CLI flag."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "minimum": minimum,
            "maximum": maximum, "check": check, "cli": cli}  # fmt: skip
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class FieldType:
    """What a field's annotation allows: ``base`` (int, float, str, bool), ``optional`` (None
    allowed) and ``sequence`` (a tuple of ``base``)."""

    base: type
    optional: bool = False
    sequence: bool = False


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> FieldType:
    """The :class:`FieldType` of field ``name`` of config class ``cls`` (from its annotation)."""
    tp = _hints(cls)[name]
    optional = False
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{cls.__name__}.{name}: unsupported annotation {tp!r}")
        tp = rest[0]
    if typing.get_origin(tp) is tuple and len(typing.get_args(tp)) == 2 and typing.get_args(tp)[1] is ...:
        return FieldType(typing.get_args(tp)[0], optional, sequence=True)
    if tp in (int, float, str, bool):
        return FieldType(tp, optional)
    return FieldType(object, optional)  # nested config or another value: checked by its own class


def config_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The settings of config class ``cls`` (fields made with :func:`setting`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _type_error(ft: FieldType, value: Any) -> str | None:
    def ok(v: Any) -> bool:
        if ft.base is bool:
            return isinstance(v, bool)
        if ft.base is int:
            return isinstance(v, int) and not isinstance(v, bool)
        if ft.base is float:
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        return ft.base is object or isinstance(v, ft.base)

    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if value is None:
        return None if ft.optional else f"must be {names.get(ft.base, 'set')}, got None"
    if ft.sequence:
        if not isinstance(value, (tuple, list)) or not all(ok(v) for v in value):
            return f"must be a list of {names.get(ft.base, 'values')}s, got {value!r}"
        return None
    return None if ok(value) else f"must be {names.get(ft.base, 'valid')}, got {value!r}"


def check_value(cls: type, name: str, value: Any, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` suits field ``name`` of ``cls``."""
    f = next((f for f in config_fields(cls) if f.name == name), None)
    if f is None:
        raise ConfigError(f"unknown setting {key}")
    err = _type_error(field_type(cls, name), value)
    if err is None and value is not None:
        m = f.metadata
        items = value if field_type(cls, name).sequence else (value,)
        for v in items:
            if m["choices"] is not None and v not in m["choices"]:
                err = f"must be one of {', '.join(map(str, m['choices']))}, got {v!r}"
            elif m["minimum"] is not None and v < m["minimum"]:
                err = f"must be >= {m['minimum']:g}, got {v!r}"
            elif m["maximum"] is not None and v > m["maximum"]:
                err = f"must be <= {m['maximum']:g}, got {v!r}"
            elif m["check"] is not None:
                err = m["check"](v)
            if err:
                break
    if err:
        raise ConfigError(f"{key} {err}")


def check_fields(obj: Any, section: str) -> None:
    """Check every setting of config instance ``obj``; keys are named ``section.field``."""
    for f in config_fields(type(obj)):
        check_value(type(obj), f.name, getattr(obj, f.name), f"{section}.{f.name}" if section else f.name)
