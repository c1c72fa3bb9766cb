"""What offload costs on processes and clusters, against the direct route.

``python -m benchmarks`` runs these rows after its thread table (``--no-processes``
leaves them out); run them alone from the repository root with (Dask rows need
``pip install -e '.[dask]'``):

    python -m benchmarks.processes [--calls 2000] [--repeats 5]

Rows, each timed as the median of interleaved repeats:

- process pool: a tiny function through ``offload`` on a standard
  ``ProcessPoolExecutor`` against ``loop.run_in_executor`` on the same pool,
  one call at a time (latency) and all at once (throughput); and the same
  function on offload's own ``ProcessPool`` against that baseline.
- Dask: a tiny function through ``offload`` on a ``DaskExecutor`` against
  ``await client.submit(...)`` with an asynchronous client on the same cluster.

Times are µs per call (for "all at once", wall time over the calls); the
ratio is offload's time over the direct route's, the median over pairs of
alternating blocks: below 1 is faster.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor

import offload

registry = offload.Registry()


def tiny(x: int) -> int:
    return x + 1


@registry.offload("procs")
def tiny_offloaded(x: int) -> int:
    return x + 1


@registry.offload("cluster")
def tiny_on_cluster(x: int) -> int:
    return x + 1


Runner = Callable[[int], Awaitable[object]]


async def sequential(call: Runner, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await call(i)
    return time.perf_counter() - start


async def concurrent(call: Runner, calls: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(calls)))
    return time.perf_counter() - start


async def compare(
    label: str, ours: Runner, theirs: Runner, calls: int, repeats: int
) -> list[tuple[str, float, float, float]]:
    """Per mode: median µs per call for each side, and the median of paired ratios.

    The calls are split into small blocks that alternate between the two sides
    (and which side goes first), so load from anything else on the machine
    hits both alike; the ratio is the median over the pairs of blocks.
    """
    rows = []
    block = max(1, calls // 10)
    for mode, measure in (("one at a time", sequential), ("all at once", concurrent)):
        await measure(ours, min(calls, 200))  # warm up: workers started, imports done
        await measure(theirs, min(calls, 200))
        mine, base, ratios = [], [], []
        for pair in range(repeats * 10):
            if pair % 2:
                theirs_s = await measure(theirs, block)
                ours_s = await measure(ours, block)
            else:
                ours_s = await measure(ours, block)
                theirs_s = await measure(theirs, block)
            mine.append(ours_s / block * 1e6)
            base.append(theirs_s / block * 1e6)
            ratios.append(ours_s / theirs_s)
        rows.append(
            (
                f"{label}, {mode}",
                statistics.median(mine),
                statistics.median(base),
                statistics.median(ratios),
            )
        )
    return rows


async def process_rows(calls: int, repeats: int) -> list[tuple[str, float, float, float]]:
    context = multiprocessing.get_context("forkserver")
    stdlib = ProcessPoolExecutor(2, mp_context=context)
    own = offload.ProcessPool(2, start_method="forkserver")
    loop = asyncio.get_running_loop()

    def direct(x: int) -> Awaitable[object]:
        return loop.run_in_executor(stdlib, tiny, x)

    try:
        registry.register("procs", stdlib, replace=True)
        rows = await compare(
            "offload on ProcessPoolExecutor vs run_in_executor",
            tiny_offloaded,
            direct,
            calls,
            repeats,
        )
        registry.register("procs", own, replace=True)
        rows += await compare(
            "offload on offload.ProcessPool vs run_in_executor",
            tiny_offloaded,
            direct,
            calls,
            repeats,
        )
    finally:
        stdlib.shutdown()
        own.shutdown()
    return rows


async def dask_rows(calls: int, repeats: int) -> list[tuple[str, float, float, float]]:
    try:
        import distributed  # optional: the Dask rows need the extra
    except ImportError:
        print("distributed is not installed: skipping the Dask rows")
        return []
    cluster = await distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",  # None would still bind port 8787; 0 takes a free one
        asynchronous=True,
    )
    direct_client = await distributed.Client(cluster, asynchronous=True)
    sync_client = await asyncio.to_thread(distributed.Client, cluster.scheduler_address)
    registry.register("cluster", offload.DaskExecutor(sync_client), replace=True)

    async def direct(x: int) -> object:
        return await direct_client.submit(tiny, x, pure=False)

    try:
        return await compare(
            "offload on DaskExecutor vs await client.submit",
            tiny_on_cluster,
            direct,
            max(1, calls // 4),
            repeats,
        )
    finally:
        await asyncio.to_thread(sync_client.close)
        await direct_client.close()
        await cluster.close()


Row = tuple[str, float, float, float]


def measure_all(calls: int, repeats: int) -> list[Row]:
    """Every process and cluster row: (label, offload µs, direct µs, ratio)."""

    async def run() -> list[Row]:
        rows = await process_rows(calls, repeats)
        return rows + await dask_rows(calls, repeats)

    return asyncio.run(run())


def table(rows: list[Row]) -> str:
    """The rows as a plain-text table."""
    width = max(len(row[0]) for row in rows)
    lines = [f"{'row':<{width}}  {'offload µs':>10}  {'direct µs':>10}  {'ratio':>6}"]
    lines.extend(
        f"{label:<{width}}  {mine:>10.1f}  {base:>10.1f}  {ratio:>6.2f}"
        for label, mine, base, ratio in rows
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(table(measure_all(args.calls, args.repeats)))


if __name__ == "__main__":
    main()
