"""Ingress routes end to end on loopback: host AND path, rewrite-target with capture groups,
permanent-redirect and app-root answers, the default backend."""

from __future__ import annotations

from pylb.model import Backend, HttpRoute, PathMatch
from tests.proxy.http.client import get
from tests.proxy.http.conftest import StartProxy, servers_of
from tests.proxy.http.test_e2e_forwarding import roundtrip


async def test_ingress_routes_over_sockets(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, table=False)
    a = Backend("ns/a:80", servers_of(r.backends[0]))
    b = Backend("ns/b:80", servers_of(r.backends[1]))
    r.table([
        HttpRoute("ns/i", "/admin(/|$)(.*)", a.name, "admin.test", strip_prefix=False,
                  match=PathMatch.REGEX, rewrite="/$2"),
        HttpRoute("ns/i", "/", a.name, "app.test", strip_prefix=False, match=PathMatch.EXACT,
                  redirect="/shop", redirect_code=302),
        HttpRoute("ns/i", "/", a.name, "app.test", strip_prefix=False, match=PathMatch.PREFIX),
        HttpRoute("ns/j", "/", a.name, "old.test", strip_prefix=False, match=PathMatch.PREFIX,
                  redirect="https://new.test/"),
        HttpRoute("ns/k", "/", b.name, None, strip_prefix=False, match=PathMatch.DEFAULT),
    ], [a, b])
    c, resp = await roundtrip(r.port, get("/Admin/users/7?x=1", host="admin.test"))
    await c.close()
    assert resp.status == 200 and resp.json()["target"] == "/users/7?x=1"
    assert resp.header("x-backend") == r.backends[0].name
    c, resp = await roundtrip(r.port, get("/", host="app.test"))
    await c.close()
    assert resp.status == 302 and resp.header("location") == "/shop"
    c, resp = await roundtrip(r.port, get("/shop/cart", host="app.test:8080"))
    await c.close()
    assert resp.status == 200 and resp.json()["target"] == "/shop/cart"
    c, resp = await roundtrip(r.port, get("/a?b", host="old.test"))
    await c.close()
    assert resp.status == 301 and resp.header("location") == "https://new.test/"
    c, resp = await roundtrip(r.port, get("/whatever", host="unknown.test"))
    await c.close()
    assert resp.status == 200 and resp.header("x-backend") == r.backends[1].name
