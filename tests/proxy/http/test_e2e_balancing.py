"""End to end on loopback: every algorithm and both affinities through the L7 router."""

from __future__ import annotations

import asyncio
import collections

from proxy.balance import cookie_value
from pylb.model import Affinity, Algorithm, Backend, HttpRoute, Server
from tests.proxy.http.client import RawClient, get
from tests.proxy.http.conftest import StartProxy, servers_of


async def names(port: int, n: int, extra: str = "", src: str = "127.0.0.1",
                path: str = "/s/x") -> list[str]:
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    c = RawClient(r, w)
    out = []
    try:
        for _ in range(n):
            await c.send(get(path, extra=extra))
            resp = await c.read_response()
            out.append(resp.json()["name"])
    finally:
        await c.close()
    return out


def setup(r: object, algorithm: Algorithm, affinity: Affinity = Affinity.NONE,
          weights: tuple[int, ...] | None = None) -> Backend:
    bs = r.backends  # type: ignore[attr-defined]
    servers = servers_of(*bs)
    if weights:
        servers = tuple(Server(s.address, s.port, s.name, weight=w)
                        for s, w in zip(servers, weights, strict=True))
    b = Backend("ns/s:80", servers, algorithm=algorithm, affinity=affinity)
    r.table([HttpRoute("s", "/s", b.name)], [b])  # type: ignore[attr-defined]
    return b


async def test_roundrobin_weighted(start_proxy: StartProxy) -> None:
    r = await start_proxy(3, table=False)
    setup(r, Algorithm.ROUNDROBIN, weights=(3, 1, 1))
    counts = collections.Counter(await names(r.port, 50))
    assert counts == {"b0": 30, "b1": 10, "b2": 10}


async def test_leastconn_prefers_idle_server(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, table=False)
    setup(r, Algorithm.LEASTCONN)
    slow = await RawClient.connect(r.port)
    try:
        await slow.send(get("/s/x?delay=0.5"))
        await asyncio.sleep(0.1)
        busy = next(iter(b.name for b in r.backends if b.connections))
        got = await names(r.port, 4)
        assert busy not in got
        assert (await slow.read_response()).json()["name"] == busy
    finally:
        await slow.close()


async def test_first_fills_first_server(start_proxy: StartProxy) -> None:
    r = await start_proxy(3, table=False)
    setup(r, Algorithm.FIRST)
    first = min(r.backends, key=lambda b: b.port)  # servers in a stable (address) order
    assert set(await names(r.port, 10)) == {first.name}


async def test_source_hash_stable_per_client(start_proxy: StartProxy) -> None:
    r = await start_proxy(3, table=False)
    setup(r, Algorithm.SOURCE)
    seen = {}
    for i in range(2, 10):
        src = f"127.0.0.{i}"
        got = set(await names(r.port, 3, src=src))
        assert len(got) == 1
        seen[src] = got.pop()
    assert len(set(seen.values())) > 1


async def test_client_ip_affinity(start_proxy: StartProxy) -> None:
    r = await start_proxy(3, table=False)
    setup(r, Algorithm.ROUNDROBIN, Affinity.CLIENT_IP)
    for i in range(2, 6):
        assert len(set(await names(r.port, 4, src=f"127.0.0.{i}"))) == 1


async def test_cookie_affinity_insert_indirect_nocache(start_proxy: StartProxy) -> None:
    r = await start_proxy(3, table=False)
    b = setup(r, Algorithm.ROUNDROBIN, Affinity.COOKIE)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/s/setcookie"))
        resp = await c.read_response()
        first = resp.json()["name"]
        cookies = resp.headers_all("set-cookie")
        assert "app=1" in cookies
        sid = next(v for v in cookies if v.startswith("SERVERID="))
        value = sid.split(";")[0].split("=", 1)[1]
        server = next(s for s in b.servers if s.name == first)
        assert value == cookie_value(server)
        assert resp.header("cache-control") == 'no-cache="set-cookie"'
        for _ in range(6):
            await c.send(get("/s/x", extra=f"Cookie: a=1; SERVERID={value}\r\n"))
            resp = await c.read_response()
            assert resp.json()["name"] == first
            assert resp.header("set-cookie") is None  # valid cookie: nothing inserted
            sent = [v for k, v in resp.json()["headers"] if k.lower() == "cookie"]
            assert sent == ["a=1"]  # indirect: the backend never sees SERVERID
        await c.send(get("/s/x", extra="Cookie: SERVERID=bogus\r\n"))
        resp = await c.read_response()
        assert (resp.header("set-cookie") or "").startswith("SERVERID=")
        assert not [v for k, v in resp.json()["headers"] if k.lower() == "cookie"]
    finally:
        await c.close()


async def test_cookie_for_removed_server_rebalances(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, table=False)
    b = setup(r, Algorithm.ROUNDROBIN, Affinity.COOKIE)
    gone = b.servers[0]
    r.table([HttpRoute("s", "/s", b.name)],
            [Backend(b.name, b.servers[1:], affinity=Affinity.COOKIE)])
    got = await names(r.port, 2, extra=f"Cookie: SERVERID={cookie_value(gone)}\r\n")
    assert got == [b.servers[1].name] * 2


async def test_new_table_applies_to_next_request(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, table=False)
    b0, b1 = r.backends
    r.table([HttpRoute("s", "/s", "ns/a:80")], [Backend("ns/a:80", servers_of(b0))])
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/s/x?delay=0.2"))
        await asyncio.sleep(0.05)
        r.table([HttpRoute("s", "/s", "ns/a:80")], [Backend("ns/a:80", servers_of(b1))])
        assert (await c.read_response()).json()["name"] == "b0"  # in flight: finishes
        await c.send(get("/s/x"))
        assert (await c.read_response()).json()["name"] == "b1"
    finally:
        await c.close()


async def test_host_or_path_routes(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, table=False)
    b0, b1 = r.backends
    r.table([HttpRoute("h", "/h", "ns/h:80", host="api.example.com"),
             HttpRoute("p", "/p", "ns/p:80")],
            [Backend("ns/h:80", servers_of(b0)), Backend("ns/p:80", servers_of(b1))])
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/anything", host="API.example.com:80"))
        resp = await c.read_response()
        assert resp.json()["name"] == "b0" and resp.json()["target"] == "/anything"
        await c.send(get("/p/q", host="www.example.com"))
        resp = await c.read_response()
        assert resp.json()["name"] == "b1" and resp.json()["target"] == "/q"
    finally:
        await c.close()
