"""The client and backend Protocols on bytes, with fake transports and no sockets: what
goes where, pipelining, flow control (h11's ConnectionPair habit)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import flow
from proxy.balance import Balancers
from proxy.http import HttpProxy, parser
from proxy.http.idle import LATE
from proxy.http.pool import Pool
from proxy.http.server import ClientProtocol
from proxy.http.upstream import UpstreamProtocol
from pylb.config import HttpParser, Settings
from pylb.counters import Stats
from pylb.model import Backend, HttpRoute, RouteTable, Server
from tests.conftest import free_port
from tests.proxy.http.test_parser import Sink

SERVER = Server("127.0.0.1", free_port(), name="s1")  # nothing listens there
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class FakeTransport:
    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int]) -> None:
        self.protocol = protocol
        self.peer = peer
        self.out = bytearray()
        self.closing = False
        self.reading = True
        self.pauses = 0
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 80)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.out += data
        self.writes += 1

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0  # all written is at once in `out`, as if the peer had read it

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def make(kind: HttpParser) -> tuple[HttpProxy, ClientProtocol, FakeTransport, UpstreamProtocol,
                                     FakeTransport]:
    proxy = HttpProxy(Settings(http_parser=kind), Stats(), Balancers())
    proxy.set_table(RouteTable(http=(HttpRoute("a", "/a", "b"),),
                               backends=(Backend("b", (SERVER,)),)))
    up = UpstreamProtocol(SERVER.key, proxy.parser_kind)
    ut = FakeTransport(up, (SERVER.address, SERVER.port))
    up.connection_made(ut)  # type: ignore[arg-type]
    proxy.pool.put(up, proxy.loop.time())
    client = ClientProtocol(proxy)
    ct = FakeTransport(client, ("192.0.2.7", 40000))
    client.connection_made(ct)  # type: ignore[arg-type]
    return proxy, client, ct, up, ut


async def test_request_and_response_bytes(parser_kind: HttpParser) -> None:
    proxy, client, ct, up, ut = make(parser_kind)
    client.data_received(b"GET /a/x?y HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    assert ut.take() == (b"GET /x?y HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n"
                         b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
                         b"X-Forwarded-Port: 80\r\n\r\n")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok")
    assert ct.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert proxy.pool.idle_count() == 1 and client.idle
    ct.close()
    await asyncio.sleep(0)


async def test_pipelined_requests_wait_their_turn(parser_kind: HttpParser) -> None:
    _proxy, client, ct, up, ut = make(parser_kind)
    client.data_received(b"GET /a/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /a/2 HTTP/1.1\r\nHost: h"
                         b"\r\n\r\n")
    sent = ut.take()
    assert sent.startswith(b"GET /1 ") and b"GET /2" not in sent
    assert not ct.reading  # the second request waits; reading is paused meanwhile
    up.data_received(OK)
    assert ct.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert ut.take().startswith(b"GET /2 ")  # the pooled connection took the next one
    assert ct.reading
    up.data_received(OK)
    assert ct.take().endswith(b"ok")
    ct.close()
    await asyncio.sleep(0)


SECOND = b"POST /a/2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"


async def test_pipelined_second_request_survives_the_first_parsers_drop(
        parser_kind: HttpParser) -> None:
    """The first request's parser is dropped when that request is whole and the read
    ended with it (a memory policy: proxy.http.server's data_received). A second request
    pipelined behind it — in the same read, or split at every byte from the first
    request's last bytes on — is never lost, nor forwarded before the first answer."""
    first = b"GET /a/1 HTTP/1.1\r\nHost: h\r\n\r\n"
    stream = first + SECOND
    for cut in [len(stream), *range(len(first) - 3, len(stream))]:
        _proxy, client, ct, up, ut = make(parser_kind)
        reads = [stream[:cut], stream[cut:]] if cut < len(stream) else [stream]
        if cut == len(stream) - 1:
            reads = [first, *(bytes([b]) for b in SECOND)]  # one byte per read
        for i, data in enumerate(reads):
            client.data_received(data)
            if i == 0:  # dropped only when the read ended exactly with the first request
                assert (client.parser is None) is (data == first), cut
        sent = ut.take()
        assert sent.startswith(b"GET /1 ") and b"/2" not in sent, cut
        up.data_received(OK)
        assert ct.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        sent = ut.take()
        assert sent.startswith(b"POST /2 ") and sent.endswith(b"\r\n\r\nxyz"), (cut, sent)
        up.data_received(OK)
        assert ct.take().endswith(b"ok") and client.idle, cut
        ct.close()
        await asyncio.sleep(0)


async def test_flow_control_cross_wired(parser_kind: HttpParser) -> None:
    _proxy, client, ct, up, ut = make(parser_kind)
    client.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nab")
    assert ut.take().endswith(b"\r\n\r\nab")
    up.pause_writing()  # the backend's send buffer is full: stop reading the client
    assert not ct.reading
    up.resume_writing()
    assert ct.reading
    client.data_received(b"c" * 98)
    assert ut.take() == b"c" * 98
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    client.pause_writing()  # the client's send buffer is full: stop reading the backend
    assert not ut.reading
    client.resume_writing()
    assert ut.reading
    up.data_received(b"67890")
    assert ct.take().endswith(b"1234567890")
    ct.close()
    await asyncio.sleep(0)


async def test_stale_pooled_connection_dies_before_response(parser_kind: HttpParser) -> None:
    """Resent on a fresh connection (a Task connects: here to a closed port, so a 502
    after the retries — what matters is that the dead connection was not the end)."""
    proxy, client, ct, up, ut = make(parser_kind)
    up.uses = 1  # it has served before
    client.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    ut.take()
    ut.close()
    await asyncio.sleep(0)
    assert proxy.stats.backend("b").retries >= 1
    for _ in range(1000):  # the retries wait haproxy's turn-around (1 s) each
        if ct.out:
            break
        await asyncio.sleep(0.01)
    assert ct.take().startswith(b"HTTP/1.1 502 ")
    ct.close()
    await proxy.shutdown(0.1)


async def test_head_and_body_coalesced(parser_kind: HttpParser) -> None:
    _, client, ct, up, ut = make(parser_kind)
    client.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    assert ut.writes == 1 and ut.take().endswith(b"\r\n\r\nhello")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert ct.writes == 1
    ct.close()
    await asyncio.sleep(0)


@pytest.mark.usefixtures("forget_reads")  # (a remembered read makes no parser)
async def test_idle_connection_slims_down_and_closes_at_keep_alive(
        parser_kind: HttpParser) -> None:
    """Idle between requests: the sweep (proxy.http.idle), visited here with a chosen
    time instead of the loop's, drops the parser and the timer after one interval, the
    next request still goes through (a new parser), and the connection is closed once
    idle for `timeout http-keep-alive`, not before."""
    proxy, client, ct, up, ut = make(parser_kind)
    keep_alive = proxy.settings.timeouts.keep_alive
    interval = proxy.idle.interval
    assert interval == min(keep_alive / 4, 1.0)
    for first in (True, False):  # after the first exchange and after a later one
        client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert ut.take().startswith(b"GET /x ")
        up.data_received(OK)
        assert ct.take().endswith(b"ok") and client.idle
        now = asyncio.get_running_loop().time()
        assert client.idle_check(now, interval)  # just idle: nothing more dropped
        # the first request's parser went when that request was whole (data_received);
        # a later request's parser is kept until the sweep
        assert (client.parser is None) is first
        assert client.idle_check(now + interval, interval)
        assert client.parser is None and client._timer is None
        assert not ct.closing
    # From the time it went idle (`now` may be a millisecond later), with a margin on the
    # closing side: `stamp + keep_alive - stamp` can round below `keep_alive` (a 1-ulp
    # miss that failed this test about one run in eight).
    stamp = client._tstamp
    assert stamp <= now
    assert client.idle_check(stamp + keep_alive - 0.01, interval) and not ct.closing
    assert not client.idle_check(stamp + keep_alive + 1e-6, interval)
    assert ct.closing
    await asyncio.sleep(0)


async def test_first_exchange_leaves_the_connection_no_buffer(parser_kind: HttpParser) -> None:
    """Many connections make one request and stay idle (bench/memory.py). When the
    first request's parser went with its exchange (the read ended with the request), the
    connection keeps no list of its own either, without waiting for the sweep; its
    later requests, with a body split across reads (kept for a resend) or chunked, still
    go through whole."""
    import gc

    _proxy, client, ct, up, ut = make(parser_kind)
    client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert ut.take().startswith(b"GET /x ")
    up.data_received(OK)
    assert ct.take() == OK and client.idle and client.parser is None
    assert not [r for r in gc.get_referents(client) if type(r) is list]
    client.data_received(b"PUT /a/2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
    client.data_received(b"cde")
    sent = ut.take()
    assert sent.startswith(b"PUT /2 ") and sent.endswith(b"\r\n\r\nabcde"), sent
    up.data_received(OK)
    assert ct.take() == OK and client.idle
    client.data_received(b"POST /a/3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n3\r\nxyz\r\n")
    client.data_received(b"0\r\n\r\n")
    sent = ut.take()
    assert sent.startswith(b"POST /3 ") and sent.endswith(b"\r\n\r\n3\r\nxyz\r\n0\r\n\r\n")
    up.data_received(OK)
    assert ct.take() == OK and client.idle
    ct.close()
    await asyncio.sleep(0)


def _alive(*types: type) -> int:
    """How many objects of exactly these types the cyclic GC tracks now."""
    import gc

    return sum(type(o) in types for o in gc.get_objects())


@pytest.fixture
def forget_reads() -> Iterator[None]:
    """No read remembered (parser._READS) by earlier tests: a connection with no parser
    makes one for its next read (else none: test_a_remembered_read_makes_no_parser)."""
    saved, once = dict(parser._READS), set(parser._ONCE)
    known = parser._known_read, parser._known
    parser._READS.clear()
    parser._ONCE.clear()
    parser._known_read, parser._known = b"", None  # (known_request's last read)
    yield
    parser._READS.clear()
    parser._READS.update(saved)
    parser._ONCE.clear()
    parser._ONCE.update(once)
    parser._known_read, parser._known = known


@pytest.mark.usefixtures("forget_reads")
async def test_slimmed_idle_connection_holds_no_buffers_and_frees_its_parser(
        parser_kind: HttpParser) -> None:
    """Slimming an idle connection (proxy.http.idle) leaves it no list of its own (its
    empty buffers are one shared empty placeholder), frees the request parser at once
    (not by a later cyclic GC: llhttp's parser and ours refer to each other), and the
    connection still serves its next request and closes cleanly (shutdown's `close`
    flushes nothing)."""
    import gc

    from proxy.http.parser import H11RequestParser, HttptoolsRequestParser

    def parsers() -> int:
        return _alive(H11RequestParser, HttptoolsRequestParser)

    proxy, client, ct, up, ut = make(parser_kind)
    interval = proxy.idle.interval
    gc.collect()
    gc.disable()
    try:
        for first in (True, False):
            before = parsers()
            client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
            if first:  # dropped as soon as the first request was whole: freed without gc
                assert client.parser is None and parsers() == before
            assert ut.take().startswith(b"GET /x ")
            up.data_received(OK)
            assert ct.take().endswith(b"ok") and client.idle
            before = parsers()
            now = asyncio.get_running_loop().time()
            assert client.idle_check(now + interval, interval)
            assert client.parser is None
            assert parsers() == before - (0 if first else 1)  # freed without gc
            assert not [r for r in gc.get_referents(client) if type(r) is list]
    finally:
        gc.enable()
    client.close()
    assert ct.closing and ct.take() == b""
    await asyncio.sleep(0)


@pytest.mark.usefixtures("forget_reads")
async def test_connection_closed_with_its_parser_frees_it_without_gc(
        parser_kind: HttpParser) -> None:
    """A `Connection: close` exchange keeps its request parser to the end (it is not at
    rest); the connection's end lets it go, freed by reference counting rather than left,
    with the connection it refers to, for a run of the cyclic GC."""
    import gc

    from proxy.http.parser import H11RequestParser, HttptoolsRequestParser

    def parsers() -> int:
        return _alive(H11RequestParser, HttptoolsRequestParser)

    _proxy, client, ct, up, ut = make(parser_kind)
    gc.collect()
    gc.disable()
    try:
        before = parsers()
        client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert client.parser is not None and parsers() == before + 1
        assert ut.take().startswith(b"GET /x ")
        up.data_received(OK)
        assert ct.take().endswith(b"ok") and ct.closing
        await asyncio.sleep(0)  # connection_lost
        assert client.closed and client.parser is None
        assert parsers() == before
    finally:
        gc.enable()


@pytest.mark.usefixtures("forget_reads")
async def test_a_remembered_read_makes_no_parser(parser_kind: HttpParser,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection with no parser whose read the httptools parser has taken whole before
    (parser.known_request) gets the same exchange with no parser made: left at rest after
    a keep-alive request (the next read makes none either), ignoring what follows a
    request that closes the connection, as a parser would. The h11 path remembers no
    read."""
    from proxy.http import server
    from proxy.http.parser import AFTER_CLOSE

    made: list[object] = []

    def request_parser(*args: Any) -> Any:
        made.append(parser.request_parser(*args))
        return made[-1]

    monkeypatch.setattr(server, "request_parser", request_parser)
    keep = b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n"
    close = b"GET /a/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    proxy, client, ct, up, ut = make(parser_kind)
    for read in (keep, close, keep, close):  # each read twice: remembered (httptools)
        parser.request_parser(parser_kind, Sink(), proxy.settings.limits).feed(read)
    remembers = parser_kind is HttpParser.HTTPTOOLS
    assert (keep in parser._READS and close in parser._READS) is remembers
    made.clear()
    for _ in range(2):
        client.data_received(keep)
        assert ut.take().startswith(b"GET /x ")
        up.data_received(OK)
        assert ct.take().endswith(b"ok") and client.idle and not ct.closing
        client.idle_check(asyncio.get_running_loop().time() + 1.0, 0.5)  # slimmed
        assert client.parser is None
    client.data_received(close)
    assert len(made) == (0 if remembers else 3)
    assert client.parser is (AFTER_CLOSE if remembers else made[-1])
    client.data_received(keep)  # after a request that closes: ignored
    assert ut.take().startswith(b"GET /x ") and ut.take() == b""
    up.data_received(OK)
    assert ct.take().endswith(b"ok") and ct.closing
    await asyncio.sleep(0)  # connection_lost
    assert client.closed and client.parser is None


async def test_alpn_switch_hands_on_the_address_accept_gave(parser_kind: HttpParser) -> None:
    """TLS: the client's address as the listener's accept() gave it reaches the
    connection ALPN chose, which then asks its transport for no peername."""
    from proxy.http.alpn import AlpnSwitch

    proxy, *_ = make(parser_kind)
    asked: list[str] = []

    class Transport(FakeTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            asked.append(name)
            return super().get_extra_info(name, default)

        def set_protocol(self, protocol: asyncio.Protocol) -> None:
            self.protocol = protocol

    switch = AlpnSwitch(proxy, ("192.0.2.9", 4321))
    t = Transport(switch, ("198.51.100.1", 1))
    switch.connection_made(t)  # type: ignore[arg-type]
    conn = t.protocol
    assert isinstance(conn, ClientProtocol)
    assert (conn.client_ip, conn.client_port) == ("192.0.2.9", 4321)
    assert "peername" not in asked
    # without an address from accept (no listener), the transport's is asked for
    t2 = Transport(AlpnSwitch(proxy), ("198.51.100.1", 1))
    t2.protocol.connection_made(t2)  # type: ignore[arg-type]
    assert isinstance(t2.protocol, ClientProtocol)
    assert (t2.protocol.client_ip, t2.protocol.client_port) == ("198.51.100.1", 1)
    t.close()
    t2.close()
    await asyncio.sleep(0)


async def test_closed_server_connection_frees_its_response_parser_without_gc(
        parser_kind: HttpParser) -> None:
    """A server connection that closes lets its response parser go, freed by reference
    counting: httptools' parser is in a cycle, which would also hold the client
    connection it served (its sink) until a run of the cyclic GC (the fake transports
    here are in a cycle with their protocols, so the parsers are what is counted)."""
    import gc

    from proxy.http.parser import H11ResponseParser, HttptoolsResponseParser

    def parsers() -> int:
        return _alive(H11ResponseParser, HttptoolsResponseParser)

    _proxy, client, ct, up, ut = make(parser_kind)
    gc.collect()
    gc.disable()
    try:
        before = parsers()
        client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert ut.take().startswith(b"GET /x ")
        up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close"
                         b"\r\n\r\nok")
        assert ct.take().endswith(b"ok") and ct.closing and ut.closing
        assert parsers() == before + 1
        await asyncio.sleep(0)  # both connection_lost
        assert client.closed and up.closed and up.parser is None
        assert parsers() == before
    finally:
        gc.enable()


async def test_first_timer_is_made_at_the_tick_only_if_still_needed(
        parser_kind: HttpParser) -> None:
    """A new connection holds its frontend's LateTimers in place of a TimerHandle
    (proxy.http.idle): one whose exchange is over by the tick never makes one; one still
    waiting for its response at the tick gets a TimerHandle due when `timeout server`
    ends, as if it had been made at once."""
    proxy, client, ct, up, ut = make(parser_kind)
    late = proxy.late
    assert client._timer is late
    client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert ut.take().startswith(b"GET /x ")
    assert client._timer is late  # timeout server is far beyond the tick
    deadline = client._tstamp + proxy.settings.timeouts.server
    late._tick()
    timer = client._timer
    assert timer is not None and timer is not late
    assert abs(timer.when() - deadline) < 0.002  # (uvloop's timers count milliseconds)
    up.data_received(OK)
    assert ct.take().endswith(b"ok")

    second = ClientProtocol(proxy)
    st = FakeTransport(second, ("192.0.2.8", 40001))
    second.connection_made(st)  # type: ignore[arg-type]
    assert second._timer is late
    second.data_received(b"GET /a/y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert ut.take().startswith(b"GET /y ")
    up.data_received(OK)
    assert st.take().endswith(b"ok") and st.closing
    await asyncio.sleep(0)
    assert second.closed and second._timer is None
    late._tick()
    assert second._timer is None  # closed before the tick: no timer was ever made
    ct.close()
    await asyncio.sleep(0)




async def test_a_connection_that_ends_before_the_tick_leaves_its_list(
        parser_kind: HttpParser) -> None:
    """A connection that ends while it waits for the frontend's tick takes itself off
    the tick's list (its objects are freed at its end, not at the tick); the others on
    the list keep their places and get their timers at the tick."""
    proxy, first, _ft, _up, _ut = make(parser_kind)
    late = proxy.late
    conns = []
    for port in (40001, 40002, 40003):
        conn = ClientProtocol(proxy)
        conn.connection_made(FakeTransport(conn, ("192.0.2.8", port)))  # type: ignore[arg-type]
        conns.append(conn)
    assert [c for c in late.conns if c is not None] == [first, *conns]
    middle = conns[1]
    middle.transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert middle.closed
    assert [c for c in late.conns if c is not None] == [first, conns[0], conns[2]]
    late._tick()
    for conn in (first, conns[0], conns[2]):  # still waiting for a request: timed
        assert conn._timer is not None and conn._timer is not late
        conn.transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert late.conns == []


async def test_response_filters_leave_the_next_response_alone(parser_kind: HttpParser) -> None:
    """A Gateway's response filters edit a copy of the head: the next response with the
    same bytes (which the httptools parser answers with the same head object, parser.
    _RESPONSE_HEADS) goes out as read when its route has no filters."""
    from proxy.http.gwfilters import compile_response_edit
    from pylb.gatewaymodel import HeaderOps

    _proxy, client, ct, up, ut = make(parser_kind)
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
    for edit in (None, compile_response_edit((HeaderOps(set=(("X-A", "2"),)),)), None):
        client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert ut.take().startswith(b"GET /x ")
        client.response_edit = edit  # as the Gateway listener sets it per request
        up.data_received(resp)
        assert ct.take() == resp.replace(b"X-A: 1", b"X-A: 2" if edit else b"X-A: 1")
    ct.close()
    await asyncio.sleep(0)


async def test_a_deadline_before_the_tick_gets_its_timer_at_once(
        parser_kind: HttpParser) -> None:
    """A phase that ends before the frontend's next tick is not deferred."""
    proxy, client, _ct, _up, _ut = make(parser_kind)
    client._arm(2, LATE / 10)  # (any kind: only the deadline counts)
    timer = client._timer
    assert timer is not None and timer is not proxy.late
    assert proxy.late.when() > timer.when()


async def test_rewritten_response_head_remembered_per_client_version_and_keep_alive(
        parser_kind: HttpParser) -> None:
    """The head written for a response the parser hands out again (httptools:
    parser._RESPONSE_HEADS) is kept on it (`ResponseHead.sent`) with the client version
    and keep-alive it was written for, and written again only when those differ."""
    from proxy.http import parser

    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Remembered: 1\r\n\r\n"
    plain = head + b"ok"
    cases = [(b"1.1", b"", plain),
             (b"1.0", b"Connection: keep-alive\r\n",
              head[:-2] + b"Connection: keep-alive\r\n\r\nok"),
             (b"1.1", b"", plain),
             (b"1.1", b"Connection: close\r\n", head[:-2] + b"Connection: close\r\n\r\nok")]
    for version, fields, want in cases:
        _proxy, client, ct, up, ut = make(parser_kind)
        client.data_received(b"GET /a/x HTTP/%s\r\nHost: h\r\n%s\r\n" % (version, fields))
        assert ut.take().startswith(b"GET /x ")
        up.data_received(plain)
        assert ct.take() == want, (version, fields)
        if parser_kind is HttpParser.HTTPTOOLS:
            sent = parser._RESPONSE_HEADS[head].sent
            assert sent is not None and sent[:2] == (version, not fields.endswith(b"close\r\n"))
            assert sent[3] == want[:-2]
        ct.close()
        await asyncio.sleep(0)


async def test_balancer_counts_each_exchange_until_its_response_ends(
        parser_kind: HttpParser) -> None:
    """The balancer's active count of a server (leastconn's input) goes up when a request
    is sent to it and back down when its response has ended, once per exchange."""
    proxy, client, ct, up, ut = make(parser_kind)
    balancer = proxy.balancers.get("b")
    assert balancer is not None
    up2 = UpstreamProtocol(SERVER.key, proxy.parser_kind)
    ut2 = FakeTransport(up2, (SERVER.address, SERVER.port))
    up2.connection_made(ut2)  # type: ignore[arg-type]
    proxy.pool.put(up2, proxy.loop.time())
    client2 = ClientProtocol(proxy)
    ct2 = FakeTransport(client2, ("192.0.2.8", 40000))
    client2.connection_made(ct2)  # type: ignore[arg-type]
    for _ in range(2):
        client.data_received(b"GET /a/1 HTTP/1.1\r\nHost: h\r\n\r\n")
        client2.data_received(b"GET /a/2 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert balancer.active == {SERVER.key: 2}
        taken = [u for u, t in ((up, ut), (up2, ut2)) if t.take()]
        taken[0].data_received(OK)
        assert balancer.active == {SERVER.key: 1}
        taken[1].data_received(OK)
        assert balancer.active == {}
        assert ct.take().endswith(b"ok") and ct2.take().endswith(b"ok")
    ct.close()
    ct2.close()
    await asyncio.sleep(0)


def test_h2_response_filters_leave_the_remembered_head_alone() -> None:
    """As over HTTP/1.1: an HTTP/2 stream's Gateway response filters edit a copy of the
    head, never the one the httptools parser hands out again for the same bytes."""
    from types import SimpleNamespace

    from proxy.http.gwfilters import compile_response_edit
    from proxy.http.h2server import H2Stream
    from proxy.http.parser import RequestHead, ResponseHead, response_parser
    from pylb.counters import Counters
    from pylb.gatewaymodel import HeaderOps

    blocks: list[list[tuple[bytes, bytes]]] = []
    conn = SimpleNamespace(
        loop=SimpleNamespace(time=lambda: 0.0),
        proxy=SimpleNamespace(hsts=None, fe_counters=Counters()),
        send_headers=lambda stream, block, end_stream: blocks.append(block))
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
    heads: list[ResponseHead] = []
    for edit in (None, compile_response_edit((HeaderOps(set=(("X-A", "2"),)),)), None):
        stream = H2Stream(conn, 1, RequestHead(b"GET", b"/", b"2.0", []))  # type: ignore[arg-type]
        stream.response_edit = edit
        sink = SimpleNamespace(on_response=lambda h: heads.append(h),
                               on_response_body=lambda d: None, on_response_end=lambda: None,
                               on_interim=lambda h: None)
        response_parser(HttpParser.HTTPTOOLS, sink, b"GET").feed(resp)  # type: ignore[arg-type]
        stream.on_response(heads[-1])
    assert heads[1] is heads[0] is heads[2]  # the same head each time (parser memo)
    assert [dict(b)[b"x-a"] for b in blocks] == [b"1", b"2", b"1"]


async def test_a_connection_learns_the_same_of_itself_with_or_without_the_listener(
        parser_kind: HttpParser) -> None:
    """ClientProtocol.connection_made does frontend.accepted()'s work inline when the
    listener's accept() gave the client's address and the frontend knows its port: the
    client's address and port, the frontend's port and the write buffer's watermarks
    are what accepted() gives without a listener (create_server)."""
    from proxy import flow
    from proxy.listener import ConnectionLimit

    learned = []
    for limit in (ConnectionLimit(10), None):
        settings = Settings(http_parser=parser_kind)
        stats = Stats()
        proxy = HttpProxy(settings, stats, Balancers(settings.limits, stats=stats),
                          limit=limit)
        _, port = await proxy.start("127.0.0.1", 0)
        assert (proxy._listener is not None) == (limit is not None)
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(200):
                if proxy.conns:
                    break
                await asyncio.sleep(0.01)
            (conn,) = proxy.conns
            assert isinstance(conn, ClientProtocol) and conn.transport is not None
            learned.append((conn.client_ip, conn.client_port, conn.local_port,
                            conn._ssl_client, conn.transport.get_write_buffer_limits()))
            assert conn.client_port == w.get_extra_info("sockname")[1]
            w.close()
        finally:
            await proxy.shutdown(0.5)
        assert learned[-1] == ("127.0.0.1", conn.client_port, port, None,
                               (flow.LOW_WATER, flow.HIGH_WATER))
    assert len(learned) == 2


class _SteppingClock:
    """The running loop, but each `time()` reads `step` seconds after the last one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, step: float) -> None:
        self._loop = loop
        self._now = loop.time()
        self._step = step

    def time(self) -> float:
        self._now += self._step
        return self._now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


async def test_a_pooled_connection_is_attached_in_the_moment_of_its_head(
        parser_kind: HttpParser, caplog: pytest.LogCaptureFixture) -> None:
    """A pooled connection is taken and attached in the read that brought the head, as
    haproxy's reused connection: the access log's Tc is 0 however long our own work took;
    a pooled connection's freshness is judged at that moment too."""
    proxy, client, ct, up, ut = make(parser_kind)
    clock = _SteppingClock(asyncio.get_running_loop(), 0.25)
    client._loop = clock  # type: ignore[assignment]
    proxy.pool._loop = clock  # type: ignore[assignment]
    caplog.set_level(logging.INFO, logger="pylb.access")
    client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert ut.take().startswith(b"GET /x ")
    up.data_received(OK)
    assert ct.take().endswith(b"ok")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "pylb.access"]
    _tq, tw, tc, tr, _tt = line.split()[4].split("/")
    assert (tw, tc) == ("0", "0") and int(tr) > 0, line
    ct.close()
    await asyncio.sleep(0)


async def test_keep_alive_request_starts_with_the_read_of_its_first_byte(
        parser_kind: HttpParser, caplog: pytest.LogCaptureFixture) -> None:
    """A keep-alive request's time (the access log's Tq) runs from the read that brought
    its first byte to the one that completed its head: 0 when one read brought it all."""
    _proxy, client, ct, up, _ut = make(parser_kind)
    client.data_received(b"GET /a/1 HTTP/1.1\r\nHost: h\r\n\r\n")
    up.data_received(OK)
    client._loop = _SteppingClock(asyncio.get_running_loop(), 0.25)  # type: ignore[assignment]
    caplog.set_level(logging.INFO, logger="pylb.access")
    client.data_received(b"GET /a/2 HTTP/1.1\r\nHost: h\r\n\r\n")  # whole
    up.data_received(OK)
    client.data_received(b"GET /a/3 HTTP/1.1\r\n")  # in two reads
    client.data_received(b"Host: h\r\n\r\n")
    up.data_received(OK)
    lines = [r.getMessage() for r in caplog.records if r.name == "pylb.access"]
    assert [line.split()[4].split("/")[0] for line in lines] == ["0", "250"], lines
    assert ct.take().count(b"ok") == 3
    ct.close()
    await asyncio.sleep(0)


async def test_pool_judges_freshness_at_the_times_given() -> None:
    pool = Pool(asyncio.get_running_loop(), per_server=4, idle_timeout=10.0)
    conns = []
    for _ in range(2):
        up = UpstreamProtocol(SERVER.key, HttpParser.HTTPTOOLS)
        up.connection_made(FakeTransport(up, (SERVER.address, SERVER.port)))  # type: ignore[arg-type]
        conns.append(up)
    stale, fresh = conns
    pool.put(stale, 1000.0)  # idle since then (the caller's time)
    assert stale.idle_since == 1000.0
    assert pool.take(SERVER.key, 1010.5) is None  # stale by then: closed
    assert stale.closed and pool.idle_count() == 0
    pool.put(fresh, 1000.0)
    assert pool.take(SERVER.key, 1009.5) is fresh
    pool.close_all()
    await asyncio.sleep(0)


async def test_pool_keeps_connections_only_to_servers_in_the_table() -> None:
    """A connection to a server that left the table (`retain`) is closed, pooled or
    finishing later; one that finishes while the table changes, before the pool is told
    (`retain` comes after the balancers change), is closed when it is told."""
    pool = Pool(asyncio.get_running_loop(), per_server=4, idle_timeout=10.0)
    other = ("192.0.2.99", 80)
    live = {SERVER.key}

    def conn(key: tuple[str, int]) -> UpstreamProtocol:
        up = UpstreamProtocol(key, HttpParser.HTTPTOOLS)
        up.connection_made(FakeTransport(up, key))  # type: ignore[arg-type]
        return up

    pool.retain(live)
    gone = conn(other)
    pool.put(gone, 1000.0)  # not in the table
    assert gone.closed and pool.idle_count() == 0
    kept, late = conn(SERVER.key), conn(SERVER.key)
    pool.put(kept, 1000.0)
    assert not kept.closed and pool.idle_count(SERVER.key) == 1
    live.discard(SERVER.key)  # the balancers changed; the pool is told next
    pool.put(late, 1000.0)
    pool.retain(live)
    assert kept.closed and late.closed and pool.idle_count() == 0
    after = conn(SERVER.key)
    pool.put(after, 1000.0)  # finishing after: not pooled either
    assert after.closed and pool.take(SERVER.key, 1000.5) is None
    live.add(SERVER.key)  # back in the table
    again = conn(SERVER.key)
    pool.put(again, 1000.0)
    assert pool.take(SERVER.key, 1000.5) is again
    pool.close_all()
    await asyncio.sleep(0)


async def test_the_servers_bytes_are_counted_per_exchange(
        parser_kind: HttpParser, caplog: pytest.LogCaptureFixture) -> None:
    """The bytes a server sent in an exchange (the server's and backend's bytes_out, the
    access log's byte count): every read of the response, however many, and on a failed
    response the bytes read before it was given up; each exchange its own."""
    proxy, client, ct, up, _ut = make(parser_kind)
    caplog.set_level(logging.INFO, logger="pylb.access")
    long = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    client.data_received(b"GET /a/1 HTTP/1.1\r\nHost: h\r\n\r\n")
    for part in (long[:5], long[5:40], long[40:]):  # three reads
        up.data_received(part)
    assert ct.take().endswith(b"0123456789")
    client.data_received(b"GET /a/2 HTTP/1.1\r\nHost: h\r\n\r\n")  # the pooled connection
    up.data_received(OK)
    assert ct.take().endswith(b"ok")
    client.data_received(b"GET /a/3 HTTP/1.1\r\nHost: h\r\n\r\n")
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    up.data_received(bad)  # a bad chunk: 502, the connection dropped
    assert b" 502 " in ct.take()
    srv, be = proxy.stats.server("b", "s1"), proxy.stats.backend("b")
    assert srv.bytes_out == be.bytes_out == len(long) + len(OK) + len(bad)
    logged = [int(r.getMessage().split()[6]) for r in caplog.records
              if r.name == "pylb.access"]
    assert logged == [len(long), len(OK), len(bad)]
    ct.close()
    await asyncio.sleep(0)


class _SetClock(_SteppingClock):
    """The running loop, at the time the test sets."""

    def time(self) -> float:
        return self._now


async def test_each_read_of_a_response_is_server_activity(parser_kind: HttpParser) -> None:
    """timeout server is an inactivity timeout: a response whose reads come closer than
    it apart is not cut, however long it takes whole; silence as long as it is."""
    proxy, client, ct, up, _ut = make(parser_kind)
    clock = _SetClock(asyncio.get_running_loop(), 0.0)
    client._loop = clock  # type: ignore[assignment]
    limit = proxy.settings.timeouts.server
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    client.data_received(b"GET /a/1 HTTP/1.1\r\nHost: h\r\n\r\n")
    clock._now += 0.6 * limit
    up.data_received(head + b"ab")  # the response has begun, and not ended
    clock._now += 0.6 * limit  # 1.2 x the timeout since the request, 0.6 since the read
    client._on_timer()
    assert not ct.closing and ct.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"
    clock._now += limit  # silence as long as the timeout: the timer's re-armed due time
    client._on_timer()
    assert ct.closing  # cut (a response under way: no 504, the connection goes)
    await asyncio.sleep(0)


async def test_a_body_held_while_connecting_pauses_the_client_until_sent(
        parser_kind: HttpParser) -> None:
    """A request body that comes before the server connection is held, and past the high
    watermark the client is not read; the connection takes head and body in one write
    and the client is read again."""
    proxy, client, ct, up, ut = make(parser_kind)
    assert proxy.pool.take(SERVER.key, proxy.loop.time()) is up  # none pooled: connect
    connects: list[Server] = []
    proxy.connect = lambda c, server: connects.append(server)  # type: ignore[method-assign]
    body = b"x" * (flow.HIGH_WATER + 1)
    client.data_received(b"POST /a/p HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
    assert connects == [SERVER] and not ct.reading
    client.connect_done(SERVER, up, None)
    assert ct.reading and ut.writes == 1
    sent = ut.take()
    assert sent.startswith(b"POST /p ") and sent.endswith(b"\r\n\r\n" + body)
    up.data_received(OK)
    assert ct.take().endswith(b"ok") and client.idle
    ct.close()
    await asyncio.sleep(0)


class _CountingRows(dict):  # type: ignore[type-arg]
    """Stats.servers that counts its lookups."""

    gets = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.gets += 1
        return super().get(key, default)


async def test_a_backend_connection_keeps_the_rows_it_counts_in(
        parser_kind: HttpParser) -> None:
    """An exchange on a backend connection counts in the rows its last exchange counted
    in, for the same server of the same backend, without looking them up; once a row has
    been dropped (its server left the table while idle), the next one looks them up again
    and counts in the rows the stats hold, made anew."""
    proxy, client, ct, up, ut = make(parser_kind)
    stats = proxy.stats
    rows = stats.servers = _CountingRows(stats.servers)
    key = ("b", SERVER.label)
    for n in (1, 2, 3):
        client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert ut.take().startswith(b"GET /x ")
        up.data_received(OK)
        assert ct.take().endswith(b"ok")
        assert rows[key].total_conns == n and stats.backends["b"].total_conns == n
        if n == 1:
            first = rows.gets
    assert rows.gets == first  # the first exchange's lookups only
    old = rows[key]
    stats.prune([key])  # idle: dropped now (as when its server leaves the table)
    assert key not in rows
    client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert ut.take().startswith(b"GET /x ")
    assert rows[key] is not old and rows[key].cur_conns == 1
    up.data_received(OK)
    assert ct.take().endswith(b"ok")
    assert rows[key].total_conns == 1 and rows[key].cur_conns == 0
    assert old.total_conns == 3 and rows.gets > first
    ct.close()
    await asyncio.sleep(0)


async def test_a_timer_due_as_a_closing_exchange_ends_finds_nothing_to_do(
        parser_kind: HttpParser) -> None:
    """A `Connection: close` exchange has ended and its connection is closing; should the
    phase's timer come before connection_lost does, it finds no exchange to time out: no
    failure counted, no error page, the pooled backend connection left alone."""
    proxy, client, ct, up, ut = make(parser_kind)
    client.data_received(b"GET /a/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert ut.take().startswith(b"GET /x ")
    up.data_received(OK)
    assert ct.take().startswith(b"HTTP/1.1 200 OK\r\n")
    assert ct.closing and not client.closed  # connection_lost is yet to come
    assert proxy.pool.idle_count() == 1
    client._tstamp -= 3600.0  # whatever the phase, its deadline has passed
    client._on_timer()
    await asyncio.sleep(0)  # connection_lost
    assert client.closed and not ct.out
    assert proxy.stats.failures == {}
    assert proxy.pool.idle_count() == 1 and not ut.closing


async def test_connections_from_one_address_share_its_string() -> None:
    """The client address a listener's accept() gave is handed to the connection
    interned (HttpProxy._protocol): connections from one address share one string, also
    when another address came in between."""

    class Listener:
        peer: Any = None

    proxy = HttpProxy(Settings(http_parser=HttpParser.HTTPTOOLS), Stats(), Balancers())
    listener = Listener()
    proxy._listener = listener  # type: ignore[assignment]
    conns = []
    for ip, port in (("192.0.2.9", 1), ("192.0.2.9", 2), ("198.51.100.4", 3),
                     ("192.0.2.9", 4)):
        listener.peer = ("".join(ip), port)  # a string of its own, as accept() gives
        conn = proxy._protocol()
        assert isinstance(conn, ClientProtocol)
        assert conn.client_ip == ip and conn.client_port == port
        conns.append(conn)
    first, second, other, again = conns
    assert first.client_ip is second.client_ip is again.client_ip
    assert other.client_ip is not first.client_ip
