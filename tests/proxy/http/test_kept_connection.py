"""A client connection keeps its last exchange's backend connection for its next request
(proxy.http.server, "Backend connections between a client's requests"): from its second
exchange on, while the client is busy; it goes to the pool when the next request goes to
another server, when it is stale or closed, when the client has been idle a sweep
interval or closes, and it is closed at shutdown. On bytes, with fake transports (as
test_protocol_bytes)."""

from __future__ import annotations

import asyncio

from proxy.balance import Balancers
from proxy.http import HttpProxy
from proxy.http.server import ClientProtocol
from proxy.http.upstream import UpstreamProtocol
from pylb.config import HttpParser, Settings
from pylb.counters import Stats
from pylb.model import Backend, HttpRoute, RouteTable, Server
from tests.conftest import free_port
from tests.proxy.http.test_protocol_bytes import OK, FakeTransport

S1 = Server("127.0.0.1", free_port(), name="s1")  # nothing listens there
S2 = Server("127.0.0.2", S1.port, name="s2")
GET = b"GET /a/x HTTP/1.1\r\nHost: h\r\n\r\n"
CLOSE = b"GET /a/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
Up = tuple[UpstreamProtocol, FakeTransport]


def make(kind: HttpParser, *servers: Server, maxconn: int = 0
         ) -> tuple[HttpProxy, ClientProtocol, FakeTransport]:
    proxy = HttpProxy(Settings(http_parser=kind), Stats(), Balancers())
    proxy.set_table(RouteTable(http=(HttpRoute("a", "/a", "b"),),
                               backends=(Backend("b", servers or (S1,), maxconn=maxconn),)))
    client = ClientProtocol(proxy)
    ct = FakeTransport(client, ("192.0.2.7", 40000))
    client.connection_made(ct)  # type: ignore[arg-type]
    return proxy, client, ct


def pooled(proxy: HttpProxy, server: Server = S1) -> Up:
    """A new idle connection to `server`, put in the pool."""
    up = UpstreamProtocol(server.key, proxy.parser_kind)
    ut = FakeTransport(up, server.key)
    up.connection_made(ut)  # type: ignore[arg-type]
    proxy.pool.put(up, proxy.loop.time())
    return up, ut


def exchange(client: ClientProtocol, ct: FakeTransport, *ups: Up, data: bytes = GET
             ) -> UpstreamProtocol | None:
    """One request and its response; the backend connection it went on (of `ups`)."""
    client.data_received(data)
    for up, ut in ups:
        if ut.take():
            up.data_received(OK)
            assert ct.take().endswith(b"\r\n\r\nok")
            return up
    return None


def kept(kind: HttpParser) -> tuple[HttpProxy, ClientProtocol, FakeTransport, Up]:
    """A client connection after two exchanges, keeping their backend connection."""
    proxy, client, ct = make(kind)
    up, ut = pooled(proxy)
    exchange(client, ct, (up, ut))
    exchange(client, ct, (up, ut))
    assert up.pool is client
    return proxy, client, ct, (up, ut)


async def test_kept_from_the_second_exchange_on(parser_kind: HttpParser) -> None:
    proxy, client, ct = make(parser_kind)
    up, ut = pooled(proxy)
    assert exchange(client, ct, (up, ut)) is up
    # a first exchange's connection goes to the pool (many clients make no second)
    assert proxy.pool.idle_count() == 1 and up.pool is proxy.pool
    assert exchange(client, ct, (up, ut)) is up
    # the second's is kept by the client connection, not pooled
    assert proxy.pool.idle_count() == 0 and up.pool is client and up.owner is None
    for _ in range(3):
        assert exchange(client, ct, (up, ut)) is up
        assert proxy.pool.idle_count() == 0 and up.pool is client
    assert up.uses == 5 and not up.closed
    assert proxy.stats.failures == {}
    ct.close()
    await asyncio.sleep(0)  # connection_lost: the kept connection goes to the pool
    assert client.closed and proxy.pool.idle_count() == 1 and up.pool is proxy.pool
    assert not up.closed and not ut.closing


async def test_connection_close_request_pools_it(parser_kind: HttpParser) -> None:
    proxy, client, ct = make(parser_kind)
    up, ut = pooled(proxy)
    exchange(client, ct, (up, ut))
    assert exchange(client, ct, (up, ut), data=CLOSE) is up
    # no next request on this client connection: the pool has it at once
    assert proxy.pool.idle_count() == 1 and up.pool is proxy.pool
    await asyncio.sleep(0)
    assert client.closed and not up.closed


async def test_to_the_pool_when_the_next_request_goes_to_another_server(
        parser_kind: HttpParser) -> None:
    proxy, client, ct = make(parser_kind, S1, S2)  # round robin: S1, S2, S1...
    one, two = pooled(proxy, S1), pooled(proxy, S2)
    assert exchange(client, ct, one, two) is one[0]
    assert exchange(client, ct, one, two) is two[0]
    assert two[0].pool is client and proxy.pool.idle_count(S2.key) == 0
    assert exchange(client, ct, one, two) is one[0]  # S1's, from the pool
    # S2's went to the pool as the request went to S1; S1's is kept now
    assert two[0].pool is proxy.pool and proxy.pool.idle_count(S2.key) == 1
    assert one[0].pool is client and proxy.pool.idle_count(S1.key) == 0
    assert exchange(client, ct, one, two) is two[0]
    assert not one[0].closed and not two[0].closed
    ct.close()
    await asyncio.sleep(0)


async def test_closed_by_the_server_while_kept(parser_kind: HttpParser) -> None:
    proxy, client, ct, (up, ut) = kept(parser_kind)
    up.eof_received()  # the server times it out
    ut.close()
    await asyncio.sleep(0)  # connection_lost: the client connection forgets it
    assert up.closed and up.pool is None
    fresh = pooled(proxy)
    assert exchange(client, ct, (up, ut), fresh) is fresh[0]
    assert proxy.stats.failures == {} and not up.uses > 2
    ct.close()
    await asyncio.sleep(0)


async def test_a_stale_kept_connection_is_not_used(parser_kind: HttpParser) -> None:
    proxy, client, ct, (up, ut) = kept(parser_kind)
    fresh = pooled(proxy)
    up.idle_since -= proxy.pool.idle_timeout + 1.0  # idle longer than the pool keeps one
    assert exchange(client, ct, (up, ut), fresh) is fresh[0]
    assert up.closed and ut.closing  # closed, not sent on
    assert proxy.stats.failures == {}
    ct.close()
    await asyncio.sleep(0)


async def test_to_the_pool_when_the_client_has_idled_a_sweep_interval(
        parser_kind: HttpParser) -> None:
    proxy, client, ct, (up, ut) = kept(parser_kind)
    interval = proxy.idle.interval
    now = proxy.loop.time()
    assert client.idle_check(now, interval)  # idle for less than an interval: kept
    assert up.pool is client and proxy.pool.idle_count() == 0
    assert client.idle_check(now + interval, interval)  # still idle, and let go
    assert up.pool is proxy.pool and proxy.pool.idle_count() == 1 and not up.closed
    assert not client.closed
    # its next request takes it from the pool, as any other connection's would
    assert exchange(client, ct, (up, ut)) is up
    assert up.pool is client
    ct.close()
    await asyncio.sleep(0)


async def test_closed_at_shutdown(parser_kind: HttpParser) -> None:
    proxy, client, _, (up, ut) = kept(parser_kind)
    await proxy.shutdown(1.0)  # idle client connections are closed at once
    assert client.closed and up.closed and ut.closing
    assert proxy.pool.idle_count() == 0


async def test_not_kept_on_a_backend_with_server_slots(parser_kind: HttpParser) -> None:
    # --maxconn per server: the connection goes to the pool, where the next request in
    # line for the freed slot takes it warm
    proxy, client, ct = make(parser_kind, maxconn=4)
    up, ut = pooled(proxy)
    for _ in range(3):
        assert exchange(client, ct, (up, ut)) is up
        assert up.pool is proxy.pool and proxy.pool.idle_count() == 1
    ct.close()
    await asyncio.sleep(0)


async def test_closed_when_let_go_after_its_server_left_the_table(
        parser_kind: HttpParser) -> None:
    proxy, client, ct = make(parser_kind, S1, S2)
    one, two = pooled(proxy, S1), pooled(proxy, S2)
    exchange(client, ct, one, two)
    assert exchange(client, ct, one, two) is two[0] and two[0].pool is client
    # S2 leaves the table: the pool closes its idle connections at once; the one the
    # client connection keeps is closed when it lets it go (here: idle an interval)
    proxy.set_table(RouteTable(http=(HttpRoute("a", "/a", "b"),),
                               backends=(Backend("b", (S1,)),)))
    assert not two[0].closed and two[0].pool is client
    interval = proxy.idle.interval
    assert client.idle_check(proxy.loop.time() + interval, interval)
    assert two[0].closed and proxy.pool.idle_count(S2.key) == 0
    assert not one[0].closed and proxy.pool.idle_count(S1.key) == 1
    ct.close()
    await asyncio.sleep(0)
