"""Protecting backends from HTTP/2 clients (h2c, the h2 library as client, real sockets):
each stream takes a per-server slot or waits in the queue (lb.maxconn), is rate limited
(lb.rate-limit) and bounded by --timeout-request-body exactly as an HTTP/1.1 request is
(proxy.admission), and gives its slot or place back on every way a stream ends.

As in tests/proxy/test_protection_e2e.py, nothing asserts a duration the machine could
miss: the claims are about order, counts and lower bounds on waits."""

from __future__ import annotations

import time

import h2.events

from pylb.config import Limits, Settings, Timeouts
from pylb.failures import Failure
from pylb.model import Backend, Server
from tests.proxy.http.h2client import H2Client
from tests.proxy.test_protection_e2e import BACKEND, SlowBackend, http_proxy, slow, wait_for

__all__ = ["slow"]  # the fixture, used by name

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def headers_of(c: H2Client, sid: int) -> dict[bytes, bytes]:
    """The stream's response headers (and trailers) as one dict."""
    out: dict[bytes, bytes] = {}
    for e in c.of(sid, h2.events.ResponseReceived) + c.of(sid, h2.events.TrailersReceived):
        out.update(dict(e.headers))
    return out


async def test_h2_maxconn_2_twenty_streams_on_one_connection_in_order(
        slow: list[SlowBackend]) -> None:
    be = await SlowBackend(1.0).start()
    slow.append(be)
    settings = Settings(h2c=True, limits=Limits(queue_timeout=60.0))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=2)
    proxy, port, stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    c = await H2Client.open(port)
    try:
        sids = [await c.get(b"/slow/?id=%d" % i) for i in range(20)]
        await wait_for(lambda: gate.waiting == 18 - (len(be.order) - 2), "18 queued")
        assert stats.backend(BACKEND).queue_max >= 10
        be.delay = 0.01
        got = [await c.response(sid, timeout=60) for sid in sids]
    finally:
        await c.close()
        await proxy.shutdown(0.5)
    assert [status for status, _, _ in got] == [200] * 20
    assert be.max_inflight == 2  # never more than maxconn on the server
    # FIFO (the first two, admitted at once, race their new connections to the server)
    assert sorted(be.order[:2]) == [0, 1] and be.order[2:] == list(range(2, 20))
    row = stats.backend(BACKEND)
    assert row.queue_cur == 0 and row.queued == 18 and row.queue_time > 0
    assert gate.used == {} and gate.waiting == 0


async def test_h2_maxconn_2_across_connections_with_http11_in_order(
        slow: list[SlowBackend]) -> None:
    from tests.proxy.http.client import RawClient, get

    be = await SlowBackend(1.0).start()
    slow.append(be)
    settings = Settings(h2c=True, limits=Limits(queue_timeout=60.0))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=2)
    proxy, port, stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    clients: list[tuple[H2Client, list[int]]] = []
    h1: list[RawClient] = []
    n = 0
    try:
        for k in range(4):  # 4 h2 connections of 5 streams, an HTTP/1.1 client between
            c = await H2Client.open(port)
            clients.append((c, []))
            for _ in range(5):
                clients[-1][1].append(await c.get(b"/slow/?id=%d" % n))
                n += 1
            await wait_for(lambda n=n: len(be.order) + gate.waiting == n,
                           f"{n} at the proxy")
            h1.append(await RawClient.connect(port))
            await h1[-1].send(get(f"/slow/?id={100 + k}"))
            await wait_for(lambda n=n: len(be.order) + gate.waiting == n + 1,
                           f"{n + 1} at the proxy")
            n += 1
        be.delay = 0.01
        statuses = [s for c, sids in clients for s, _, _ in
                    [await c.response(sid, timeout=60) for sid in sids]]
        statuses += [(await x.read_response(timeout=60)).status for x in h1]
    finally:
        for c, _ in clients:
            await c.close()
        for x in h1:
            await x.close()
        await proxy.shutdown(0.5)
    assert statuses == [200] * 24
    assert be.max_inflight == 2
    expected = []
    for k in range(4):
        expected += [*range(6 * k, 6 * k + 5), 100 + k]
    # one FIFO for h2 streams and HTTP/1.1 requests (the first two race their connects)
    assert sorted(be.order[:2]) == [0, 1] and be.order[2:] == expected[2:]
    assert stats.backend(BACKEND).queued >= 3 and stats.backend(BACKEND).queue_cur == 0
    assert gate.used == {} and gate.waiting == 0


async def test_h2_queue_timeout_503_and_grpc_unavailable(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(2.0).start()
    slow.append(be)
    timeout = 0.3
    settings = Settings(h2c=True, limits=Limits(queue_timeout=timeout))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    c = await H2Client.open(port)
    try:
        first = await c.get(b"/slow/?id=0")
        await wait_for(lambda: be.order == [0], "the first at the server")
        t0 = time.monotonic()
        plain = await c.get(b"/slow/?id=1")
        grpc = await c.get(b"/slow/?id=2", method=b"POST", extra=GRPC)
        status, _, _ = await c.response(plain)
        assert status == 503
        assert time.monotonic() - t0 >= timeout - 0.005
        status, _, _ = await c.response(grpc)
        hs = headers_of(c, grpc)
        assert status == 200 and hs[b"grpc-status"] == b"14", hs
        assert stats.failures.get(Failure.QUEUE_TIMEOUT) == 2
        assert stats.backend(BACKEND).conn_errors == 2
        assert gate.waiting == 0
        be.delay = 0.01
        assert (await c.response(first, timeout=10))[0] == 200
    finally:
        await c.close()
        await proxy.shutdown(0.5)
    assert be.order == [0]
    assert gate.used == {}


async def test_h2_queue_limit_refuses_at_once(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(1.0).start()
    slow.append(be)
    settings = Settings(h2c=True, limits=Limits(queue_timeout=30.0, queue_limit=1))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    c = await H2Client.open(port)
    try:
        a, b = await c.get(b"/slow/?id=0"), await c.get(b"/slow/?id=1")
        await wait_for(lambda: gate.waiting == 1, "one waiting")
        extra = await c.get(b"/slow/?id=2")
        assert (await c.response(extra, timeout=5))[0] == 503
        assert not c.ended(b)  # still waiting, served next
        assert stats.failures.get(Failure.QUEUE_FULL) == 1
        be.delay = 0.01
        assert [(await c.response(s, timeout=10))[0] for s in (a, b)] == [200, 200]
    finally:
        await c.close()
        await proxy.shutdown(0.5)
    assert be.order == [0, 1]


async def test_h2_rate_limit_with_burst_429_retry_after(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(0.0).start()
    slow.append(be)
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),),
                      rate_limit=(0.1, 3))  # a token every 10 s: none comes back here
    proxy, port, stats, _ = await http_proxy(Settings(h2c=True), backend)
    c = await H2Client.open(port)
    try:
        got = []
        for i in range(5):
            status, _, headers = await c.response(await c.get(b"/slow/?id=%d" % i))
            got.append((status, dict(headers)))
        grpc = await c.get(b"/slow/?id=9", method=b"POST", extra=GRPC)
        status, _, _ = await c.response(grpc)
        hs = headers_of(c, grpc)
    finally:
        await c.close()
        await proxy.shutdown(0.5)
    assert [s for s, _ in got] == [200, 200, 200, 429, 429]
    assert 1 <= int(got[3][1][b"retry-after"]) <= 10
    assert status == 200 and hs[b"grpc-status"] == b"8", hs  # RESOURCE_EXHAUSTED
    assert be.order == [0, 1, 2]  # the refused never reached the server
    assert stats.backend(BACKEND).denied_req == 3
    assert proxy.fe_counters.denied_req == 3
    assert stats.failures.get(Failure.RATE_LIMITED) == 3


async def test_h2_stream_reset_connection_lost_or_goaway_while_queued_frees_its_place(
        slow: list[SlowBackend]) -> None:
    be = await SlowBackend(0.5).start()
    slow.append(be)
    settings = Settings(h2c=True, limits=Limits(queue_timeout=30.0))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    c = await H2Client.open(port)
    gone = await H2Client.open(port)
    away = await H2Client.open(port)
    try:
        a = await c.get(b"/slow/?id=0")
        await wait_for(lambda: be.order == [0], "the first at the server")
        b = await c.get(b"/slow/?id=1")
        await gone.get(b"/slow/?id=2")
        d = await c.get(b"/slow/?id=3")
        await away.get(b"/slow/?id=4")
        await wait_for(lambda: gate.waiting == 4, "four waiting")
        away.conn.close_connection()  # the client's GOAWAY while queued
        await away.flush()
        await wait_for(lambda: gate.waiting == 3, "the GOAWAY's gone from the queue")
        c.conn.reset_stream(b)  # RST_STREAM CANCEL while queued
        await c.flush()
        await wait_for(lambda: gate.waiting == 2, "the reset one gone from the queue")
        await gone.close()  # the connection lost while queued
        await wait_for(lambda: gate.waiting == 1, "the lost one gone from the queue")
        assert stats.backend(BACKEND).queue_cur == 1
        be.delay = 0.01
        assert [(await c.response(s, timeout=10))[0] for s in (a, d)] == [200, 200]
    finally:
        await c.close()
        await away.close()
        await proxy.shutdown(0.5)
    assert be.order == [0, 3]  # the reset, the lost and the GOAWAY's never sent
    assert gate.used == {} and gate.waiting == 0
    assert stats.backend(BACKEND).queue_cur == 0


async def test_h2_slow_body_408_for_its_stream_only_and_slot_freed(
        slow: list[SlowBackend]) -> None:
    be = await SlowBackend(0.0).start()
    slow.append(be)
    deadline = 0.3
    settings = Settings(h2c=True, timeouts=Timeouts(http_body=deadline),
                        limits=Limits(queue_timeout=30.0))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    c = await H2Client.open(port)
    try:
        t0 = time.monotonic()
        slowpost = c.conn.get_next_available_stream_id()
        c.conn.send_headers(slowpost, [(b":method", b"POST"), (b":scheme", b"http"),
                                       (b":authority", b"example.com"),
                                       (b":path", b"/slow/?id=1"),
                                       (b"content-length", b"1000")])
        c.conn.send_data(slowpost, b"x")
        await c.flush()
        await wait_for(lambda: bool(gate.used), "the slow POST holds the slot")
        victim = await c.get(b"/slow/?id=2")  # the same connection, waits for the slot
        status, _, _ = await c.response(slowpost, timeout=10)
        assert status == 408
        assert time.monotonic() - t0 >= deadline - 0.005
        assert (await c.response(victim, timeout=10))[0] == 200
        assert not c.goaway()  # the stream only: the connection carries on
        assert (await c.response(await c.get(b"/slow/?id=3"), timeout=10))[0] == 200
    finally:
        await c.close()
        await proxy.shutdown(0.5)
    assert be.order == [2, 3]
    assert stats.failures.get(Failure.BODY_TIMEOUT) == 1
    assert gate.used == {} and gate.waiting == 0
