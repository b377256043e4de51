"""Active health checks: the health counter as a table, probes against real loopback
listeners, and the checker's up/down/rise/fall with millisecond intervals."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator

import pytest

from proxy.check import (
    L4CON,
    L4OK,
    L4TOUT,
    L7OK,
    L7RSP,
    L7STS,
    L7TOUT,
    CheckResult,
    HealthChecker,
    Probe,
    advance,
    check_targets,
    initial,
    probe_http,
    probe_tcp,
)
from pylb.config import CheckScope, CheckSettings, Settings
from pylb.model import Backend, RouteTable, Server
from tests.conftest import free_port

OK = Probe(L4OK)
BAD = Probe(L4CON)
P = CheckSettings(rise=2, fall=3)


def run(seq: str, start: CheckResult | None = None) -> list[tuple[bool, int, str]]:
    r = start or initial(P, 0.0)
    out = []
    for i, c in enumerate(seq):
        r = advance(r, OK if c == "+" else BAD, float(i + 1))
        out.append((r.up, r.health, r.status_text()))
    return out


@pytest.mark.parametrize(("seq", "expected"), [
    # starts at health=rise: one failure from down, one success to full health
    ("+", [(True, 4, "UP")]),
    ("-", [(False, 0, "DOWN")]),
    ("+-", [(True, 4, "UP"), (True, 3, "UP 2/3")]),
    ("+--", [(True, 4, "UP"), (True, 3, "UP 2/3"), (True, 2, "UP 1/3")]),
    ("+---", [(True, 4, "UP"), (True, 3, "UP 2/3"), (True, 2, "UP 1/3"),
              (False, 0, "DOWN")]),
    ("+--+", [(True, 4, "UP"), (True, 3, "UP 2/3"), (True, 2, "UP 1/3"), (True, 4, "UP")]),
    ("-+", [(False, 0, "DOWN"), (False, 1, "DOWN 1/2")]),
    ("-++", [(False, 0, "DOWN"), (False, 1, "DOWN 1/2"), (True, 4, "UP")]),
    ("-+-", [(False, 0, "DOWN"), (False, 1, "DOWN 1/2"), (False, 0, "DOWN")]),
    ("--", [(False, 0, "DOWN"), (False, 0, "DOWN")]),
])
def test_health_counter(seq: str, expected: list[tuple[bool, int, str]]) -> None:
    assert run(seq) == expected


def test_counts_failures_downs_and_downtime() -> None:
    r = initial(P, 0.0)
    r = advance(r, BAD, 10.0)  # down at t=10
    assert (r.up, r.failures, r.downs, r.last_change) == (False, 1, 1, 10.0)
    assert r.total_downtime(15.0) == 5.0
    r = advance(r, OK, 12.0)
    r = advance(r, OK, 14.0)  # up at t=14 after 4 s down
    assert (r.up, r.failures, r.downs, r.downtime, r.last_change) == (True, 1, 1, 4.0, 14.0)
    assert r.total_downtime(100.0) == 4.0
    r = advance(r, BAD, 20.0)
    assert (r.up, r.failures, r.downs, r.checked_at) == (True, 2, 1, 20.0)
    assert r.status == L4CON and r.description == "Layer4 connection problem"


def test_rise_one_fall_one() -> None:
    p = CheckSettings(rise=1, fall=1)
    r = initial(p, 0.0)
    r = advance(r, BAD, 1.0)
    assert not r.up and r.status_text() == "DOWN"
    r = advance(r, OK, 2.0)
    assert r.up and r.status_text() == "UP"


def test_check_targets_first_backend_with_path_wins() -> None:
    s = Server("10.0.0.1", 80)
    t = RouteTable(backends=(
        Backend("a", (s, Server("10.0.0.2", 80))),
        Backend("b", (s,), check_path="/healthz"),
        Backend("c", (s,), check_path="/other"),
    ))
    assert check_targets(t) == {("10.0.0.1", 80): "/healthz", ("10.0.0.2", 80): None}


def test_check_targets_skip_not_ready_but_keep_draining() -> None:
    t = RouteTable(backends=(Backend("a", (
        Server("10.0.0.1", 80, ready=False, serving=False),
        Server("10.0.0.2", 80, ready=False, serving=True, terminating=True),
        Server("10.0.0.3", 80, weight=0),
    )),))
    assert check_targets(t) == {("10.0.0.2", 80): None, ("10.0.0.3", 80): None}


# -- probes on real sockets ----------------------------------------------------------




async def _serve(reply: bytes | None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if reply is None:
                await reader.read()  # say nothing until the client leaves
            else:
                writer.write(reply)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    made: list[asyncio.Server] = []
    yield made
    for s in made:
        s.close()
        await s.wait_closed()


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def test_probe_tcp_ok_and_refused(servers: list[asyncio.Server]) -> None:
    srv = await _serve(b"")
    servers.append(srv)
    ok = await probe_tcp("127.0.0.1", _port(srv), 2.0)
    assert ok.status == L4OK and ok.passed and ok.duration_ms >= 0
    refused = await probe_tcp("127.0.0.1", free_port(), 2.0)
    assert refused.status == L4CON and not refused.passed


@pytest.mark.parametrize(("reply", "status", "code"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", L7OK, 200),
    (b"HTTP/1.0 301 Moved\r\nLocation: /x\r\n\r\n", L7OK, 301),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", L7OK, 204),
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", L7STS, 503),
    (b"HTTP/1.1 404 Not Found\r\n\r\n", L7STS, 404),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", L7RSP, None),
    (b"", L7RSP, None),
    (None, L7TOUT, None),
])
async def test_probe_http(servers: list[asyncio.Server], reply: bytes | None, status: str,
                          code: int | None) -> None:
    srv = await _serve(reply)
    servers.append(srv)
    p = await probe_http("127.0.0.1", _port(srv), "/healthz", 0.3 if reply is None else 5.0)
    assert (p.status, p.code) == (status, code)


async def test_probe_http_sends_a_proper_request(servers: list[asyncio.Server]) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    servers.append(srv)
    p = await probe_http("127.0.0.1", _port(srv), "/ready?x=1", 5.0)
    assert p.status == L7OK
    head = seen[0].decode().lower()
    assert head.startswith("get /ready?x=1 http/1.1\r\n")
    assert f"host: 127.0.0.1:{_port(srv)}\r\n" in head
    assert "connection: close\r\n" in head


async def test_probe_tcp_timeout_on_a_full_accept_queue() -> None:
    """A listener that never accepts, its queue full: the kernel drops further SYNs, so
    the connect neither succeeds nor fails (L4TOUT)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            c = socket.socket()
            fillers.append(c)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
        p = await probe_tcp("127.0.0.1", port, 0.3)
        assert p.status == L4TOUT and not p.passed
        p = await probe_http("127.0.0.1", port, "/", 0.3)
        assert p.status == L4TOUT
    finally:
        for c in fillers:
            c.close()
        listener.close()


async def test_probe_http_refused() -> None:
    p = await probe_http("127.0.0.1", free_port(), "/", 2.0)
    assert p.status == L4CON


# -- the checker end to end ----------------------------------------------------------

FAST = CheckSettings(interval=0.01, rise=2, fall=2, timeout=1.0)


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[tuple[str, int], bool, CheckResult]] = []
        self._event = asyncio.Event()

    def __call__(self, key: tuple[str, int], up: bool, result: CheckResult) -> None:
        self.seen.append((key, up, result))
        self._event.set()

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.seen) < n:
                self._event.clear()
                await self._event.wait()


async def test_checker_tcp_down_and_up_again() -> None:
    port = free_port()
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    changes = Changes()
    checker = HealthChecker(Settings(), changes, params=FAST, rng=random.Random(1))
    key = ("127.0.0.1", port)
    checker.set_table(RouteTable(backends=(Backend("b", (Server(*key),)),)))
    assert checker.results()[key].status == "INI"
    task = asyncio.create_task(checker.run())
    try:
        async with asyncio.timeout(10):
            while checker.results()[key].status != L4OK:
                await asyncio.sleep(0.01)
        assert checker.results()[key].up and changes.seen == []
        srv.close()
        await srv.wait_closed()
        await changes.wait(1)
        assert changes.seen[0][:2] == (key, False)
        down = changes.seen[0][2]
        assert down.status == L4CON and down.downs == 1 and down.failures == 2
        srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        await changes.wait(2)
        assert changes.seen[1][:2] == (key, True)
        assert changes.seen[1][2].status == L4OK
    finally:
        checker.stop()
        await task
        srv.close()
        await srv.wait_closed()


async def test_checker_http_path_and_table_changes() -> None:
    state = {"status": 200}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % state["status"])
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    key = ("127.0.0.1", _port(srv))
    gone = ("127.0.0.1", free_port())
    changes = Changes()
    checker = HealthChecker(Settings(), changes, params=FAST)
    task = asyncio.create_task(checker.run())
    try:
        checker.set_table(RouteTable(backends=(
            Backend("web", (Server(*key), Server(*gone)), check_path="/healthz"),)))
        await changes.wait(1)
        assert changes.seen[0][:2] == (gone, False)
        assert changes.seen[0][2].http
        state["status"] = 500
        await changes.wait(2)
        key_, up, res = changes.seen[1]
        assert (key_, up, res.status, res.code) == (key, False, L7STS, 500)
        checker.set_table(RouteTable(backends=(Backend("web", (Server(*key),)),)))
        assert set(checker.results()) == {key}
        await changes.wait(3)  # the TCP check passes where the HTTP one failed
        assert changes.seen[2][:2] == (key, True)
        assert changes.seen[2][2].status == L4OK and not changes.seen[2][2].http
    finally:
        checker.stop()
        await task
        srv.close()
        await srv.wait_closed()


async def test_checker_stopped_before_running_returns() -> None:
    checker = HealthChecker(Settings(), Changes(), params=FAST)
    checker.set_table(RouteTable(backends=(Backend("b", (Server("127.0.0.1", 1),)),)))
    checker.stop()
    await asyncio.wait_for(checker.run(), 10)


async def test_checker_disabled_checks_nothing() -> None:
    checker = HealthChecker(Settings(), Changes(), params=CheckSettings(scope=CheckScope.OFF))
    checker.set_table(RouteTable(backends=(Backend("b", (Server("127.0.0.1", 1),)),)))
    assert checker.results() == {}


async def test_checker_callback_error_is_contained() -> None:
    calls: list[bool] = []

    def boom(key: tuple[str, int], up: bool, result: CheckResult) -> None:
        calls.append(up)
        raise RuntimeError("callback bug")
    key = ("127.0.0.1", free_port())
    checker = HealthChecker(Settings(), boom, params=FAST)
    checker.set_table(RouteTable(backends=(Backend("b", (Server(*key),)),)))
    task = asyncio.create_task(checker.run())
    try:
        async with asyncio.timeout(10):
            while checker.results()[key].failures < 3:
                await asyncio.sleep(0.01)
        assert calls == [False]
        assert not task.done()
    finally:
        checker.stop()
        await task


async def test_watched_server_told_once_at_its_next_passing_probe() -> None:
    """A server a data plane ejected (`watch`) is told to `on_pass` at its first passing
    probe though its check stays up (no transition), once; an unchecked address is not
    watched."""
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    key = ("127.0.0.1", srv.sockets[0].getsockname()[1])
    changes = Changes()
    passes: list[tuple[tuple[str, int], str]] = []
    checker = HealthChecker(Settings(), changes, params=FAST,
                            on_pass=lambda k, r: passes.append((k, r.status)))
    checker.set_table(RouteTable(backends=(Backend("b", (Server(*key),)),)))
    task = asyncio.create_task(checker.run())
    try:
        async with asyncio.timeout(10):
            while checker.results()[key].status != L4OK:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert passes == []  # not watched: passing probes tell nothing
        checker.watch(("127.0.0.1", 1))  # not checked: ignored
        checker.watch(key)
        async with asyncio.timeout(10):
            while not passes:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # ten more passing probes
        assert passes == [(key, L4OK)] and changes.seen == []
    finally:
        checker.stop()
        await asyncio.wait_for(task, 10)
        srv.close()
        await srv.wait_closed()
