"""``python -m offload demo`` runs the recipe and reports a responsive loop."""

from __future__ import annotations

import subprocess
import sys

import pytest

from offload._commands.cli import main


def test_demo_runs_both_shapes_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo runs ten tasks one by one and ten together, then prints the report."""
    assert main(["demo", "--max-seconds", "0.05", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("slept") == 20
    assert "(loop work after task 9)" in out
    assert "report: 20 tasks" in out
    assert "largest lag" in out


def test_demo_help_explains_the_flag() -> None:
    """``--help`` documents the duration flag."""
    done = subprocess.run(
        [sys.executable, "-m", "offload", "demo", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert "--max-seconds" in done.stdout


def test_demo_runs_with_warnings_as_errors() -> None:
    """The demo starts its loop with no deprecated API (asyncio.run, not IOLoop.run_sync)."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "offload", "demo", "--max-seconds", "0.05"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "report: 20 tasks" in done.stdout
