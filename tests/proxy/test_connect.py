"""proxy.connect on real loopback sockets: the outcomes of a Dial, the late-timer recheck,
the local-errno rule, the rate-limited shortage log, and Steps on its own."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

import pytest

from proxy.balance import Balancers
from proxy.connect import EXPIRY_SLACK, Dial, ShortageLog, Steps
from proxy.http import HttpProxy
from pylb.config import Settings
from pylb.counters import Stats
from pylb.failures import Failure
from pylb.model import Server


class _Loop:
    """The running loop, with create_connection replaced."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect: Any) -> None:
        self._loop = loop
        self.create_connection = connect

    def __getattr__(self, name: str) -> object:
        return getattr(self._loop, name)


async def _dial(loop: Any, port: int, timeout: float) -> Dial:
    ended: asyncio.Future[Dial] = asyncio.get_running_loop().create_future()
    dial = Dial(loop, asyncio.Protocol, "127.0.0.1", port, ended.set_result)
    dial.start(timeout)
    return await asyncio.wait_for(ended, 10)


async def test_connected() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dial = await _dial(asyncio.get_running_loop(), port, 5.0)
        assert dial.failure is None and dial.error is None and not dial.local
        assert dial.transport is not None and isinstance(dial.protocol, asyncio.Protocol)
        dial.transport.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_is_the_servers_failure() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dial = await _dial(asyncio.get_running_loop(), port, 5.0)
    assert dial.failure is Failure.CONNECT_FAILED and not dial.local
    assert isinstance(dial.error, ConnectionRefusedError)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                                  errno.EADDRNOTAVAIL])
async def test_own_shortage_is_local(code: int) -> None:
    async def short(*_: object, **__: object) -> object:
        raise OSError(code, "short")

    dial = await _dial(_Loop(asyncio.get_running_loop(), short), 9, 5.0)
    assert dial.failure is Failure.CONNECT_FAILED and dial.local


async def test_timeout_and_cancel() -> None:
    async def hang(*_: object, **__: object) -> object:
        await asyncio.Event().wait()

    loop = _Loop(asyncio.get_running_loop(), hang)
    dial = await _dial(loop, 9, 0.05)
    assert dial.failure is Failure.CONNECT_TIMEOUT
    ended: list[Dial] = []
    dial = Dial(loop, asyncio.Protocol, "127.0.0.1", 9, ended.append)  # type: ignore[arg-type]
    dial.start(0)
    dial.cancel()
    for _ in range(10):
        await asyncio.sleep(0)
    assert [d.failure for d in ended] == [Failure.CLIENT_ABORT]


async def test_late_timer_looks_again_before_timing_out() -> None:
    """A timer that fires late (the loop stalled) gives the connect one more look."""
    done = asyncio.Event()

    async def slow(*_: object, **__: object) -> object:
        await done.wait()
        return (None, None)

    loop = asyncio.get_running_loop()
    ended: list[Dial] = []
    dial = Dial(_Loop(loop, slow), asyncio.Protocol, "127.0.0.1", 9,  # type: ignore[arg-type]
                ended.append)
    dial.start(0.01)
    dial.deadline -= 1.0  # as if the timer fired a second after its deadline
    await asyncio.sleep(0.02)  # the timer fires, late: it rechecks after EXPIRY_SLACK
    assert not ended and dial.rechecked
    done.set()  # the connect completes before the second look
    for _ in range(int(EXPIRY_SLACK / 0.01) + 50):
        if ended:
            break
        await asyncio.sleep(0.01)
    assert [d.failure for d in ended] == [None]


def test_shortage_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    class Clock:
        now = 100.0

        def time(self) -> float:
            return self.now

    clock = Clock()
    shortage = ShortageLog("tcp")
    exc = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.WARNING, logger="pylb.connect"):
        for t in (100.0, 100.5, 100.99, 101.0, 101.5):
            clock.now = t
            shortage.note(clock, exc, 7)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["tcp: shedding connections, cannot connect to backends: "
                     "Too many open files (7 open)"] * 2


async def test_steps_runs_a_coroutine_to_its_end() -> None:
    async def work(fut: asyncio.Future[int]) -> int:
        await asyncio.sleep(0)  # a bare yield
        return await fut + 1

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    ends: list[tuple[Any, BaseException | None]] = []
    Steps(loop, work(fut), lambda r, e: ends.append((r, e)))
    await asyncio.sleep(0)
    loop.call_soon(fut.set_result, 41)
    for _ in range(10):
        await asyncio.sleep(0)
    assert ends == [(42, None)]

    async def boom() -> None:
        raise ValueError("x")

    Steps(loop, boom(), lambda r, e: ends.append((r, e)))
    assert isinstance(ends[-1][1], ValueError)


async def test_http_shutdown_ends_the_connects_under_way() -> None:
    """HttpProxy.shutdown cancels its connects and waits for them to end before the pool
    closes; the client hears nothing more (it has been cut already)."""
    async def hang(*_: object, **__: object) -> object:
        await asyncio.Event().wait()

    settings = Settings()
    proxy = HttpProxy(settings, Stats(), Balancers(settings.limits))
    proxy.loop = _Loop(asyncio.get_running_loop(), hang)  # type: ignore[assignment]
    heard: list[object] = []

    class Client:
        closed = True

        def connect_done(self, *args: object, **kw: object) -> None:
            heard.append(args)

    proxy.connect(Client(), Server("127.0.0.1", 9))  # type: ignore[arg-type]
    assert len(proxy._connects) == 1
    await proxy.shutdown(0)
    assert not proxy._connects and heard == []
