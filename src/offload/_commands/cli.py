"""The command line: ``python -m offload demo`` and ``python -m offload soak``."""

from __future__ import annotations

import argparse

from . import demo as _demo
from . import soak as _soak


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m offload",
        description="offload: run blocking calls from Tornado and asyncio on named executors.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _demo.add_command(commands)
    _soak.add_command(commands)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo.run_command(args)
    return _soak.run_command(args)
