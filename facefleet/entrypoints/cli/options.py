"""What the subcommands share: parsing a command line into its arguments and a
:class:`~facefleet.config.JobConfig`, with usage errors and bad settings turned into an exit status
(2) and one line naming the key, so each subcommand's function returns a status and never exits."""

from __future__ import annotations

import argparse
import sys

from facefleet.config import ConfigError, JobConfig, config_from_args


def parse_job(
    parser: argparse.ArgumentParser, argv: list[str], base: JobConfig | None = None
) -> tuple[argparse.Namespace, JobConfig] | int:
    """(arguments, defaults ``base`` < ``--config FILE`` < flags), or the exit status to return:
    argparse's (0 after ``--help``, 2 for a bad flag, ``--batch-size 0`` included), or 2 with one
    line for a bad config file."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        cfg = config_from_args(args, base)
        check_family(cfg)
    except ConfigError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return args, cfg


def check_family(cfg: JobConfig) -> None:
    """ConfigError unless ``cfg.model.family`` names a registered model family (the registry loads
    the networks' code, so this runs once a command is about to use them, not in the config)."""
    from facefleet.families import list_families

    known = list_families()
    if cfg.model.family not in known:
        raise ConfigError(f"model.family must be one of {', '.join(known)}, got {cfg.model.family!r}")
