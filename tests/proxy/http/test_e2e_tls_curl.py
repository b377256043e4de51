"""End to end: the TLS frontend (forwarded headers, HSTS, client certificates), real curl,
and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl

import pytest
import trustme

from tests.proxy.http.client import RawClient, get
from tests.proxy.http.conftest import StartProxy


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


async def tls_client(port: int, ca: trustme.CA, cert: bool) -> RawClient:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert:
        ca.issue_cert("alice@example.com", common_name="alice").configure_cert(ctx)
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                         server_hostname="localhost")
    return RawClient(r, w)


@pytest.mark.parametrize("with_cert", [False, True])
async def test_tls_frontend(start_proxy: StartProxy, ca: trustme.CA, with_cert: bool) -> None:
    r = await start_proxy(1, tls=True, ssl_context=server_context(ca))
    c = await tls_client(r.port, ca, with_cert)
    try:
        await c.send(get("/app/x", extra="X-SSL-Client-DN: CN=mallory\r\n"
                                          "X-SSL-Client-Verify: SUCCESS\r\n"))
        resp = await c.read_response()
        assert resp.status == 200
        assert resp.header("strict-transport-security") == "max-age=15768000"
        hs = dict((k.lower(), v) for k, v in resp.json()["headers"])
        assert hs["x-forwarded-proto"] == "https"
        if with_cert:
            assert hs["x-ssl-client-verify"] == "SUCCESS"
            assert "CN=alice" in hs["x-ssl-client-dn"]
        else:
            assert "x-ssl-client-verify" not in hs and "x-ssl-client-dn" not in hs
    finally:
        await c.close()
    assert r.stats.frontend("https").req_total == 1


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def curl(*args: str, stdin: bytes | None = None) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out


@pytest.mark.needs_tool
@needs_curl
async def test_curl_keepalive_reuse_and_upload(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    base = f"http://127.0.0.1:{r.port}"
    rc, out = await curl("-o", "/dev/null", "-o", "/dev/null",
                         "-w", "%{http_code} %{num_connects}\\n",
                         f"{base}/app/a", f"{base}/app/b")
    assert rc == 0
    assert out.split() == [b"200", b"1", b"200", b"0"]  # the second reused the connection
    assert r.backends[0].connections == 1
    payload = b"p" * 300_000
    rc, out = await curl("--data-binary", "@-", "-H", "Content-Type: x/y", f"{base}/app/up",
                         stdin=payload)
    assert rc == 0 and json.loads(out)["body_len"] == len(payload)
    rc, out = await curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                         f"{base}/app/up", stdin=payload)
    assert rc == 0 and json.loads(out)["body_len"] == len(payload)
    rc, out = await curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/none")
    assert out == b"404"


async def test_shutdown_finishes_in_flight_and_closes_idle(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    idle = await RawClient.connect(r.port)
    busy = await RawClient.connect(r.port)
    try:
        await idle.send(get("/app/x"))
        assert (await idle.read_response()).status == 200
        await busy.send(get("/app/x?delay=0.2"))
        await asyncio.sleep(0.05)
        done = asyncio.create_task(r.proxy.shutdown(5.0))
        assert await idle.at_eof()
        resp = await busy.read_response()
        assert resp.status == 200 and resp.header("connection") == "close"
        assert await busy.at_eof()
        await asyncio.wait_for(done, 5)
        assert r.proxy.connections == 0
        with pytest.raises(OSError):
            await RawClient.connect(r.port)
    finally:
        await idle.close()
        await busy.close()


async def test_shutdown_grace_cuts_long_requests(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/hang"))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(r.proxy.shutdown(0.1), 5)
        assert r.proxy.connections == 0
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await c.read_response()
    finally:
        await c.close()
