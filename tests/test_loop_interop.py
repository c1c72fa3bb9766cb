"""Offloaded Futures work with every Tornado and asyncio way of waiting."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Generator
from concurrent.futures import Executor
from typing import Any

from tornado import gen
from tornado.testing import AsyncTestCase, gen_test

import offload


class TornadoLoopTest(AsyncTestCase):
    """On a Tornado IOLoop, via ``tornado.testing``."""

    def setUp(self) -> None:
        super().setUp()
        self.registry = offload.Registry()
        self.double = self.registry.offload(lambda x: 2 * x)

    def tearDown(self) -> None:
        self.registry.shutdown()
        super().tearDown()

    @gen_test(timeout=10)
    def test_yield_from_gen_coroutine(self) -> Generator[Any, Any, None]:
        """A ``@gen.coroutine`` can ``yield`` the Future."""
        result = yield self.double(21)
        self.assertEqual(result, 42)

    @gen_test(timeout=10)
    def test_gen_multi_over_a_list(self) -> Generator[Any, Any, None]:
        """``gen.multi`` (and yielding a list) waits for several calls."""
        results = yield gen.multi([self.double(i) for i in range(5)])
        self.assertEqual(results, [0, 2, 4, 6, 8])
        listed = yield [self.double(1), self.double(2)]
        self.assertEqual(listed, [2, 4])

    @gen_test(timeout=10)
    async def test_gen_with_timeout_and_await(self) -> None:
        """``gen.with_timeout`` accepts the Future, and ``await`` works on the IOLoop."""
        result = await gen.with_timeout(dt.timedelta(seconds=5), self.double(4))
        self.assertEqual(result, 8)

    @gen_test(timeout=10)
    async def test_gen_with_timeout_expires_while_running(self) -> None:
        """A call that outlives ``gen.with_timeout`` raises TimeoutError in the caller."""
        release = threading.Event()
        block = self.registry.offload(release.wait)
        with self.assertRaises(asyncio.TimeoutError):
            await gen.with_timeout(dt.timedelta(seconds=0.05), block(10))
        release.set()


async def test_asyncio_gather_and_wait_for(executor: Executor) -> None:
    """``asyncio.gather`` and ``asyncio.wait_for`` accept the Futures on a plain asyncio loop."""
    registry = offload.Registry()
    square = registry.offload(lambda x: x * x, executor=executor)
    assert await asyncio.gather(*(square(i) for i in range(10))) == [i * i for i in range(10)]
    assert await asyncio.wait_for(square(9), timeout=5) == 81


async def test_wait_for_timeout_cancels_the_future(executor: Executor) -> None:
    """On an ``asyncio.wait_for`` timeout the Future is cancelled; the caller gets TimeoutError."""
    release = threading.Event()
    block = offload.offload(release.wait, executor=executor)
    future = block(10)
    try:
        with __import__("pytest").raises(TimeoutError):
            await asyncio.wait_for(future, timeout=0.05)
        assert future.cancelled()
    finally:
        release.set()


def test_futures_are_bound_to_the_callers_loop() -> None:
    """Calls from two loops in two threads get Futures of their own loop."""
    registry = offload.Registry()
    ident = registry.offload(lambda x: x)
    seen: dict[str, bool] = {}

    async def check(label: str) -> None:
        future = ident(label)
        seen[label] = future.get_loop() is asyncio.get_running_loop() and await future == label

    other = threading.Thread(target=asyncio.run, args=(check("thread"),))
    other.start()
    asyncio.run(check("main"))
    other.join(10)
    registry.shutdown()
    assert seen == {"main": True, "thread": True}
