"""Protecting backends, end to end on loopback sockets: per-server maxconn with the queue
(L7 and L4), per-client rate limits (429 with Retry-After; L4 resets), the slow-POST bound.

Nothing here asserts a duration the machine could miss: the queue's and rate limits'
claims are about order, counts and lower bounds on waits (a 503 for the queue can never
come before the queue timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from proxy.balance import Balancers
from proxy.http import HttpProxy
from proxy.tcp import TcpProxy
from pylb.config import Limits, Settings, Timeouts
from pylb.counters import Stats, merge_snapshots
from pylb.failures import Failure
from pylb.model import Affinity, Backend, HttpRoute, RouteTable, Server, TcpFrontend
from pylb.stats import StatsView, render_csv
from tests.proxy.http.client import RawClient, get
from tests.pylb.test_stats_render import csv_rows

BACKEND = "default/slow:80"


class SlowBackend:
    """An HTTP/1.1 server that answers each request after `delay` seconds and records
    how many it holds at once and the order requests arrived in (`/?id=N`)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.inflight = 0
        self.max_inflight = 0
        self.order: list[int] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> SlowBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await r.readexactly(length)
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
                if b"id=" in target:
                    self.order.append(int(target.rsplit(b"id=", 1)[1]))
                await asyncio.sleep(self.delay)
                self.inflight -= 1
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            w.transport.abort()


@pytest.fixture
async def slow() -> AsyncIterator[list[SlowBackend]]:
    made: list[SlowBackend] = []
    yield made
    for b in made:
        await b.stop()


async def http_proxy(settings: Settings, backend: Backend,
                     ) -> tuple[HttpProxy, int, Stats, Balancers]:
    stats = Stats()
    balancers = Balancers(settings.limits, stats=stats)
    proxy = HttpProxy(settings, stats, balancers, frontend="http")
    _, port = await proxy.start("127.0.0.1", 0)
    proxy.set_table(RouteTable(http=(HttpRoute("slow", "/slow", backend.name),),
                               backends=(backend,)))
    return proxy, port, stats, balancers


def stats_row(stats: Stats, backend: Backend, svname: str = "BACKEND") -> dict[str, str]:
    """The backend's row of the stats CSV, as the stats page would show it now."""
    table = RouteTable(http=(HttpRoute("slow", "/slow", backend.name),), backends=(backend,))
    view = StatsView(version="t", pid=1, started=0.0, now=time.time(), table=table,
                     counters=merge_snapshots([stats.snapshot()]))
    return csv_rows(render_csv(view))[(backend.name, svname)]


async def wait_for(cond: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def test_maxconn_2_queue_serves_50_clients_in_order(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(0.02).start()
    slow.append(be)
    settings = Settings(limits=Limits(queue_timeout=60.0))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=2)
    proxy, port, stats, balancers = await http_proxy(settings, backend)
    bal = balancers.get(BACKEND)
    assert bal is not None and bal.gate is not None
    gate = bal.gate
    be.delay = 0.5  # the first two hold their slots while the other 48 queue up
    clients = []
    try:
        for i in range(50):
            clients.append(await RawClient.connect(port))
            await clients[-1].send(get(f"/slow/?id={i}"))
            # Arrival order at the proxy is the order sent: wait until it has this one.
            await wait_for(lambda i=i: (i < 2 and len(be.order) == i + 1) or gate.waiting
                           == i - 1 or len(be.order) + gate.waiting == i + 1,
                           f"request {i} at the proxy")
        assert gate.waiting == 48 - (len(be.order) - 2)
        row = stats.backend(BACKEND)
        assert row.queue_max >= 40
        filling = stats_row(stats, backend)  # the stats page while the queue is full
        assert int(filling["qcur"]) == gate.waiting and int(filling["qmax"]) >= 40
        assert stats_row(stats, backend, "s1")["slim"] == "2"
        be.delay = 0.01
        statuses = await asyncio.gather(*(c.read_response(timeout=60) for c in clients))
    finally:
        for c in clients:
            await c.close()
        await proxy.shutdown(0.5)
    assert [r.status for r in statuses] == [200] * 50
    assert be.max_inflight == 2  # never more than maxconn on the server
    assert be.order == list(range(50))  # FIFO
    row = stats.backend(BACKEND)
    assert row.queue_cur == 0 and row.queued == 48 and row.queue_time > 0
    assert gate.used == {} and gate.waiting == 0
    drained = stats_row(stats, backend)
    assert drained["qcur"] == "0" and int(drained["qmax"]) >= 40
    assert int(drained["qtime"]) > 0


async def test_queue_timeout_503_for_the_rest(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(3.0).start()
    slow.append(be)
    timeout = 0.5
    settings = Settings(limits=Limits(queue_timeout=timeout))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=2)
    proxy, port, stats, _ = await http_proxy(settings, backend)
    sent: dict[int, float] = {}
    clients = []

    async def read(i: int, c: RawClient) -> tuple[int, int, float]:
        r = await c.read_response(timeout=30)
        return i, r.status, time.monotonic() - sent[i]

    try:
        for i in range(50):
            c = await RawClient.connect(port)
            clients.append(c)
            sent[i] = time.monotonic()
            await c.send(get(f"/slow/?id={i}"))
        results = await asyncio.gather(*(read(i, c) for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()
        await proxy.shutdown(0.5)
    served = [i for i, status, _ in results if status == 200]
    refused = [(i, waited) for i, status, waited in results if status == 503]
    assert len(served) + len(refused) == 50
    assert len(served) >= 2 and len(refused) >= 1
    assert be.max_inflight <= 2
    assert be.order == sorted(be.order)  # those served went in arrival order
    # A 503 from the queue comes only after the request waited the queue timeout (less
    # the event loop's clock resolution: asyncio runs a timer up to that early).
    assert all(waited >= timeout - 0.005 for _, waited in refused), refused
    assert stats.failures.get(Failure.QUEUE_TIMEOUT) == len(refused)


async def test_queue_limit_refuses_at_once(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(2.0).start()
    slow.append(be)
    settings = Settings(limits=Limits(queue_timeout=30.0, queue_limit=3))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, _stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    clients = []
    try:
        for i in range(4):
            clients.append(await RawClient.connect(port))
            await clients[-1].send(get(f"/slow/?id={i}"))
        await wait_for(lambda: gate.waiting == 3, "three waiting")
        extra = await RawClient.connect(port)
        clients.append(extra)
        await extra.send(get("/slow/?id=99"))
        r = await extra.read_response(timeout=5)
        assert r.status == 503
    finally:
        for c in clients:
            await c.close()
        await proxy.shutdown(0.5)


async def test_cookie_affinity_waits_for_its_own_server(slow: list[SlowBackend]) -> None:
    from proxy.balance import cookie_value

    b1 = await SlowBackend(0.8).start()
    b2 = await SlowBackend(0.01).start()
    slow.extend([b1, b2])
    s1, s2 = Server("127.0.0.1", b1.port, name="s1"), Server("127.0.0.1", b2.port, name="s2")
    settings = Settings(limits=Limits(queue_timeout=30.0))
    backend = Backend(BACKEND, (s1, s2), affinity=Affinity.COOKIE, maxconn=1)
    proxy, port, stats, _balancers = await http_proxy(settings, backend)
    cookie = f"Cookie: SERVERID={cookie_value(s1)}\r\n"
    try:
        a = await RawClient.connect(port)
        await a.send(get("/slow/?id=1", extra=cookie))
        await wait_for(lambda: len(b1.order) == 1, "the first on s1")
        b = await RawClient.connect(port)
        await b.send(get("/slow/?id=2", extra=cookie))  # s1 full: waits for s1, not s2
        await wait_for(lambda: stats.server(BACKEND, "s1").queue_cur == 1, "pinned")
        c = await RawClient.connect(port)
        await c.send(get("/slow/?id=3"))  # no cookie: s2 is free
        assert (await c.read_response()).status == 200
        assert (await a.read_response()).status == 200
        assert (await b.read_response()).status == 200
        assert b1.order == [1, 2] and b2.order == [3]
        for x in (a, b, c):
            await x.close()
    finally:
        await proxy.shutdown(0.5)


async def test_rate_limit_with_burst_429_retry_after(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(0.0).start()
    slow.append(be)
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),),
                      rate_limit=(0.1, 3))  # a token every 10 s: none comes back here
    proxy, port, stats, _ = await http_proxy(Settings(), backend)
    try:
        c = await RawClient.connect(port)
        got = []
        for i in range(5):
            await c.send(get(f"/slow/?id={i}"))
            got.append(await c.read_response())
        await c.close()
        assert [r.status for r in got] == [200, 200, 200, 429, 429]
        retry = int(got[3].header("retry-after") or 0)
        assert 1 <= retry <= 10
        assert be.order == [0, 1, 2]  # the refused never reached the server
        assert stats.backend(BACKEND).denied_req == 2
        assert proxy.fe_counters.denied_req == 2
    finally:
        await proxy.shutdown(0.5)


async def test_slow_post_cut_at_its_deadline_and_its_slot_freed(
        slow: list[SlowBackend]) -> None:
    be = await SlowBackend(0.0).start()
    slow.append(be)
    deadline = 0.5
    settings = Settings(timeouts=Timeouts(http_body=deadline),
                        limits=Limits(queue_timeout=30.0))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, _stats, balancers = await http_proxy(settings, backend)
    gate = balancers.get(BACKEND).gate  # type: ignore[union-attr]
    assert gate is not None
    try:
        attacker = await RawClient.connect(port)
        t0 = time.monotonic()
        await attacker.send(b"POST /slow/?id=1 HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 1000\r\n\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                for _ in range(100):  # a byte every 50 ms: never idle, never done
                    await attacker.send(b"x")
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        await wait_for(lambda: bool(gate.used), "the attacker holds the slot")
        victim = await RawClient.connect(port)
        await victim.send(get("/slow/?id=2"))  # waits for the attacker's slot
        r = await attacker.read_response(timeout=10)
        cut = time.monotonic() - t0
        assert r.status == 408
        assert cut >= deadline
        assert await attacker.at_eof()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert (await victim.read_response(timeout=10)).status == 200
        assert be.order == [2]
        await attacker.close()
        await victim.close()
    finally:
        await proxy.shutdown(0.5)


async def test_slow_post_is_not_cut_by_default(slow: list[SlowBackend]) -> None:
    be = await SlowBackend(0.0).start()
    slow.append(be)
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),))
    proxy, port, _, _ = await http_proxy(Settings(), backend)
    try:
        c = await RawClient.connect(port)
        await c.send(b"POST /slow/?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            await c.send(b"x")
            await asyncio.sleep(0.1)  # 1 s in all, past 0.5 s, within --timeout-client
        assert (await c.read_response()).status == 200
        await c.close()
    finally:
        await proxy.shutdown(0.5)


# -- L4 ------------------------------------------------------------------------------------


async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """An L4 backend that greets, then echoes until the client closes."""
    w.write(b"hi\n")
    await w.drain()
    while data := await r.read(1024):
        w.write(data)
        await w.drain()


async def tcp_proxy(backend: Backend, limits: Limits) -> tuple[TcpProxy, int, Stats]:
    settings = Settings(limits=limits)
    stats = Stats()
    proxy = TcpProxy(settings, stats, Balancers(limits, stats=stats), host="127.0.0.1",
                     splice_threshold=None)
    await proxy.set_table(RouteTable(tcp=(TcpFrontend("svc", 0, backend.name),),
                                     backends=(backend,)))
    return proxy, proxy.bound_ports()[0][1], stats


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[asyncio.Server, list[int]]]:
    active = [0, 0]  # now, most

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        active[0] += 1
        active[1] = max(active)
        try:
            await hold(r, w)
        except ConnectionError:
            pass
        finally:
            active[0] -= 1
            w.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    yield server, active
    server.close()


async def test_l4_maxconn_queues_connections(
        upstream: tuple[asyncio.Server, list[int]]) -> None:
    server, active = upstream
    port = server.sockets[0].getsockname()[1]
    backend = Backend("default/db:3306", (Server("127.0.0.1", port, name="db"),), maxconn=2)
    proxy, fport, stats = await tcp_proxy(backend, Limits(queue_timeout=30.0))
    conns = []
    try:
        for _ in range(5):
            conns.append(await asyncio.open_connection("127.0.0.1", fport))
        for r, _ in conns[:2]:
            assert await asyncio.wait_for(r.readline(), 5) == b"hi\n"
        await wait_for(lambda: stats.backend(backend.name).queue_cur == 3, "3 queued")
        assert active[1] == 2
        # One leaves: the oldest waiter is connected.
        conns[0][1].close()
        assert await asyncio.wait_for(conns[2][0].readline(), 5) == b"hi\n"
        conns[2][1].write(b"ping\n")
        assert await asyncio.wait_for(conns[2][0].readline(), 5) == b"ping\n"
        assert active[1] == 2
    finally:
        for _, w in conns:
            w.transport.abort()
        await proxy.shutdown(0)


async def test_l4_queue_timeout_closes(upstream: tuple[asyncio.Server, list[int]]) -> None:
    server, _active = upstream
    port = server.sockets[0].getsockname()[1]
    backend = Backend("default/db:3306", (Server("127.0.0.1", port, name="db"),), maxconn=1)
    proxy, fport, _stats = await tcp_proxy(backend, Limits(queue_timeout=0.3))
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", fport)
        assert await asyncio.wait_for(r1.readline(), 5) == b"hi\n"
        t0 = time.monotonic()
        r2, w2 = await asyncio.open_connection("127.0.0.1", fport)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(r2.read(), 10) == b""
        assert time.monotonic() - t0 >= 0.3
        for w in (w1, w2):
            w.transport.abort()
    finally:
        await proxy.shutdown(0)


async def test_l4_rate_limit_resets_new_connections(
        upstream: tuple[asyncio.Server, list[int]]) -> None:
    server, _ = upstream
    port = server.sockets[0].getsockname()[1]
    backend = Backend("default/db:3306", (Server("127.0.0.1", port, name="db"),),
                      rate_limit=(0.1, 2))
    proxy, fport, stats = await tcp_proxy(backend, Limits())
    conns = []
    try:
        for _ in range(2):
            r, w = await asyncio.open_connection("127.0.0.1", fport)
            conns.append(w)
            assert await asyncio.wait_for(r.readline(), 5) == b"hi\n"
        r, w = await asyncio.open_connection("127.0.0.1", fport)
        conns.append(w)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 5)
        assert stats.backend(backend.name).denied_conn == 1
    finally:
        for w in conns:
            w.transport.abort()
        await proxy.shutdown(0)


async def test_time_in_the_queue_is_not_the_servers(slow: list[SlowBackend]) -> None:
    """`timeout server` starts when the server has the request, not while it waits for a
    slot: a queue timeout above it is honoured (no 504 for the wait)."""
    be = await SlowBackend(0.5).start()
    slow.append(be)
    settings = Settings(timeouts=Timeouts(server=2.0), limits=Limits(queue_timeout=60.0))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, _, _ = await http_proxy(settings, backend)
    clients = []
    try:
        for i in range(6):  # the last waits 2.5 s for its slot: past timeout server
            clients.append(await RawClient.connect(port))
            await clients[-1].send(get(f"/slow/?id={i}"))
        got = await asyncio.gather(*(c.read_response(timeout=30) for c in clients))
        assert [r.status for r in got] == [200] * 6
    finally:
        for c in clients:
            await c.close()
        await proxy.shutdown(0.5)


async def test_access_log_tw_is_the_time_in_the_queue(
        slow: list[SlowBackend], caplog: pytest.LogCaptureFixture) -> None:
    """haproxy's Tq/Tw/Tc/Tr/Tt: Tw is the wait for a slot (and not counted in Tc)."""
    import logging
    import re

    be = await SlowBackend(0.4).start()
    slow.append(be)
    settings = Settings(limits=Limits(queue_timeout=0.2))
    backend = Backend(BACKEND, (Server("127.0.0.1", be.port, name="s1"),), maxconn=1)
    proxy, port, _, _ = await http_proxy(settings, backend)
    try:
        with caplog.at_level(logging.INFO, logger="pylb.access"):
            a, b = await RawClient.connect(port), await RawClient.connect(port)
            await a.send(get("/slow/?id=1"))
            await wait_for(lambda: be.order == [1], "the first at the server")
            await b.send(get("/slow/?id=2"))
            assert (await b.read_response()).status == 503  # after 0.2 s in the queue
            assert (await a.read_response()).status == 200
            for c in (a, b):
                await c.close()
    finally:
        await proxy.shutdown(0.5)
    timers = {}
    for rec in caplog.records:
        if rec.name == "pylb.access":
            m = re.search(r" (-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/(-?\d+) (\d+) ", rec.getMessage())
            assert m is not None
            timers[int(m.group(6))] = [int(x) for x in m.groups()[:5]]
    assert timers[200][1] == 0  # served at once: no wait
    assert timers[503][1] >= 195  # waited the queue timeout (less the clock's resolution)


async def test_l4_a_redispatch_may_wait_in_the_queue(
        upstream: tuple[asyncio.Server, list[int]]) -> None:
    """A connect that fails goes to another server; when that one is full, the retry
    waits for its slot like any other connection."""
    server, active = upstream
    port = server.sockets[0].getsockname()[1]
    with __import__("socket").socket() as s:  # a port nothing listens on: refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    backend = Backend("default/db:3306", (Server("127.0.0.1", dead_port, name="dead"),
                                          Server("127.0.0.1", port, name="live")), maxconn=1)
    proxy, fport, stats = await tcp_proxy(backend, Limits(queue_timeout=30.0))
    conns = []
    try:
        for _ in range(3):
            conns.append(await asyncio.open_connection("127.0.0.1", fport))
        assert await asyncio.wait_for(conns[0][0].readline(), 5) == b"hi\n"
        await wait_for(lambda: stats.backend(backend.name).queue_cur == 2, "2 waiting")
        # (Which of the two queued first depends on whether its first try went to the
        # dead server: a retry joins the queue when it fails.)
        reads = {i: asyncio.ensure_future(conns[i][0].readline()) for i in (1, 2)}
        conns[0][1].close()  # the one connected leaves: the first in line goes
        done, _ = await asyncio.wait(reads.values(), timeout=5,
                                     return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and next(iter(done)).result() == b"hi\n"
        first = next(i for i, f in reads.items() if f in done)
        other = 3 - first
        conns[first][1].close()
        assert await asyncio.wait_for(reads[other], 5) == b"hi\n"
        assert active[1] == 1
    finally:
        for _, w in conns:
            w.transport.abort()
        await proxy.shutdown(0)


async def closed(reader: asyncio.StreamReader) -> None:
    """The proxy ends the connection (a close or a reset), having sent nothing."""
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 10) == b""


async def test_l4_a_retry_on_the_same_server_keeps_its_slot() -> None:
    """haproxy's retries go to the same server after a turn-around delay (proxy/retry.py):
    the connection keeps its slot meanwhile, so one queued behind it still waits, and gets
    the slot when the first has spent its retries."""
    with __import__("socket").socket() as s:  # a port nothing listens on: refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    backend = Backend("default/db:3306", (Server("127.0.0.1", dead_port, name="dead"),),
                      maxconn=1)
    proxy, fport, stats = await tcp_proxy(backend, Limits(queue_timeout=30.0, retries=1))
    dead = stats.server(backend.name, "dead")
    conns = []
    try:
        conns.append(await asyncio.open_connection("127.0.0.1", fport))
        await wait_for(lambda: dead.conn_errors == 1, "the first refusal")
        refused_at = time.monotonic()
        conns.append(await asyncio.open_connection("127.0.0.1", fport))
        await wait_for(lambda: stats.backend(backend.name).queue_cur == 1 or dead.lbtot > 1,
                       "the second queued, or dialled")
        if stats.backend(backend.name).queue_cur != 1:
            # Dialled in the turn-around, unless this loop stalled for all of it.
            assert time.monotonic() - refused_at >= 0.9, "the slot was not kept"
            pytest.skip("the loop stalled past the 1 s turn-around before the 2nd accept")
        assert dead.lbtot == 1  # in the turn-around, the slot is still the first's
        # Its retry is refused too: it is closed (reset), and the second takes the slot.
        await closed(conns[0][0])
        await wait_for(lambda: dead.lbtot >= 3, "the second dialled")
        assert stats.backend(backend.name).queued == 1
        await closed(conns[1][0])
        assert dead.lbtot == 4 and dead.retries == 2  # each retried once, on the same
    finally:
        for _, w in conns:
            w.transport.abort()
        await proxy.shutdown(0)


async def test_l7_a_retry_on_the_same_server_keeps_its_slot() -> None:
    """As at L4: a request retried on its server after the turn-around keeps the slot; one
    queued behind it waits, then gets it (and its own connect retries) when the first is
    answered."""
    with __import__("socket").socket() as s:  # a port nothing listens on: refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    settings = Settings(limits=Limits(queue_timeout=30.0, retries=1))
    backend = Backend(BACKEND, (Server("127.0.0.1", dead_port, name="dead"),), maxconn=1)
    proxy, port, stats, _ = await http_proxy(settings, backend)
    dead = stats.server(backend.name, "dead")
    clients = []
    try:
        clients.append(await RawClient.connect(port))
        await clients[0].send(get("/slow/?id=1"))
        await wait_for(lambda: dead.conn_errors == 1, "the first refusal")
        refused_at = time.monotonic()
        clients.append(await RawClient.connect(port))
        await clients[1].send(get("/slow/?id=2"))
        await wait_for(lambda: stats.backend(backend.name).queue_cur == 1 or dead.lbtot > 1,
                       "the second queued, or dialled")
        if stats.backend(backend.name).queue_cur != 1:
            assert time.monotonic() - refused_at >= 0.9, "the slot was not kept"
            pytest.skip("the loop stalled past the 1 s turn-around before the 2nd request")
        # (A refused connect is answered 502, pylb.failures.)
        assert (await clients[0].read_response(timeout=10)).status == 502
        assert (await clients[1].read_response(timeout=10)).status == 502
        assert stats.backend(backend.name).queued == 1
        assert dead.retries == 2  # each retried once, on the same server
    finally:
        for c in clients:
            await c.close()
        await proxy.shutdown(0.5)
