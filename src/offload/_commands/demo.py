"""``python -m offload demo``: the recipe offload grew from, without the class.

The recipe held a ``ThreadPoolExecutor`` on a ``TaskRunner`` class only so that
``run_on_executor`` could find it. Here the blocking function is decorated
directly and runs on the registry's ``"io"`` executor, while a heartbeat on the
loop measures how late each tick fires: if the loop ever blocked, the lag shows.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from collections.abc import Generator
from typing import Any

from tornado import gen
from tornado.ioloop import PeriodicCallback

from offload import offload

TASKS = 10
HEARTBEAT_SECONDS = 0.05


@offload("io")
def blocking_task(number: int, seconds: float) -> str:
    """A stand-in for a blocking call: it sleeps, holding its thread."""
    time.sleep(seconds)
    return f"task {number} slept {seconds:.2f}s on {threading.current_thread().name}"


class Heartbeat:
    """Ticks on the loop and records the largest delay between due and actual."""

    def __init__(self) -> None:
        self.ticks = 0
        self.worst_lag = 0.0
        self._due = time.monotonic() + HEARTBEAT_SECONDS
        self._callback = PeriodicCallback(self._tick, HEARTBEAT_SECONDS * 1000)

    def _tick(self) -> None:
        now = time.monotonic()
        self.worst_lag = max(self.worst_lag, now - self._due)
        self.ticks += 1
        self._due = now + HEARTBEAT_SECONDS

    def start(self) -> None:
        self._due = time.monotonic() + HEARTBEAT_SECONDS
        self._callback.start()

    def stop(self) -> None:
        self._callback.stop()


@gen.coroutine
def one_after_another(durations: list[float]) -> Generator[Any, Any, None]:
    """The recipe's shape: yield each blocking task, doing loop work between."""
    for number, seconds in enumerate(durations):
        line = yield blocking_task(number, seconds)
        print(f"  {line}")
        yield gen.moment  # the non-blocking work between tasks
        print(f"  (loop work after task {number})")


async def all_at_once(durations: list[float]) -> None:
    """The same tasks awaited together: they run concurrently on the pool."""
    lines = await asyncio.gather(*(blocking_task(n, s) for n, s in enumerate(durations)))
    for line in lines:
        print(f"  {line}")


async def run(max_seconds: float, seed: int | None) -> float:
    rng = random.Random(seed)
    durations = [rng.uniform(0, max_seconds) for _ in range(TASKS)]
    heartbeat = Heartbeat()
    heartbeat.start()
    started = time.monotonic()
    print(
        f"{TASKS} blocking tasks, up to {max_seconds:g}s each, "
        "yielded one by one from @gen.coroutine:"
    )
    await one_after_another(durations)
    sequential = time.monotonic() - started
    print(f"{TASKS} blocking tasks awaited together from async def:")
    started = time.monotonic()
    await all_at_once(durations)
    concurrent = time.monotonic() - started
    heartbeat.stop()
    print(
        f"\nreport: {2 * TASKS} tasks; one by one {sequential:.2f}s "
        f"(sum of durations {sum(durations):.2f}s); together {concurrent:.2f}s "
        f"(longest task {max(durations):.2f}s); heartbeat ticked {heartbeat.ticks} times, "
        f"largest lag {heartbeat.worst_lag * 1000:.1f} ms"
    )
    return heartbeat.worst_lag


def add_command(commands: Any) -> None:
    """Add ``demo`` to the command line's subcommands."""
    demo = commands.add_parser(
        "demo",
        help="run ten blocking tasks without blocking the loop",
        description=(
            "Run ten blocking tasks of random duration on the 'io' executor, first "
            "yielded one by one from a @gen.coroutine, then awaited together from "
            "async def, while a heartbeat shows the loop stays responsive."
        ),
    )
    demo.add_argument(
        "--max-seconds",
        type=float,
        default=3.0,
        help="longest duration of a task, in seconds (default 3, as in the recipe; "
        "use e.g. 0.3 for a quick run)",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed the random durations")


def run_command(args: argparse.Namespace) -> int:
    """Run ``demo`` from parsed arguments; the exit status."""
    if args.max_seconds < 0:
        sys.stderr.write("demo: --max-seconds must not be negative\n")
        return 2
    # asyncio.run starts the loop, as Tornado recommends since 6.2: IOLoop.current()
    # with no loop running is deprecated (a DeprecationWarning on Python 3.12+).
    asyncio.run(run(args.max_seconds, args.seed))
    return 0
