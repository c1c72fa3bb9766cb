"""Dask clusters and other process executors, registered by name."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import offload
from tests import process_targets as targets
from tests.process_targets import Shape

distributed = pytest.importorskip("distributed")
loky = pytest.importorskip("loky")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A local cluster of two single-threaded worker processes, for the whole module."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster
    # Closing leaves Dask's pending coroutines in cycles; finalising them frees
    # more cycles, so collect until nothing of the cluster is left for later tests.
    for _ in range(3):
        gc.collect()


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def on_cluster(client: Any) -> offload.DaskExecutor:
    """The tests' registry points ``"cluster"`` at the cluster, through an existing client."""
    executor = offload.DaskExecutor(client)
    targets.registry.register("cluster", executor, replace=True)
    return executor


async def test_a_call_runs_on_a_cluster_worker(on_cluster: offload.DaskExecutor) -> None:
    """The result arrives as a Future on this loop; the body ran in a worker process."""
    future = targets.on_cluster(21)
    assert isinstance(future, asyncio.Future)
    value, pid = await future
    assert value == 42
    assert pid != os.getpid()


async def test_the_loop_keeps_running_while_the_cluster_works(
    on_cluster: offload.DaskExecutor, tmp_path: Path
) -> None:
    """Awaiting a cluster call leaves the loop free for other work."""
    held = targets.hold_on_cluster(tmp_path / "held", tmp_path / "release")
    await targets.started(tmp_path / "held")
    ticks = 0
    while ticks < 5:
        await asyncio.sleep(0)
        ticks += 1
    (tmp_path / "release").touch()
    assert await held > 0


async def test_an_exception_on_the_cluster_fails_the_future(
    on_cluster: offload.DaskExecutor,
) -> None:
    """The worker's exception is raised by ``await``, with its type and message."""
    with pytest.raises(KeyError, match="missing"):
        await targets.fail_on_cluster("missing")


async def test_a_decorated_method_runs_on_the_cluster(on_cluster: offload.DaskExecutor) -> None:
    """The instance travels with the call, and the method's own body runs."""
    assert await Shape(6).area_on_cluster() == 36


def _tasks_named(cluster: Any, prefix: str) -> list[str]:
    return [str(key) for key in list(cluster.scheduler.tasks) if str(key).startswith(prefix)]


async def test_cancelling_the_future_cancels_the_cluster_task(
    on_cluster: offload.DaskExecutor, cluster: Any, tmp_path: Path
) -> None:
    """The scheduler forgets the task once its Future is cancelled."""
    held = targets.hold_on_cluster(tmp_path / "held", tmp_path / "release")
    await targets.started(tmp_path / "held")
    assert _tasks_named(cluster, "hold_on_cluster")
    held.cancel()
    assert await targets.eventually(lambda: not _tasks_named(cluster, "hold_on_cluster"))
    (tmp_path / "release").touch()  # let the worker's thread finish the body
    assert held.cancelled()


async def test_a_cluster_given_by_address_gets_its_own_client(cluster: Any) -> None:
    """``DaskExecutor(address)`` connects, runs calls, and closes its client at shutdown."""
    executor = await asyncio.to_thread(offload.DaskExecutor, cluster.scheduler_address)
    registry = offload.Registry()
    registry.register("cluster", executor)
    original: Callable[[int], tuple[int, int]] = targets.on_cluster.__wrapped__  # type: ignore[attr-defined]
    double = registry.offload(original, executor="cluster")
    assert (await double(5))[0] == 10
    assert executor.submit(pow, 2, 5).result(timeout=targets.WAIT) == 32
    await asyncio.to_thread(registry.shutdown)
    assert executor.client.status == "closed"
    with pytest.raises(offload.ExecutorShutdownError):
        await double(1)


def test_dask_executor_rejects_what_is_not_an_address_or_client() -> None:
    """Anything but a str, a Client or None is a TypeError."""
    with pytest.raises(TypeError, match="scheduler address"):
        offload.DaskExecutor(8786)  # type: ignore[arg-type]


# -- Any other executor, by registration alone ----------------------------------


@pytest.fixture(scope="module")
def loky_executor() -> Iterator[Any]:
    executor = loky.get_reusable_executor(max_workers=1)
    yield executor
    executor.shutdown(wait=True)


async def test_loky_runs_offloaded_calls_by_registration_alone(loky_executor: Any) -> None:
    """loky's reusable executor needs nothing but ``register``."""
    targets.registry.register("loky", loky_executor, replace=True)
    value, pid = await targets.on_loky(1)
    assert (value, pid != os.getpid()) == (2, True)


async def test_loky_takes_lambdas_since_it_pickles_by_value(loky_executor: Any) -> None:
    """loky's cloudpickle sends a lambda by value, so offload lets it through."""
    assert await offload.offload(lambda x: x * 3, executor=loky_executor)(4) == 12


async def test_loky_relays_exceptions(loky_executor: Any) -> None:
    """A failing call on loky fails its Future with the worker's exception."""
    targets.registry.register("procs", loky_executor, replace=True)
    with pytest.raises(ValueError, match="from loky"):
        await targets.fail("from loky")
