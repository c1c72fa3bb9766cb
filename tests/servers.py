"""Private redis and PostgreSQL servers for the tests of the example drivers, and their benchmark.

Each server runs from the binaries of its Debian package, in a temporary directory of its
own, listening on 127.0.0.1 only, on a port picked free (neither server can be told to bind
port 0 and report the port back, so a socket is bound to port 0, closed, and its port passed
on; if another process takes the port in between, the server exits saying so and the start
is retried on a new port). The servers are stopped by their process id: a polite signal
first, then SIGKILL to the server's process group after a timeout, so that no server, and no
PostgreSQL backend, outlives the test session.

When a server's binaries are missing, the tests that need it are skipped with the package to
install, unless ``OFFLOAD_REQUIRE_SERVERS=1`` is set (CI sets it): then they fail, so that a
machine without the servers cannot pass by skipping them. The drivers benchmark
(``benchmarks/drivers.py``) starts its servers with the same classes, and says what is
missing in its own way: so pytest is imported only by ``unavailable``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

#: Set to 1 to make a missing server a failure instead of a skip.
REQUIRE = "OFFLOAD_REQUIRE_SERVERS"

#: Seconds a server has to start, or to stop after the polite signal, before it is killed.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

#: Attempts at a free port before giving up (another process may take the one picked).
ATTEMPTS = 5


class ServerStartError(RuntimeError):
    """A server exited or never answered; the message carries the end of its log."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when the servers are required."""
    import pytest  # noqa: PLC0415  # the benchmarks use this module without pytest

    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1 requires the servers)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """One server process on 127.0.0.1: started on a free port, restartable on the same one."""

    name = "server"
    #: The signal that asks the server to shut down at once.
    stop_signal = signal.SIGTERM
    #: What the server logs when its port is taken.
    port_taken = "already in use"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / f"{self.name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)  # a safety net: the fixtures stop the server first

    def command(self, port: int) -> list[str]:
        """The command line that serves on ``port``."""
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the server answers on its port."""
        raise NotImplementedError

    def spawn(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start the server process, in a process group of its own."""
        return subprocess.Popen(  # noqa: S603  # the server binaries found by the fixtures
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            process_group=0,
            **self.identity(),
        )

    def identity(self) -> dict[str, Any]:
        """Whom the server runs as: ``Popen``'s user and group arguments (none: this user)."""
        return {}

    def start(self, *, same_port: bool = False) -> None:
        """Start on a free port (or on the previous one) and wait until it answers."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} is running already (pid {self.process.pid})")
        for _ in range(ATTEMPTS):
            port = self.port if same_port else free_port()
            with self.log_path.open("ab") as log:
                self.process = self.spawn(self.command(port), log)
            self.port = port
            if self._wait_ready():
                return
            self.process = None
            if same_port or self.port_taken not in self._log_tail():
                break
        raise ServerStartError(f"{self.name} did not start; its log ends:\n{self._log_tail()}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.ready():
                return True
            time.sleep(0.02)  # polling another process: nothing to wait on instead
        self.stop()
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Ask the server to stop; kill its process group if it is still there after a while."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT)
        self._kill_group(process)

    def kill(self) -> None:
        """Kill the server at once, as a crash would; ``start(same_port=True)`` brings it back."""
        process, self.process = self.process, None
        if process is not None:
            self._kill_group(process)

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        # The group is the server's own (process_group=0): its pid, and its children with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


class RedisServer(Server):
    """``redis-server`` without persistence, on 127.0.0.1."""

    name = "redis"

    def __init__(self, directory: Path, binary: str) -> None:
        super().__init__(directory)
        self.binary = binary

    @property
    def url(self) -> str:
        """The URL a redis client connects with."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, port: int) -> list[str]:
        return [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PostgresServer(Server):
    """A PostgreSQL cluster made by ``initdb`` in the directory, served on 127.0.0.1 only.

    PostgreSQL refuses to run as root. Run by root, the cluster belongs to the ``postgres``
    account (which Debian's package creates), else to ``nobody``.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave
    user = "offload"

    def __init__(self, directory: Path, bindir: Path) -> None:
        super().__init__(directory)
        self.bindir = bindir
        self.data = directory / "data"
        self.account = _unprivileged_account() if os.geteuid() == 0 else None
        if self.account is not None:
            os.chown(directory, self.account.pw_uid, self.account.pw_gid)
        self._initdb()

    @property
    def conninfo(self) -> str:
        """The connection string a client connects with: trust authentication, no password."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"

    @property
    def _uid(self) -> int | None:
        return None if self.account is None else self.account.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self.account is None else self.account.pw_gid

    @property
    def _groups(self) -> list[int] | None:
        return None if self.account is None else []  # drop root's supplementary groups

    def _initdb(self) -> None:
        argv = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(  # noqa: S603, PLW1510  # our own initdb; the code is checked below
            argv,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT * 4,
            **self.identity(),
        )
        if done.returncode != 0:
            raise ServerStartError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def identity(self) -> dict[str, Any]:
        """The unprivileged user PostgreSQL needs when the tests run as root."""
        return {"user": self._uid, "group": self._gid, "extra_groups": self._groups}

    def command(self, port: int) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": "",  # TCP only: no socket file outside the directory
            "fsync": "off",  # a throwaway cluster: durability only costs time
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def ready(self) -> bool:
        import psycopg  # noqa: PLC0415  # the driver tests' dependency, not every test's

        try:
            psycopg.connect(self.conninfo, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True


def _unprivileged_account() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerStartError("running as root, and neither a postgres nor a nobody account exists")


def _version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())


def postgres_bindir() -> Path | None:
    """Where initdb and postgres are: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "postgres").exists():
        return Path(initdb).parent
    found = [
        bindir
        for bindir in Path("/usr/lib/postgresql").glob("*/bin")
        if (bindir / "initdb").exists() and (bindir / "postgres").exists()
    ]
    return max(found, key=_version) if found else None


def _directory(prefix: str) -> Path:
    # Directly under the system's temporary directory: pytest's own tmp_path lives under a
    # directory only root may enter, and PostgreSQL may run as another user.
    return Path(tempfile.mkdtemp(prefix=prefix))


#: What to do when a server is not installed: called with the reason, it must raise.
Missing = Callable[[str], NoReturn]


@contextlib.contextmanager
def running_redis(missing: Missing = unavailable) -> Iterator[RedisServer]:
    """A redis server for the block; without redis-server, ``missing(reason)``.

    By default that is a skip (a failure under OFFLOAD_REQUIRE_SERVERS=1).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed: install the Debian package redis-server")
    directory = _directory("offload-redis-")
    server = RedisServer(directory, binary)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(missing: Missing = unavailable) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the block; without PostgreSQL, ``missing(reason)``.

    By default that is a skip (a failure under OFFLOAD_REQUIRE_SERVERS=1).
    """
    bindir = postgres_bindir()
    if bindir is None:
        missing("PostgreSQL is not installed: install the Debian package postgresql")
    directory = _directory("offload-postgres-")
    try:
        server = PostgresServer(directory, bindir)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
