"""End to end on loopback: real clients, real backends, the proxy in between, on both the
splice and the copy path (the `h` fixture)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from dataclasses import replace
from typing import cast

import pytest

from proxy.listener import ConnectionLimit
from proxy.tcp import proxyproto
from proxy.tcp.proxy import HIGH_WATER, PIPE_SIZE, TcpProxy, _Conn
from pylb.config import Limits, Settings
from pylb.failures import Failure
from pylb.model import (
    Affinity,
    Algorithm,
    Backend,
    ProxyProtocol,
    RouteTable,
    Server,
    TcpFrontend,
)
from tests.conftest import free_port
from tests.proxy.tcp.conftest import BACKEND, Harness, echo, table

MiB = 1024 * 1024


def conns(p: TcpProxy) -> list[_Conn]:
    return [c for fe in p._frontends.values() for c in fe.conns]


async def settle(value: object, get: object, limit: int = 400) -> None:
    """Poll `get()` every 10 ms until it returns the same value 5 times in a row (bounded)."""
    assert callable(get)
    last, same = object(), 0
    for _ in range(limit):
        v = get()
        same = same + 1 if v == last else 0
        last = v
        if same >= 5:
            return
        await asyncio.sleep(0.01)


async def read_exactly_or_eof(r: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(r.read(), 10)


async def test_large_stream_both_directions_byte_exact(h: Harness) -> None:
    size = 4 * MiB
    down_data = os.urandom(size)
    got_up: list[bytes] = []

    async def sink_and_source(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async def send() -> None:
            for i in range(0, size, 100_000):
                w.write(down_data[i:i + 100_000])
                await w.drain()
            w.write_eof()
        sender = asyncio.ensure_future(send())
        got_up.append(await r.read())
        await sender

    u = await h.upstream(sink_and_source)
    p = h.proxy()
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    up_data = os.urandom(size)

    async def client_send() -> None:
        for i in range(0, size, 65_536):
            w.write(up_data[i:i + 65_536])
            await w.drain()
        w.write_eof()
    sender = asyncio.ensure_future(client_send())
    received = await read_exactly_or_eof(r)
    await sender
    assert hashlib.sha256(received).digest() == hashlib.sha256(down_data).digest()
    for _ in range(500):
        if got_up and p.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert got_up[0] == up_data
    assert p.connections == 0
    fc = p.stats.frontend("svc")
    assert (fc.bytes_in, fc.bytes_out, fc.cur_conns, fc.total_conns) == (size, size, 0, 1)
    sc = p.stats.server(BACKEND, u.server_model.label)
    assert (sc.bytes_in, sc.bytes_out, sc.cur_conns, sc.total_conns) == (size, size, 0, 1)


async def test_half_close_client_first(h: Harness) -> None:
    async def answer_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()
        w.write(b"got " + data)
        await w.drain()
        w.write_eof()

    u = await h.upstream(answer_after_eof)
    p = h.proxy()
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    w.write(b"question")
    w.write_eof()
    assert await read_exactly_or_eof(r) == b"got question"


async def test_half_close_server_first(h: Harness) -> None:
    heard: list[bytes] = []

    async def speak_then_listen(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"greeting")
        await w.drain()
        w.write_eof()
        heard.append(await r.read())

    u = await h.upstream(speak_then_listen)
    p = h.proxy()
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    assert await read_exactly_or_eof(r) == b"greeting"
    w.write(b"still talking after your FIN")
    await w.drain()
    w.write_eof()
    for _ in range(500):
        if heard and p.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert heard == [b"still talking after your FIN"]
    assert p.connections == 0


def buffered(p: TcpProxy) -> int:
    """Bytes the proxy holds for its connections: transport write buffers, pipe contents."""
    total = 0
    for c in conns(p):
        total += c.ct.get_write_buffer_size()
        if c.st is not None:
            total += c.st.get_write_buffer_size()
        if c.pump is not None:
            total += c.pump._a.pending + c.pump._b.pending
    return total


# A proxy may hold one high watermark per write buffer plus one read (uvloop reads up to
# 256 KiB at a time) before it stops reading the fast side.
BOUND = max(2 * HIGH_WATER + 256 * 1024, 2 * PIPE_SIZE)


async def test_slow_server_reader_bounded(h: Harness) -> None:
    release = asyncio.Event()
    got: list[bytes] = []

    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await release.wait()
        got.append(await r.read())

    u = await h.upstream(slow)
    p = h.proxy()
    await p.set_table(table(u.server_model))
    _r, w = await h.connect(p)
    data = os.urandom(24 * MiB)
    w.write(data)
    await settle(None, lambda: sum(c.up + (c.pump.up if c.pump else 0) for c in conns(p)))
    assert buffered(p) <= BOUND
    (c,) = conns(p)
    assert (c.pump is not None) == (h.splice is not None)
    moved = c.pump.up if c.pump is not None else c.up
    assert moved < len(data)  # the proxy stopped reading the client
    release.set()
    w.write_eof()
    await w.drain()
    for _ in range(1000):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [data]


async def test_slow_client_reader_bounded(h: Harness) -> None:
    data = os.urandom(24 * MiB)

    async def firehose(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(data)
        await w.drain()
        w.write_eof()
        await r.read()

    u = await h.upstream(firehose)
    p = h.proxy()
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    cast(asyncio.Transport, w.transport).pause_reading()
    await settle(None, lambda: sum(c.down + (c.pump.down if c.pump else 0)
                                   for c in conns(p)))
    assert buffered(p) <= BOUND
    (c,) = conns(p)
    assert (c.pump is not None) == (h.splice is not None)
    assert (c.pump.down if c.pump else c.down) < len(data)
    cast(asyncio.Transport, w.transport).resume_reading()
    w.write_eof()
    assert await read_exactly_or_eof(r) == data


async def test_client_reset_propagates(h: Harness) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def watch(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi")
        await w.drain()
        try:
            rest = await r.read()
            outcome.set_result(f"eof {rest!r}")
        except ConnectionResetError:
            outcome.set_result("reset")

    u = await h.upstream(watch)
    p = h.proxy()
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    assert await r.readexactly(2) == b"hi"
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()
    assert await asyncio.wait_for(outcome, 10) == "reset"
    assert p.connections == 0
    assert p.stats.failures == {Failure.CLIENT_ABORT: 1}


async def test_server_reset_propagates(h: Harness) -> None:
    async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi")
        await w.drain()
        await r.readexactly(3)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    u = await h.upstream(reset)
    p = h.proxy()
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    assert await r.readexactly(2) == b"hi"
    w.write(b"bye")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 10)
    assert p.connections == 0
    assert p.stats.failures == {Failure.BACKEND_RESET: 1}


async def test_connect_failure_redispatches(h: Harness) -> None:
    u = await h.upstream()
    dead = Server("127.0.0.1", free_port())
    p = h.proxy()
    await p.set_table(table(dead, u.server_model))
    for i in range(4):
        r, w = await h.connect(p)
        w.write(b"ping %d" % i)
        assert await asyncio.wait_for(r.readexactly(6), 10) == b"ping %d" % i
    assert u.accepted == 4
    dc = p.stats.server(BACKEND, dead.label)
    assert dc.conn_errors >= 1
    assert p.stats.backend(BACKEND).redispatches == dc.conn_errors
    assert p.stats.failures[Failure.CONNECT_FAILED] == dc.conn_errors


async def test_all_servers_down_closes_client(h: Harness) -> None:
    dead = [Server("127.0.0.1", free_port()) for _ in range(2)]
    p = h.proxy(replace(Settings(), limits=Limits(retries=3)))
    await p.set_table(table(*dead))
    r, _w = await h.connect(p)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 10)
    # 1 + 3 retries, as haproxy: round robin redispatches at once to the other server,
    # and two failing servers are never both ejected (the panic threshold).
    assert p.stats.failures[Failure.CONNECT_FAILED] == 4
    assert p.stats.backend(BACKEND).conn_errors == 4


async def test_no_server_closes_at_once_and_counts(h: Harness) -> None:
    p = h.proxy()
    await p.set_table(table())
    r, _w = await h.connect(p)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 10)
    assert p.stats.failures == {Failure.NO_SERVER: 1}
    assert p.stats.backend(BACKEND).conn_errors == 1
    assert p.stats.frontend("svc").cur_conns == 0
    assert p.connections == 0


async def test_connect_timeout(h: Harness) -> None:
    # A listener with a full accept queue drops further SYNs: the connect hangs.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(lsock.getsockname())
            fillers.append(s)
        hung = Server("127.0.0.1", lsock.getsockname()[1])
        p = h.proxy(replace(Settings(), limits=Limits(retries=0)), connect=0.1)
        await p.set_table(table(hung))
        r, _w = await h.connect(p)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 10)
        assert p.stats.failures == {Failure.CONNECT_TIMEOUT: 1}
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_client_gives_up_while_connecting(h: Harness) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(lsock.getsockname())
            fillers.append(s)
        hung = Server("127.0.0.1", lsock.getsockname()[1])
        p = h.proxy()
        await p.set_table(table(hung))
        _r, w = await h.connect(p)
        for _ in range(500):
            if conns(p) and conns(p)[0].dial is not None:
                break
            await asyncio.sleep(0.01)
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        w.transport.abort()
        for _ in range(500):
            if p.connections == 0:
                break
            await asyncio.sleep(0.01)
        assert p.connections == 0
        assert p.stats.failures == {Failure.CLIENT_ABORT: 1}
        bal = p.balancers.get(BACKEND)
        assert bal is not None and bal.active == {} and bal.fails == {}
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_shutdown_while_connecting_leaks_nothing(h: Harness) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(lsock.getsockname())
            fillers.append(s)
        p = h.proxy()
        await p.set_table(table(Server("127.0.0.1", lsock.getsockname()[1])))
        fds = len(os.listdir("/proc/self/fd"))
        r, w = await h.connect(p)
        for _ in range(500):
            if conns(p) and conns(p)[0].dial is not None:
                break
            await asyncio.sleep(0.01)
        await p.shutdown(0)
        assert p.connections == 0
        assert await read_exactly_or_eof(r) == b""
        w.transport.abort()
        for _ in range(500):
            if len(os.listdir("/proc/self/fd")) <= fds:
                break
            await asyncio.sleep(0.01)
        assert len(os.listdir("/proc/self/fd")) <= fds  # the half-made connect is gone too
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_route_removal_drains(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy(replace(Settings(), grace_period=0.3))
    port = free_port()
    await p.set_table(table(u.server_model, port=port))
    r, w = await h.connect(p, port)
    await p.set_table(RouteTable())
    assert p.bound_ports() == {}
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    w.write(b"still here")
    assert await asyncio.wait_for(r.readexactly(10), 10) == b"still here"
    assert await read_exactly_or_eof(r) == b""  # closed at the grace deadline
    assert p.connections == 0


async def test_removed_server_keeps_open_connections(h: Harness) -> None:
    a = await h.upstream()
    b = await h.upstream()
    p = h.proxy()
    await p.set_table(table(a.server_model))
    r, w = await h.connect(p)
    w.write(b"one")
    assert await asyncio.wait_for(r.readexactly(3), 10) == b"one"
    await p.set_table(table(b.server_model))
    w.write(b"two")
    assert await asyncio.wait_for(r.readexactly(3), 10) == b"two"
    r2, w2 = await h.connect(p)
    w2.write(b"new")
    assert await asyncio.wait_for(r2.readexactly(3), 10) == b"new"
    assert (a.accepted, b.accepted) == (1, 1)


async def test_new_frontend_port_opens_on_the_fly(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy()
    await p.set_table(RouteTable())
    assert p.bound_ports() == {}
    port = free_port()
    await p.set_table(table(u.server_model, port=port))
    assert p.bound_ports() == {port: ("127.0.0.1", port)}
    r, w = await h.connect(p, port)
    w.write(b"x")
    assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"


@pytest.mark.parametrize("version", [ProxyProtocol.V1, ProxyProtocol.V2])
async def test_proxy_protocol_header_exact(h: Harness, version: ProxyProtocol) -> None:
    seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def capture(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        buf = b""
        while True:
            res = proxyproto.parse(buf)
            if isinstance(res, proxyproto.ProxyHeader):
                break
            buf += await r.read(1)
        seen.set_result(buf[:res.length])
        w.write(buf[res.length:])
        await echo(r, w)

    u = await h.upstream(capture)
    p = h.proxy()
    await p.set_table(table(u.server_model, proxy_protocol=version))
    r, w = await h.connect(p)
    w.write(b"payload")
    assert await asyncio.wait_for(r.readexactly(7), 10) == b"payload"
    cport = w.get_extra_info("sockname")[1]
    fport = p.bound_ports()[0][1]
    if version is ProxyProtocol.V1:
        want = f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {fport}\r\n".encode()
    else:
        want = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([127, 0, 0, 1]) * 2
                + struct.pack("!HH", cport, fport))
    assert await asyncio.wait_for(seen, 10) == want


async def test_tunnel_timeout_closes_idle(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy(tunnel=0.1)
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    w.write(b"x")
    assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"
    assert await read_exactly_or_eof(r) == b""
    assert sum(p.stats.failures.values()) == 1


async def test_server_timeout_without_tunnel(h: Harness) -> None:
    async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    u = await h.upstream(mute)
    p = h.proxy(tunnel=0, client=30, server=0.1)
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    for _ in range(3):
        w.write(b"talking")
        await asyncio.sleep(0.01)
    assert await read_exactly_or_eof(r) == b""
    assert p.stats.failures == {Failure.BACKEND_TIMEOUT: 1}


async def test_client_timeout_without_tunnel(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy(tunnel=0, client=0.1, server=30)
    await p.set_table(table(u.server_model))
    r, _w = await h.connect(p)
    assert await read_exactly_or_eof(r) == b""
    assert p.stats.failures == {Failure.CLIENT_TIMEOUT: 1}


async def test_splice_pipes_are_pooled(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy()
    await p.set_table(table(u.server_model))
    for i in range(3):
        r, w = await h.connect(p)
        w.write(b"%d" % i)
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"%d" % i
        w.write_eof()
        assert await read_exactly_or_eof(r) == b""
    for _ in range(500):
        if p.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert p.connections == 0
    # A pipe is borrowed per read and given back once drained: one or two were made for
    # the three connections, and all are back. ("switch" never reaches splice.)
    assert (1 <= len(p.pipes) <= 2) if h.splice == 0 else len(p.pipes) == 0


async def test_shutdown_drains_then_closes(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy()
    await p.set_table(table(u.server_model))
    r, w = await h.connect(p)
    w.write(b"a")
    assert await asyncio.wait_for(r.readexactly(1), 10) == b"a"
    stopping = asyncio.ensure_future(p.shutdown(0.3))
    await asyncio.sleep(0)
    w.write(b"b")  # the open connection keeps working during the grace period
    assert await asyncio.wait_for(r.readexactly(1), 10) == b"b"
    await asyncio.wait_for(stopping, 10)
    assert await read_exactly_or_eof(r) == b""
    assert p.connections == 0


async def test_ipv6_with_proxy_protocol_v1(h: Harness) -> None:
    seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def capture(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.set_result(await r.readline())
        await echo(r, w)

    try:
        u = await h.upstream(capture, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    p = h.proxy(host="::1")
    await p.set_table(table(u.server_model, proxy_protocol=ProxyProtocol.V1))
    host, port = p.bound_ports()[0]
    assert host == "::1"
    r, w = await h.connect(p)
    w.write(b"six")
    assert await asyncio.wait_for(r.readexactly(3), 10) == b"six"
    cport = w.get_extra_info("sockname")[1]
    assert await seen == f"PROXY TCP6 ::1 ::1 {cport} {port}\r\n".encode()


async def test_many_concurrent_connections(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy()
    await p.set_table(table(u.server_model))
    payloads = [os.urandom(150_000 + 997 * i) for i in range(40)]
    fds = len(os.listdir("/proc/self/fd"))

    async def one(data: bytes) -> bytes:
        r, w = await h.connect(p)

        async def send() -> None:
            for i in range(0, len(data), 50_000):
                w.write(data[i:i + 50_000])
                await w.drain()
            w.write_eof()
        sender = asyncio.ensure_future(send())
        got = await asyncio.wait_for(r.read(), 30)
        await sender
        w.close()
        await w.wait_closed()
        return got

    results = await asyncio.gather(*(one(d) for d in payloads))
    assert results == payloads
    for _ in range(500):
        if p.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert p.connections == 0
    fc = p.stats.frontend("svc")
    total = sum(map(len, payloads))
    assert (fc.bytes_in, fc.bytes_out, fc.total_conns, fc.cur_conns) == (total, total, 40, 0)
    assert u.accepted == 40
    # No fd leaked: all that remains beyond the start are pooled pipes (two fds each)
    # and the pumps' epoll fd.
    for _ in range(500):
        if len(os.listdir("/proc/self/fd")) == fds + 2 * len(p.pipes) + p.poller.own_fds:
            break
        await asyncio.sleep(0.01)
    assert len(os.listdir("/proc/self/fd")) == fds + 2 * len(p.pipes) + p.poller.own_fds
    assert (len(p.pipes) > 0) == (h.splice is not None)


async def test_port_in_use_is_logged_and_retried(h: Harness,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    u = await h.upstream()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    p = h.proxy()
    try:
        await p.set_table(table(u.server_model, port=port))
        assert p.bound_ports() == {}
        assert "cannot listen" in caplog.text
    finally:
        blocker.close()
    await p.set_table(table(u.server_model, port=port))
    assert p.bound_ports() == {port: ("127.0.0.1", port)}
    r, w = await h.connect(p, port)
    w.write(b"ok")
    assert await asyncio.wait_for(r.readexactly(2), 10) == b"ok"


async def test_reuse_port_lets_workers_share_a_port(h: Harness) -> None:
    u = await h.upstream()
    port = free_port()
    proxies = [h.proxy(reuse_port=True) for _ in range(2)]
    for p in proxies:
        await p.set_table(table(u.server_model, port=port))
    assert all(p.bound_ports() == {port: ("127.0.0.1", port)} for p in proxies)
    for i in range(8):
        r, w = await h.connect(proxies[0], port)
        w.write(b"%d" % i)
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"%d" % i
    assert sum(p.stats.frontend("svc").total_conns for p in proxies) == 8


@pytest.mark.parametrize(("algorithm", "affinity"), [
    (Algorithm.SOURCE, Affinity.NONE), (Algorithm.ROUNDROBIN, Affinity.CLIENT_IP)])
async def test_client_ip_stickiness(h: Harness, algorithm: Algorithm,
                                    affinity: Affinity) -> None:
    ups = [await h.upstream() for _ in range(3)]
    p = h.proxy()
    await p.set_table(RouteTable(
        tcp=(TcpFrontend("svc", 0, BACKEND),),
        backends=(Backend(BACKEND, tuple(u.server_model for u in ups), algorithm=algorithm,
                          affinity=affinity),)))
    for _ in range(6):
        r, w = await h.connect(p)
        w.write(b"s")
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"s"
    assert sorted(u.accepted for u in ups) == [0, 0, 6]  # one client address, one server


async def test_roundrobin_spreads(h: Harness) -> None:
    ups = [await h.upstream() for _ in range(3)]
    p = h.proxy()
    await p.set_table(table(*(u.server_model for u in ups)))
    for _ in range(6):
        r, w = await h.connect(p)
        w.write(b"s")
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"s"
    assert [u.accepted for u in ups] == [2, 2, 2]


async def test_maxconn_holds_new_connections_in_the_backlog(h: Harness) -> None:
    u = await h.upstream()
    limit = ConnectionLimit(2)
    p = h.proxy(limit=limit)
    await p.set_table(table(u.server_model))
    held = [await h.connect(p) for _ in range(2)]
    for i, (r, w) in enumerate(held):
        w.write(b"%d" % i)
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"%d" % i
    assert limit.current == 2
    r3, w3 = await h.connect(p)  # the kernel completes the handshake; pylb does not accept
    w3.write(b"3")
    answer = asyncio.ensure_future(r3.readexactly(1))
    done, _ = await asyncio.wait({answer}, timeout=0.2)
    assert not done and p.connections == 2
    held[0][1].write_eof()
    assert await read_exactly_or_eof(held[0][0]) == b""  # one slot frees...
    assert await asyncio.wait_for(answer, 10) == b"3"  # ...and it is taken
    for _, w in (held[1], (r3, w3)):
        w.write_eof()
    for _ in range(500):
        if limit.current == 0:
            break
        await asyncio.sleep(0.01)
    assert limit.current == 0 and p.connections == 0


async def test_maxconn_slot_returned_on_every_ending(h: Harness) -> None:
    limit = ConnectionLimit(100)
    p = h.proxy(limit=limit)
    await p.set_table(table())  # no server: each connection ends at once
    for _ in range(5):
        r, _w = await h.connect(p)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 10)
    for _ in range(500):
        if limit.current == 0:
            break
        await asyncio.sleep(0.01)
    assert limit.current == 0
