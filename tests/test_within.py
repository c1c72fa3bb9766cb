"""``offload.within``: a unit of work on a facade's sync object, in one hop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Self

import pytest

import offload
from tests.conftest import WAIT


class Account:
    """A sync object that records the thread each of its calls ran on."""

    def __init__(self) -> None:
        self.balance = 0
        self.threads: list[threading.Thread] = []

    def deposit(self, amount: int) -> int:
        self.threads.append(threading.current_thread())
        self.balance += amount
        return self.balance

    def __enter__(self) -> Self:
        self.threads.append(threading.current_thread())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.threads.append(threading.current_thread())


AsyncAccount = offload.facade(Account, run=["deposit"])


@pytest.fixture(params=["offload-pool", "stdlib-pool", "affine-thread"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """The kinds a facade's calls commonly go to."""
    chosen: Executor
    if request.param == "offload-pool":
        chosen = offload.ThreadPool(4, name="within-test")
    elif request.param == "stdlib-pool":
        chosen = ThreadPoolExecutor(4, thread_name_prefix="within-test")
    else:
        chosen = offload.AffineThread(name="within-test")
    yield chosen
    chosen.shutdown(wait=True, cancel_futures=True)


async def test_the_function_gets_the_sync_object_and_its_arguments(executor: Executor) -> None:
    """fn(wrapped, *args, **kwargs) runs off the loop, and its result comes back as it is."""
    account = AsyncAccount(Account(), executor=executor)

    def pay_twice(sync: Account, amount: int, *, fee: int) -> tuple[int, Account]:
        sync.deposit(amount)
        return sync.deposit(amount - fee), sync

    loop_thread = threading.current_thread()
    balance, returned = await offload.within(account, pay_twice, 10, fee=1)
    assert (balance, returned) == (19, account.__wrapped__)  # the sync object, not wrapped
    threads = account.__wrapped__.threads
    assert len(set(threads)) == 1  # one hop: both calls on one thread
    assert threads[0] is not loop_thread


async def test_inside_async_with_it_runs_on_the_thread_the_block_holds(
    executor: Executor,
) -> None:
    """Within ``async with facade`` on a pool, the unit of work runs where __enter__ ran."""
    cls = offload.facade(Account, run=["deposit"])
    account = cls(Account(), executor=executor)
    async with account:
        await offload.within(account, Account.deposit, 5)
        await account.deposit(1)
    threads = account.__wrapped__.threads
    assert len(threads) == 4
    assert len(set(threads)) == 1  # __enter__, the unit of work, the call, __exit__


async def test_it_counts_under_the_facades_executor_name() -> None:
    """A facade on a registered name: the unit of work is one call of that name."""
    name = f"within-{uuid.uuid4().hex}"
    pool = offload.ThreadPool(2, name=name)
    offload.register(name, pool)
    try:
        account = AsyncAccount(Account(), executor=name)
        before = offload.stats()[name]["completed"]
        await offload.within(account, lambda sync: [sync.deposit(n) for n in range(3)])
        assert offload.stats()[name]["completed"] == before + 1
    finally:
        pool.shutdown()


async def test_an_error_from_the_function_is_raised_to_the_caller(executor: Executor) -> None:
    """What fn raises, the awaiting code gets, with the facade still usable after."""
    account = AsyncAccount(Account(), executor=executor)

    def overdraw(sync: Account) -> None:
        sync.deposit(-1)
        raise ValueError("insufficient funds")

    with pytest.raises(ValueError, match="insufficient funds"):
        await offload.within(account, overdraw)
    assert await account.deposit(2) == 1


async def test_a_cancelled_unit_of_work_is_interrupted_by_on_cancel() -> None:
    """Given up while it runs, the facade's on_cancel ends the blocked work."""
    started, stopped = threading.Event(), threading.Event()

    class Waiter:
        def block(self) -> bool:
            started.set()
            return stopped.wait(WAIT)

        def interrupt(self) -> None:
            stopped.set()

    cls = offload.facade(Waiter, run=["block"], on_cancel="interrupt")
    thread = offload.AffineThread(name="within-cancel")
    try:
        waiter = cls(Waiter(), executor=thread)
        work = offload.within(waiter, Waiter.block)
        assert await asyncio.to_thread(started.wait, WAIT)
        work.cancel()
        assert await asyncio.to_thread(stopped.wait, WAIT)
        with pytest.raises(asyncio.CancelledError):
            await work
    finally:
        thread.shutdown()


async def test_a_transaction_is_one_hop_on_the_connections_thread() -> None:
    """The documented use: BEGIN, statements, COMMIT, as one call on sqlite3's own thread."""
    thread = offload.AffineThread(name="within-sqlite")
    connect = offload.offload(sqlite3.connect, executor=thread)
    conn_cls = offload.facade(sqlite3.Connection, run=["execute", "close"])
    conn = conn_cls(await connect(":memory:"), executor=thread)  # check_same_thread stays on
    try:
        await conn.execute("CREATE TABLE t (n INT)")

        def insert_all(sync: sqlite3.Connection, values: list[int]) -> int:
            with sync:
                sync.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
            return int(sync.execute("SELECT sum(n) FROM t").fetchone()[0])

        assert await offload.within(conn, insert_all, [1, 2, 3]) == 6
    finally:
        await conn.close()
        thread.shutdown()


async def test_bad_arguments_fail_at_once() -> None:
    """A plain object, or a non-callable, is a TypeError saying what to pass."""
    account = AsyncAccount(Account(), executor="io")
    plain: Any = Account()
    with pytest.raises(TypeError, match="facade instance"):
        offload.within(plain, Account.deposit, 1)
    not_callable: Any = "deposit"
    with pytest.raises(TypeError, match="function of the sync object"):
        offload.within(account, not_callable)


def test_without_a_running_loop_it_says_so() -> None:
    """Called from plain sync code, it fails at once instead of returning a dead Future."""
    account = AsyncAccount(Account(), executor="io")
    with pytest.raises(RuntimeError, match="within"):
        offload.within(account, Account.deposit, 1)
