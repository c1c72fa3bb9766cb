"""Static checks for ``run_on_loop``: mypy --strict and pyright accept these.

A coroutine function gives its coroutine's result type; a plain function its
return type; the arguments are checked against the function's parameters. The
functions are also run, so the file cannot drift from runtime behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import assert_type

import offload


async def fetch(key: str, *, default: int = 0) -> int:
    await asyncio.sleep(0)
    return len(key) + default


def count(items: list[str]) -> int:
    return len(items)


def later(x: int) -> Awaitable[int]:
    return asyncio.sleep(0, result=x)


@offload.offload
def blocking(key: str) -> tuple[int, int, int]:
    # A coroutine function: the type of what its coroutine returns, not a coroutine.
    fetched = assert_type(offload.run_on_loop(fetch, key, default=1), int)
    # A plain function: its return type.
    counted = assert_type(offload.run_on_loop(count, [key]), int)
    # A plain function typed as returning an awaitable: what that awaitable gives.
    awaited = assert_type(offload.run_on_loop(later, 2), int)
    return fetched, counted, awaited


def misuse() -> None:
    offload.run_on_loop(fetch, 1)  # type: ignore[call-overload]  # a str is expected
    offload.run_on_loop(count)  # type: ignore[call-overload]  # items is missing
    offload.run_on_loop(fetch, "k", default="0")  # type: ignore[arg-type]


def test_run_on_loop_keeps_the_result_type() -> None:
    async def main() -> tuple[int, int, int]:
        return await blocking("abc")

    assert asyncio.run(main()) == (4, 1, 2)
