"""Shared fixtures. Network tests use loopback only and bind port 0 or a port picked free."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop

# pytest-timeout made able to stop a test awaiting in uvloop, with a backstop that ends the
# run when a test outlives its timeout anyway (tests/timeouts.py says how).
pytest_plugins = ["tests.timeouts"]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # pylb runs on uvloop; the tests do too.
    return {"uvloop": uvloop.new_event_loop}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (for listeners that cannot take port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` different TCP ports free right now on `host` (bound together, so no two are
    the same: `free_port` twice may give one port twice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


async def until(pred: Any, timeout: float = 5.0) -> None:
    """Wait for `pred()` to hold, polling every 10 ms; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def unused_port() -> int:
    return free_port()
