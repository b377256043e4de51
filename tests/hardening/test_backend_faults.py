"""Backend faults (issue #12): a server that resets mid-response, black-holes connects,
answers garbage, or closes keep-alive connections at random.

Each test runs a real HttpProxy (both parsers) with a backend of three servers — one
faulty (`_faulty_backend`), two healthy — and, on the same proxy, a separate healthy
service. Concurrent keep-alive clients load both at once. Per fault the test asserts what
every client saw (haproxy's semantics: a 502, a 504, a cut connection, or a transparent
retry), that the healthy service saw no failure at all, that the healthy servers of the
faulty backend served their share, and that the proxy's counters (eresp, econ, retries,
redispatches, failures by reason) match what the clients saw, exactly.

The L4 tests do the same for the TCP splicer on both of its data paths.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections import Counter
from dataclasses import dataclass, replace

import pytest

from pylb.config import Limits, Settings
from pylb.failures import Failure
from pylb.model import Backend, HttpRoute, RouteTable, Server, TcpFrontend
from tests.conftest import free_ports
from tests.hardening._faulty_backend import BlackHole, Fault, FaultyBackend, RefusedPort
from tests.proxy.http.backends import HttpBackend
from tests.proxy.http.client import RawClient
from tests.proxy.http.conftest import (  # noqa: F401  (fixtures)
    Running,
    StartProxy,
    parser_kind,
    servers_of,
    start_proxy,
)
from tests.proxy.tcp.conftest import Harness, echo, h  # noqa: F401  (the `h` fixture)

# Load per test: CLIENTS keep-alive connections, each sending REQUESTS requests, on the
# faulty backend and on the healthy service at once. FAULTS_CLIENTS/FAULTS_REQUESTS make
# it heavier (e.g. 20 x 50, as in the issue) without editing the file.
CLIENTS = int(os.environ.get("FAULTS_CLIENTS", "8"))
REQUESTS = int(os.environ.get("FAULTS_REQUESTS", "12"))
# The proxy's server timeout where a fault makes it fire: short, so a silent server costs
# little, but far above what a healthy loopback backend needs even on a loaded machine
# (a healthy server that missed it would break the exact counts). Elsewhere: 30 s.
SERVER_TIMEOUT = 2.0
CONNECT_TIMEOUT = 30.0
# Against a black hole only. A loop stalled this long (a loaded machine) may time out a
# healthy connect as well: the black-hole tests check identities that hold either way.
BLACKHOLE_CONNECT = 1.0
CUT = 0  # the outcome "connection cut before a whole response"
APP = "default/app:80"
OTHER = "default/other:80"


@dataclass
class Outcome:
    status: int  # CUT for a cut connection
    backend: str | None  # X-Backend of a response from a server


async def _client(port: int, path: str, n: int, method: str, out: list[Outcome]) -> None:
    body = b"0123456789" if method in ("POST", "PUT") else b""
    req = (f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
           + (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" + body)
    c: RawClient | None = None
    try:
        for _ in range(n):
            if c is None:
                c = await RawClient.connect(port)
            try:
                await c.send(req)
                resp = await c.read_response(method, timeout=30)
            except (asyncio.IncompleteReadError, ConnectionError):
                out.append(Outcome(CUT, None))
                await c.close()
                c = None
                continue
            out.append(Outcome(resp.status, resp.header("x-backend")))
            if (resp.header("connection") or "").lower() == "close":
                await c.close()
                c = None
    finally:
        if c is not None:
            await c.close()


async def load(port: int, path: str, clients: int = CLIENTS, requests: int = REQUESTS,
               method: str = "GET") -> list[Outcome]:
    out: list[Outcome] = []
    await asyncio.gather(*(_client(port, path, requests, method, out)
                           for _ in range(clients)))
    assert len(out) == clients * requests
    return out


@dataclass
class Scene:
    r: Running
    peers: list[HttpBackend]  # the healthy servers of APP
    other: HttpBackend  # the one server of OTHER
    faulty: Server


async def scene(start_proxy: StartProxy, faulty: Server, *,  # noqa: F811
                timeouts: dict[str, float] | None = None,
                limits: dict[str, object] | None = None) -> Scene:
    r = await start_proxy(3, table=False, timeouts={
        "server": 30.0, "connect": CONNECT_TIMEOUT, **(timeouts or {})},
        limits=limits)
    b0, b1, other = r.backends
    app = Backend(APP, (faulty, *servers_of(b0, b1)))
    ok = Backend(OTHER, servers_of(other))
    r.table([HttpRoute("app", "/app", APP), HttpRoute("other", "/other", OTHER)], [app, ok])
    return Scene(r, [b0, b1], other, faulty)


async def run_both(s: Scene, method: str = "GET") -> tuple[list[Outcome], list[Outcome]]:
    app, other = await asyncio.gather(load(s.r.port, "/app/x", method=method),
                                      load(s.r.port, "/other/y"))
    return app, other


def check_healthy(s: Scene, app: list[Outcome], other: list[Outcome],
                  slack: bool = False) -> None:
    """The separate service lost nothing; the healthy peers served their share and
    every one of their answers reached a client. `slack`: connects may have timed out
    anywhere (a short connect timeout on a loaded machine), each retried."""
    st = s.r.stats
    assert [o.status for o in other] == [200] * len(other)
    assert {o.backend for o in other} == {"b2"}
    assert len(s.other.seen) == len(other)
    oc = st.backend(OTHER)
    econ = st.server(OTHER, "b2").conn_errors if slack else 0
    assert (oc.resp_errors, oc.conn_errors, oc.retries, oc.redispatches) == (0, 0, econ, 0)
    assert oc.hrsp[1] == len(other)
    by_peer = Counter(o.backend for o in app if o.status == 200)
    for peer in s.peers:
        assert by_peer[peer.name] == len(peer.seen) > 0
        pc = st.server(APP, peer.name)
        assert pc.resp_errors == 0
        assert pc.conn_errors == 0 or slack
    # Every request the proxy gave a server was either answered or counted as retried.
    lbtot = sum(st.server(APP, srv.label).lbtot
                for srv in (s.faulty, *servers_of(*s.peers)))
    assert lbtot == len(app) + st.backend(APP).retries - st.backend(APP).redispatches


# -- a response that goes wrong -----------------------------------------------------------

# fault -> (what a client whose request went to the faulty server sees, failure counted)
RESPONSE_FAULTS: dict[Fault, tuple[int, Failure]] = {
    Fault.RESET_BEFORE: (502, Failure.BACKEND_RESET),
    Fault.RESET_IN_HEAD: (502, Failure.BACKEND_RESET),
    Fault.RESET_IN_BODY: (CUT, Failure.BACKEND_RESET),
    Fault.CLOSE_IN_BODY: (CUT, Failure.BACKEND_RESET),
    Fault.GARBAGE: (502, Failure.BAD_RESPONSE),
    Fault.HTTP09: (502, Failure.BAD_RESPONSE),
    Fault.BAD_STATUS: (502, Failure.BAD_RESPONSE),
    Fault.BIG_HEAD: (502, Failure.BAD_RESPONSE),
    # The bad chunk comes in the read with the head: nothing has left, so a clean 502.
    Fault.BAD_CHUNK: (502, Failure.BAD_RESPONSE),  # came whole: nothing sent yet
    Fault.BAD_CHUNK_LATE: (CUT, Failure.BAD_RESPONSE),  # the head had gone
    Fault.SILENT: (504, Failure.BACKEND_TIMEOUT),
    Fault.SLOW_HEAD: (504, Failure.BACKEND_TIMEOUT),
    Fault.SLOW_BODY: (CUT, Failure.BACKEND_TIMEOUT),
}
_TIMEOUT_FAULTS = {Fault.SILENT, Fault.SLOW_HEAD, Fault.SLOW_BODY}
# Also right: on a loaded machine the proxy may read the late bad chunk together with the
# head (its loop stalled past `settle`); nothing has left then, and a 502 replaces it.
_ALSO = {Fault.BAD_CHUNK_LATE: 502}


@pytest.mark.parametrize("fault", list(RESPONSE_FAULTS), ids=lambda f: f.value)
async def test_response_fault(start_proxy: StartProxy, fault: Fault) -> None:  # noqa: F811
    expected, failure = RESPONSE_FAULTS[fault]
    # Each timed-out request costs SERVER_TIMEOUT: only the first few misbehave, at once.
    timed = fault in _TIMEOUT_FAULTS
    fb = await FaultyBackend(fault, limit=3 if timed else 1 << 62,
                             drip=SERVER_TIMEOUT * 2.5).start()
    try:
        s = await scene(start_proxy, Server("127.0.0.1", fb.port, name="faulty"),
                        timeouts={"server": SERVER_TIMEOUT} if timed else None)
        app, other = await run_both(s)
    finally:
        await fb.stop()
    st = s.r.stats
    bad = [o for o in app if o.backend != "b0" and o.backend != "b1"]
    # Every request the faulty server misbehaved on got the fault's outcome, and only those.
    assert fb.faults > 0
    assert +Counter(expected if o.status == _ALSO.get(fault) else o.status
                    for o in bad) == +Counter({expected: fb.faults,
                                                       200: fb.answered}), (
        Counter((o.status, o.backend) for o in app), st.failures, fb.requests)
    assert all(o.backend == "faulty" for o in bad if o.status == 200)
    # GETs whose response started wrong are not retried: nothing in them was safe to redo
    # once the server had the request (haproxy retries only connects by default).
    be = st.backend(APP)
    assert (be.retries, be.redispatches, be.conn_errors) == (0, 0, 0)
    assert be.resp_errors == st.server(APP, "faulty").resp_errors == fb.faults
    assert st.failures.get(failure, 0) == fb.faults
    assert sum(st.failures.values()) == fb.faults  # a client the proxy cut did not abort
    fe = st.frontend("http")
    n5 = sum(1 for o in app if o.status >= 500)
    assert fe.hrsp[4] == n5
    check_healthy(s, app, other)


# -- keep-alive connections the server closes ---------------------------------------------

@pytest.mark.parametrize(("fault", "method"), [
    (Fault.KA_RACE_RST, "GET"), (Fault.KA_RACE_FIN, "GET"), (Fault.KA_RACE_RST, "PUT")],
    ids=["rst-get", "fin-get", "rst-put"])
async def test_keepalive_race_idempotent_retried(start_proxy: StartProxy,  # noqa: F811
                                                 fault: Fault, method: str) -> None:
    """The server drops a reused connection as the next request arrives (RST or FIN,
    before any response byte): an idempotent request (a PUT with its body too) is sent
    again, on a fresh connection, and the client never knows."""
    fb = await FaultyBackend(fault).start()
    try:
        s = await scene(start_proxy, Server("127.0.0.1", fb.port, name="faulty"))
        app, other = await run_both(s, method=method)
    finally:
        await fb.stop()
    st = s.r.stats
    assert [o.status for o in app] == [200] * len(app)
    assert fb.faults > 0
    by = Counter(o.backend for o in app)
    assert by["faulty"] == fb.answered
    be = st.backend(APP)
    assert be.retries == fb.faults
    assert (be.redispatches, be.conn_errors, be.resp_errors) == (0, 0, 0)
    assert st.failures == {}
    if method == "PUT":  # the body was replayed whole
        assert all(seen.body_len == 10 for p in s.peers for seen in p.seen)
        assert all(h.endswith(b"\r\n\r\n") and b"PUT " in h for h in fb.heads)
    check_healthy(s, app, other)


async def test_keepalive_race_retry_on_fresh_connection(
        start_proxy: StartProxy) -> None:  # noqa: F811
    """The retry after a keep-alive race does not take another idle connection (the server
    may have closed all of them at once, as one that restarts does): with four idle
    connections that will all fail, one retry on a new connection answers."""
    fb = await FaultyBackend(Fault.KA_RACE_RST).start()
    try:
        r = await start_proxy(0, table=False)
        only = Backend(APP, (Server("127.0.0.1", fb.port, name="faulty"),))
        r.table([HttpRoute("app", "/app", APP)], [only])
        first = [await RawClient.connect(r.port) for _ in range(4)]
        for c in first:
            await c.send(b"GET /app/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [(await c.read_response()).status for c in first] == [200] * 4
        for c in first:
            await c.close()
        assert r.proxy.pool.idle_count() == 4 and fb.connections == 4
        out = await load(r.port, "/app/2", clients=1, requests=1)
    finally:
        await fb.stop()
    assert [o.status for o in out] == [200]
    assert (fb.faults, fb.connections) == (1, 5)
    be = r.stats.backend(APP)
    assert (be.retries, be.resp_errors) == (1, 0)


async def test_keepalive_race_post_not_retried(start_proxy: StartProxy) -> None:  # noqa: F811
    """The same race on a POST: the request went out, the server may have acted on it,
    so the client gets a 502 rather than a second POST."""
    fb = await FaultyBackend(Fault.KA_RACE_RST).start()
    try:
        s = await scene(start_proxy, Server("127.0.0.1", fb.port, name="faulty"))
        app, other = await run_both(s, method="POST")
    finally:
        await fb.stop()
    st = s.r.stats
    assert fb.faults > 0
    statuses = Counter(o.status for o in app)
    assert statuses == {200: len(app) - fb.faults, 502: fb.faults}
    # Every POST reached exactly one server once: none was sent twice.
    assert fb.requests + sum(len(p.seen) for p in s.peers) == len(app)
    be = st.backend(APP)
    assert (be.retries, be.redispatches, be.conn_errors) == (0, 0, 0)
    assert be.resp_errors == fb.faults
    assert st.failures == {Failure.BACKEND_RESET: fb.faults}
    check_healthy(s, app, other)


async def test_keepalive_closed_after_response(start_proxy: StartProxy) -> None:  # noqa: F811
    """The server closes half of its keep-alive connections right after a response
    (without saying `Connection: close`): the pooled connection is dropped, or, when the
    proxy already reused it, the request is retried. No client sees a failure."""
    fb = await FaultyBackend(Fault.KA_CLOSE_AFTER, rate=0.5).start()
    try:
        s = await scene(start_proxy, Server("127.0.0.1", fb.port, name="faulty"))
        app, other = await run_both(s)
    finally:
        await fb.stop()
    st = s.r.stats
    assert [o.status for o in app] == [200] * len(app)
    assert fb.faults > 0
    assert Counter(o.backend for o in app)["faulty"] == fb.answered == fb.requests
    be = st.backend(APP)
    assert (be.redispatches, be.conn_errors, be.resp_errors) == (0, 0, 0)
    assert st.failures == {}
    check_healthy(s, app, other)


# -- connects that fail -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["refused", "blackhole"])
async def test_connect_fault_redispatched(start_proxy: StartProxy,  # noqa: F811
                                          kind: str) -> None:
    """A server that refuses or black-holes connects: each request that picked it is
    redispatched to a healthy one (haproxy's `option redispatch`, `retries 3`), and after
    `passive_fall` failures it is left out."""
    hole = BlackHole().start() if kind == "blackhole" else RefusedPort()
    failure = Failure.CONNECT_TIMEOUT if kind == "blackhole" else Failure.CONNECT_FAILED
    slack = kind == "blackhole"
    try:
        s = await scene(start_proxy, Server("127.0.0.1", hole.port, name="faulty"),
                        timeouts={"connect": BLACKHOLE_CONNECT} if slack else None)
        app, other = await run_both(s)
    finally:
        hole.stop()
    st = s.r.stats
    assert [o.status for o in app] == [200] * len(app)
    fc = st.server(APP, "faulty")
    be = st.backend(APP)
    econ = sum(st.server(APP, x.label).conn_errors for x in servers_of(*s.peers))
    assert econ == 0 or slack
    assert fc.conn_errors >= 1
    assert fc.retries == fc.redispatches == fc.conn_errors
    assert be.retries == be.redispatches == fc.conn_errors + econ
    assert fc.lbtot == 0 and be.conn_errors == 0 and be.resp_errors == 0
    assert st.failures == {failure: be.retries + st.server(OTHER, "b2").conn_errors}
    bal = s.r.balancers.get(APP)
    assert bal is not None and not bal.is_up(s.faulty)
    check_healthy(s, app, other, slack=slack)


async def test_connect_refused_post_redispatched(start_proxy: StartProxy) -> None:  # noqa: F811
    """A refused connect sent nothing: even a POST goes to another server, once."""
    hole = RefusedPort()
    try:
        s = await scene(start_proxy, Server("127.0.0.1", hole.port, name="faulty"))
        app, other = await run_both(s, method="POST")
    finally:
        hole.stop()
    assert [o.status for o in app] == [200] * len(app)
    assert sum(len(p.seen) for p in s.peers) == len(app)  # each POST reached one server once
    assert all(seen.method == "POST" and seen.body_len == 10 for p in s.peers for seen in p.seen)
    fc = s.r.stats.server(APP, "faulty")
    assert fc.conn_errors >= 1
    assert s.r.stats.backend(APP).redispatches == fc.conn_errors
    check_healthy(s, app, other)


async def test_server_timeout_starts_when_connected(start_proxy: StartProxy) -> None:  # noqa: F811
    """A request redispatched after a connect timeout gets the whole server timeout from
    the server it lands on: the time spent on the black hole is not charged to it (found
    by bench/faults.py: with connect and server timeouts both 1 s, every request that met
    the black hole got a 504)."""
    hole = BlackHole().start()
    try:
        r = await start_proxy(1, table=False, timeouts={"connect": 1.0, "server": 1.0})
        b = Backend(APP, (Server("127.0.0.1", hole.port, name="faulty"),
                          *servers_of(r.backends[0])))
        r.table([HttpRoute("app", "/app", APP)], [b])
        out = await load(r.port, "/app/x", clients=1, requests=2)  # one meets the hole
    finally:
        hole.stop()
    assert [o.status for o in out] == [200, 200], (r.stats.failures,
                                                   r.stats.backend(APP).snapshot())
    be = r.stats.backend(APP)
    assert (be.redispatches, be.resp_errors) == (1, 0)
    assert r.stats.failures == {Failure.CONNECT_TIMEOUT: 1}


@pytest.mark.parametrize("kind", ["refused", "blackhole"])
async def test_connect_fault_no_other_server(start_proxy: StartProxy,  # noqa: F811
                                             kind: str) -> None:
    """With nothing to redispatch to, the connect is retried `retries` times on the same
    server (haproxy's turn-around between), then the client gets 502 (refused) or 504
    (connect timeout). The server, failing `passive_fall` (3) connects in a row, is
    ejected, but as the backend's only server it is still used (the panic threshold):
    every request is retried and answered alike, none gets a 503. The other service is
    fine meanwhile."""
    hole = BlackHole().start() if kind == "blackhole" else RefusedPort()
    failure = Failure.CONNECT_TIMEOUT if kind == "blackhole" else Failure.CONNECT_FAILED
    try:
        r = await start_proxy(1, table=False, timeouts={
            "connect": BLACKHOLE_CONNECT if kind == "blackhole" else CONNECT_TIMEOUT},
            limits={"retries": 1})
        dead = Backend("default/dead:80", (Server("127.0.0.1", hole.port, name="dead"),))
        ok = Backend(OTHER, servers_of(r.backends[0]))
        r.table([HttpRoute("dead", "/dead", dead.name), HttpRoute("o", "/other", OTHER)],
                [dead, ok])
        bad, good = await asyncio.gather(load(r.port, "/dead", clients=1, requests=4),
                                         load(r.port, "/other/y"))
    finally:
        hole.stop()
    # Each request: attempt + retry (the same server, 1 s later after a refusal) fail.
    assert [o.status for o in bad] == [failure.status] * 4
    assert [o.status for o in good] == [200] * len(good)
    dc = r.stats.backend(dead.name)
    assert (dc.conn_errors, dc.retries, dc.redispatches) == (4, 4, 0)
    assert r.stats.server(dead.name, "dead").conn_errors == 8
    oc = r.stats.backend(OTHER)
    other_econ = r.stats.server(OTHER, "b0").conn_errors  # > 0 only if the loop stalled
    assert r.stats.failures == {failure: 8 + other_econ}
    assert r.stats.frontend("http").hrsp[4] == 4
    assert (oc.resp_errors, oc.conn_errors, oc.retries) == (0, 0, other_econ)


# -- L4 ---------------------------------------------------------------------------------

TCP_BACKEND = "default/db:3306"
TCP_OTHER = "default/other:3306"


async def _tcp_client(reader_writer: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                      rounds: int) -> str:
    """Ping-pong `rounds` messages through an echo; "ok", "reset" or "eof"."""
    r, w = reader_writer
    try:
        for i in range(rounds):
            msg = b"ping %04d\n" % i
            if w.transport.is_closing():  # ended while we were reading: how?
                await asyncio.wait_for(r.read(), 30)
                return "eof"
            w.write(msg)
            got = await asyncio.wait_for(r.readexactly(len(msg)), 30)
            assert got == msg
        return "ok"
    except ConnectionResetError:
        return "reset"
    except asyncio.IncompleteReadError:
        return "eof"


def _tcp_table(db: tuple[Server, ...], other: tuple[Server, ...], db_port: int,
               other_port: int) -> RouteTable:
    return RouteTable(
        tcp=(TcpFrontend("db", db_port, TCP_BACKEND),
             TcpFrontend("other", other_port, TCP_OTHER)),
        backends=(Backend(TCP_BACKEND, db), Backend(TCP_OTHER, other)))


@pytest.mark.parametrize("kind", ["refused", "blackhole"])
async def test_tcp_connect_fault_redispatched(h: Harness, kind: str) -> None:  # noqa: F811
    hole = BlackHole().start() if kind == "blackhole" else RefusedPort()
    failure = Failure.CONNECT_TIMEOUT if kind == "blackhole" else Failure.CONNECT_FAILED
    try:
        peers = [await h.upstream(echo) for _ in range(2)]
        others = [await h.upstream(echo) for _ in range(2)]
        p = h.proxy(connect=BLACKHOLE_CONNECT if kind == "blackhole" else CONNECT_TIMEOUT)
        db_port, other_port = free_ports(2)
        await p.set_table(_tcp_table(
            (Server("127.0.0.1", hole.port, name="faulty"), *(u.server_model for u in peers)),
            tuple(u.server_model for u in others), db_port, other_port))

        async def one(port: int) -> str:
            return await _tcp_client(await h.connect(p, port), 5)

        results = await asyncio.gather(*(one(db_port) for _ in range(CLIENTS * 3)),
                                       *(one(other_port) for _ in range(CLIENTS * 3)))
    finally:
        hole.stop()
    assert results == ["ok"] * len(results)
    st = p.stats
    fc = st.server(TCP_BACKEND, "faulty")
    be = st.backend(TCP_BACKEND)
    # (L4 counts econ on the backend per failed attempt; L7 once per request given up.)
    econ = sum(st.server(TCP_BACKEND, u.server_model.label).conn_errors for u in peers)
    assert fc.conn_errors >= 1 and (econ == 0 or kind == "blackhole")
    assert be.redispatches == be.retries == fc.retries + econ == be.conn_errors
    assert fc.retries == fc.conn_errors
    oecon = sum(st.server(TCP_OTHER, u.server_model.label).conn_errors for u in others)
    assert oecon == 0 or kind == "blackhole"
    assert st.failures == {failure: be.conn_errors + oecon}
    assert sum(u.accepted for u in peers) == sum(u.accepted for u in others) == CLIENTS * 3
    oc = st.backend(TCP_OTHER)
    assert oc.conn_errors == oc.retries == oecon


async def test_tcp_reset_mid_stream_resets_client(h: Harness) -> None:  # noqa: F811
    """A server that resets after a few exchanges: its client is reset too (not left
    hanging, not closed cleanly as if the stream had ended); the other clients of the same
    backend and of another frontend finish."""
    state = {"n": 0}

    async def flaky(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        state["n"] += 1
        if state["n"] % 3:
            await echo(r, w)
            return
        for _ in range(2):
            w.write(await r.readexactly(10))
            await w.drain()
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        w.transport.abort()

    u = await h.upstream(flaky)
    other = await h.upstream(echo)
    p = h.proxy(replace(Settings(), limits=Limits(retries=3)))
    db_port, other_port = free_ports(2)
    await p.set_table(_tcp_table((u.server_model,), (other.server_model,), db_port,
                                 other_port))

    async def one(port: int) -> str:
        return await _tcp_client(await h.connect(p, port), 5)

    n = CLIENTS * 3
    results = await asyncio.gather(*(one(db_port) for _ in range(n)),
                                   *(one(other_port) for _ in range(n)))
    db, oth = results[:n], results[n:]
    resets = n // 3
    assert Counter(db) == {"ok": n - resets, "reset": resets}
    assert oth == ["ok"] * n
    assert p.stats.failures == {Failure.BACKEND_RESET: resets}
    assert p.stats.backend(TCP_OTHER).conn_errors == 0
