"""The connection's state machine on bytes, with fake transports and no sockets (as h11's
ConnectionPair does): cross-wired watermarks, half-close, reset propagation, and what
happens to bytes that arrive while the server connection is being made."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.balance import Balancers
from proxy.tcp.proxy import HIGH_WATER, LOW_WATER, TcpProxy, _Conn, _Frontend, _Upstream
from pylb.config import Settings
from pylb.counters import Stats
from pylb.failures import Failure
from pylb.model import Backend, ProxyProtocol, Server, TcpFrontend

BACKEND = "default/db:3306"
SERVER = Server("10.0.0.5", 3306)
RST = struct.pack("ii", 1, 0)


class FakeSock:
    def __init__(self) -> None:
        self.opts: dict[tuple[int, int], Any] = {}

    def setsockopt(self, level: int, opt: int, value: Any) -> None:
        self.opts[(level, opt)] = value

    def fileno(self) -> int:
        return -1


class FakeTransport:
    """Enough of a uvloop TCPTransport: a write buffer that the test drains by hand, and
    pause_writing/resume_writing at the watermarks, called inside write() as uvloop does."""

    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int],
                 local: tuple[str, int]) -> None:
        self.protocol = protocol
        self.peer, self.local = peer, local
        self.sock = FakeSock()
        self.written = bytearray()
        self.buffered = 0
        self.high, self.low = 64 * 1024, 16 * 1024
        self.paused_protocol = False
        self.reading = True
        self.eof_written = False
        self.closed = self.aborted = False

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.high, self.low = high, low

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written
        self.written += data
        self.buffered += len(data)
        if self.buffered > self.high and not self.paused_protocol:
            self.paused_protocol = True
            self.protocol.pause_writing()

    def drain(self) -> None:
        self.buffered = 0
        if self.paused_protocol:
            self.paused_protocol = False
            self.protocol.resume_writing()

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": self.local, "socket": self.sock}.get(
            name, default)


class Pair:
    """A proxied connection whose client transport is `ct` and server transport `st`."""

    def __init__(self, proxy_protocol: ProxyProtocol = ProxyProtocol.NONE) -> None:
        s = Settings()
        self.stats = Stats()
        bals = Balancers(s.limits)
        bals.update([Backend(BACKEND, (SERVER,), proxy_protocol=proxy_protocol)])
        self.proxy = TcpProxy(s, self.stats, bals, splice_threshold=None)
        # An SNI frontend waits for the client's first bytes before it connects, which
        # lets the test play the connect itself.
        fe = _Frontend(TcpFrontend("db", 3306, BACKEND, sni=(("x", BACKEND),)),
                       self.stats.frontend("db"))
        self.conn = _Conn(self.proxy, fe)
        self.ct = FakeTransport(self.conn, ("192.0.2.7", 40000), ("10.0.0.1", 3306))
        self.conn.connection_made(self.ct)  # type: ignore[arg-type]
        assert self.conn.dial is None
        self.up = _Upstream(self.conn)
        self.st = FakeTransport(self.up, ("10.0.0.5", 3306), ("10.0.0.1", 50000))

    def connect(self) -> None:
        """What `connect` + the connect task do, minus the socket."""
        c = self.conn
        c.backend = BACKEND
        c.bcounters = self.stats.backend(BACKEND)
        c.bal = self.proxy.balancers.get(BACKEND)
        assert c.bal is not None
        c.server = SERVER
        c.bal.acquire(SERVER)
        self.up.connection_made(self.st)  # type: ignore[arg-type]
        c._connected(self.up, self.stats.server(BACKEND, SERVER.label))


async def test_watermarks_cross_wired_both_ways() -> None:
    p = Pair()
    p.connect()
    assert (p.ct.high, p.ct.low, p.st.high, p.st.low) == (HIGH_WATER, LOW_WATER) * 2
    p.conn.data_received(b"x" * (HIGH_WATER + 1))
    assert bytes(p.st.written) == b"x" * (HIGH_WATER + 1)
    assert not p.ct.reading and p.st.reading  # server side full: stop reading the client
    p.st.drain()
    assert p.ct.reading
    p.up.data_received(b"y" * (HIGH_WATER + 1))
    assert not p.st.reading and p.ct.reading  # client side full: stop reading the server
    p.ct.drain()
    assert p.st.reading


async def test_half_close_each_way_then_close() -> None:
    p = Pair()
    p.connect()
    assert p.conn.eof_received() is True  # keep the client transport open for writing
    assert p.st.eof_written and not p.ct.eof_written
    p.up.data_received(b"answer after the client's FIN")
    assert bytes(p.ct.written) == b"answer after the client's FIN"
    assert not p.ct.closed and not p.st.closed
    assert p.up.eof_received() is True
    assert p.ct.eof_written and p.ct.closed and p.st.closed
    assert not p.ct.aborted and not p.st.aborted
    assert p.proxy.connections == 0 and p.stats.failures == {}


@pytest.mark.parametrize("side", ["client", "server"])
async def test_reset_propagates_with_linger_zero(side: str) -> None:
    p = Pair()
    p.connect()
    if side == "client":
        p.conn.connection_lost(ConnectionResetError())
        other = p.st
    else:
        p.up.connection_lost(ConnectionResetError())
        other = p.ct
        assert p.stats.failures == {Failure.BACKEND_RESET: 1}
    assert other.aborted
    assert other.sock.opts[(socket.SOL_SOCKET, socket.SO_LINGER)] == RST
    assert p.proxy.connections == 0
    assert p.conn.bal is not None and p.conn.bal.active == {}


async def test_clean_close_is_not_a_reset() -> None:
    p = Pair()
    p.connect()
    p.up.connection_lost(None)
    assert p.ct.closed and not p.ct.aborted
    assert p.stats.failures == {}


async def test_bytes_before_connect_are_kept_in_order() -> None:
    p = Pair(ProxyProtocol.V1)
    p.conn.data_received(b"\x16\x03\x01")  # a TLS record's start: the hello is awaited
    p.up.connection_made(p.st)  # type: ignore[arg-type]
    p.up.data_received(b"server greeting ")  # the server talks before the task resumes
    p.up.data_received(b"part two")
    assert p.up.eof_received() is True
    p.connect()
    assert bytes(p.st.written) == b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 3306\r\n\x16\x03\x01"
    assert bytes(p.ct.written) == b"server greeting part two"
    assert p.ct.eof_written  # the server's early FIN is passed on too
    fc = p.stats.frontend("db")
    p.conn.flush_counts()
    assert (fc.bytes_in, fc.bytes_out) == (3, 24)


async def test_connect_with_big_pending_write_keeps_client_paused() -> None:
    p = Pair()
    big = b"z" * (2 * HIGH_WATER)
    p.conn.sbuf = big  # more than the high mark gathered before the connect completed
    p.connect()
    assert bytes(p.st.written) == big
    assert not p.ct.reading  # the server side is over its high mark: the client waits
    p.st.drain()
    assert p.ct.reading


OPS = st.lists(st.tuples(
    st.sampled_from(["c_data", "s_data", "c_eof", "s_eof", "drain_ct", "drain_st"]),
    st.integers(1, 3 * HIGH_WATER)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_any_interleaving_keeps_order_bounds_and_half_close(ops: list[tuple[str, int]]) -> None:
    asyncio.run(_interleave(ops))


async def _interleave(ops: list[tuple[str, int]]) -> None:
    p = Pair()
    p.connect()
    sent_up = bytearray()
    sent_down = bytearray()
    c_eof = s_eof = False
    for i, (op, n) in enumerate(ops):
        chunk = bytes([i % 251]) * n
        if op == "c_data" and not c_eof and p.ct.reading and not p.ct.closed:
            sent_up += chunk
            p.conn.data_received(chunk)
        elif op == "s_data" and not s_eof and p.st.reading and not p.st.closed:
            sent_down += chunk
            p.up.data_received(chunk)
        elif op == "c_eof" and not c_eof and not p.ct.closed:
            c_eof = True
            assert p.conn.eof_received() is True
        elif op == "s_eof" and not s_eof and not p.st.closed:
            s_eof = True
            assert p.up.eof_received() is True
        elif op == "drain_ct":
            p.ct.drain()
        elif op == "drain_st":
            p.st.drain()
        # Every byte went through, in order; a full side stops the other from reading.
        assert p.st.written == sent_up and p.ct.written == sent_down
        if p.st.buffered > HIGH_WATER and not p.ct.closed:
            assert not p.ct.reading
        if p.ct.buffered > HIGH_WATER and not p.st.closed:
            assert not p.st.reading
        assert p.st.eof_written == c_eof and p.ct.eof_written == s_eof
        assert (p.ct.closed and p.st.closed) == (c_eof and s_eof)
        assert not p.ct.aborted and not p.st.aborted
    p.ct.drain()
    p.st.drain()
    if not (c_eof and s_eof):
        assert p.ct.reading and p.st.reading and p.proxy.connections == 1
    else:
        assert p.proxy.connections == 0
