"""CLI flags generated from the config dataclasses, and the config they build.

Every setting gets one flag: ``--FIELD`` for the top level and the ``[model]``, ``[run]`` sections
(``--refine``, ``--unit-size``), ``--SECTION-FIELD`` for the device sections (``--gpu-batch-size``,
``--cpu-workers``) and ``--queue`` for ``[queue] url``; ``[service]``'s are ``--FIELD`` too (``--port``,
``--data-dir``: only ``facefleet serve`` has them); booleans get ``--x`` / ``--no-x``. The help
text is the field's (:func:`facefleet.config.fields.setting`), the type its annotation's. Aliases
keep the short flags users know: ``--batch-size`` and ``--precision`` set both device sections,
``--workers`` is ``--cpu-workers``, ``--device`` is ``--devices``.

A flag's value is checked as it is parsed (``--batch-size 0`` exits 2 with "argument --batch-size:
gpu.batch_size must be >= 1, got 0"); unset flags are absent, so :func:`config_from_args` applies
defaults < ``--config FILE`` < flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from facefleet.config.fields import ConfigError, check_value, config_fields, field_type
from facefleet.config.loading import apply_mapping, load_file
from facefleet.config.sections import JOB_SECTIONS, SECTIONS, JobConfig

_DEST = "ff:"  # namespace attributes of config flags: "ff:" + comma-separated keys they set

#: short flags kept beside the generated ones: flag -> the keys it sets
ALIASES: dict[str, tuple[str, ...]] = {
    "--batch-size": ("gpu.batch_size", "cpu.batch_size"),
    "--precision": ("gpu.precision", "cpu.precision"),
    "--workers": ("cpu.workers",),
    "--device": ("devices",),
    # facefleet video's own short forms (its command has no photo --formats)
    "--formats": ("video.formats",),
    "--anonymize": ("video.anonymize",),
}


def flag_name(key: str) -> str:
    """The flag of a setting key: ``run.unit_size`` -> ``--unit-size``, ``gpu.batch_size`` ->
    ``--gpu-batch-size``, ``queue.url`` -> ``--queue``, ``devices`` -> ``--devices``."""
    section, _, name = key.rpartition(".")
    if key == "queue.url":
        return "--queue"
    prefix = f"{section}-" if section in ("gpu", "cpu", "queue", "video") else ""
    return "--" + (prefix + name).replace("_", "-")


def all_keys(sections: Iterable[str] = JOB_SECTIONS) -> list[str]:
    """Every setting of ``sections`` (default: a job's, not ``[service]``) that has a flag, as
    ``section.field``, with ``devices`` of the top level first."""
    keys = [f.name for f in config_fields(JobConfig)]
    for section in sections:
        keys += [f"{section}.{f.name}" for f in config_fields(SECTIONS[section]) if f.metadata["cli"]]
    return keys


def section_keys(section: str) -> list[str]:
    """The keys of one section that have flags (``section_keys("model")`` -> ``model.family``, ...)."""
    return [k for k in all_keys(SECTIONS) if k.rpartition(".")[0] == section]


def _field_of(key: str) -> tuple[type, str]:
    section, _, name = key.rpartition(".")
    return (SECTIONS[section] if section else JobConfig), name


def flag_type(*keys: str) -> Callable[[str], Any]:
    """argparse ``type=`` for a hand-made flag that sets ``keys`` (all of one type): text -> the
    value, checked as the config checks it (``--batch-size 0`` -> "gpu.batch_size must be >= 1")."""
    return _parser_for(keys)


def _parser_for(keys: Sequence[str]) -> Callable[[str], Any]:
    """argparse ``type=``: text -> the value of ``keys`` (all of one type), checked for each key."""
    cls, name = _field_of(keys[0])
    ft = field_type(cls, name)

    def parse(text: str) -> Any:
        value: Any
        if ft.sequence:
            parts = [p.strip().lower() for p in text.split(",") if p.strip()]
            value = tuple(dict.fromkeys(parts))
        elif ft.base is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{keys[0]} must be an integer, got {text!r}") from None
        elif ft.base is float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{keys[0]} must be a number, got {text!r}") from None
        else:
            value = text
        for key in keys:
            c, n = _field_of(key)
            try:
                check_value(c, n, value, key)
            except ConfigError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return value

    parse.__name__ = keys[0]  # argparse names the type in "invalid <name> value" messages
    return parse


def _value(cfg: JobConfig, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def _show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else ",".join(v) if isinstance(v, tuple) else str(v)


def _help(key: str, extra: str = "", base: JobConfig | None = None) -> str:
    cls, name = _field_of(key)
    f = next(f for f in config_fields(cls) if f.name == name)
    text = f.metadata["help"]
    here = _value(base, key) if base is not None else f.default
    if here != f.default and here is not None:
        text += f" (default here {_show(here)})"
    elif f.default not in (None, ()) and "default" not in text:
        text += f" (default {_show(f.default)})"
    return (text + extra).replace("%", "%%")


def _add(group: Any, flags: Sequence[str], keys: Sequence[str], help: str) -> None:
    cls, name = _field_of(keys[0])
    ft = field_type(cls, name)
    dest = _DEST + ",".join(keys)
    if ft.base is bool and not ft.sequence:
        group.add_argument(
            *flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help
        )
        return
    f = next(f for f in config_fields(cls) if f.name == name)
    metavar = None
    if f.metadata["choices"] is not None and not ft.sequence:
        metavar = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    elif ft.sequence:
        metavar = "A,B"
    else:
        metavar = "N" if ft.base is int else "X" if ft.base is float else name.rpartition("_")[2].upper()
    group.add_argument(
        *flags, dest=dest, type=_parser_for(keys), default=argparse.SUPPRESS, metavar=metavar, help=help
    )


def add_config_arguments(
    parser: argparse.ArgumentParser,
    keys: Iterable[str] | None = None,
    *,
    aliases: Iterable[str] = ("--batch-size", "--precision", "--workers"),
    config_file: bool = True,
    base: JobConfig | None = None,
) -> None:
    """Add a flag for each setting in ``keys`` (default: all) and the ``aliases`` asked for, in
    argument groups per section; ``config_file``: also ``--config FILE``; ``base``: the command's
    defaults where they differ from the fields' (shown in the help)."""
    wanted = list(all_keys() if keys is None else keys)
    if config_file:
        parser.add_argument(
            "--config",
            default=None,
            metavar="FILE",
            help="TOML config file (sections [model], [gpu], [cpu], [run], [queue], [video], [service]); "
            "flags override it",
        )
    groups: dict[str, Any] = {}
    for key in wanted:
        section = key.rpartition(".")[0] or "job"
        if section not in groups:
            title = "job" if section == "job" else f"[{section}] settings"
            groups[section] = parser.add_argument_group(title)
        _add(groups[section], [flag_name(key)], [key], _help(key, base=base))
    alias_group = None
    for alias in aliases:
        targets = ALIASES[alias]
        if alias_group is None:
            alias_group = parser.add_argument_group("short forms")
        extra = f" [sets {', '.join(targets)}]"
        _add(alias_group, [alias], list(targets), _help(targets[0], extra, base))


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, TOML-shaped (``{"gpu": {"batch_size": 4}}``); alias values go
    under each key they set, after the full flags (so ``--gpu-batch-size`` beats ``--batch-size``)."""
    items = sorted(
        ((dest[len(_DEST) :].split(","), v) for dest, v in vars(args).items() if dest.startswith(_DEST)),
        key=lambda kv: len(kv[0]) == 1,  # aliases (several keys) first, so the full flags win
    )
    out: dict[str, Any] = {}
    for keys, value in items:
        for key in keys:
            section, _, name = key.rpartition(".")
            if section:
                out.setdefault(section, {})[name] = value
            else:
                out[name] = value
    return out


def config_from_args(
    args: argparse.Namespace,
    base: JobConfig | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
) -> JobConfig:
    """defaults (``base``) < the ``--config`` file (or ``config_file``) < the flags of ``args``.
    Raises ConfigError naming the key and the file or ``flags``."""
    cfg = base or JobConfig()
    path = config_file if config_file is not None else getattr(args, "config", None)
    if path:
        cfg = load_file(path, cfg)
    return apply_mapping(cfg, flag_values(args), "flags", gpu_beats_tables=True)
