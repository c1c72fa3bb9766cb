"""Facade declarations beyond run= and sync=: iterate=, contexts=, attrs=, wrap= by type,
patterns and omit=, the checks made when a facade class is defined, and assert_parity."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any, ClassVar, Self

import pytest
import redis

import offload
from tests.conftest import WAIT


class Row:
    """A result object a facade may wrap."""

    def __init__(self, value: int) -> None:
        self.value = value

    def double(self) -> int:
        return self.value * 2


class SpecialRow(Row):
    """A subclass: a facade over it is nearer in the MRO than one over Row."""


class Source:
    """A blocking client with every shape a declaration deals with."""

    LIMIT = 10
    Error = LookupError

    def __init__(self) -> None:
        self.name = "source"
        self.threads: list[tuple[str, int]] = []
        self.closed = threading.Event()
        self.stop = threading.Event()
        self.events: list[tuple[str, Any]] = []

    def where(self) -> int:
        return threading.get_ident()

    def row(self, value: int) -> Row:
        return Row(value)

    def special(self, value: int) -> Row:
        return SpecialRow(value)

    def twin(self) -> Source:
        return Source()

    def itself(self) -> Self:
        return self

    def numbers(self, count: int) -> Iterator[int]:
        """Yield 0 to count - 1."""
        self.threads.append(("call", threading.get_ident()))
        try:
            for n in range(count):
                self.threads.append(("step", threading.get_ident()))
                yield n
        finally:
            self.closed.set()

    def rows(self) -> Iterator[Any]:
        yield self
        yield SpecialRow(1)
        yield 3

    def blocking(self) -> Iterator[str]:
        yield "first"
        self.stop.wait(WAIT)  # blocks, as a read from a quiet socket would
        yield "after the stop"

    def failing(self) -> Iterator[int]:
        yield 1
        raise LookupError("lost the connection")

    def listed(self) -> list[int]:
        return [1, 2]

    @contextlib.contextmanager
    def session(self, label: str) -> Iterator[Self]:
        """A block whose both ends record the thread they run on."""
        self.events.append(("enter", (label, threading.get_ident())))
        try:
            yield self
        except LookupError as exc:
            self.events.append(("error", exc))
            raise
        finally:
            self.events.append(("exit", threading.get_ident()))

    @contextlib.contextmanager
    def quietly(self) -> Iterator[Row]:
        try:
            yield Row(7)
        except LookupError:
            self.events.append(("suppressed", None))

    def not_a_context(self) -> int:
        return 3

    def gen_expression(self) -> Any:
        return (n for n in range(3))

    @classmethod
    def make(cls) -> Source:
        return cls()

    @property
    def label(self) -> str:
        return self.name.upper()


class AsyncRow(offload.Facade[Row], wraps=Row, executor="io", run=["double"]):
    """Rows."""


class AsyncSpecialRow(offload.Facade[SpecialRow], wraps=SpecialRow, executor="io"):
    """Special rows: no methods of their own."""


class AsyncSource(
    offload.Facade[Source],
    wraps=Source,
    executor="io",
    run=["where", "row", "special", "twin", "itself", "gen_expression"],
    iterate=["numbers", "rows", "blocking", "failing", "listed"],
    contexts=["session", "quietly", "not_a_context"],
    attrs=["name", "LIMIT", "Error"],
    wrap=[AsyncSpecialRow, AsyncRow],
    prefetch=4,
    on_cancel=lambda source: source.stop.set(),
):
    """Everything at once."""


# -- iterate= ----------------------------------------------------------------------


async def test_an_iterate_method_calls_and_steps_its_generator_on_one_executor_thread() -> None:
    """The generator is made and stepped on one thread of the executor, never the loop's."""
    source = Source()
    numbers = AsyncSource(source).numbers(5)
    assert source.threads == []  # nothing runs until the iteration starts
    assert [n async for n in numbers] == [0, 1, 2, 3, 4]
    threads = {ident for _, ident in source.threads}
    assert len(threads) == 1
    assert threading.get_ident() not in threads
    assert source.threads[0][0] == "call"


async def test_an_iterate_method_inside_a_facade_block_steps_on_the_held_thread() -> None:
    """Inside ``async with facade`` on a pool, the iteration runs on the thread it holds."""

    class Held:
        def __enter__(self) -> Self:
            return self

        def __exit__(self, *exc_info: object) -> None:
            pass

        def where(self) -> int:
            return threading.get_ident()

        def idents(self) -> Iterator[int]:
            yield threading.get_ident()
            yield threading.get_ident()

    held_facade = offload.facade(Held, run=["where"], iterate=["idents"])
    pool = offload.ThreadPool(4, name="held")
    try:
        held = held_facade(Held(), executor=pool)
        async with held:
            thread = await held.where()
            assert [ident async for ident in held.idents()] == [thread, thread]
    finally:
        pool.shutdown()


async def test_iterate_items_come_back_wrapped_by_their_type() -> None:
    """The wrapped object itself is the facade; an item of a wrapped class, its facade."""
    source = AsyncSource(Source())
    items = [item async for item in source.rows()]
    assert items[0] is source
    assert type(items[1]) is AsyncSpecialRow
    assert items[2] == 3


async def test_breaking_out_of_an_iterate_loop_closes_the_generator() -> None:
    """Leaving early closes the method's generator on its thread: its ``finally`` runs."""
    sync_source = Source()
    numbers = AsyncSource(sync_source).numbers(1000)
    async with numbers:
        assert await anext(numbers) == 0
    assert sync_source.closed.is_set()


async def test_closing_a_blocked_iteration_calls_on_cancel() -> None:
    """A generator blocked inside a step when its iteration is closed is interrupted."""
    sync_source = Source()
    blocking = AsyncSource(sync_source).blocking()
    assert await anext(blocking) == "first"
    await blocking.aclose()  # the generator waits on stop: on_cancel sets it
    assert sync_source.stop.is_set()


async def test_an_iterate_error_arrives_after_the_items_before_it() -> None:
    """What the generator raises comes after the items it yielded first."""
    got: list[int] = []

    async def drain() -> None:
        async for n in AsyncSource(Source()).failing():
            got.append(n)  # noqa: PERF401 - the items before the error are the point

    with pytest.raises(LookupError, match="lost the connection"):
        await drain()
    assert got == [1]


async def test_a_method_returning_any_iterable_may_be_iterated() -> None:
    """iterate= takes methods that return an iterable, not only generator functions."""
    assert [n async for n in AsyncSource(Source()).listed()] == [1, 2]


# -- contexts= ---------------------------------------------------------------------


async def test_a_contexts_method_enters_and_exits_on_one_executor_thread() -> None:
    """The method, its ``__enter__`` and ``__exit__`` run off the loop, on one thread."""
    sync_source = Source()
    source = AsyncSource(sync_source)
    block = source.session("a")
    assert sync_source.events == []  # called, but nothing ran yet
    async with block as entered:
        assert entered is source  # the manager yields the sync object: the facade comes back
        ((_, (label, entering)),) = sync_source.events
    assert label == "a"
    assert entering != threading.get_ident()
    assert sync_source.events[-1] == ("exit", entering)


async def test_a_contexts_block_passes_its_exception_to_exit() -> None:
    """``__exit__`` receives the block's exception, which propagates unless suppressed."""
    sync_source = Source()
    source = AsyncSource(sync_source)
    with pytest.raises(LookupError, match="no such row"):
        async with source.session("b"):
            raise LookupError("no such row")
    assert [kind for kind, _ in sync_source.events] == ["enter", "error", "exit"]
    async with source.quietly() as row:  # __enter__'s Row comes back as an AsyncRow
        assert type(row) is AsyncRow
        assert await row.double() == 14
        raise LookupError("suppressed by the manager")
    assert sync_source.events[-1] == ("suppressed", None)


async def test_calls_inside_a_contexts_block_run_on_the_thread_it_holds() -> None:
    """On a pool, a task's calls on the facade inside the block run on the held thread."""
    pool = offload.ThreadPool(4, name="contexts")
    try:
        sync_source = Source()
        source = AsyncSource(sync_source, executor=pool)
        async with source.session("c"):
            ((_, (_, entering)),) = sync_source.events
            assert [await source.where() for _ in range(3)] == [entering] * 3
        assert sync_source.events[-1] == ("exit", entering)
    finally:
        pool.shutdown()


async def test_a_contexts_manager_is_entered_once() -> None:
    """What a contexts= method returns serves one ``async with``: call the method again."""
    block = AsyncSource(Source()).session("d")
    async with block:
        pass
    with pytest.raises(RuntimeError, match="entered already"):
        async with block:
            pass


async def test_a_contexts_method_returning_no_context_manager_says_so() -> None:
    """A method that returns something else fails at ``async with``, naming the method."""
    with pytest.raises(TypeError, match=r"AsyncSource.not_a_context\(\) returned 3"):
        async with AsyncSource(Source()).not_a_context():
            pass


# -- wrap= -------------------------------------------------------------------------


async def test_results_are_wrapped_by_the_nearest_class_in_their_mro() -> None:
    """A Row becomes an AsyncRow and a SpecialRow an AsyncSpecialRow, in any listed order."""
    orders: list[list[type[offload.Facade[Any]]]] = [
        [AsyncRow, AsyncSpecialRow],
        [AsyncSpecialRow, AsyncRow],
    ]
    for order in orders:
        ordered = offload.facade(Source, run=["row", "special"], wrap=order)
        source = ordered(Source())
        assert type(await source.row(1)) is AsyncRow
        assert type(await source.special(1)) is AsyncSpecialRow


async def test_a_result_of_the_facades_own_class_becomes_a_facade_of_it() -> None:
    """A new sync object of the wrapped class comes back in the facade's class, same executor."""
    pool = offload.ThreadPool(1, name="own-class")
    try:
        source = AsyncSource(Source(), executor=pool)
        twin = await source.twin()
        assert type(twin) is AsyncSource
        assert twin is not source
        assert twin._executor is pool
        assert await source.itself() is source
    finally:
        pool.shutdown()


async def test_a_mappings_classes_also_wrap_by_type() -> None:
    """``wrap={"row": AsyncRow}`` wraps a Row that another method returns, too."""
    mapped = offload.facade(Source, run=["row", "special"], wrap={"row": AsyncRow})
    source = mapped(Source())
    assert type(await source.row(2)) is AsyncRow
    assert type(await source.special(2)) is AsyncRow  # SpecialRow is a Row: nearest listed


async def test_results_of_no_listed_class_come_back_as_they_are() -> None:
    """Anything else is returned unchanged."""
    source = AsyncSource(Source())
    assert isinstance(await source.where(), int)


async def test_the_facades_own_enter_result_is_wrapped_by_type() -> None:
    """What ``__enter__`` returns goes through wrap= as a method's result does."""

    class Opener:
        def __enter__(self) -> Row:
            return Row(4)

        def __exit__(self, *exc_info: object) -> None:
            pass

    opener_facade = offload.facade(Opener, wrap=[AsyncRow])
    async with opener_facade(Opener()) as row:
        assert type(row) is AsyncRow
        assert await row.double() == 8


def test_two_facades_over_one_class_are_refused() -> None:
    """A result could go into either: the declaration says so at once."""
    other = offload.facade(Row, name="OtherRow")
    with pytest.raises(TypeError, match="both wrap Row"):
        offload.facade(Source, run=["row"], wrap=[AsyncRow, other])


# -- attrs= and setting attributes --------------------------------------------------


async def test_attrs_pass_instance_attributes_and_class_values_through() -> None:
    """Instance attributes are read, set and deleted on the sync object; class values too."""
    sync_source = Source()
    source = AsyncSource(sync_source)
    assert source.name == "source"
    source.name = "renamed"
    assert sync_source.name == "renamed"
    assert "name" not in vars(source)
    assert source.label == "RENAMED"  # a property: passed through without a declaration
    del source.name
    assert not hasattr(sync_source, "name")
    assert source.LIMIT == AsyncSource.LIMIT == 10
    assert source.Error is AsyncSource.Error is LookupError


def test_setting_an_undeclared_public_attribute_is_refused() -> None:
    """It would land on the facade, not the sync object: an error says what to do instead."""
    source = AsyncSource(Source())
    with pytest.raises(AttributeError) as caught:
        source.colour = "red"
    message = str(caught.value)
    for part in ("AsyncSource", "'colour'", "attrs=", "__wrapped__.colour", "'_'"):
        assert part in message
    assert not hasattr(source.__wrapped__, "colour")
    source._colour = "red"  # a subclass's own state
    assert vars(source)["_colour"] == "red"


def test_reading_an_undeclared_attribute_says_how_to_declare_it() -> None:
    """The error names attrs= and __wrapped__; one raised inside a passthrough is its own."""
    source = AsyncSource(Source())
    with pytest.raises(AttributeError, match=r"'threads' to read.*attrs="):
        _ = source.threads
    del source.__wrapped__.name
    with pytest.raises(AttributeError, match="'Source' object has no attribute 'name'"):
        _ = source.name


# -- What a declaration refuses when the class is defined ---------------------------


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"run": ["numbers"]}, r"'numbers' is a generator method, for iterate=, not run="),
        ({"sync": ["numbers"]}, r"generator method, for iterate=, not sync="),
        ({"run": ["session"]}, r"'session' is a context-manager method, for contexts="),
        ({"iterate": ["session"]}, r"context-manager method, for contexts=, not iterate="),
        ({"contexts": ["numbers"]}, r"generator method, for iterate=, not contexts="),
        ({"run": ["LIMIT"]}, r"'LIMIT' is a class or constant, for attrs=, not run="),
        ({"sync": ["Error"]}, r"'Error' is a class or constant, for attrs="),
        ({"run": ["label"]}, r"'label' is a property, for attrs="),
        ({"attrs": ["where"]}, r"'where' is a method, for run= or sync=, not attrs="),
        ({"attrs": ["_secret"]}, r"starting with '_'"),
        ({"run": ["name"]}, r"no attributes \['name'\].*attrs="),
        ({"run": ["where"], "iterate": ["where"]}, r"'where' listed in both run= and iterate="),
        ({"run": ["where"], "omit": ["where"]}, r"'where' listed in both run= and omit="),
        ({"omit": ["nothing"]}, r"omit= .* lists \['nothing'\]"),
        ({"run": ["*"], "sync": ["*"]}, r"'where'.* by run= and sync="),
        ({"run": ["w*"], "sync": ["*e"]}, r"'where' by run= and sync="),
        ({"wrap": {"nope": AsyncRow}}, r"in neither run=, sync=, iterate= nor contexts="),
        ({"wrap": "AsyncRow"}, r"wrap= .* takes facade classes"),
        ({"run": "where", "attrs": [3]}, r"names as strings"),
        ({"prefetch": 0}, r"prefetch must be a positive int"),
    ],
)
def test_a_declaration_a_keyword_cannot_serve_fails_at_once(
    keywords: dict[str, Any], message: str
) -> None:
    """Each mistake fails when the class is defined, naming the keyword that fits."""
    with pytest.raises((TypeError, ValueError), match=message):
        offload.facade(Source, **keywords)


async def test_a_run_method_that_returns_a_generator_is_refused_when_called() -> None:
    """A generator the class definition could not see is refused at the call, not stepped."""
    with pytest.raises(TypeError, match=r"gen_expression\(\) returned a generator.*iterate="):
        await AsyncSource(Source()).gen_expression()


# -- Patterns and omit= ------------------------------------------------------------


def test_a_bare_star_takes_the_plain_methods_no_other_keyword_takes() -> None:
    """run=["*"] takes plain methods only: not generators, managers, values, class methods."""
    starred = offload.facade(
        Source, run=["*"], sync=["row"], iterate=["*"], contexts=["*"], omit=["twin"]
    )
    declared = starred._offload_declared
    assert declared["where"] == "run"
    assert declared["row"] == "sync"  # named outright: wins over the pattern
    assert declared["numbers"] == "iterate"
    assert declared["session"] == "contexts"
    assert "twin" not in declared
    assert not hasattr(starred, "twin")
    for left in ("make", "LIMIT", "Error"):  # class method and values: no pattern takes them
        assert left not in declared
    assert declared["not_a_context"] == "run"  # a plain method: contexts= "*" leaves it


def test_a_specific_pattern_wins_over_a_bare_star() -> None:
    """``sync=["w*"]`` takes ``where`` from ``run=["*"]``."""
    declared = offload.facade(Source, run=["*"], sync=["w*"])._offload_declared
    assert declared["where"] == "sync"
    assert declared["row"] == "run"


def test_patterns_leave_the_class_bodys_methods_alone() -> None:
    """A method the class body (or a facade base's body) defines is not taken by a pattern."""

    class Custom(offload.Facade[Source], wraps=Source, run=["*"]):
        def where(self) -> str:
            return "custom"

    class Sub(Custom, wraps=Source, run=["*"]):
        pass

    assert Sub(Source()).where() == "custom"
    assert "where" not in Custom._offload_declared


def test_omit_patterns_leave_names_out() -> None:
    """Names matching ``omit=`` patterns are left out of ``run=["*"]``."""
    declared = offload.facade(Source, run=["*"], omit=["*row", "sp*"])._offload_declared
    assert "row" not in declared
    assert "special" not in declared
    assert declared["where"] == "run"


# -- assert_parity -----------------------------------------------------------------


def test_parity_groups_what_is_missing_by_shape_with_the_keyword_each_needs() -> None:
    """The message lists methods, generators, managers, class methods and values apart."""
    with pytest.raises(AssertionError) as caught:
        offload.assert_parity(offload.facade(Source, run=["where"]))
    message = str(caught.value)
    assert "methods, for run= or sync=: 'gen_expression', 'itself'" in message
    assert "generator methods, for iterate=: 'blocking', 'failing', 'numbers', 'rows'" in message
    assert "context-manager methods, for contexts=: 'quietly', 'session'" in message
    assert "class and static methods, for run= or sync=, or omit=" in message
    assert "classes and constants, for attrs=: 'Error', 'LIMIT'" in message
    assert "'where'" not in message
    assert "'label'" not in message  # a property passes through


def test_parity_counts_omitted_names_and_ignore_patterns() -> None:
    """omit= names are left out on purpose; ignore= takes patterns; a stale one fails."""
    full = offload.facade(
        Source,
        run=["*"],
        iterate=["*"],
        contexts=["*"],
        attrs=["*"],
        omit=["make"],
    )
    offload.assert_parity(full)
    partial = offload.facade(Source, run=["*"], omit=["make"])
    offload.assert_parity(partial, ignore=["*ing", "numbers", "rows", "*ly", "session", "[EL]*"])
    with pytest.raises(AssertionError, match=r"ignore= lists \['nothing\*'\]"):
        offload.assert_parity(full, ignore=["nothing*"])


def test_parity_is_readable_on_redis_pys_client() -> None:
    """``run=["*"]`` over redis.Redis leaves a short report: the scans and class methods."""
    with pytest.raises(AssertionError) as caught:
        offload.assert_parity(offload.facade(redis.Redis, run=["*"]))
    message = str(caught.value)
    assert "generator methods, for iterate=: 'hscan_iter', 'scan_iter'" in message
    assert "'from_url'" in message
    assert "'get'" not in message
    assert len(message.splitlines()) == 4  # the heading, two groups, what to do
    offload.assert_parity(
        offload.facade(redis.Redis, run=["*"], iterate=["*"], omit=["from_url", "from_pool"])
    )


# -- facade() ----------------------------------------------------------------------


def test_the_cache_tells_the_new_keywords_apart() -> None:
    """Each keyword is part of the cache key; a list and a tuple of classes are one key."""
    base = offload.facade(Source, run=["where"])
    variants: list[dict[str, Any]] = [
        {"iterate": ["numbers"]},
        {"contexts": ["session"]},
        {"attrs": ["name"]},
        {"omit": ["twin"]},
        {"wrap": [AsyncRow]},
    ]
    made = {offload.facade(Source, run=["where"], **keywords) for keywords in variants}
    assert base not in made
    assert len(made) == len(variants)
    listed = offload.facade(Source, run=["row"], wrap=[AsyncRow, AsyncSpecialRow])
    assert offload.facade(Source, run=["row"], wrap=(AsyncSpecialRow, AsyncRow)) is listed


class Logged:
    """A sync class whose subclass facade keeps state of its own."""

    seen: ClassVar[list[str]] = []

    def ping(self) -> str:
        return "pong"


async def test_a_subclass_keeps_its_own_state_in_underscore_names() -> None:
    """A facade subclass sets ``self._calls`` freely; the sync object is untouched."""

    class Counting(offload.Facade[Logged], wraps=Logged, executor="io", run=["ping"]):
        def __init__(self, wrapped: Logged) -> None:
            super().__init__(wrapped)
            self._calls = 0

        async def counted_ping(self) -> str:
            self._calls += 1
            return str(await self.ping())

    counting = Counting(Logged())
    assert await counting.counted_ping() == "pong"
    assert counting._calls == 1
    assert not hasattr(counting.__wrapped__, "_calls")
    assert await asyncio.wait_for(counting.ping(), WAIT) == "pong"


async def test_a_subclass_without_a_declaration_gets_results_of_its_class() -> None:
    """A subclass that only adds methods returns new sync objects in its own class."""

    class Extended(AsyncSource):
        def extra(self) -> str:
            return "extra"

    twin = await Extended(Source()).twin()
    assert type(twin) is Extended
    assert type(await AsyncSource(Source()).twin()) is AsyncSource
