"""A connection whose next request is the very head of an earlier one (the httptools
parser gives the same object for the same bytes: parser._READS), or of an earlier
connection's from the same client, reuses that exchange's route decision and rewritten
head (`ClientProtocol._routed`, `HttpProxy.routed`) while the table and the balancers
are unchanged; the rate limit, the balancer's pick and the counters still run
for every request. On bytes, with fake transports (as test_protocol_bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.balance import Balancers
from proxy.http import HttpProxy, parser
from proxy.http.server import ClientProtocol
from proxy.http.upstream import UpstreamProtocol
from pylb.config import HttpParser, Settings
from pylb.counters import Stats
from pylb.delta import diff
from pylb.model import Affinity, Backend, HttpRoute, RouteTable, Server
from tests.conftest import free_port
from tests.proxy.http.test_protocol_bytes import OK, FakeTransport

S1 = Server("127.0.0.1", free_port(), name="s1")  # nothing listens there
S2 = Server("127.0.0.2", S1.port, name="s2")
GET = b"GET /a/x?y HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
SENT = (b"GET /x?y HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Forwarded-Port: 80\r\n\r\n")


def table(route: HttpRoute | None = None, **backend: Any) -> RouteTable:
    return RouteTable(http=(route or HttpRoute("a", "/a", "b"),),
                      backends=(Backend("b", (S1, S2), **backend),))


class Conn:
    """A client connection to `proxy`. Before each exchange every server has an idle
    connection ready for it: in `proxy`'s pool, or kept by this client connection from
    its last exchange (proxy.http.server, `_kept`); `ups` holds them all, shared by the
    connections to one proxy."""

    def __init__(self, proxy: HttpProxy, peer: tuple[str, int] = ("192.0.2.7", 40000)
                 ) -> None:
        self.proxy = proxy
        self.client = ClientProtocol(proxy)
        self.ct = FakeTransport(self.client, peer)
        self.client.connection_made(self.ct)  # type: ignore[arg-type]
        self.ups: list[tuple[UpstreamProtocol, FakeTransport]] = _UPS.setdefault(id(proxy), [])

    def pool(self) -> None:
        pool = self.proxy.pool
        for server in (S1, S2):
            if pool.idle_count(server.key) or any(
                    up.pool is self.client and up.key == server.key and not up.closed
                    for up, _ in self.ups):
                continue
            up = UpstreamProtocol(server.key, self.proxy.parser_kind)
            ut = FakeTransport(up, server.key)
            up.connection_made(ut)  # type: ignore[arg-type]
            pool.put(up, self.proxy.loop.time())
            self.ups.append((up, ut))

    def exchange(self, data: bytes = GET) -> tuple[tuple[str, int] | None, bytes, bytes]:
        """(the server the request went to, what it got, what the client got)."""
        self.pool()
        self.client.data_received(data)
        for up, ut in self.ups:
            sent = ut.take()
            if sent:
                up.data_received(OK)
                return up.key, sent, self.ct.take()
        return None, b"", self.ct.take()


_UPS: dict[int, list[tuple[UpstreamProtocol, FakeTransport]]] = {}


@pytest.fixture(autouse=True)
def _fresh_memo() -> Iterator[None]:
    parser._READS.clear()
    parser._ONCE.clear()
    _UPS.clear()
    yield
    # (else the last test's backend connections outlive the module, and a later test
    # that counts live UpstreamProtocol objects, tests/hardening/test_memory.py, sees them)
    _UPS.clear()


def make(t: RouteTable | None = None) -> tuple[HttpProxy, Conn]:
    proxy = HttpProxy(Settings(http_parser=HttpParser.HTTPTOOLS), Stats(), Balancers())
    proxy.set_table(t or table())
    return proxy, Conn(proxy)


async def test_the_same_head_again_reuses_the_route_and_the_rewritten_head() -> None:
    proxy, conn = make()
    servers = []
    for i in range(5):
        server, sent, answer = conn.exchange()
        assert sent == SENT and answer.endswith(b"ok"), i
        servers.append(server)
        if i == 2:  # the read remembered on the second, its head given again on the third
            routed = conn.client._routed
            assert routed is not None and routed[0] is parser._READS[GET][1]
            proxy.router = None  # type: ignore[assignment]  # not asked any more
    assert servers == [S1.key, S2.key, S1.key, S2.key, S1.key]  # round robin: each time
    fe, be = proxy.stats.frontend("http"), proxy.stats.backend("b")
    assert (fe.req_total, be.lbtot, fe.hrsp[1], be.hrsp[1]) == (5, 5, 5, 5)
    conn.ct.close()
    await asyncio.sleep(0)


async def test_a_new_table_is_routed_anew() -> None:
    proxy, conn = make()
    for _ in range(4):
        assert conn.exchange()[1] == SENT
    assert conn.client._routed is not None
    # the prefix kept now (the routes' change alone, as the data plane gives it: the
    # balancers untouched), and then the route gone
    old = proxy.table
    new = RouteTable(http=(HttpRoute("a", "/a", "b", strip_prefix=False),),
                     backends=old.backends)
    proxy.set_table(new, diff(old, new))
    assert conn.exchange()[1].startswith(b"GET /a/x?y HTTP/1.1\r\n")
    assert conn.exchange()[1].startswith(b"GET /a/x?y HTTP/1.1\r\n")
    proxy.set_table(table(HttpRoute("c", "/c", "b")))
    assert conn.exchange()[2].startswith(b"HTTP/1.1 404 ")
    conn.ct.close()
    await asyncio.sleep(0)


async def test_a_balancer_gone_is_seen_without_a_new_table() -> None:
    proxy, conn = make()
    for _ in range(4):
        assert conn.exchange()[1] == SENT
    assert conn.client._routed is not None
    proxy.balancers.apply((), ("b",))  # (the data plane sets the table right after)
    assert conn.exchange()[2].startswith(b"HTTP/1.1 503 ")
    conn.ct.close()
    await asyncio.sleep(0)


async def test_other_connections_and_heads_are_routed_for_themselves() -> None:
    proxy, conn = make()
    for _ in range(4):
        conn.exchange()
    other = Conn(proxy, ("192.0.2.8", 40001))
    for _ in range(4):
        assert other.exchange()[1] == SENT.replace(b"192.0.2.7", b"192.0.2.8")
    head = GET.replace(b"/a/x", b"/a/z")
    for _ in range(4):
        assert conn.exchange(head)[1] == SENT.replace(b"/x?y", b"/z?y")
    assert conn.exchange()[1] == SENT
    for c in (conn, other):
        c.ct.close()
    await asyncio.sleep(0)


async def test_cookie_affinity_is_never_reused() -> None:
    """The rewritten head depends on the request's cookie there (taken out of Cookie)."""
    _proxy, conn = make(table(affinity=Affinity.COOKIE))
    get = GET.replace(b"Accept: */*", b"Cookie: SERVERID=x; a=1")
    for _ in range(4):
        _server, sent, answer = conn.exchange(get)
        assert b"Cookie: a=1\r\n" in sent and b"SERVERID" not in sent
        assert b"Set-Cookie: SERVERID=" in answer
    assert conn.client._routed is None
    conn.ct.close()
    await asyncio.sleep(0)


async def test_the_rate_limit_runs_for_every_request() -> None:
    proxy, conn = make(table(rate_limit=(0.001, 3)))
    answers = [conn.exchange()[2] for _ in range(3)]
    assert conn.client._routed is not None
    answers += [conn.exchange()[2] for _ in range(3)]
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200"] * 3 + [b"HTTP/1.1 429"] * 3
    assert proxy.stats.backend("b").denied_req == 3
    conn.ct.close()
    await asyncio.sleep(0)


async def test_a_new_connection_from_the_same_client_reuses_the_decision() -> None:
    """A client that makes a connection per request: the frontend keeps the decision by
    head (HttpProxy.routed) for the next connection from the same address; one from
    another address, or to another port, or with another TLS client, routes anew; a new
    table empties it."""
    proxy, first = make()
    for _ in range(3):
        assert first.exchange()[1] == SENT
    assert set(proxy.routed) == {parser._READS[GET][1]}
    router = proxy.router
    proxy.router = None  # type: ignore[assignment]  # not asked by the next connection
    again = Conn(proxy, ("192.0.2.7", 40002))
    assert again.exchange()[1] == SENT
    assert again.client._routed is proxy.routed[parser._READS[GET][1]]
    proxy.router = router
    # each differs from the one before in one thing only (the last decision is kept)
    port = Conn(proxy)
    port.client.local_port = 8080
    sent = SENT.replace(b"Port: 80", b"Port: 8080")
    assert port.exchange()[1] == sent
    tls = Conn(proxy)
    tls.client.local_port = 8080
    tls.client._ssl_client = (b"SUCCESS", b"CN=c")
    assert tls.exchange()[1] == sent.replace(
        b"\r\n\r\n", b"\r\nX-SSL-Client-Verify: SUCCESS\r\nX-SSL-Client-DN: CN=c\r\n\r\n")
    other = Conn(proxy, ("192.0.2.9", 40003))
    other.client.local_port = 8080
    other.client._ssl_client = (b"SUCCESS", b"CN=c")
    assert other.exchange()[1] == sent.replace(b"192.0.2.7", b"192.0.2.9").replace(
        b"\r\n\r\n", b"\r\nX-SSL-Client-Verify: SUCCESS\r\nX-SSL-Client-DN: CN=c\r\n\r\n")
    proxy.set_table(table(HttpRoute("a", "/a", "b", strip_prefix=False)))
    assert not proxy.routed
    late = Conn(proxy)
    assert late.exchange()[1].startswith(b"GET /a/x?y HTTP/1.1\r\n")
    for c in (first, again, other, port, tls, late):
        c.ct.close()
    await asyncio.sleep(0)
