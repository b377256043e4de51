"""One worker's data plane: --maxconn counts HTTP and TCP connections together; at the
limit accepting pauses (the client waits in the backlog) and resumes below it."""

from __future__ import annotations

import asyncio

import pytest

from pylb.config import Limits, Settings
from pylb.dataplane import DataPlane
from pylb.demo import start_echo_server, start_name_server
from pylb.model import Backend, HttpRoute, RouteTable, Server, TcpFrontend
from tests.conftest import free_port


async def test_maxconn_spans_frontends_and_pauses_accepting() -> None:
    web = await start_name_server("web")
    echo = await start_echo_server()
    wp, ep = (s.sockets[0].getsockname()[1] for s in (web, echo))
    tcp_port = free_port()
    s = Settings(bind="127.0.0.1", http_port=free_port(), limits=Limits(maxconn=2))
    plane = DataPlane(s)
    await plane.start()
    hb, tb = Backend("d/web:80", (Server("127.0.0.1", wp),)), \
        Backend("d/echo:1", (Server("127.0.0.1", ep),))
    await plane.apply(RouteTable(http=(HttpRoute("web", "/web", hb.name),),
                                 tcp=(TcpFrontend("echo", tcp_port, tb.name),),
                                 backends=(hb, tb), version=1))
    conns = []
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", tcp_port)  # 1: TCP
        w1.write(b"a")
        assert await asyncio.wait_for(r1.readexactly(1), 5) == b"a"
        conns.append(w1)
        r2, w2 = await asyncio.open_connection("127.0.0.1", s.http_port)  # 2: HTTP
        conns.append(w2)
        w2.write(b"GET /web HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(r2.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200")
        assert plane.limit.current == 2
        r3, w3 = await asyncio.open_connection("127.0.0.1", s.http_port)  # 3: waits
        conns.append(w3)
        w3.write(b"GET /web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r3.read(1), 0.3)
        w1.close()  # below the limit: the waiting client is accepted and served
        assert (await asyncio.wait_for(r3.read(), 5)).startswith(b"HTTP/1.1 200")
    finally:
        for w in conns:
            w.close()
        await plane.shutdown(0.5)
        for srv in (web, echo):
            srv.close()
            await srv.wait_closed()


async def test_apply_is_incremental() -> None:
    """A one-backend change: only that balancer is updated, the router is kept, counter
    rows of a server that left go; a route change rebuilds the router."""
    s = Settings(bind="127.0.0.1", http_port=0)
    plane = DataPlane(s)
    a = Backend("d/a:80", (Server("127.6.0.1", 80, name="a1"), Server("127.6.0.2", 80)))
    b = Backend("d/b:80", (Server("127.6.0.3", 80),))
    t1 = RouteTable(http=(HttpRoute("a", "/a", a.name), HttpRoute("b", "/b", b.name)),
                    backends=(a, b), version=1)
    await plane.apply(t1)
    router, bal_a, bal_b = plane.http.router, plane.balancers.get(a.name), \
        plane.balancers.get(b.name)
    assert bal_a is not None and bal_b is not None
    plane.stats.server(a.name, "a1").open()
    plane.stats.server(a.name, "a1").close()
    a2 = Backend(a.name, a.servers[1:])
    t2 = RouteTable(http=t1.http, backends=(a2, b), version=2)
    await plane.apply(t2)
    assert plane.http.router is router
    assert plane.balancers.get(a.name) is bal_a and bal_a.backend is a2
    assert plane.balancers.get(b.name) is bal_b and bal_b.backend is b
    assert (a.name, "a1") not in plane.stats.servers
    assert ("127.6.0.1", 80) not in plane.balancers.live_keys
    t3 = RouteTable(http=t1.http[:1], backends=(a2, b), version=3)
    await plane.apply(t3)
    assert plane.http.router is not router
    assert plane.http.router.match(b"x", b"/b") is None


async def test_a_big_table_is_applied_in_slices_with_the_loop_let_in() -> None:
    """A whole table of many backends is taken APPLY_SLICE at a time: something else on
    the loop runs while it is half applied (the old routes still serve), and at the end
    every backend has its balancer and the removals of the change are done."""
    from pylb.dataplane import APPLY_SLICE

    plane = DataPlane(Settings(bind="127.0.0.1", http_port=0))
    await plane.start()
    try:
        n = 2 * APPLY_SLICE + 7
        old = Backend("d/gone:80", (Server("127.3.0.1", 80),))
        await plane.apply(RouteTable(http=(HttpRoute("gone", "/gone", old.name),),
                                     backends=(old,), version=1))
        backends = tuple(Backend(f"d/s{i:05}:80", (Server(f"127.2.{i >> 8}.{i & 255}", 80),))
                         for i in range(n))
        table = RouteTable(http=tuple(HttpRoute(f"s{i:05}", f"/s{i:05}", b.name)
                                      for i, b in enumerate(backends)),
                           backends=backends, version=2)
        seen: list[tuple[bool, bool, bool]] = []

        async def look() -> None:
            for _ in range(50):  # bounded: the apply takes a few turns of the loop
                seen.append((plane.balancers.get(backends[0].name) is not None,
                             plane.balancers.get(backends[-1].name) is not None,
                             plane.balancers.get(old.name) is not None))
                await asyncio.sleep(0)

        await asyncio.gather(plane.apply(table), look())
        # half applied at some turn: the first slice in, the last not yet, the old kept
        assert (True, False, True) in seen
        assert all(plane.balancers.get(b.name) is not None for b in backends)
        assert plane.balancers.get(old.name) is None
        assert ("127.3.0.1", 80) not in plane.balancers.live_keys
    finally:
        await plane.shutdown(0.5)
