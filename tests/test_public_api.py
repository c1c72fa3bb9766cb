"""The public surface is exactly ``offload.__all__``, and it reads as ``offload.*``."""

from __future__ import annotations
import __future__

import doctest
import importlib.metadata
import inspect
import pathlib
import re
import types

import pytest

import offload

PUBLIC = offload.__all__


def _public_attributes() -> set[str]:
    return {
        name
        for name, value in vars(offload).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        # ``from __future__ import annotations`` is a compiler directive, not API.
        and not isinstance(value, __future__._Feature)
    }


def test_all_is_a_tuple_of_sorted_unique_strings() -> None:
    """``__all__`` is a tuple of distinct names, kept sorted so diffs stay small."""
    assert isinstance(PUBLIC, tuple)
    assert all(isinstance(name, str) for name in PUBLIC)
    assert len(set(PUBLIC)) == len(PUBLIC)
    assert list(PUBLIC) == sorted(PUBLIC)


def test_all_lists_exactly_the_public_attributes() -> None:
    """Every public attribute is in ``__all__``, and every name in ``__all__`` exists."""
    assert set(PUBLIC) == _public_attributes()


def test_star_import_gives_exactly_all() -> None:
    """``from offload import *`` binds the names of ``__all__`` and nothing else."""
    namespace: dict[str, object] = {}
    exec("from offload import *", namespace)  # noqa: S102  # the statement under test
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_live_in_offload(name: str) -> None:
    """Each public name's ``__module__`` reads ``offload``, not the private module."""
    assert getattr(offload, name).__module__ == "offload"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_have_a_docstring_with_an_example(name: str) -> None:
    """Each public name has a docstring whose example runs as a doctest."""
    doc = inspect.getdoc(getattr(offload, name))
    assert doc, f"offload.{name} has no docstring"
    assert ">>>" in doc, f"offload.{name}'s docstring has no example"


def _public_methods() -> list[tuple[str, str]]:
    return [
        (name, member)
        for name in PUBLIC
        if inspect.isclass(getattr(offload, name))
        for member, value in vars(getattr(offload, name)).items()
        if not member.startswith("_") and (callable(value) or isinstance(value, property))
    ]


@pytest.mark.parametrize(("name", "member"), _public_methods())
def test_public_methods_and_properties_have_a_docstring(name: str, member: str) -> None:
    """Each public method and property of a public class says what it does."""
    assert inspect.getdoc(getattr(getattr(offload, name), member))


def _method_examples() -> list[doctest.DocTest]:
    # pytest's doctest collection skips methods of the public classes: their
    # __module__ reads "offload", so doctest takes them for imports from
    # elsewhere. module=False makes the finder take every member.
    finder = doctest.DocTestFinder()
    return [
        test
        for name in PUBLIC
        if inspect.isclass(getattr(offload, name))
        for test in finder.find(getattr(offload, name), f"offload.{name}", module=False)
        if test.examples and test.name != f"offload.{name}"
    ]


@pytest.mark.parametrize("example", _method_examples(), ids=lambda test: test.name)
def test_method_examples_run(example: doctest.DocTest) -> None:
    """The examples in the docstrings of public methods and properties run as written."""
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    result = runner.run(example, out=lambda _text: None)
    assert result.failed == 0, f"{example.name}: {result.failed} example(s) failed"


def test_version_is_the_installed_distributions() -> None:
    """``offload.__version__`` is the version the installed metadata declares."""
    assert offload.__version__ == importlib.metadata.version("tornado-offload")


def test_the_api_reference_shows_every_public_name_once() -> None:
    """``docs/api.md`` renders each name of ``__all__`` exactly once, and nothing else."""
    page = pathlib.Path(__file__).parent.parent / "docs" / "api.md"
    shown = re.findall(r"^::: offload\.(\w+)$", page.read_text(), flags=re.MULTILINE)
    assert sorted(shown) == sorted(PUBLIC)
