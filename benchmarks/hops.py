"""What one hop to a one-thread executor costs: AffineThread, Lanes and a lane handle.

Each row sends ``noop(x)`` calls from an asyncio loop to an executor whose calls run on
one thread (``ThreadPool(1)`` for comparison), through ``offload``; rows are sampled in
turn, ``--repeats`` times, and each figure is the median. Two workloads:

- ``one at a time``: each call awaited before the next is sent (a round trip per call);
- ``1,000 in flight``: calls sent in batches of 1,000, each batch gathered.

Per call it reports the wall time and the CPU time of the whole process (the loop's
thread and the executor's together), which a busy shared machine disturbs less.
Rows whose API this version of offload lacks are skipped, so the same script measures
before and after a change: ``PYTHONPATH=<other checkout>/src python -m benchmarks.hops``.

Run: ``python -m benchmarks.hops [--calls N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import offload

BATCH = 1_000


def noop(x: int) -> int:
    """The call body: nothing, so the figure is the hop."""
    return x


Setup = Callable[[offload.Registry], Callable[[int], Any]]


def _named(make: Callable[[], Any], **options: Any) -> Setup:
    def setup(registry: offload.Registry) -> Callable[[int], Any]:
        registry.register("under-test", make(), **options)
        return registry.offload(noop, executor="under-test")

    return setup


def _unnamed(make: Callable[[], Any]) -> Setup:
    def setup(registry: offload.Registry) -> Callable[[int], Any]:
        executor = make()
        registry.register("under-test", executor)  # so the registry shuts it down
        return registry.offload(noop, executor=executor)

    return setup


def _handle(make: Callable[[], Any], **options: Any) -> Setup:
    def setup(registry: offload.Registry) -> Callable[[int], Any]:
        registry.register("under-test", make(), **options)
        return registry.offload(noop, executor=registry.lane("under-test"))

    return setup


def rows() -> list[tuple[str, Setup]]:
    """The rows this version of offload can run."""
    found: list[tuple[str, Setup]] = [
        ("ThreadPool(1), named", _named(lambda: offload.ThreadPool(1))),
        ("AffineThread, unnamed", _unnamed(offload.AffineThread)),
        ("AffineThread, named", _named(offload.AffineThread)),
        ("AffineThread, named, max_pending", _named(offload.AffineThread, max_pending=BATCH)),
    ]
    lanes = getattr(offload, "Lanes", None)
    if lanes is not None:
        found += [
            ("Lanes(1), named", _named(lambda: lanes(1))),
            ("lane handle of Lanes(4)", _handle(lambda: lanes(4))),
            ("lane handle, max_pending", _handle(lambda: lanes(4), max_pending=BATCH)),
        ]
    return found


async def _one_at_a_time(call: Callable[[int], Any], calls: int) -> None:
    for i in range(calls):
        await call(i)


async def _in_flight(call: Callable[[int], Any], calls: int) -> None:
    for start in range(0, calls, BATCH):
        await asyncio.gather(*(call(i) for i in range(start, min(calls, start + BATCH))))


WORKLOADS = (("one at a time", _one_at_a_time), ("1,000 in flight", _in_flight))


def sample(setup: Setup, workload: Callable[..., Any], calls: int) -> tuple[float, float]:
    """One sample: (wall µs per call, CPU µs per call)."""
    registry = offload.Registry()
    call = setup(registry)

    async def main() -> tuple[float, float]:
        await workload(call, min(calls, BATCH))  # warm up: threads started, caches filled
        wall, cpu = time.perf_counter(), time.process_time()
        await workload(call, calls)
        return time.perf_counter() - wall, time.process_time() - cpu

    try:
        wall, cpu = asyncio.run(main())
    finally:
        registry.shutdown()
    return wall / calls * 1e6, cpu / calls * 1e6


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per sample")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved samples per cell")
    args = parser.parse_args()
    table = rows()
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for label, setup in table:
            for workload, run in WORKLOADS:
                found.setdefault((label, workload), []).append(sample(setup, run, args.calls))
    width = max(len(label) for label, _ in table)
    print(f"{args.calls:,} calls per sample, median of {args.repeats} interleaved samples")
    print(f"{'row':<{width}}  " + "  ".join(f"{w:>30}" for w, _ in WORKLOADS))
    print(f"{'':<{width}}  " + "  ".join(f"{'wall µs':>14}  {'CPU µs':>14}" for _ in WORKLOADS))
    for label, _ in table:
        cells = []
        for workload, _ in WORKLOADS:
            samples = found[(label, workload)]
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            cells.append(f"{wall:>14.2f}  {cpu:>14.2f}")
        print(f"{label:<{width}}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
