"""What a facade declaration says, checked when the class is defined; and ``assert_parity``.

A facade lists names of its sync class under one keyword per shape of attribute:
``run`` and ``sync`` take methods, ``iterate`` methods returning an iterator
(generator functions), ``contexts`` methods returning a context manager
(``@contextmanager`` ones), ``attrs`` instance attributes and class-level values
(classes, constants), and ``omit`` whatever is left out on purpose.

Each public attribute of a class has a *shape* (``shape``): a method, a generator
method, a ``@contextmanager`` method, a class or static method, a property (any
data descriptor), or a value (a class, a constant). A keyword refuses a name
whose shape it cannot serve and names the keyword that can: a generator in
``run=`` would be stepped on the event loop, a constant in ``run=`` would
become a method. Instance attributes are not on the class, so only ``attrs=``
takes names the class lacks.

A name holding ``*``, ``?`` or ``[`` is a pattern (``fnmatch``) over the sync
class's public names, and takes only the names of its keyword's shape: in
``run=`` plain methods, in ``iterate=`` generator methods, in ``contexts=``
``@contextmanager`` methods, in ``attrs=`` classes and constants. A pattern never
takes a name listed outright, one in ``omit=``, or one the facade class defines
itself; a bare ``"*"`` takes only what no other pattern takes, and two other
patterns of different keywords may not take the same name. So a client with
hundreds of commands is ``run=["*"]`` plus the exceptions, and a command added
by the next release is declared by the pattern.

Nothing here imports the facade module: ``resolve`` is told how to recognise a
facade class and which names the class defines.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

#: Sync protocol methods and the async ones a facade offers for them.
PROTOCOL = {"__iter__": "__aiter__", "__enter__": "__aenter__", "__exit__": "__aexit__"}

#: The keywords that list names, in the order messages name them.
KEYWORDS = ("run", "sync", "iterate", "contexts", "attrs")

# The shapes of a class attribute.
METHOD = "method"
GENERATOR = "generator method"
CONTEXT = "context-manager method"
CLASS_METHOD = "class or static method"
PROPERTY = "property"
VALUE = "class or constant"
ABSENT = "not on the class"

#: The keywords that fit each shape, as messages name them.
FITS = {
    METHOD: "run= or sync=",
    GENERATOR: "iterate=",
    CONTEXT: "contexts=",
    CLASS_METHOD: "run= or sync=, or omit= (call it on the sync class)",
    PROPERTY: "attrs= (or nothing: properties pass through as they are)",
    VALUE: "attrs=",
    ABSENT: "attrs=",
}

#: The shapes a keyword takes by name.
TAKES = {
    "run": {METHOD, CLASS_METHOD},
    "sync": {METHOD, CLASS_METHOD},
    "iterate": {METHOD, GENERATOR, CLASS_METHOD},
    "contexts": {METHOD, CONTEXT, CLASS_METHOD},
    "attrs": {VALUE, PROPERTY, ABSENT},
}

#: The shapes a pattern of a keyword takes.
PATTERN_TAKES = {
    "run": {METHOD},
    "sync": {METHOD},
    "iterate": {GENERATOR},
    "contexts": {CONTEXT},
    "attrs": {VALUE},
}

#: Every function ``contextlib.contextmanager`` makes runs this code.
_CONTEXT_CODE = contextlib.contextmanager(lambda: iter(())).__code__

#: Names a conflict message shows before it says how many more there are.
_SHOWN = 8


#: How a class attribute's shape is told, first match wins.
_SHAPES: tuple[tuple[Callable[[Any], bool], str], ...] = (
    (
        lambda a: isinstance(a, (classmethod, staticmethod, types.ClassMethodDescriptorType)),
        CLASS_METHOD,
    ),
    (lambda a: isinstance(a, type), VALUE),
    (inspect.isgeneratorfunction, GENERATOR),
    (lambda a: getattr(a, "__code__", None) is _CONTEXT_CODE, CONTEXT),
    (inspect.isdatadescriptor, PROPERTY),
    (callable, METHOD),
)


def shape(wraps: type, name: str) -> str:
    """The shape of the attribute ``name`` of the class ``wraps``, as seen on the class."""
    try:
        attribute = inspect.getattr_static(wraps, name)
    except AttributeError:
        return ABSENT
    return next((found for test, found in _SHAPES if test(attribute)), VALUE)


def is_pattern(name: str) -> bool:
    """Whether a listed name is an ``fnmatch`` pattern."""
    return any(char in name for char in "*?[")


class Declaration(NamedTuple):
    """A facade class's own declaration, resolved against its sync class."""

    #: Each declared name and its keyword: named outright, or taken by a pattern.
    declared: dict[str, str]
    #: Method name to the facade class its result goes into.
    by_method: dict[str, type]
    #: Sync class to the facade class a result of that class goes into.
    by_type: dict[type, type]
    #: Public names of the sync class left out on purpose.
    omitted: frozenset[str]


def resolve(
    owner: str,
    wraps: type,
    lists: Mapping[str, Iterable[str]],
    wrap: object,
    omit: Iterable[str],
    *,
    defined: Callable[[str], bool],
    is_facade: Callable[[object], bool],
) -> Declaration:
    """Check a declaration and resolve its patterns; a ``TypeError`` says what is wrong.

    ``owner`` is the facade class's name, ``lists`` maps each keyword of
    ``KEYWORDS`` to its names, ``defined(name)`` says whether the facade class
    defines ``name`` itself (a pattern leaves it alone), and ``is_facade`` tells
    a facade class declared with ``wraps=``.
    """
    if not isinstance(wraps, type):
        raise TypeError(f"wraps= takes the sync class, got {wraps!r}")
    named, patterns = _split(owner, lists)
    omitted, omit_patterns = _split_omit(owner, wraps, omit, named)
    _check_shapes(owner, wraps, named)
    omitted.update(
        name
        for name in _public(wraps)
        if name not in named and any(fnmatch.fnmatchcase(name, p) for p in omit_patterns)
    )
    declared = dict(named)
    declared.update(
        _by_pattern(
            owner,
            wraps,
            patterns,
            skip=lambda name: name in named or name in omitted or defined(name),
        )
    )
    by_method, by_type = _wraps(owner, wrap, declared, is_facade)
    return Declaration(declared, by_method, by_type, frozenset(omitted))


def _strings(owner: str, keyword: str, names: Iterable[str]) -> list[str]:
    if isinstance(names, Mapping) or not isinstance(names, Iterable):
        raise TypeError(f"{keyword}= for {owner} takes a list of names, got {names!r}")
    listed = list(names)
    bad = [name for name in listed if not isinstance(name, str) or not name]
    if bad:
        raise TypeError(f"{keyword}= for {owner} takes names as strings, got {bad}")
    return listed


def _split(
    owner: str, lists: Mapping[str, Iterable[str]]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The names listed outright, each with its keyword; and each keyword's patterns."""
    named: dict[str, str] = {}
    patterns: dict[str, list[str]] = {}
    for keyword in KEYWORDS:
        for name in _strings(owner, keyword, lists.get(keyword, ())):
            if is_pattern(name):
                patterns.setdefault(keyword, []).append(name)
            elif named.setdefault(name, keyword) != keyword:
                raise TypeError(
                    f"{name!r} listed in both {named[name]}= and {keyword}= for {owner}"
                )
    private = sorted(
        name for name, keyword in named.items() if keyword == "attrs" and name[0] == "_"
    )
    if private:
        raise TypeError(
            f"attrs= for {owner} lists {private}: names starting with '_' are the facade's "
            "own; read them on facade.__wrapped__"
        )
    return named, patterns


def _split_omit(
    owner: str, wraps: type, omit: Iterable[str], named: Mapping[str, str]
) -> tuple[set[str], list[str]]:
    omitted: set[str] = set()
    patterns: list[str] = []
    for name in _strings(owner, "omit", omit):
        if is_pattern(name):
            patterns.append(name)
        elif name in named:
            raise TypeError(f"{name!r} listed in both {named[name]}= and omit= for {owner}")
        else:
            omitted.add(name)
    unknown = sorted(name for name in omitted if not hasattr(wraps, name))
    if unknown:
        raise TypeError(
            f"omit= for {owner} lists {unknown}, which {wraps.__qualname__} does not have"
        )
    return omitted, patterns


def _check_shapes(owner: str, wraps: type, named: Mapping[str, str]) -> None:
    """Refuse names a keyword cannot serve, saying which keyword fits each."""
    absent = sorted(
        name for name, kw in named.items() if kw != "attrs" and not hasattr(wraps, name)
    )
    if absent:
        raise TypeError(
            f"{wraps.__qualname__} has no attributes {absent}, listed for {owner}; "
            "an attribute its instances set is listed in attrs="
        )
    wrong = []
    for name, keyword in named.items():
        found = shape(wraps, name)
        if found not in TAKES[keyword]:
            wrong.append(f"{name!r} is a {found}, for {FITS[found]}, not {keyword}=")
    if wrong:
        raise TypeError(f"{owner} declares {wraps.__qualname__}'s " + "; ".join(wrong))


def _public(wraps: type) -> Iterator[str]:
    return (name for name in dir(wraps) if not name.startswith("_"))


def _by_pattern(
    owner: str, wraps: type, patterns: Mapping[str, list[str]], *, skip: Callable[[str], bool]
) -> dict[str, str]:
    """The names patterns take, each with its keyword."""
    if not patterns:
        return {}
    taken: dict[str, str] = {}
    conflicts: dict[str, list[str]] = {}
    for name in _public(wraps):
        if skip(name):
            continue
        chosen = _taking(name, shape(wraps, name), patterns)
        if len(chosen) > 1:
            conflicts.setdefault(" and ".join(f"{kw}=" for kw in chosen), []).append(name)
        elif chosen:
            taken[name] = chosen[0]
    if conflicts:
        problems = []
        for keywords, names in conflicts.items():
            more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            problems.append(f"{', '.join(map(repr, names[:_SHOWN]))}{more} by {keywords}")
        raise TypeError(
            f"patterns of {owner} take the same names of {wraps.__qualname__}: "
            f"{'; '.join(problems)}; list each outright in the keyword it belongs to"
        )
    return taken


def _taking(name: str, found: str, patterns: Mapping[str, list[str]]) -> list[str]:
    """The keywords whose patterns take ``name``: those with a specific pattern, else a bare *."""
    specific, bare = [], []
    for keyword, listed in patterns.items():
        if found not in PATTERN_TAKES[keyword]:
            continue
        matching = [pattern for pattern in listed if fnmatch.fnmatchcase(name, pattern)]
        if any(pattern != "*" for pattern in matching):
            specific.append(keyword)
        elif matching:
            bare.append(keyword)
    return specific or bare


def _wraps(
    owner: str, wrap: object, declared: Mapping[str, str], is_facade: Callable[[object], bool]
) -> tuple[dict[str, type], dict[type, type]]:
    """``wrap=``: by method for a mapping's keys, by type for every facade class it names."""
    if wrap is None:
        return {}, {}
    if isinstance(wrap, Mapping):
        by_method = dict(wrap)
        classes = list(by_method.values())
    elif isinstance(wrap, Iterable) and not isinstance(wrap, str):
        by_method, classes = {}, list(wrap)
    else:
        raise TypeError(
            f"wrap= for {owner} takes facade classes, or a mapping of method names to them, "
            f"got {wrap!r}"
        )
    stray = sorted(
        str(name)
        for name in by_method
        if declared.get(name) not in {"run", "sync", "iterate", "contexts"}
    )
    if stray:
        raise TypeError(
            f"wrap= for {owner} names {stray}, which are in neither run=, sync=, iterate= "
            "nor contexts="
        )
    bad = [target for target in classes if not is_facade(target)]
    if bad:
        raise TypeError(f"wrap= needs Facade subclasses declared with wraps=, got {bad}")
    by_type: dict[type, type] = {}
    for target in classes:
        sync_class = target._offload_wraps
        other = by_type.setdefault(sync_class, target)
        if other is not target:
            raise TypeError(
                f"wrap= for {owner} lists {other.__qualname__} and {target.__qualname__}, "
                f"which both wrap {sync_class.__qualname__}: a result of that class could go "
                "into either; define the method in the class body to choose"
            )
    return by_method, by_type


def _covered(facade_class: type, name: str) -> bool:
    return hasattr(facade_class, PROTOCOL.get(name, name))


def defines(wraps: type, name: str) -> bool:
    """Whether ``wraps`` or a base class other than ``object`` defines ``name``."""
    return any(name in vars(klass) for klass in wraps.__mro__ if klass is not object)


def assert_parity(facade_class: type, *, ignore: Iterable[str] = ()) -> None:
    """Assert that a facade offers every public attribute of its sync class.

    For use in a driver's own tests, so that an attribute added to the sync
    class cannot be forgotten in the facade. A name counts as offered when the
    facade has it (declared, passed through, or defined in its class body), or
    when the declaration leaves it out with ``omit=``; ``__iter__`` and
    ``__enter__`` count when the facade has ``__aiter__`` and ``__aenter__``.
    Names in ``ignore`` (or ``fnmatch`` patterns) are left out of the check; one
    that matches nothing on the sync class fails too, so the list stays honest.

    What is missing is reported by shape, with the keyword each shape needs,
    so a large client's report stays readable.

    Examples:
        >>> import offload
        >>> class Store:
        ...     VERSION = 2
        ...     def get(self, key): ...
        ...     def put(self, key, value): ...
        ...     def keys(self): ...
        ...     def scan(self):
        ...         yield from ()
        >>> offload.assert_parity(offload.facade(Store, run=["get", "put"]))
        Traceback (most recent call last):
        AssertionError: AsyncStore lacks 3 attribute(s) of Store:
          methods, for run= or sync=: 'keys';
          generator methods, for iterate=: 'scan';
          classes and constants, for attrs=: 'VERSION'.
        Declare them, or leave them out with omit= (or assert_parity's ignore=).
        >>> offload.assert_parity(
        ...     offload.facade(Store, run=["*"], iterate=["scan"], omit=["VERSION"])
        ... )
    """
    wraps: type = facade_class._offload_wraps  # type: ignore[attr-defined]
    ignored = list(ignore)
    names = [name for name in dir(wraps) if not name.startswith("_")]
    names += [name for name in PROTOCOL if defines(wraps, name)]
    stale = sorted(
        entry for entry in ignored if not any(fnmatch.fnmatchcase(name, entry) for name in names)
    )
    if stale:
        raise AssertionError(f"ignore= lists {stale}, which {wraps.__qualname__} does not have")
    omitted: frozenset[str] = getattr(facade_class, "_offload_omitted", frozenset())
    missing: dict[str, list[str]] = {}
    for name in names:
        if name in omitted or _covered(facade_class, name):
            continue
        if any(fnmatch.fnmatchcase(name, entry) for entry in ignored):
            continue
        found = METHOD if name in PROTOCOL else shape(wraps, name)
        missing.setdefault(found, []).append(name)
    if missing:
        count = sum(len(group) for group in missing.values())
        groups = ";\n  ".join(
            f"{_plural(found)}, for {FITS[found]}: {', '.join(map(repr, group))}"
            for found, group in sorted(missing.items(), key=lambda item: list(FITS).index(item[0]))
        )
        raise AssertionError(
            f"{facade_class.__qualname__} lacks {count} attribute(s) of {wraps.__qualname__}:\n"
            f"  {groups}.\n"
            "Declare them, or leave them out with omit= (or assert_parity's ignore=)."
        )


def _plural(found: str) -> str:
    return {
        METHOD: "methods",
        GENERATOR: "generator methods",
        CONTEXT: "context-manager methods",
        CLASS_METHOD: "class and static methods",
        PROPERTY: "properties",
        VALUE: "classes and constants",
        ABSENT: "attributes",
    }[found]
