"""``python -m offload soak``: a mixed workload through a registry, checked as it runs.

Calls go to four names: an unbounded thread pool, a bounded one that makes
calls wait, a bounded one that refuses calls when full, and a process pool. A
call returns its input, raises, is cancelled at once or a little later, or runs
past its timeout. Every outcome is checked against what the call was asked to
do, and at the end the registry's counters must agree with what was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import json
import pathlib
import random
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from offload import ExecutorStats, OverloadedError, ProcessPool, Registry, ThreadPool, cancelled

#: The names the soak registers, with their ``register`` options.
THREADS, WAITS, SHEDS, PROCESSES = "soak.threads", "soak.waits", "soak.sheds", "soak.processes"

#: What a call is asked to do, and how often (out of 1,000).
KINDS = (
    ("ok", 850),
    ("raise", 80),
    ("cancel", 30),  # cancelled right after the call: it must end cancelled
    ("cancel_later", 30),  # cancelled a tick later: cancelled, or its result
    ("timeout", 10),  # runs until its caller gives up
)

TIMEOUT = 0.005
_gate = threading.Event()  # never set: the timeout body waits on it, briefly


def echo(x: int) -> int:
    """Return ``x``; module-level so that a process pool can run it."""
    return x


def fail(x: int) -> int:
    """Raise ``ValueError(x)``."""
    raise ValueError(x)


def linger(x: int) -> int:
    """Run until the caller gives up (on a thread)."""
    while not cancelled():
        _gate.wait(0.001)
    return x


@dataclasses.dataclass
class Tally:
    """What the soak saw, per name."""

    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    rejected: int = 0

    def counted(self) -> tuple[int, int, int, int, int]:
        """The tally in the order of the registry's counters."""
        return self.ok, self.failed, self.cancelled, self.timed_out, self.rejected


@dataclasses.dataclass
class Report:
    """The outcome of a soak run."""

    calls: int = 0
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    breaks: list[str] = dataclasses.field(default_factory=list)
    stats: dict[str, ExecutorStats] = dataclasses.field(default_factory=dict)
    tallies: dict[str, Tally] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Calls per second."""
        return self.calls / self.seconds if self.seconds else 0.0


def peak_rss_mib() -> float:
    """The peak resident set size of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _registry(processes: bool) -> Registry:
    registry = Registry()
    registry.register(THREADS, lambda: ThreadPool(8, name=THREADS))
    registry.register(WAITS, lambda: ThreadPool(4, name=WAITS), max_pending=256)
    registry.register(SHEDS, lambda: ThreadPool(2, name=SHEDS), max_pending=64, when_full="fail")
    if processes:
        registry.register(PROCESSES, lambda: ProcessPool(2, name=PROCESSES), max_pending=64)
    return registry


class Soak:
    """One soak run: makes calls, checks each outcome, and keeps the tallies."""

    def __init__(
        self,
        registry: Registry,
        rng: random.Random,
        in_flight: int,
        names: tuple[str, ...],
    ) -> None:
        self.registry = registry
        self.rng = rng
        self.in_flight = in_flight
        self.names = names
        self.report = Report(tallies={name: Tally() for name in names})
        self.outstanding: set[int] = set()
        self.room = asyncio.Event()
        self.kinds = [kind for kind, weight in KINDS for _ in range(weight)]
        self.calls: dict[tuple[str, str], Callable[..., Any]] = {}
        for name in names:
            on_name = registry.offload(name)
            self.calls[name, "ok"] = on_name(echo)
            self.calls[name, "raise"] = on_name(fail)
            self.calls[name, "timeout"] = registry.offload(name, timeout=TIMEOUT)(
                echo if name == PROCESSES else linger
            )

    def broke(self, message: str) -> None:
        """Record a broken invariant (the first 20 in full)."""
        if len(self.report.breaks) < 20:  # noqa: PLR2004 - enough to diagnose
            self.report.breaks.append(message)
        else:
            self.report.breaks.append("...")

    def call(self, number: int) -> None:
        """Make call ``number``: pick a name and a kind, and watch its Future."""
        name = self.rng.choice(self.names)
        kind = self.rng.choice(self.kinds)
        if name == PROCESSES and kind == "timeout":
            kind = "ok"  # a process worker is terminated on timeout: too slow to do often
        fn = self.calls[name, kind if kind in ("raise", "timeout") else "ok"]
        tally = self.report.tallies[name]
        try:
            future = fn(number)
        except OverloadedError:
            tally.rejected += 1
            return
        self.outstanding.add(number)
        future.add_done_callback(lambda done: self.settled(done, number, name, kind))
        if kind == "cancel":
            future.cancel()
        elif kind == "cancel_later":
            asyncio.get_running_loop().call_soon(future.cancel)

    def settled(  # noqa: C901 - one check per way a call can end
        self, future: asyncio.Future[Any], number: int, name: str, kind: str
    ) -> None:
        """Check one outcome against what the call was asked to do."""
        if number not in self.outstanding:
            self.broke(f"call {number} on {name} resolved twice")
            return
        self.outstanding.discard(number)
        if len(self.outstanding) < self.in_flight // 2:
            self.room.set()
        tally = self.report.tallies[name]
        if future.cancelled():
            tally.cancelled += 1
            if kind not in ("cancel", "cancel_later"):
                self.broke(f"call {number} ({kind}) on {name} was cancelled")
            return
        if kind == "cancel":
            self.broke(f"call {number} on {name} was cancelled at once but ran to an outcome")
        exc = future.exception()
        if exc is None:
            tally.ok += 1
            if future.result() != number or kind not in ("ok", "cancel_later"):
                self.broke(f"call {number} ({kind}) on {name} returned {future.result()!r}")
        elif isinstance(exc, TimeoutError):
            tally.timed_out += 1
            if kind != "timeout":
                self.broke(f"call {number} ({kind}) on {name} timed out")
        else:
            tally.failed += 1
            if not (isinstance(exc, ValueError) and exc.args == (number,) and kind == "raise"):
                self.broke(f"call {number} ({kind}) on {name} raised {exc!r}")

    def check_bounds(self) -> None:
        """No bounded name runs more calls than its bound (read off the public statistics)."""
        for name, stats in self.registry.stats().items():
            if name not in self.names:
                continue
            limit = stats["max_pending"]
            if limit is not None and stats["running"] > limit:
                self.broke(f"{name} had {stats['running']} calls running, over {limit}")

    async def run(
        self, deadline: float, max_calls: int | None, progress: Callable[[Report], None]
    ) -> None:
        """Keep ``in_flight`` calls going until the deadline or ``max_calls``."""
        started = time.monotonic()
        next_report = started + 1.0
        number = 0
        while time.monotonic() < deadline and (max_calls is None or number < max_calls):
            while len(self.outstanding) < self.in_flight and (
                max_calls is None or number < max_calls
            ):
                self.call(number)
                number += 1
            self.check_bounds()
            self.room.clear()
            await self.room.wait()
            now = time.monotonic()
            if now >= next_report:
                next_report = now + 1.0
                self.report.calls, self.report.seconds = number, now - started
                progress(self.report)
        while self.outstanding:
            self.room.clear()
            try:
                await asyncio.wait_for(self.room.wait(), 30)
            except TimeoutError:
                self.broke(f"{len(self.outstanding)} calls never resolved")
                break
        self.report.calls, self.report.seconds = number, time.monotonic() - started


def check_counters(report: Report) -> list[str]:
    """The registry's counters against the tallies: the list of disagreements."""
    problems = []
    for name, tally in report.tallies.items():
        stats = report.stats[name]
        counted = (
            stats["completed"],
            stats["failed"],
            stats["cancelled"],
            stats["timed_out"],
            stats["rejected"],
        )
        if counted != tally.counted():
            problems.append(
                f"{name}: counters (completed, failed, cancelled, timed_out, rejected) "
                f"{counted} but the soak saw {tally.counted()}"
            )
        ends = sum(counted)  # each call ends in one fate, rejected included
        if stats["submitted"] != ends:
            problems.append(f"{name}: {stats['submitted']} submitted but {ends} ended")
        gauges = (stats["waiting"], stats["queued"], stats["running"])
        if gauges != (0, 0, 0):
            problems.append(f"{name}: (waiting, queued, running) is {gauges} at rest")
    return problems


def _live_futures(loop: asyncio.AbstractEventLoop) -> int:
    """Futures of ``loop`` still alive, apart from the Task running the soak."""
    current = asyncio.current_task()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.Future) and obj is not current and obj.get_loop() is loop
    )


async def soak(
    seconds: float | None = None,
    *,
    max_calls: int | None = None,
    seed: int = 0,
    in_flight: int = 2_000,
    processes: bool = True,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Run the soak for ``seconds`` (or ``max_calls`` calls); return what it saw."""
    gc.collect()
    baseline_objects = len(gc.get_objects())
    threads_before = {thread.ident for thread in threading.enumerate()}
    registry = _registry(processes)
    names = (THREADS, WAITS, SHEDS) + ((PROCESSES,) if processes else ())
    run = Soak(registry, random.Random(seed), in_flight, names)  # noqa: S311 - a workload, not a secret
    deadline = time.monotonic() + (seconds if seconds is not None else 1e9)
    await run.run(deadline, max_calls, progress or (lambda _report: None))
    # Shut down off the loop, so that late outcomes can still be delivered.
    await asyncio.to_thread(functools.partial(registry.shutdown, wait=True, timeout=30.0))
    await asyncio.sleep(0)
    report = run.report
    report.stats = {name: registry.stats()[name] for name in names}
    report.breaks.extend(check_counters(report))
    leftover = [
        thread.name
        for thread in threading.enumerate()
        if thread.ident not in threads_before and thread.name.startswith("soak.")
    ]
    if leftover:
        report.breaks.append(f"threads left over after shutdown: {leftover}")
    del run, registry
    # Outcomes that arrived as the pools shut down are still on their way to this loop
    # (a wake-up scheduled from another thread, a drain of at most a burst at a time):
    # let the loop settle them before counting what is left.
    loop = asyncio.get_running_loop()
    for _ in range(100):
        gc.collect()
        alive = _live_futures(loop)
        if not alive:
            break
        await asyncio.sleep(0.01)
    if alive:
        report.breaks.append(f"{alive} asyncio Futures of the soak's loop still alive after it")
    grown = len(gc.get_objects()) - baseline_objects
    if grown > 20_000:  # noqa: PLR2004 - far below one object per call
        report.breaks.append(f"{grown} more live objects after the run than before")
    report.peak_rss_mib = peak_rss_mib()
    return report


def _progress_printer(out: TextIO, total: float | None) -> Callable[[Report], None]:
    live = out.isatty()
    last = [0.0]

    def show(report: Report) -> None:
        of = f"/{total:.0f}s" if total is not None else ""
        line = (
            f"[{report.seconds:6.1f}s{of}] {report.calls:>11,} calls  "
            f"{report.rate / 1000:6.1f}k/s  peak rss {peak_rss_mib():6.1f} MiB  "
            f"breaks {len(report.breaks)}"
        )
        if live:
            out.write("\r" + line)
        elif report.seconds - last[0] >= 10.0:  # noqa: PLR2004 - a line every 10 s in a log
            last[0] = report.seconds
            out.write(line + "\n")
        out.flush()

    return show


def print_report(report: Report, out: TextIO) -> None:
    """The statistics per name, then the summary and any broken invariant."""
    out.write("\n")
    header = ("name", "submitted", "completed", "failed", "cancelled", "timed_out", "rejected")
    out.write("  ".join(f"{h:>14}" for h in header) + "  wait p99  run p99\n")
    for name, stats in report.stats.items():
        cells = [name, *(f"{stats[h]:,}" for h in header[1:])]  # type: ignore[literal-required]
        wait, run = stats["wait"]["p99"], stats["run"]["p99"]
        out.write("  ".join(f"{cell:>14}" for cell in cells) + f"  {_ms(wait):>8}  {_ms(run):>7}\n")
    out.write(
        f"\n{report.calls:,} calls in {report.seconds:.1f}s ({report.rate:,.0f} calls/s), "
        f"peak RSS {report.peak_rss_mib:.1f} MiB, {len(report.breaks)} invariant breaks\n"
    )
    out.writelines(f"BROKEN: {problem}\n" for problem in report.breaks)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}ms"


def add_command(commands: Any) -> None:
    """Add ``soak`` to the command line's subcommands."""
    parser = commands.add_parser(
        "soak",
        help="run a mixed workload and check that nothing is lost",
        description=(
            "Run a mixed workload (results, exceptions, cancellations, timeouts, bounded "
            "names, a process pool) through a registry, print live progress and the "
            "statistics, and exit 1 if any invariant breaks."
        ),
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed the workload (default 0)")
    parser.add_argument(
        "--in-flight", type=int, default=2_000, help="calls kept in flight (default 2,000)"
    )
    parser.add_argument("--no-processes", action="store_true", help="leave out the process pool")
    parser.add_argument("--json", help="also write the report as JSON to this file")


def run_command(args: argparse.Namespace) -> int:
    """Run ``soak`` from parsed arguments; the exit status."""
    if args.seconds <= 0 or args.in_flight < 1:
        sys.stderr.write("soak: --seconds and --in-flight must be positive\n")
        return 2
    report = asyncio.run(
        soak(
            args.seconds,
            seed=args.seed,
            in_flight=args.in_flight,
            processes=not args.no_processes,
            progress=_progress_printer(sys.stderr, args.seconds),
        )
    )
    print_report(report, sys.stdout)
    if args.json:
        with pathlib.Path(args.json).open("w", encoding="utf-8") as out:
            json.dump(
                {
                    "calls": report.calls,
                    "seconds": report.seconds,
                    "calls_per_second": report.rate,
                    "peak_rss_mib": report.peak_rss_mib,
                    "breaks": report.breaks,
                    "stats": report.stats,
                    "tallies": {n: dataclasses.asdict(t) for n, t in report.tallies.items()},
                },
                out,
                indent=2,
            )
    return 1 if report.breaks else 0
