"""The private servers of the driver tests: skipped or failed when missing, never left running."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests import servers


@pytest.fixture
def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        servers.unavailable(
            "redis-server is not installed: install the Debian package redis-server"
        )
    return binary


def test_a_missing_server_skips_unless_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Missing binaries skip the test; with OFFLOAD_REQUIRE_SERVERS=1 they fail it, saying why."""
    monkeypatch.delenv(servers.REQUIRE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="install the Debian package"):
        servers.unavailable("x is not installed: install the Debian package x")
    monkeypatch.setenv(servers.REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match=r"OFFLOAD_REQUIRE_SERVERS=1 requires"):
        servers.unavailable("x is not installed: install the Debian package x")


def test_a_stopped_server_leaves_no_process(redis_binary: str, tmp_path: Path) -> None:
    """``stop()`` ends the server and reaps it; its port is free again."""
    server = servers.RedisServer(tmp_path, redis_binary)
    server.start()
    assert server.process is not None
    pid, port = server.process.pid, server.port
    server.stop()
    assert server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_a_taken_port_is_retried_on_another(
    redis_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another process takes the picked port first, the server starts on a new one."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real())
        server = servers.RedisServer(tmp_path, redis_binary)
        try:
            server.start()
            assert server.port != taken
            assert server.ready()
        finally:
            server.stop()
        assert "already in use" in server.log_path.read_text()
