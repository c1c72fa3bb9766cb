"""Every way of applying ``offload`` gives the same awaitable behaviour."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import pytest

import offload


def double(x: int) -> int:
    """Double x."""
    return 2 * x


def _forms(registry: offload.Registry, executor: Executor) -> dict[str, Callable[..., Any]]:
    deco = registry.offload
    return {
        "bare": deco(double),
        "empty-parens": deco()(double),
        "positional-name": deco("io")(double),
        "keyword-name": deco(executor="io")(double),
        "positional-executor": deco(executor)(double),
        "plain-call": deco(double, executor="io"),
        "plain-call-executor": deco(double, executor=executor),
    }


@pytest.mark.parametrize(
    "form",
    [
        "bare",
        "empty-parens",
        "positional-name",
        "keyword-name",
        "positional-executor",
        "plain-call",
        "plain-call-executor",
    ],
)
async def test_every_form_returns_an_awaitable_future(
    registry: offload.Registry, executor: Executor, form: str
) -> None:
    """Each decorator form makes calls return an asyncio Future with the result."""
    wrapped = _forms(registry, executor)[form]
    future = wrapped(21)
    assert isinstance(future, __import__("asyncio").Future)
    assert await future == 42


def test_decorator_at_module_level_is_the_shared_registry() -> None:
    """``offload.offload`` resolves names in the shared registry."""
    assert offload.get_executor("default") is offload.get_executor()


async def test_wrapping_functions_you_do_not_own(registry: offload.Registry) -> None:
    """Plain calls wrap library functions such as ``time.sleep`` and ``socket.getaddrinfo``."""
    nap = registry.offload(time.sleep, executor="io")
    resolve = registry.offload(socket.getaddrinfo, executor="io")
    slept = nap(0)
    await slept
    assert slept.result() is None
    infos = await resolve("127.0.0.1", 80, type=socket.SOCK_STREAM)
    assert infos[0][4] == ("127.0.0.1", 80)


async def test_call_arguments_named_like_options_pass_through(registry: offload.Registry) -> None:
    """Arguments called executor, timeout, name or loop reach the function untouched."""

    @registry.offload("io")
    def echo(**kwargs: object) -> dict[str, object]:
        return kwargs

    sent = {"executor": "x", "timeout": 1.5, "name": "n", "loop": None}
    assert await echo(**sent) == sent


async def test_decorating_before_registering_resolves_at_call_time(
    registry: offload.Registry,
) -> None:
    """A name used before it is registered works once it is registered."""

    @registry.offload("later")
    def where() -> str:
        return threading.current_thread().name

    registry.register("later", offload.ThreadPool(1, name="later-pool"))
    assert (await where()).startswith("later-pool_")


async def test_replacing_a_name_redirects_decorated_functions(registry: offload.Registry) -> None:
    """After ``register(replace=True)``, existing decorated functions use the new executor."""

    @registry.offload("db")
    def where() -> str:
        return threading.current_thread().name

    registry.register("db", offload.ThreadPool(1, name="first"))
    assert (await where()).startswith("first_")
    registry.register("db", offload.ThreadPool(1, name="second"), replace=True)
    assert (await where()).startswith("second_")
