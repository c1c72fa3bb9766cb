"""``offload`` works on every kind of callable and keeps its identity."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import offload

registry = offload.Registry()


class Client:
    """A class with every binding kind decorated."""

    factor = 10

    def __init__(self, base: int) -> None:
        self.base = base

    @registry.offload
    def method(self, x: int) -> int:
        """Add base."""
        return self.base + x

    @registry.offload
    @classmethod
    def klass(cls, x: int) -> int:
        """Multiply by the class factor."""
        return cls.factor * x

    @registry.offload
    @staticmethod
    def static(x: int) -> int:
        """Negate."""
        return -x


class SubClient(Client):
    factor = 100

    @registry.offload
    def method(self, x: int) -> int:
        """Override that calls the parent's synchronous body."""
        parent: int = super().method.__wrapped__(x)  # type: ignore[attr-defined]
        return parent * 2


class Adder:
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x: int) -> int:
        return self.n + x


def plain(x: int, *, scale: int = 1) -> int:
    """Scale x."""
    return x * scale


CASES: dict[str, tuple[Any, int, int]] = {
    "function": (registry.offload(plain), 3, 3),
    "instance-method": (Client(1).method, 2, 3),
    "classmethod-on-class": (Client.klass, 2, 20),
    "classmethod-on-instance": (Client(0).klass, 2, 20),
    "classmethod-subclass": (SubClient.klass, 2, 200),
    "staticmethod-on-class": (Client.static, 2, -2),
    "staticmethod-on-instance": (Client(0).static, 2, -2),
    "subclass-override": (SubClient(1).method, 2, 6),
    "callable-object": (registry.offload(Adder(5)), 2, 7),
    "bound-method-of-existing-object": (
        registry.offload(Client(4).method.__wrapped__),  # type: ignore[attr-defined]
        1,
        5,
    ),
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_each_binding_kind_runs_with_its_binding(kind: str) -> None:
    """Calls return Futures whose results show self or cls was bound correctly."""
    fn, arg, expected = CASES[kind]
    assert await fn(arg) == expected


@pytest.mark.parametrize("kind", sorted(CASES))
def test_wrapped_is_the_plain_synchronous_call(kind: str) -> None:
    """``__wrapped__`` (also on bound methods) calls the original synchronously."""
    fn, arg, expected = CASES[kind]
    assert fn.__wrapped__(arg) == expected


def test_introspection_shows_the_original() -> None:
    """Name, docstring, signature and qualname are the original's."""
    wrapped = registry.offload(plain)
    assert wrapped.__name__ == "plain"
    assert wrapped.__doc__ == "Scale x."
    assert inspect.signature(wrapped) == inspect.signature(plain)
    assert Client.method.__qualname__ == "Client.method"
    assert Client(1).method.__doc__ == "Add base."
    assert str(inspect.signature(Client(1).method)) == "(x: 'int') -> 'int'"


def test_wrapping_is_not_coroutine_function() -> None:
    """A wrapped sync function is not reported as a coroutine function."""
    assert not inspect.iscoroutinefunction(registry.offload(plain))


def teardown_module() -> None:
    registry.shutdown()
