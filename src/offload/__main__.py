"""Command-line entry point: ``python -m offload demo`` or ``python -m offload soak``."""

import sys

from ._commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
