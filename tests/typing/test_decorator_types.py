"""Static checks: mypy --strict must accept these, and each ``assert_type`` must hold.

The functions are also run, so the file cannot drift from runtime behaviour.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import Future
from concurrent.futures import ThreadPoolExecutor
from typing import assert_type

import offload
from offload import offload as off
from offload import run_on_executor


def parse(text: str, *, base: int = 10) -> int:
    return int(text, base)


bare = off(parse)
with_name = off("io")(parse)
with_keyword = off(executor="io")(parse)
empty = off()(parse)
plain_call = off(time.sleep, executor="io")
registry = offload.Registry()
via_registry = registry.offload(parse)
via_registry_named = registry.offload("io")(parse)


class Client:
    pool = ThreadPoolExecutor(1)

    @off
    def method(self, key: str) -> bytes:
        return key.encode()

    @off
    @classmethod
    def klass(cls, n: int) -> list[int]:
        return [n]

    @off
    @staticmethod
    def static(flag: bool) -> str:
        return str(flag)

    @run_on_executor(executor="pool")
    def tornado_style(self, n: int) -> float:
        return n / 2

    @run_on_executor
    def tornado_bare(self) -> None:
        return None


async def check_types() -> None:
    assert_type(bare("1"), Future[int])
    assert_type(bare("ff", base=16), Future[int])
    assert_type(with_name("1"), Future[int])
    assert_type(with_keyword("1"), Future[int])
    assert_type(empty("1"), Future[int])
    assert_type(plain_call(0), Future[None])
    assert_type(via_registry("1"), Future[int])
    assert_type(via_registry_named("1"), Future[int])
    client = Client()
    assert_type(client.method("k"), Future[bytes])
    assert_type(Client.klass(1), Future[list[int]])
    assert_type(client.klass(1), Future[list[int]])
    assert_type(Client.static(True), Future[str])
    assert_type(client.tornado_style(3), Future[float])
    assert_type(await client.method("k"), bytes)
    assert await bare("ff", base=16) == 255
    assert await client.tornado_style(3) == 1.5


def test_typed_usage_also_runs() -> None:
    """The typed forms behave at runtime as their types say."""
    asyncio.run(check_types())
    registry.shutdown()
    Client.pool.shutdown()
