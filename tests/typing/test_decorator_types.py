"""Static checks: mypy --strict and pyright strict must accept these, and each ``assert_type`` hold.

One section per public form: bare, parametrised, wrapping a function you do not
own, method, classmethod, staticmethod, ``Registry.offload`` and the Tornado
drop-in. The functions are also run, so the file cannot drift from runtime
behaviour.
"""

from __future__ import annotations

import asyncio
import socket
import time
from asyncio import Future
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import assert_type

import offload
from offload import offload as off
from offload import run_on_executor


def parse(text: str, *, base: int = 10) -> int:
    return int(text, base)


pool = ThreadPoolExecutor(1)
registry = offload.Registry()

# Bare: ``offload(fn)`` keeps the parameters and wraps the return type in a Future.
bare = off(parse)

# Parametrised: each form returns the decorator, an ``Offloader``.
assert_type(off("io"), offload.Offloader)
assert_type(off(executor="io"), offload.Offloader)
assert_type(off(), offload.Offloader)
assert_type(off(pool), offload.Offloader)
with_name = off("io")(parse)
with_keyword = off(executor="io")(parse)
empty = off()(parse)
with_executor = off(pool)(parse)

# Wrapping functions you do not own, as a plain call.
plain_call = off(time.sleep, executor="io")
resolve = off(socket.gethostbyname)

# Registry.offload: the same forms, resolving names in that registry.
assert_type(registry.offload("io"), offload.Offloader)
assert_type(registry.offload(executor="io"), offload.Offloader)
assert_type(registry.offload(), offload.Offloader)
via_registry = registry.offload(parse)
via_registry_named = registry.offload("io")(parse)
via_registry_keyword = registry.offload(executor="io")(parse)
via_registry_call = registry.offload(time.sleep, executor=pool)


@off
def decorated_bare(n: int) -> list[int]:
    return [n]


@off("io")
def decorated_named(n: int, /, *names: str, **flags: bool) -> dict[str, int]:
    return dict.fromkeys(names, n) | {key: int(value) for key, value in flags.items()}


@run_on_executor
def tornado_plain(n: int) -> int:
    return n + 1


class Client:
    executor = pool
    pool = pool

    @off
    def method(self, key: str) -> bytes:
        return key.encode()

    @off("io")
    def named_method(self, key: str) -> str:
        return key

    @off
    @classmethod
    def klass(cls, n: int) -> list[int]:
        return [n]

    @off
    @staticmethod
    def static(flag: bool) -> str:
        return str(flag)

    @off(executor="io")
    @classmethod
    def named_klass(cls) -> type[Client]:
        return cls

    @off("io")
    @staticmethod
    def named_static() -> None:
        return None

    @registry.offload
    def registry_method(self) -> int:
        return 1

    @registry.offload("io")
    @classmethod
    def registry_klass(cls) -> str:
        return cls.__name__

    @registry.offload
    @staticmethod
    def registry_static(x: float) -> float:
        return x

    @run_on_executor
    def tornado_bare(self) -> None:
        return None

    @run_on_executor()
    def tornado_empty(self, n: int) -> int:
        return n

    @run_on_executor(executor="pool")
    def tornado_style(self, n: int) -> float:
        return n / 2


async def check_types() -> None:
    # Bare and parametrised.
    keeps_signature: Callable[[str], Future[int]] = bare
    assert_type(keeps_signature("1"), Future[int])
    assert_type(bare("1"), Future[int])
    assert_type(bare("ff", base=16), Future[int])
    assert_type(with_name("1"), Future[int])
    assert_type(with_keyword("1"), Future[int])
    assert_type(empty("1"), Future[int])
    assert_type(with_executor("1"), Future[int])
    assert_type(decorated_bare(1), Future[list[int]])
    assert_type(decorated_named(1, "a", "b", strict=True), Future[dict[str, int]])
    # Functions you do not own.
    assert_type(plain_call(0), Future[None])
    assert_type(resolve("localhost"), Future[str])
    # Registry.offload.
    assert_type(via_registry("1"), Future[int])
    assert_type(via_registry_named("1"), Future[int])
    assert_type(via_registry_keyword("1", base=2), Future[int])
    assert_type(via_registry_call(0), Future[None])
    # Methods, classmethods and staticmethods, through the class and an instance.
    client = Client()
    assert_type(client.method("k"), Future[bytes])
    assert_type(client.named_method("k"), Future[str])
    assert_type(Client.klass(1), Future[list[int]])
    assert_type(client.klass(1), Future[list[int]])
    assert_type(Client.static(flag=True), Future[str])
    assert_type(client.static(flag=False), Future[str])
    assert_type(Client.named_klass(), Future[type[Client]])
    assert_type(Client.named_static(), Future[None])
    assert_type(client.registry_method(), Future[int])
    assert_type(Client.registry_klass(), Future[str])
    assert_type(Client.registry_static(1.0), Future[float])
    # The Tornado drop-in.
    assert_type(tornado_plain(1), Future[int])
    assert_type(client.tornado_bare(), Future[None])
    assert_type(client.tornado_empty(2), Future[int])
    assert_type(client.tornado_style(3), Future[float])
    # Awaiting gives the original return type.
    assert_type(await client.method("k"), bytes)
    assert_type(await Client.klass(1), list[int])
    assert_type(await client.tornado_style(3), float)
    assert await bare("ff", base=16) == 255
    assert await client.tornado_style(3) == 1.5
    assert await Client.named_klass() is Client
    assert await via_registry_keyword("11", base=2) == 3
    assert await tornado_plain(1) == 2


def misuse_is_rejected() -> None:
    """Never called: each line is a type error, and ``warn_unused_ignores`` proves it."""
    bare(1)  # type: ignore[arg-type]
    bare("1", base="2")  # type: ignore[arg-type]
    decorated_bare()  # type: ignore[call-arg]
    off(42)  # type: ignore[call-overload]
    off("io", executor="io")  # type: ignore[call-overload]
    run_on_executor(executor=pool)  # type: ignore[call-overload]
    _: int = bare("1")  # type: ignore[assignment]


def test_typed_usage_also_runs() -> None:
    """The typed forms behave at runtime as their types say."""
    asyncio.run(check_types())
    registry.shutdown()
    pool.shutdown()
