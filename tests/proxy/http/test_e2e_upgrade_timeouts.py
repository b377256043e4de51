"""End to end on loopback: Upgrade/101 tunnels (raw and WebSocket), and each timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest
import websockets

from pylb.failures import Failure
from pylb.model import Backend, HttpRoute, Server
from tests.proxy.http.client import RawClient, get
from tests.proxy.http.conftest import StartProxy

UPGRADE = (b"GET /app/upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
           b"Upgrade: echo\r\n\r\n")


async def test_raw_upgrade_tunnel(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(UPGRADE + b"early")
        resp = await c.read_response()
        assert resp.status == 101
        assert resp.header("upgrade") == "echo"
        assert await asyncio.wait_for(c.reader.readexactly(5), 5) == b"EARLY"
        await c.send(b"hello")
        assert await asyncio.wait_for(c.reader.readexactly(5), 5) == b"HELLO"
        c.writer.write_eof()
        assert await c.at_eof()
    finally:
        await c.close()


async def test_websocket_through_proxy(start_proxy: StartProxy) -> None:
    r = await start_proxy(0, table=False)

    async def echo(ws: websockets.ServerConnection) -> None:
        async for msg in ws:
            await ws.send(f"echo:{msg}")

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        b = Backend("ns/ws:80", (Server("127.0.0.1", port, name="ws"),))
        r.table([HttpRoute("ws", "/ws", b.name)], [b])
        async with websockets.connect(f"ws://127.0.0.1:{r.port}/ws/chat") as ws:
            for i in range(5):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"echo:m{i}"
            big = "z" * 300_000
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), 5) == "echo:" + big
    await asyncio.sleep(0.01)
    assert r.stats.frontend("http").hrsp[0] == 1  # the 101


async def test_tunnel_timeout(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"tunnel": 0.2})
    c = await RawClient.connect(r.port)
    try:
        await c.send(UPGRADE)
        assert (await c.read_response()).status == 101
        assert await c.at_eof(timeout=5)
    finally:
        await c.close()


async def test_upgrade_refused_closes_after(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(b"GET /app/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: nope\r\n\r\n")
        resp = await c.read_response()
        assert resp.status == 200
        assert await c.at_eof()
    finally:
        await c.close()


# -- timeouts ----------------------------------------------------------------------------


async def test_http_request_timeout_slowloris(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"http_request": 0.2, "client": 30.0})
    c = await RawClient.connect(r.port)
    try:
        await c.send(b"GET /app/x HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            await asyncio.sleep(0.05)
            await c.send(b"X-Drip: 1\r\n")  # activity does not extend the head's deadline
        resp = await c.read_response()
        assert resp.status == 408
        assert await c.at_eof()
    finally:
        await c.close()
    assert r.stats.failures[Failure.REQUEST_TIMEOUT] == 1


async def test_idle_new_connection_gets_408(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"http_request": 0.1})
    c = await RawClient.connect(r.port)
    try:
        resp = await c.read_response()
        assert resp.status == 408
    finally:
        await c.close()


async def test_keep_alive_timeout(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"keep_alive": 0.15})
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/x"))
        assert (await c.read_response()).status == 200
        assert await c.at_eof(timeout=5)  # closed silently, no 408
    finally:
        await c.close()
    assert Failure.REQUEST_TIMEOUT not in r.stats.failures


async def test_client_timeout_mid_body(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"client": 0.2})
    c = await RawClient.connect(r.port)
    try:
        await c.send(b"POST /app/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        resp = await c.read_response()
        assert resp.status == 408
        assert await c.at_eof()
    finally:
        await c.close()
    assert r.stats.failures[Failure.CLIENT_TIMEOUT] == 1


async def test_server_timeout_504(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"server": 0.2})
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/hang"))
        resp = await c.read_response()
        assert resp.status == 504
        await c.send(get("/app/fine"))  # the client connection is still good
        assert (await c.read_response()).status == 200
    finally:
        await c.close()
    assert r.stats.failures[Failure.BACKEND_TIMEOUT] == 1


async def test_slow_server_within_timeout_is_fine(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"server": 5.0})
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/x?delay=0.05"))
        assert (await c.read_response()).status == 200
    finally:
        await c.close()


@pytest.fixture
def blackhole() -> object:
    """A listener whose accept queue is full: connects to it hang (SYNs are dropped)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    port = lsock.getsockname()[1]
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    lsock.close()


async def test_connect_timeout_504(start_proxy: StartProxy, blackhole: int) -> None:
    r = await start_proxy(0, table=False, timeouts={"connect": 0.2}, limits={"retries": 1})
    b = Backend("ns/bh:80", (Server("127.0.0.1", blackhole, name="bh"),))
    r.table([HttpRoute("bh", "/bh", b.name)], [b])
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/bh"))
        resp = await c.read_response()
        assert resp.status == 504
    finally:
        await c.close()
    assert r.stats.failures[Failure.CONNECT_TIMEOUT] == 2


async def test_connect_survives_a_loop_stall_longer_than_its_timeout(
        start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """libuv runs due timers before it polls for I/O: when a starved worker's loop stalls
    past the connect timeout right after issuing a connect, the timer fires before the
    connect that completed meanwhile is seen. The late timer looks once more after the
    loop has polled, so the request is served, not answered 504."""
    r = await start_proxy(1, timeouts={"connect": 0.2}, limits={"retries": 0})
    loop = asyncio.get_running_loop()
    real = loop.create_connection

    async def stalled(*args: object, **kw: object) -> object:
        attempt = asyncio.ensure_future(real(*args, **kw))  # type: ignore[arg-type]
        # Runs after the attempt's first step has issued the connect.
        loop.call_soon(time.sleep, 0.6)
        return await attempt

    monkeypatch.setattr(loop, "create_connection", stalled)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/x"))
        resp = await c.read_response()
        assert resp.status == 200
    finally:
        await c.close()
    assert r.stats.failures == {}
