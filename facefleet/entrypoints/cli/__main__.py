"""``python -m facefleet.entrypoints.cli COMMAND ...``."""

import sys

from facefleet.entrypoints.cli.main import main

sys.exit(main())
