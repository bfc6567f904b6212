"""``facefleet models``: fetch, list or locate the model files (:mod:`facefleet.models.cli`)."""

from __future__ import annotations


def models_main(argv: list[str]) -> int:
    from facefleet.models.cli import models_cli

    return models_cli(argv)
