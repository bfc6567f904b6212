"""Typed settings of facefleet: frozen dataclasses, one per TOML section, that are the one source of
defaults, help texts, TOML keys and CLI flags (see :mod:`facefleet.config.sections`).

::

    from facefleet.config import JobConfig, RunConfig, load_file
    cfg = load_file("ff.toml")                       # defaults < file
    cfg = JobConfig(run=RunConfig(unit_size=64))     # or in code; invalid values raise ConfigError

``docs/config.md`` lists every setting (rendered by :mod:`facefleet.config.reference`). Importing
this package does not import torch.
"""

from facefleet.config.fields import ConfigError, setting
from facefleet.config.flags import add_config_arguments, config_from_args, flag_name, flag_type
from facefleet.config.loading import (
    apply_mapping,
    from_mapping,
    load_config,
    load_file,
    read_toml,
    resolve,
    section_from_json,
    section_to_json,
)
from facefleet.config.sections import (
    CPU_RUNTIMES,
    DETECTORS,
    FORMATS,
    GPU_DECODERS,
    PRECISIONS,
    CpuConfig,
    GpuConfig,
    GpuOverride,
    JobConfig,
    ModelConfig,
    QueueConfig,
    RunConfig,
    VideoConfig,
    parse_jpeg_backends,
)

__all__ = [
    "CPU_RUNTIMES",
    "DETECTORS",
    "FORMATS",
    "GPU_DECODERS",
    "PRECISIONS",
    "ConfigError",
    "CpuConfig",
    "GpuConfig",
    "GpuOverride",
    "JobConfig",
    "ModelConfig",
    "QueueConfig",
    "RunConfig",
    "VideoConfig",
    "add_config_arguments",
    "apply_mapping",
    "config_from_args",
    "flag_name",
    "flag_type",
    "from_mapping",
    "load_config",
    "load_file",
    "parse_jpeg_backends",
    "read_toml",
    "resolve",
    "section_from_json",
    "section_to_json",
    "setting",
]
