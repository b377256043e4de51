"""proxy.fdtransport: the plain-TCP transport a `direct` Listener gives accepted
connections, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy import flow
from proxy.fdtransport import FdTransport, LostCalls
from proxy.listener import ConnectionLimit, Listener, bind_socket
from tests.conftest import until
from tests.proxy.transports import Recorder, Server


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    return s


@contextlib.asynccontextmanager
async def accepted(**kw: Any) -> AsyncIterator[tuple[Server, socket.socket, Recorder]]:
    """A direct listener, one client connected to it, and that connection's protocol."""
    srv = Server(**kw)
    srv.listener.start()
    c = connect(srv.port)
    try:
        await until(lambda: srv.protocols)
        yield srv, c, srv.protocols[0]
    finally:
        c.close()
        srv.close()


async def recv_exactly(s: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _recv_exactly, s, n)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _recv_all(s: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            return bytes(out)
        out += chunk


async def test_a_request_already_there_is_read_at_accept_and_answered() -> None:
    """The client has sent before the listener accepts: the first read is made at once
    (before `start` returns), and the answer goes out with no watching in between."""
    srv = Server(on_data=lambda p, d: p.transport.write(d.upper()))
    c = connect(srv.port)
    try:
        c.sendall(b"hello")
        await asyncio.sleep(0.05)  # (the bytes are in the server's socket by now)
        srv.listener.start()
        assert await recv_exactly(c, 5) == b"HELLO"
        (p,) = srv.protocols
        assert p.reads_before_start == 1
        # later reads come from watching the descriptor
        c.sendall(b"again")
        assert await recv_exactly(c, 5) == b"AGAIN"
        assert p.reads_before_start == 1
    finally:
        c.close()
        srv.close()


async def test_a_client_that_has_not_spoken_yet_is_watched() -> None:
    async with accepted(on_data=lambda p, d: p.transport.write(d)) as (_, c, p):
        await asyncio.sleep(0.05)
        c.sendall(b"late")
        assert await recv_exactly(c, 4) == b"late"
        assert p.reads_before_start == 0


async def test_pausing_in_the_first_read_holds_later_bytes_until_resumed() -> None:
    srv = Server(on_data=lambda p, d: p.transport.pause_reading())
    c = connect(srv.port)
    try:
        c.sendall(b"first")
        await asyncio.sleep(0.05)
        srv.listener.start()
        await until(lambda: srv.protocols and srv.protocols[0].data)
        (p,) = srv.protocols
        assert bytes(p.data) == b"first" and not p.transport.is_reading()
        c.sendall(b"second")
        await asyncio.sleep(0.1)
        assert bytes(p.data) == b"first"  # not read while paused
        p.on_data = None
        p.transport.resume_reading()
        assert p.transport.is_reading()
        await until(lambda: bytes(p.data) == b"firstsecond")
    finally:
        c.close()
        srv.close()


async def test_what_the_kernel_does_not_take_is_buffered_with_flow_control() -> None:
    """A client that does not read: writes are buffered past the kernel's buffers, the
    protocol is paused above the high mark and resumed below the low one, and close()
    sends everything before the FIN."""
    payload = os.urandom(8 << 20)
    async with accepted(on_data=lambda p, d: None) as (srv, c, p):
        t = p.transport
        t.set_write_buffer_limits(256 * 1024, 64 * 1024)
        assert t.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
        for i in range(0, len(payload), 64 * 1024):
            t.write(payload[i:i + 64 * 1024])
        assert t.get_write_buffer_size() > 256 * 1024 and p.pauses == 1
        t.close()
        assert t.is_closing()
        t.write(b"dropped")  # (after close: dropped, as asyncio's)
        got = await asyncio.get_running_loop().run_in_executor(None, _recv_all, c)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        await until(lambda: p.lost)
        assert p.lost == [None] and p.resumes == 1 and t.get_write_buffer_size() == 0
        assert srv.limit.current == 0


@pytest.mark.parametrize("keep_open", [True, False])
async def test_the_clients_fin(keep_open: bool) -> None:
    """eof_received is called once; True keeps the connection open to answer."""
    srv = Server(keep_open_on_eof=keep_open)
    srv.listener.start()
    c = connect(srv.port)
    try:
        c.sendall(b"request")
        c.shutdown(socket.SHUT_WR)
        await until(lambda: srv.protocols and srv.protocols[0].eof)
        (p,) = srv.protocols
        assert bytes(p.data) == b"request"
        if keep_open:
            await asyncio.sleep(0.05)
            assert not p.lost and not p.transport.is_closing()
            p.transport.write(b"answer")
            p.transport.close()
        got = await asyncio.get_running_loop().run_in_executor(None, _recv_all, c)
        assert got == (b"answer" if keep_open else b"")
        await until(lambda: p.lost)
        assert p.lost == [None]
    finally:
        c.close()
        srv.close()


async def test_a_reset_reaches_connection_lost_with_the_error() -> None:
    async with accepted() as (srv, c, p):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
        await until(lambda: p.lost)
        assert isinstance(p.lost[0], ConnectionResetError)
        assert srv.limit.current == 0


async def test_abort_drops_the_buffer_and_closes_now() -> None:
    async with accepted() as (_, c, p):
        t = p.transport
        t.write(os.urandom(8 << 20))
        assert t.get_write_buffer_size() > 0
        t.abort()
        await until(lambda: p.lost)
        assert p.lost == [None] and t.get_write_buffer_size() == 0
        got = await asyncio.get_running_loop().run_in_executor(None, _recv_all_or_reset, c)
        assert len(got) < 8 << 20


def _recv_all_or_reset(s: socket.socket) -> bytes:
    try:
        return _recv_all(s)
    except ConnectionResetError:
        return b""


async def test_the_watermarks_are_proxy_flows_until_set() -> None:
    """What pylb's HTTP protocol would set (it no longer calls set_write_buffer_limits on
    this transport)."""
    async with accepted() as (_, _c, p):
        assert p.transport.get_write_buffer_limits() == (flow.LOW_WATER, flow.HIGH_WATER)


async def test_write_eof_half_closes() -> None:
    async with accepted() as (_, c, p):
        t = p.transport
        assert t.can_write_eof()
        t.write(b"last words")
        t.write_eof()
        with pytest.raises(RuntimeError):
            t.write(b"more")
        got = await asyncio.get_running_loop().run_in_executor(None, _recv_all, c)
        assert got == b"last words"
        c.sendall(b"still heard")  # the other direction stays open
        await until(lambda: bytes(p.data) == b"still heard")


async def test_extra_info_and_inherited_nodelay() -> None:
    async with accepted() as (srv, c, p):
        t = p.transport
        assert isinstance(t, FdTransport)
        assert t.get_extra_info("peername") == c.getsockname()
        assert t.get_extra_info("sockname") == ("127.0.0.1", srv.port)
        assert t.get_extra_info("nothing", 42) == 42
        # TCP_NODELAY set on the listening socket, inherited (no setsockopt per connection)
        assert t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                     socket.TCP_NODELAY) == 1


async def test_the_descriptor_is_closed_after_connection_lost() -> None:
    fds: list[int] = []

    def on_data(p: Recorder, d: bytes) -> None:
        fds.append(p.transport._fd)
        p.transport.close()

    srv = Server(on_data=on_data)
    srv.listener.start()
    c = connect(srv.port)
    try:
        c.sendall(b"x")
        await until(lambda: srv.protocols and srv.protocols[0].lost)
        assert c.recv(10) == b""  # the FIN
        with pytest.raises(OSError):
            os.fstat(fds[0])  # (nothing else opened a descriptor in between)
    finally:
        c.close()
        srv.close()


async def test_a_failing_protocol_ends_its_connection_not_the_listener(
        caplog: pytest.LogCaptureFixture) -> None:
    """A protocol whose connection_made raises: that connection is aborted (its slot
    comes back through connection_lost); a factory that raises: the slot comes back at
    once. The listener goes on accepting."""
    limit = ConnectionLimit(10)
    made: list[Recorder] = []
    calls = 0

    class Broken(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            raise RuntimeError("bug")

    def factory() -> Recorder:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("factory bug")
        p = (Broken if calls == 2 else Recorder)(limit, on_data=lambda p, d: p.transport.write(d))
        made.append(p)
        return p

    lst = Listener(bind_socket("127.0.0.1", 0), factory, limit=limit, direct=True)
    lst.start()
    port = lst.address[1]
    socks = [connect(port) for _ in range(3)]
    try:
        await until(lambda: calls == 3 and made[0].lost)
        socks[2].sendall(b"ok")
        assert await recv_exactly(socks[2], 2) == b"ok"
        assert limit.current == 1  # only the working connection holds a slot
    finally:
        for s in socks:
            s.close()
        lst.close()
        for p in made:
            if not p.transport.is_closing():
                p.transport.abort()


class _Lost(asyncio.Protocol):
    def __init__(self, order: list[str], name: str, fail: bool = False) -> None:
        self.order = order
        self.name = name
        self.fail = fail

    def connection_lost(self, exc: Exception | None) -> None:
        self.order.append(self.name)
        if self.fail:
            raise RuntimeError("bug in connection_lost")


def _transports(loop: asyncio.AbstractEventLoop, lost_calls: LostCalls,
                protocols: list[_Lost]) -> tuple[list[FdTransport], list[socket.socket]]:
    transports, peers = [], []
    for p in protocols:
        a, b = socket.socketpair()
        a.setblocking(False)
        t = FdTransport(loop, a.detach(), p, None, lost_calls)
        p.connection_made(t)
        transports.append(t)
        peers.append(b)
    return transports, peers


async def test_the_connection_lost_calls_of_one_turn_come_in_one_callback() -> None:
    """Transports closed in one loop turn have their connection_lost called together, by
    one loop callback: a callback scheduled between two of the closes runs after both."""
    loop = asyncio.get_running_loop()
    order: list[str] = []
    (t1, t2), peers = _transports(loop, LostCalls(loop), [_Lost(order, "1"), _Lost(order, "2")])
    try:
        t1.close()
        loop.call_soon(order.append, "other")
        t2.close()
        assert order == []  # never from inside close()
        await until(lambda: len(order) == 3)
        assert order == ["1", "2", "other"]
        for s in peers:
            assert s.recv(10) == b""  # each descriptor closed: the FIN
    finally:
        for s in peers:
            s.close()


async def test_a_failing_connection_lost_does_not_keep_the_others_from_theirs() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    protocols = [_Lost(order, "1", fail=True), _Lost(order, "2")]
    transports, peers = _transports(loop, LostCalls(loop), protocols)
    try:
        for t in transports:
            t.close()
        await until(lambda: len(order) == 2)
        assert order == ["1", "2"]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)
        for s in peers:
            assert s.recv(10) == b""  # both descriptors closed, the failing one's too
    finally:
        loop.set_exception_handler(None)
        for s in peers:
            s.close()
