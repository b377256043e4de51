"""TLS passthrough: the ClientHello's server name picks the backend; the bytes go through
untouched (a real TLS handshake completes end to end through the proxy)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme

from proxy.tcp import TcpProxy
from pylb.failures import Failure
from pylb.model import Backend, RouteTable, Server, TcpFrontend
from tests.proxy.tcp.conftest import Handler, Harness, Upstream


def client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def tagged(tag: bytes) -> Handler:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        first = await r.read(65536)
        w.write(tag + b":" + str(len(first)).encode())
        await w.drain()
        w.write_eof()
        await r.read()
    return handler


async def sni_proxy(h: Harness, default: str = "dflt",
                    **timeouts: float) -> tuple[TcpProxy, dict[str, Upstream]]:
    ups = {name: await h.upstream(tagged(name.encode())) for name in ("a", "wild", "dflt")}
    backends = tuple(Backend(name, (u.server_model,)) for name, u in ups.items())
    fe = TcpFrontend("tls", 0, default, sni=(("a.example.com", "a"), ("*.example.com", "wild")))
    p = h.proxy(**timeouts)  # type: ignore[arg-type]
    await p.set_table(RouteTable(tcp=(fe,), backends=backends))
    return p, ups


@pytest.mark.parametrize(("name", "tag"), [
    ("a.example.com", b"a"), ("x.example.com", b"wild"), ("other.org", b"dflt"),
    (None, b"dflt"),
])
async def test_sni_picks_backend(h: Harness, name: str | None, tag: bytes) -> None:
    p, _ = await sni_proxy(h)
    hello = client_hello(name)
    r, w = await h.connect(p)
    for i in range(0, len(hello), 100):  # in pieces: the proxy waits for the whole hello
        w.write(hello[i:i + 100])
        await w.drain()
    assert await asyncio.wait_for(r.read(), 10) == tag + b":" + str(len(hello)).encode()


async def test_not_tls_goes_to_default(h: Harness) -> None:
    p, _ = await sni_proxy(h)
    r, w = await h.connect(p)
    w.write(b"GET / HTTP/1.0\r\n\r\n")
    assert await asyncio.wait_for(r.read(), 10) == b"dflt:18"


async def test_unknown_name_without_default_is_refused(h: Harness) -> None:
    p, ups = await sni_proxy(h, default="")
    r, w = await h.connect(p)
    w.write(client_hello("nobody.org"))
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 10)
    assert p.stats.failures == {Failure.NO_ROUTE: 1}
    assert sum(u.accepted for u in ups.values()) == 0


async def test_real_tls_handshake_through_passthrough(h: Harness) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("a.example.com")
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(sctx)
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)

    async def tls_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line = await r.readline()
        w.write(b"tls says " + line)
        await w.drain()

    server = await asyncio.start_server(tls_echo, "127.0.0.1", 0, ssl=sctx)
    try:
        port = server.sockets[0].getsockname()[1]
        fe = TcpFrontend("tls", 0, "", sni=(("a.example.com", "a"),))
        p = h.proxy()
        await p.set_table(RouteTable(tcp=(fe,), backends=(
            Backend("a", (Server("127.0.0.1", port),)),)))
        host, pport = p.bound_ports()[0]
        r, w = await asyncio.open_connection(host, pport, ssl=cctx,
                                             server_hostname="a.example.com")
        w.write(b"hello\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"tls says hello\n"
        w.close()
        await w.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_sni_inspection_times_out(h: Harness) -> None:
    p, ups = await sni_proxy(h, client=0.1)
    r, w = await h.connect(p)
    w.write(client_hello("a.example.com")[:20])
    assert await asyncio.wait_for(r.read(), 10) == b""
    assert p.stats.failures == {Failure.CLIENT_TIMEOUT: 1}
    assert sum(u.accepted for u in ups.values()) == 0


async def test_inspect_delay_sends_silent_client_to_default(h: Harness) -> None:
    async def greet(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"server speaks first")
        await w.drain()
        w.write_eof()
        await r.read()

    dflt = await h.upstream(greet)
    fe = TcpFrontend("tls", 0, "dflt", sni=(("a.example.com", "dflt"),))
    p = h.proxy(http_request=0.1)
    await p.set_table(RouteTable(tcp=(fe,), backends=(Backend("dflt", (dflt.server_model,)),)))
    r, _w = await h.connect(p)
    assert await asyncio.wait_for(r.read(), 10) == b"server speaks first"
    assert p.stats.failures == {}
