"""Under load and faults nothing is lost: 200,000 calls, and the soak command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from offload._commands import soak as _soak
from offload._commands.cli import main


@pytest.mark.timeout(60)
def test_200_000_calls_with_random_faults_resolve_once_and_add_up() -> None:
    # Every outcome is checked against what its call was asked to do; the
    # registry's counters must equal what was seen; no thread and no Future
    # outlives the run; bounded names never exceed their bound.
    report = asyncio.run(_soak.soak(max_calls=200_000, seed=7, processes=False))
    assert report.breaks == []
    assert report.calls == 200_000
    tallies = report.tallies.values()
    assert sum(t.ok + t.failed + t.cancelled + t.timed_out + t.rejected for t in tallies) == (
        200_000
    )
    # Each kind of fault happened, on every name.
    for tally in tallies:
        assert min(tally.ok, tally.failed, tally.cancelled, tally.timed_out) > 0
    assert report.tallies[_soak.SHEDS].rejected > 0


def test_a_disagreeing_counter_is_reported_as_a_break() -> None:
    stats = {"x": {"completed": 3, "failed": 0, "cancelled": 0, "timed_out": 0, "rejected": 0,
                   "submitted": 4, "waiting": 0, "queued": 1, "running": 0}}  # fmt: skip
    report = _soak.Report(stats=stats, tallies={"x": _soak.Tally(ok=4)})  # type: ignore[arg-type]
    problems = _soak.check_counters(report)
    assert len(problems) == 3
    assert "but the soak saw (4, 0, 0, 0, 0)" in problems[0]
    assert "4 submitted but 3 ended" in problems[1]
    assert "(waiting, queued, running) is (0, 1, 0) at rest" in problems[2]


@pytest.mark.timeout(60)
def test_the_soak_command_prints_its_statistics_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(  # noqa: S603 - this interpreter, on this package
        [sys.executable, "-m", "offload", "soak", "--seconds", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 invariant breaks" in done.stdout
    assert "soak.processes" in done.stdout
    report = json.loads(out.read_text())
    assert report["breaks"] == []
    assert report["calls"] > 0
    assert report["stats"]["soak.sheds"]["rejected"] == report["tallies"]["soak.sheds"]["rejected"]


def test_the_soak_command_refuses_a_non_positive_duration() -> None:
    assert main(["soak", "--seconds", "0"]) == 2
