"""``python -m facefleet COMMAND ...``: the ``facefleet`` command."""

import sys

from facefleet.entrypoints.cli import main

sys.exit(main())
