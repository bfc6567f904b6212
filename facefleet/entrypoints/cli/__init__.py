"""The ``facefleet`` command: :func:`main` dispatches to one module per subcommand group, imported
only when its subcommand runs (``facefleet --help`` is instant; nothing initialises CUDA early)."""

from facefleet.entrypoints.cli.main import main

__all__ = ["main"]
