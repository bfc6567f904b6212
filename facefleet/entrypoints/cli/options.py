"""What the subcommands share: turning parsed flags into a :class:`~facefleet.config.JobConfig`,
with a bad setting reported as a usage error (exit status 2) that names the key."""

from __future__ import annotations

import argparse

from facefleet.config import ConfigError, JobConfig, config_from_args


def job_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, base: JobConfig | None = None
) -> JobConfig:
    """defaults (``base``) < ``--config FILE`` < flags; exits 2 with the key named on a bad setting."""
    try:
        return config_from_args(args, base)
    except ConfigError as e:
        parser.error(str(e))
