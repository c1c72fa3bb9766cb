"""Command-line entry point: ``python -m offload demo``."""

import sys

from ._demo import main

if __name__ == "__main__":
    sys.exit(main())
