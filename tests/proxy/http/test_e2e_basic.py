"""End to end on loopback: routing, rewriting, keep-alive, pooling, errors."""

from __future__ import annotations

from tests.conftest import until
from tests.proxy.http.client import RawClient, get
from tests.proxy.http.conftest import StartProxy


async def test_routes_and_strips_prefix(start_proxy: StartProxy) -> None:
    r = await start_proxy()
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/a/b?q=1"))
        resp = await c.read_response()
        assert resp.status == 200
        body = resp.json()
        assert body["target"] == "/a/b?q=1"
        assert body["name"] in ("b0", "b1")
        hs = dict((k.lower(), v) for k, v in body["headers"])
        assert hs["x-forwarded-for"] == "127.0.0.1"
        assert hs["x-forwarded-proto"] == "http"
        assert hs["x-forwarded-host"] == "x"
        assert hs["x-forwarded-port"] == str(r.port)
    finally:
        await c.close()


async def test_keepalive_and_pooling(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        for i in range(10):
            await c.send(get(f"/app/{i}"))
            resp = await c.read_response()
            assert resp.status == 200
            assert resp.json()["target"] == f"/{i}"
    finally:
        await c.close()
    assert r.backends[0].connections == 1
    assert len(r.backends[0].seen) == 10


async def test_no_route_404(start_proxy: StartProxy) -> None:
    r = await start_proxy()
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/nope") + get("/app/x"))
        resp = await c.read_response()
        assert resp.status == 404
        resp = await c.read_response()
        assert resp.status == 200
    finally:
        await c.close()


async def test_backend_connection_close_not_reused(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/close"))
        resp = await c.read_response()
        assert resp.status == 200 and resp.header("connection") is None  # client kept
        await c.send(get("/app/next"))
        resp = await c.read_response()
        assert resp.json()["conn"] == 2  # a new backend connection
    finally:
        await c.close()
    # kept by the client connection for its next request (proxy.http.server), pooled
    # once the proxy has seen the client go
    await until(lambda: not r.proxy.conns)
    assert r.proxy.pool.idle_count() == 1


async def test_client_connection_close_honoured(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/x", extra="Connection: close\r\n"))
        resp = await c.read_response()
        assert resp.status == 200 and resp.header("connection") == "close"
        assert await c.at_eof()
    finally:
        await c.close()
    assert r.proxy.pool.idle_count() == 1  # the backend connection is still good
