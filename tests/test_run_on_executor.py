"""``offload.run_on_executor`` is a drop-in for Tornado's, ported from its own tests."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from tornado import gen
from tornado.testing import AsyncTestCase, gen_test

import offload
from offload import run_on_executor
from tests.conftest import WAIT


class RunOnExecutorTest(AsyncTestCase):
    """The cases of Tornado's ``RunOnExecutorTest``."""

    @gen_test
    def test_no_calling(self) -> Generator[Any, Any, None]:
        """The bare decorator."""

        class Object:
            def __init__(self) -> None:
                self.executor = ThreadPoolExecutor(1)

            @run_on_executor
            def f(self) -> int:
                return 42

        o = Object()
        answer = yield o.f()
        self.assertEqual(answer, 42)
        o.executor.shutdown()

    @gen_test
    def test_call_with_no_args(self) -> Generator[Any, Any, None]:
        """The decorator with empty parentheses."""

        class Object:
            def __init__(self) -> None:
                self.executor = ThreadPoolExecutor(1)

            @run_on_executor()
            def f(self) -> int:
                return 42

        o = Object()
        answer = yield o.f()
        self.assertEqual(answer, 42)
        o.executor.shutdown()

    @gen_test
    def test_call_with_executor(self) -> Generator[Any, Any, None]:
        """``executor=`` names the attribute, even a name-mangled one."""

        class Object:
            def __init__(self) -> None:
                self.__executor = ThreadPoolExecutor(1)

            @run_on_executor(executor="_Object__executor")
            def f(self) -> int:
                return 42

        o = Object()
        answer = yield o.f()
        self.assertEqual(answer, 42)
        o._Object__executor.shutdown()  # type: ignore[attr-defined]

    @gen_test
    async def test_async_await(self) -> None:
        """Awaited from ``async def``."""

        class Object:
            def __init__(self) -> None:
                self.executor = ThreadPoolExecutor(1)

            @run_on_executor()
            def f(self) -> int:
                return 42

        o = Object()

        async def f() -> int:
            answer: int = await o.f()
            return answer

        result = await f()
        self.assertEqual(result, 42)
        o.executor.shutdown()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1)
    yield executor
    executor.shutdown()


async def test_executor_is_looked_up_on_every_call(pool: ThreadPoolExecutor) -> None:
    """Changing ``self.executor`` redirects the next call, as in Tornado."""

    class Object:
        executor: Any = pool

        @run_on_executor
        def where(self) -> str:
            return threading.current_thread().name

    other = ThreadPoolExecutor(1, thread_name_prefix="other")
    o = Object()
    assert not (await o.where()).startswith("other")
    o.executor = other
    assert (await o.where()).startswith("other")
    other.shutdown()


async def test_attribute_may_hold_a_registered_name() -> None:
    """``self.executor = "io"`` resolves through the shared registry."""

    class Object:
        executor = "io"

        @run_on_executor
        def where(self) -> str:
            return threading.current_thread().name

    assert (await Object().where()).startswith("offload-io_")


async def test_plain_function_runs_on_the_default_executor() -> None:
    """With no ``self``, the registry's ``"default"`` executor is used."""

    @run_on_executor
    def where() -> str:
        return threading.current_thread().name

    assert (await where()).startswith("offload-default_")


async def test_classmethod_reads_the_class_attribute(pool: ThreadPoolExecutor) -> None:
    """Stacked over ``@classmethod``, the executor is read from the class."""

    class Object:
        executor = pool

        @run_on_executor
        @classmethod
        def name(cls) -> str:
            return cls.__name__

    assert await Object.name() == "Object"


async def test_gains_contextvars_and_cancel_before_start(pool: ThreadPoolExecutor) -> None:
    """Unlike Tornado's, the context is copied and a queued cancelled call never runs."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    class Object:
        executor = pool

        @run_on_executor
        def block(self) -> None:
            started.set()
            release.wait(WAIT)

        @run_on_executor
        def read(self) -> str:
            ran.append("read")
            return var.get()

    o = Object()
    var.set("ctx")
    blocker = o.block()
    assert await asyncio.to_thread(started.wait, WAIT)
    cancelled = o.read()
    cancelled.cancel()
    release.set()
    await blocker
    assert await o.read() == "ctx"
    assert ran == ["read"]


def test_missing_attribute_raises_attribute_error() -> None:
    """A missing executor attribute raises AttributeError at call time, as in Tornado."""

    class Object:
        @run_on_executor
        def f(self) -> None:
            pass

    async def main() -> None:
        with pytest.raises(AttributeError, match="executor"):
            Object().f()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((len, len), {}, ValueError),
        ((), {"io_loop": None}, TypeError),
        ((), {"executor": ThreadPoolExecutor}, TypeError),
    ],
    ids=["two-functions", "unknown-option", "executor-not-a-name"],
)
def test_bad_forms_are_refused(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """Forms Tornado does not accept, and options it would silently ignore, are errors."""
    with pytest.raises(error):
        run_on_executor(*args, **kwargs)


@gen.coroutine
def _yield_it(fn: Any) -> Generator[Any, Any, Any]:
    result = yield fn()
    return result


def test_module_exports_the_drop_in() -> None:
    """The drop-in is public as ``offload.run_on_executor``."""
    assert offload.run_on_executor is run_on_executor
