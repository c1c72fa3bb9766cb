"""Static checks of ``offload(..., coroutine=True)``: each form gives a coroutine function.

mypy --strict and pyright strict must accept these and each ``assert_type``
hold; the functions also run, so the types cannot drift from behaviour.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, assert_type

import offload
from offload import offload as off

registry = offload.Registry()


def parse(text: str, *, base: int = 10) -> int:
    return int(text, base)


# Each form with coroutine=True: the decorator is a CoroutineOffloader.
assert_type(off("io", coroutine=True), offload.CoroutineOffloader)
assert_type(off(executor="io", coroutine=True), offload.CoroutineOffloader)
assert_type(off(coroutine=True, cancel="wait"), offload.CoroutineOffloader)
assert_type(registry.offload("io", coroutine=True), offload.CoroutineOffloader)
assert_type(registry.offload(coroutine=True), offload.CoroutineOffloader)
plain_call = off(parse, coroutine=True)
named = off("io", coroutine=True, cancel="wait")(parse)
via_registry = registry.offload(parse, executor="io", coroutine=True)


@off(coroutine=True)
def decorated(n: int) -> list[int]:
    return [n]


class Client:
    @off("io", coroutine=True)
    def method(self, key: str) -> bytes:
        return key.encode()

    @off(coroutine=True, cancel="wait")
    @classmethod
    def klass(cls, n: int) -> tuple[type[Client], int]:
        return cls, n

    @registry.offload(coroutine=True)
    @staticmethod
    def static(flag: bool) -> str:
        return str(flag)


async def check_types() -> None:
    keeps_signature: Callable[[str], Coroutine[Any, Any, int]] = plain_call
    first = assert_type(keeps_signature("1"), Coroutine[Any, Any, int])
    assert await first == 1
    second = assert_type(plain_call("ff", base=16), Coroutine[Any, Any, int])
    assert await second == 255
    assert_type(await named("7"), int)
    assert_type(await via_registry("1", base=2), int)
    assert_type(await decorated(1), list[int])
    client = Client()
    assert_type(await client.method("k"), bytes)
    assert_type(await Client.klass(1), tuple[type[Client], int])
    assert_type(await client.static(flag=True), str)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(plain_call("ff", base=16))
    assert task.result() == 255
    assert await client.method("k") == b"k"
    assert await Client.klass(1) == (Client, 1)
    assert await Client.static(flag=False) == "False"
    assert inspect.iscoroutinefunction(plain_call)
    assert inspect.iscoroutinefunction(Client.method)


def misuse_is_rejected() -> None:
    """Never called: each line is a type error, and ``warn_unused_ignores`` proves it."""
    off(parse, cancel="wait")  # type: ignore[call-overload]
    off(parse, coroutine=True, cancel="later")  # type: ignore[call-overload]
    _: int = plain_call("1")  # type: ignore[assignment]


def test_typed_coroutine_forms_also_run() -> None:
    """The coroutine forms behave at runtime as their types say."""
    asyncio.run(check_types())
    registry.shutdown()
