"""Building a :class:`JobConfig` in layers: defaults, then a TOML file, then CLI flags.

Each layer is a TOML-shaped mapping (``{"run": {"unit_size": 64}, "gpu": {"H100": {...}}}``) applied
over the config below it with :func:`apply_mapping`; its keys are checked against the dataclasses'
fields, so an unknown section or key, or a bad value, is a :class:`ConfigError` naming the key and
where it came from (the file, or ``--flag``).

Config file (every key optional)::

    devices = "auto"
    [model]
    family = "mediapipe478"
    refine = 1
    [run]
    unit_size = 128
    formats = ["json", "glb"]
    [gpu]                # every CUDA device
    batch_size = 64
    [gpu."H100"]         # devices whose name contains "H100" (case-insensitive)
    batch_size = 128
    [cpu]
    workers = 2
    [queue]
    url = "postgresql://host/db"
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facefleet.config.fields import ConfigError, check_value, config_fields
from facefleet.config.sections import SECTIONS, GpuConfig, GpuOverride, JobConfig


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw tables of a TOML file; ConfigError (naming the file) if missing or not TOML."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


def _section_values(
    section: str, table: Any, where: str, label: str | None = None
) -> tuple[dict[str, Any], list[GpuOverride]]:
    """The checked ``field: value`` pairs of one table (lists as tuples) and, for ``[gpu]``, its
    per-name tables."""
    cls = SECTIONS[section]
    label = label or section
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: [{label}] must be a table, got {table!r}")
    values: dict[str, Any] = {}
    overrides: list[GpuOverride] = []
    known = [f.name for f in config_fields(cls) if f.name != "by_name"]
    for key, value in table.items():
        if section == "gpu" and isinstance(value, Mapping):
            bad = [k for k in value if isinstance(value[k], Mapping)]
            if bad:
                raise ConfigError(f'{where}: gpu."{key}".{bad[0]} cannot be a table')
            sub, _ = _section_values("gpu", value, where, f'gpu."{key}"')
            overrides.append(_override(key, sub, where))
            continue
        if key not in known:
            raise ConfigError(f"{where}: unknown key {label}.{key}; expected one of {', '.join(known)}")
        v = tuple(value) if isinstance(value, list) else value
        try:
            check_value(cls, key, v, f"{label}.{key}")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        values[key] = v
    return values, overrides


def _override(match: str, values: dict[str, Any], where: str) -> GpuOverride:
    try:
        return GpuOverride(match, tuple(values.items()))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def apply_mapping(
    base: JobConfig, data: Mapping[str, Any], where: str, *, gpu_beats_tables: bool = False
) -> JobConfig:
    """``base`` with the settings of TOML-shaped ``data`` (from ``where``: a file name, or the flags)
    applied over it. ``gpu_beats_tables``: ``[gpu]`` values also replace what ``[gpu."NAME"]`` tables
    set (flags beat every table of a file; a file's own ``[gpu]`` does not)."""
    top = [f.name for f in config_fields(JobConfig)]
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            values, overrides = _section_values(key, value, where)
            sec = getattr(base, key)
            if key == "gpu":
                tables = sec.by_name
                if gpu_beats_tables and values:
                    tables = tuple(
                        GpuOverride(o.match, tuple((k, v) for k, v in o.values if k not in values))
                        for o in tables
                    )
                values["by_name"] = tables + tuple(overrides)
            changes[key] = _build(type(sec), sec, values, where)
        elif key in top:
            try:
                check_value(JobConfig, key, value, key)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            changes[key] = value
        else:
            expected = ", ".join([*top, *SECTIONS])
            what = "section" if isinstance(value, Mapping) else "key"
            raise ConfigError(f"{where}: unknown {what} {key!r}; expected {expected}")
    return _build(JobConfig, base, changes, where)


def _build(cls: type, base: Any, values: dict[str, Any], where: str) -> Any:
    try:
        return dataclasses.replace(base, **values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_file(path: str | os.PathLike[str], base: JobConfig | None = None) -> JobConfig:
    """A TOML config file over ``base`` (default: the defaults)."""
    return apply_mapping(base or JobConfig(), read_toml(path), str(path))


def from_mapping(data: Mapping[str, Any] | None, where: str = "config") -> JobConfig:
    """A :class:`JobConfig` from a TOML-shaped mapping over the defaults (the Python API's
    ``config={...}``)."""
    return apply_mapping(JobConfig(), data or {}, where)


def resolve(
    config: JobConfig | Mapping[str, Any] | str | os.PathLike[str] | None, base: JobConfig | None = None
) -> JobConfig:
    """Whatever a caller passes as a config (an object, a mapping, a file path, None) as a
    :class:`JobConfig`."""
    if isinstance(config, JobConfig):
        return config
    if config is None:
        return base or JobConfig()
    if isinstance(config, Mapping):
        return apply_mapping(base or JobConfig(), config, "config")
    return load_file(config, base)


# -- JSON: the one form in which settings cross a process or a file (worker specs, run.json) ----
def section_to_json(sec: Any) -> dict[str, Any]:
    """The settings of one section instance (``[model]``, ``[run]``, ...) as JSON values, tuples as
    lists (``[gpu."NAME"]`` tables are not part of it: a worker receives its resolved profile)."""
    return {
        f.name: list(v) if isinstance(v := getattr(sec, f.name), tuple) else v
        for f in config_fields(type(sec))
        if f.name != "by_name"
    }


def section_from_json(section: str, data: Any, where: str) -> Any:
    """The ``section`` instance (e.g. ``"run"`` -> :class:`RunConfig`) of :func:`section_to_json`'s
    output, every key and value checked as a TOML file's are; keys left out take their defaults.
    Raises :class:`ConfigError` naming ``where`` and the key."""
    values, overrides = _section_values(section, data, where)
    if overrides:
        raise ConfigError(f"{where}: [{section}] cannot hold tables here")
    cls = SECTIONS[section]
    return _build(cls, cls(), values, where)


# -- transitional: settings dicts, for callers that have not moved to JobConfig ------------------
def load_config(path: str | os.PathLike[str] | JobConfig | None) -> dict[str, Any]:
    """The raw tables of a config file, checked against the dataclasses (``None`` -> ``{}``; a
    :class:`JobConfig` -> its settings, unset ones left out). Transitional, for callers that take
    settings mappings: new code takes :func:`load_file`'s :class:`JobConfig`."""
    if path is None:
        return {}
    if isinstance(path, JobConfig):
        return _drop_unset(path.to_dict())
    data = read_toml(path)
    apply_mapping(JobConfig(), data, str(path))
    return data


def _drop_unset(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_unset(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def gpu_field_names() -> list[str]:
    """The ``[gpu]`` settings (for docs and tests)."""
    return [f.name for f in config_fields(GpuConfig) if f.name != "by_name"]
