"""The ``facefleet`` command's old import path, for console scripts installed before it moved to
:mod:`facefleet.entrypoints.cli` (``pyproject.toml`` names the new one)."""

from facefleet.entrypoints.cli import main

__all__ = ["main"]
