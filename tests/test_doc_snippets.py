"""The examples and commands in the README and the docs run as written.

Each fenced ``python`` block of the pages in ``PAGES`` runs as a program of its own, in a fresh
interpreter with warnings as errors, as a reader who copies it into a file would run it. An HTML
comment on the line before a fence adjusts that (``docs/README.md`` documents the directives):

    <!-- snippet: skip="why it cannot run" -->
    <!-- snippet: setup="import offload" drive="main()" continues -->
    <!-- snippet: replace="randint(0, 3)" with="randint(0, 0)" timeout="60" -->

Each ``bash`` (or ``sh``) block is checked command by command: the modules, options, files,
extras and environment variables it names exist, and ``python -m offload demo`` runs.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The pages whose snippets are held to running as written. docs/api.md holds no code of its
#: own (it renders the docstrings, whose examples run as doctests), and docs/benchmarks.md
#: describes a harness that needs the bench extra and minutes of machine time.
PAGES = (
    "README.md",
    "docs/README.md",
    "docs/index.md",
    "docs/tutorial.md",
    "docs/migrating.md",
    "docs/registry.md",
    "docs/semantics.md",
    "docs/reliability.md",
    "docs/processes.md",
    "docs/drivers.md",
    "docs/bridges.md",
)

#: Where the README's absolute links point: the source tree, and raw files such as images.
REPOSITORY = "https://github.com/tornado-offload/offload"
RAW = "https://raw.githubusercontent.com/tornado-offload/offload/main/"

#: Seconds a snippet may run before it counts as hung.
SNIPPET_TIMEOUT = 20.0

DIRECTIVE = re.compile(r"^<!--\s*snippet:(?P<body>.*?)-->\s*$")
OPTION = re.compile(r'(?P<key>[a-z]+)(?:="(?P<value>[^"]*)")?')
KEYS = frozenset({"skip", "setup", "drive", "continues", "replace", "with", "timeout"})
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")


@dataclass
class Block:
    """One fenced code block of a page, with the directive written before it."""

    page: str
    heading: str
    lang: str
    code: str
    line: int
    options: dict[str, str] = field(default_factory=dict[str, str])
    name: str = ""


def parse_directive(body: str, where: str) -> dict[str, str]:
    """The options of one ``<!-- snippet: ... -->`` comment; unknown keys are an error."""
    options: dict[str, str] = {}
    rest = body.strip()
    while rest:
        match = OPTION.match(rest)
        if match is None or match.group("key") not in KEYS:
            pytest.fail(f"{where}: cannot read the snippet directive at {rest!r}; keys: {KEYS}")
        options[match.group("key")] = match.group("value") or ""
        rest = rest[match.end() :].strip()
    if ("replace" in options) != ("with" in options):
        pytest.fail(f"{where}: replace= and with= go together")
    return options


def slug(heading: str) -> str:
    """The anchor GitHub and MkDocs give a heading: lower case, punctuation dropped."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page``, in order, named after the page and their heading."""
    found: list[Block] = []
    heading = ""
    pending: dict[str, str] | None = None
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence is not None:
            end = index + 1
            while not lines[end].startswith("```"):
                end += 1
            code = "\n".join(lines[index + 1 : end]) + "\n"
            found.append(Block(page, heading, fence.group("lang"), code, index + 1, pending or {}))
            pending = None
            index = end + 1
            continue
        directive = DIRECTIVE.match(line)
        if directive is not None:
            pending = parse_directive(directive.group("body"), f"{page}:{index + 1}")
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.strip() and pending is not None:
            pytest.fail(f"{page}:{index + 1}: a snippet directive must come right before a fence")
        index += 1
    seen: dict[str, int] = {}
    for block in found:
        base = f"{Path(block.page).name}:{slug(block.heading)}"
        if block.lang != "python":
            base += f":{block.lang}"
        seen[base] = seen.get(base, 0) + 1
        block.name = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return found


ALL = [block for page in PAGES for block in blocks(page)]
PYTHON = [block for block in ALL if block.lang == "python"]
SHELL = [block for block in ALL if block.lang in {"bash", "sh"}]


def own_code(block: Block) -> str:
    """The block's setup and its code, with its replacement made."""
    code = block.code
    if "replace" in block.options:
        old, new = block.options["replace"], block.options["with"]
        if old not in code:
            pytest.fail(f"{block.name}: replace={old!r} is not in the snippet")
        code = code.replace(old, new)
    setup = block.options.get("setup", "")
    return f"{setup}\n{code}" if setup else code


def program(block: Block) -> str:
    """The whole program a block stands for: what it continues, then itself, then its drive."""
    chain = [block]
    while "continues" in chain[0].options:
        earlier = [b for b in PYTHON if b.page == block.page and b.line < chain[0].line]
        if not earlier:
            pytest.fail(f"{block.name}: continues, but no python block comes before it")
        chain.insert(0, earlier[-1])
    text = "\n".join(own_code(b) for b in chain)
    drive = block.options.get("drive")
    if drive:
        # Guarded, so that a process pool's worker importing this file does not run it again.
        text += (
            "\n\nasync def _drive_snippet():\n"
            "    import inspect\n\n"
            f"    outcome = {drive}\n"
            "    if inspect.isawaitable(outcome):\n"
            "        await outcome\n\n\n"
            'if __name__ == "__main__":\n'
            "    import asyncio\n\n"
            "    asyncio.run(_drive_snippet())\n"
        )
    return text


def coroutine_functions(tree: ast.Module) -> list[str]:
    """Top-level ``async def`` and ``@gen.coroutine`` functions of a program."""
    names: list[str] = []
    for node in tree.body:
        if not isinstance(node, (ast.AsyncFunctionDef, ast.FunctionDef)):
            continue
        decorators = {ast.unparse(d) for d in node.decorator_list}
        if isinstance(node, ast.AsyncFunctionDef) or decorators & {"gen.coroutine", "coroutine"}:
            names.append(node.name)
    return names


def undriven(text: str) -> list[str]:
    """The coroutine functions a program defines and nothing outside them calls."""
    tree = ast.parse(text)
    missing = []
    for name in coroutine_functions(tree):
        called = False
        for node in tree.body:
            if getattr(node, "name", None) == name:
                continue
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Call)
                    and isinstance(inner.func, ast.Name)
                    and inner.func.id == name
                ):
                    called = True
        if not called:
            missing.append(name)
    return missing


def run_python(
    args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run ``python -W error ARGS``; its output, or a failure with everything it printed."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with subprocess.Popen(  # noqa: S603 - this interpreter, on the docs' own code
        [sys.executable, "-W", "error", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that a timeout ends the worker processes it started too
    ) as process:
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            pytest.fail(f"python {shlex.join(args)} did not finish within {timeout}s:\n{out}")
    if process.returncode != 0:
        pytest.fail(f"python {shlex.join(args)} exited {process.returncode}:\n{out}")
    return out


def timeout_of(block: Block) -> float:
    """The seconds a block may run."""
    return float(block.options.get("timeout", SNIPPET_TIMEOUT))


def python_cases() -> list[object]:
    """One case per python block; a skipped block shows as skipped, with its reason."""
    cases: list[object] = []
    for block in PYTHON:
        marks = [pytest.mark.timeout(timeout_of(block) + 10)]
        if "skip" in block.options:
            marks.append(pytest.mark.skip(reason=f"{block.name}: {block.options['skip']}"))
        cases.append(pytest.param(block, id=block.name, marks=marks))
    return cases


@pytest.mark.parametrize("block", python_cases())
def test_python_snippet_runs_as_written(block: Block, tmp_path: Path) -> None:
    """A python block of the docs runs as a program of its own, with warnings as errors."""
    text = program(block)
    if "drive" not in block.options and (missing := undriven(text)):
        pytest.fail(
            f"{block.name} ({block.page}:{block.line}) defines {missing} but never runs them: "
            'end the snippet with asyncio.run(...), or add <!-- snippet: drive="name()" -->'
        )
    script = tmp_path / "snippet.py"
    script.write_text(text, encoding="utf-8")
    run_python([str(script)], tmp_path, timeout_of(block))


# The shell blocks.


def extras() -> set[str]:
    """The optional-dependency groups pyproject.toml declares."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    return set(project["optional-dependencies"])


def requirements() -> set[str]:
    """The names of every package pyproject.toml depends on, in any group."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    listed = list(project["dependencies"])
    for group in project["optional-dependencies"].values():
        listed.extend(group)
    return {re.split(r"[\[<>=!~ ;]", item, maxsplit=1)[0].lower() for item in listed}


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: split on ``&&``, ``;`` and ``|``, comments dropped."""
    found: list[list[str]] = []
    for line in code.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in {"&&", ";", "|", "||"}:
                if current:
                    found.append(current)
                current = []
            else:
                current.append(token)
        if current:
            found.append(current)
    return found


def check_options(module: str, argv: list[str], cwd: Path) -> None:
    """``python -m MODULE [SUBCOMMAND] --help`` exists and lists every ``--option`` of argv."""
    subcommand = [argv[0]] if argv and not argv[0].startswith("-") else []
    helptext = run_python(["-m", module, *subcommand, "--help"], cwd, 60)
    for arg in argv:
        option = arg.split("=", 1)[0]
        if option.startswith("--") and option not in helptext:
            pytest.fail(f"python -m {module} {shlex.join(subcommand)} has no option {option}")


def check_python(argv: list[str], cwd: Path) -> None:
    """A ``python`` command: the module and its options exist; the demo runs."""
    if argv[:1] != ["-m"]:
        script = argv[0]
        if script != "app.py" and not (ROOT / script).is_file():  # app.py: the reader's own
            pytest.fail(f"python {script}: no such file in the repository")
        return
    module, rest = argv[1], argv[2:]
    if module in {"venv", "pytest", "pip"}:
        return
    check_options(module, rest, cwd)
    if module == "offload" and rest[:1] == ["demo"]:
        # As written, but with tasks of at most 50 ms: the last --max-seconds wins.
        out = run_python(["-m", "offload", *rest, "--max-seconds", "0.05"], cwd, 60)
        assert "report: 20 tasks" in out


def check_pip(argv: list[str]) -> None:
    """A ``pip install``: it installs from the clone, with extras pyproject.toml declares."""
    if argv[:1] != ["install"]:
        pytest.fail(f"pip {shlex.join(argv)}: only pip install is expected in the docs")
    for target in argv[1:]:
        if target.startswith("-"):
            continue
        if target.startswith("tornado-offload"):
            pytest.fail(
                f"pip install {target}: the distribution is not on a package index yet; "
                "install from the clone: pip install -e '.[extra]'"
            )
        if target.startswith("."):
            named = re.fullmatch(r"\.(?:\[(?P<extras>[\w,-]+)\])?", target)
            assert named is not None, f"pip install {target}: not an install of the clone"
            wanted = set(filter(None, (named.group("extras") or "").split(",")))
            assert wanted <= extras(), f"pip install {target}: no extra {wanted - extras()}"


def check_environment(assignment: str, cwd: Path) -> None:
    """``OFFLOAD_<NAME>_WORKERS=n``: offload reads that variable when it makes that pool."""
    variable, _ = assignment.split("=", 1)
    named = re.fullmatch(r"OFFLOAD_(?P<name>[A-Z]+)_WORKERS", variable)
    assert named is not None, f"{variable}: no rule to check this variable; add one"
    probe = f"import offload; offload.get_executor({named.group('name').lower()!r})"
    with pytest.raises(pytest.fail.Exception, match=variable):
        run_python(["-c", probe], cwd, 60, env={variable: "not-a-number"})


def check_command(argv: list[str], cwd: Path) -> None:
    """One simple command of a shell block names things that exist."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        check_environment(argv.pop(0), cwd)
    program_name, rest = Path(argv[0]).name, argv[1:]
    if re.fullmatch(r"python3?(\.\d+)?", program_name):
        check_python(rest, cwd)
    elif program_name == "pip":
        check_pip(rest)
    elif program_name == "bash":
        assert (ROOT / rest[0]).is_file(), f"bash {rest[0]}: no such file"
    elif program_name == "pre-commit":
        assert (ROOT / ".pre-commit-config.yaml").is_file(), "pre-commit: no configuration"
    elif program_name in {"mkdocs", "mypy", "ruff", "pyright", "interrogate", "pytest"}:
        assert program_name in requirements(), f"{program_name}: no extra installs it"
    elif program_name != "curl":  # curl lines are run by the notes app's test
        pytest.fail(f"{program_name}: no rule to check this command; add one")


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in SHELL])
@pytest.mark.timeout(180)
def test_shell_commands_exist_as_written(block: Block, tmp_path: Path) -> None:
    """Each command of a shell block names modules, options, files and extras that exist."""
    for argv in commands(block.code):
        check_command(argv, tmp_path)


NOTES_BLOCKS = [b for b in SHELL if "examples.notes_app" in b.code]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in NOTES_BLOCKS])
@pytest.mark.timeout(60)
def test_notes_app_serves_the_requests_shown(block: Block, tmp_path: Path) -> None:
    """The notes app starts as shown (on a free port) and answers the block's curl requests."""
    lines = commands(block.code)
    serve = next(argv for argv in lines if "examples.notes_app" in argv)
    written = int(serve[serve.index("--port") + 1])
    argv = serve[serve.index("-m") :]
    argv[argv.index("--port") + 1] = "0"
    argv[argv.index("--db") + 1] = str(tmp_path / "notes.sqlite3")
    with subprocess.Popen(  # noqa: S603 - this interpreter, running the docs' command
        [sys.executable, "-W", "error", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            banner = server.stdout.readline()
            port = re.search(r"localhost:(\d+)/", banner)
            assert port is not None, banner
            for curl in (argv for argv in lines if Path(argv[0]).name == "curl"):
                request = curl_request(curl, written, int(port.group(1)))
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    assert 200 <= response.status < 300
                    json.loads(response.read())
        finally:
            server.send_signal(signal.SIGINT)  # Ctrl-C, as the app's users stop it
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
            if server.returncode is None:
                server.kill()
    assert server.returncode == 0


def curl_request(curl: list[str], written: int, port: int) -> urllib.request.Request:
    """The request a curl command of the docs makes, sent to ``port`` instead of ``written``."""
    method, data, url = "GET", None, None
    args = iter(curl[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-d":
            data = next(args).encode()
            method = "POST" if method == "GET" else method
        elif arg.startswith("-"):
            continue
        else:
            url = arg
    assert url is not None, f"curl {curl}: no URL"
    assert url.startswith(f"localhost:{written}/"), f"{url}: not the port the app was started on"
    address = f"http://127.0.0.1:{port}/{url.split('/', 1)[1]}"
    return urllib.request.Request(address, data=data, method=method)


INSTALL = re.compile(r"pip install (?:-[-\w]+ )*(?P<quote>'?)(?P<target>[^\s`']+)(?P=quote)")


def test_install_commands_in_prose_name_extras_that_exist() -> None:
    """Each ``pip install`` the pages mention in their text installs the clone with real extras."""
    checked = 0
    for page in PAGES:
        for match in INSTALL.finditer((ROOT / page).read_text(encoding="utf-8")):
            check_pip(["install", match.group("target")])
            checked += 1
    assert checked > 0


# The README, as a package index shows it.

LINK = re.compile(r"!?\[[^\]]*\]\((?P<url>[^)\s]+)\)|<img[^>]*\ssrc=\"(?P<src>[^\"]+)\"")


def readme_links() -> list[str]:
    """Every link and image address in the README, outside code."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    prose = re.sub(r"`[^`]*`", "", prose)
    return [m.group("url") or m.group("src") for m in LINK.finditer(prose)]


def test_readme_links_are_absolute() -> None:
    """The README has no relative links: a package index would show them broken."""
    relative = [url for url in readme_links() if not re.match(r"[a-z]+:", url)]
    assert relative == []


def test_readme_links_into_the_repository_point_at_files_that_exist() -> None:
    """Each README link into the repository names a file (and heading) of this checkout."""
    checked = 0
    for url in readme_links():
        for prefix in (f"{REPOSITORY}/blob/main/", f"{REPOSITORY}/tree/main/", RAW):
            if url.startswith(prefix):
                path, _, anchor = url.removeprefix(prefix).partition("#")
                target = ROOT / path
                assert target.exists(), f"{url}: {path} is not in the repository"
                if anchor:
                    headings = [
                        slug(line.lstrip("#"))
                        for line in target.read_text(encoding="utf-8").splitlines()
                        if line.startswith("#")
                    ]
                    assert anchor in headings, f"{url}: {path} has no heading #{anchor}"
                checked += 1
        if url.startswith(("https://github.com/tornado-offload/", "https://raw.github")):
            assert url.startswith((REPOSITORY + "/", RAW)), f"{url}: not a link this test knows"
    assert checked > 0


def test_readme_first_screen_shows_the_demo_and_test_commands() -> None:
    """Before its first section, the README shows how to run the demo and the tests."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_screen = text.split("\n## ", 1)[0]
    shell = [b.code for b in SHELL if b.page == "README.md" and b.code in first_screen]
    assert any("-m offload demo" in code and "pip install -e ." in code for code in shell)
    assert any("-m pytest" in code and "pip install -e '.[test]'" in code for code in shell)


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
)
def test_no_paragraph_is_glued_to_a_table(page: str) -> None:
    """A table ends with a blank line: Markdown would render a line right after it as a row."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    glued = [
        number + 2
        for number, (line, following) in enumerate(itertools.pairwise(lines))
        if line.startswith("|") and following.strip() and not following.startswith("|")
    ]
    assert not glued, f"{page}: lines {glued} follow a table without a blank line"
