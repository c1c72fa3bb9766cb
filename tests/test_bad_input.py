"""Bad input fails early, with a message that says what to do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import offload


async def coroutine_function() -> None:
    """An async def function."""


async def async_generator() -> AsyncIterator[int]:
    yield 1


class AsyncCallable:
    async def __call__(self) -> None:
        pass


@pytest.mark.parametrize(
    "target",
    [coroutine_function, async_generator, AsyncCallable(), staticmethod(coroutine_function)],
    ids=["async-def", "async-generator", "async-callable-object", "async-staticmethod"],
)
def test_async_callables_are_refused_at_decoration(target: object) -> None:
    """Async callables get a TypeError saying to await them directly."""
    with pytest.raises(TypeError, match="await it directly"):
        offload.offload(target)  # type: ignore[call-overload]


@pytest.mark.parametrize("target", [42, 3.5, [1]], ids=["int", "float", "list"])
def test_non_callables_are_refused_at_decoration(target: object) -> None:
    """Something that is neither callable nor an executor spec is a TypeError."""
    with pytest.raises(TypeError, match="needs a callable"):
        offload.offload(target)  # type: ignore[call-overload]


def test_an_executor_class_is_refused_with_what_to_pass_instead() -> None:
    """An Executor class where an executor belongs says to pass an instance or a factory."""
    for attempt in (
        lambda: offload.offload(len, executor=ThreadPoolExecutor),  # type: ignore[call-overload]
        lambda: offload.offload(executor=ThreadPoolExecutor),  # type: ignore[call-overload]
        lambda: offload.offload(ThreadPoolExecutor),
    ):
        with pytest.raises(TypeError, match=r"pass an instance.*or register a factory"):
            attempt()


@pytest.mark.parametrize("spec", [42, "", object()], ids=["int", "empty", "object"])
def test_bad_executor_specs_are_refused_at_decoration(spec: object) -> None:
    """An executor that is neither a name nor an Executor instance is a TypeError."""
    with pytest.raises(TypeError, match="registered name"):
        offload.offload(len, executor=spec)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="registered name"):
        offload.offload(executor=spec)  # type: ignore[call-overload]


def test_giving_the_executor_twice_is_refused() -> None:
    """``offload("io", executor="io")`` is ambiguous and refused."""
    with pytest.raises(TypeError, match="give the executor once"):
        offload.offload("io", executor="io")  # type: ignore[call-overload]


def test_offloading_twice_is_refused() -> None:
    """Wrapping an already offloaded function is refused: it would run with no loop."""
    once = offload.offload(len)
    with pytest.raises(TypeError, match="already offloaded"):
        offload.offload(once)


def test_calling_with_no_running_loop_says_what_to_do() -> None:
    """Outside a running loop the call raises RuntimeError pointing at ``__wrapped__``."""
    wrapped = offload.offload(len)
    with pytest.raises(RuntimeError, match=r"no running event loop.*__wrapped__"):
        wrapped([1])
    assert wrapped.__wrapped__([1]) == 1  # type: ignore[attr-defined]


async def test_unknown_name_raises_synchronously_at_call_time() -> None:
    """An unknown name raises UnknownExecutorError (a LookupError) naming it and the known ones."""
    registry = offload.Registry()
    call = registry.offload(len, executor="nope")
    with pytest.raises(offload.UnknownExecutorError, match=r"'nope'.*'default', 'io'") as info:
        call([1])
    assert isinstance(info.value, LookupError)
    assert info.value.name == "nope"


def test_error_reprs_use_the_public_module() -> None:
    """Public exceptions and classes report ``offload`` as their module."""
    assert offload.UnknownExecutorError.__module__ == "offload"
    assert asyncio.Future.__module__ != "offload"
