"""Property-based: any sequence of register, replace, call and shutdown keeps the registry sane."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import offload

NAMES = st.sampled_from(["a", "b", "io"])
KINDS = st.sampled_from(["offload-factory", "offload-instance", "stdlib-instance"])


class RegistryMachine(RuleBasedStateMachine):
    """A model of what each name should do, checked against a real registry."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = offload.Registry()
        self.loop = asyncio.new_event_loop()
        self.owned: list[ThreadPoolExecutor | offload.ThreadPool] = []
        self.registered = {"cpu", "default", "io"}  # names the registry knows
        self.claimed: set[str] = set()  # names an application registered (not a default)
        self.closed: set[str] = set()  # names shut down and not registered since
        self.completed: dict[str, int] = {}  # calls that returned, per name

    def _make(self, kind: str) -> object:
        if kind == "offload-factory":
            return lambda: offload.ThreadPool(2)
        pool = offload.ThreadPool(2) if kind == "offload-instance" else ThreadPoolExecutor(2)
        self.owned.append(pool)
        return pool

    @rule(name=NAMES, kind=KINDS, replace=st.booleans(), bound=st.sampled_from([None, 1, 8]))
    def register(self, name: str, kind: str, replace: bool, bound: int | None) -> None:
        # A library default ("io") gives way; a name an application registered
        # needs replace=True, even once it is shut down.
        taken = name in self.claimed
        if taken and not replace:
            with pytest.raises(ValueError, match="replace=True"):
                self.registry.register(name, self._make(kind), max_pending=bound)  # type: ignore[arg-type]
            return
        self.registry.register(name, self._make(kind), replace=replace, max_pending=bound)  # type: ignore[arg-type]
        self.registered.add(name)
        self.claimed.add(name)
        self.closed.discard(name)

    @rule(name=NAMES, x=st.integers(-1000, 1000))
    def call(self, name: str, x: int) -> None:
        negate = self.registry.offload(name)(int.__neg__)

        async def run() -> int:
            return await asyncio.wait_for(negate(x), 10)

        try:
            result = self.loop.run_until_complete(run())
        except offload.UnknownExecutorError:
            assert name not in self.registered
        except offload.ExecutorShutdownError:
            assert name in self.closed
        else:
            assert result == -x
            assert name in self.registered
            assert name not in self.closed
            self.completed[name] = self.completed.get(name, 0) + 1

    @precondition(lambda self: len(self.closed) < len(self.registered))
    @rule()
    def shutdown(self) -> None:
        self.registry.shutdown(timeout=10)
        self.closed = set(self.registered)

    @invariant()
    def names_and_counters_match_the_model(self) -> None:
        assert set(self.registry.names()) == self.registered
        stats = self.registry.stats()
        for name, count in self.completed.items():
            entry = stats[name]
            assert entry["completed"] == count
            assert entry["submitted"] == count
            assert (entry["waiting"], entry["queued"]) == (0, 0)

    def teardown(self) -> None:
        self.registry.shutdown(timeout=10)
        for pool in self.owned:
            pool.shutdown(wait=True)
        self.loop.close()


RegistryMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=15, deadline=None
)
test_register_replace_call_and_shutdown_in_any_order = RegistryMachine.TestCase
