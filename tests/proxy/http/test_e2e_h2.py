"""End to end: HTTP/2 clients (the h2 library raw, curl, httpx, h2load) through pylb to
HTTP/1.1 backends: h2c with prior knowledge (--h2c) and TLS with ALPN h2."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl

import h2.events
import h2.settings
import pytest
import trustme

from pylb.config import HttpParser
from pylb.stats.prom import row_families
from pylb.stats.view import StatsView, stat_rows
from tests.proxy.http.conftest import StartProxy
from tests.proxy.http.h2client import H2Client


@pytest.fixture
def parser_kind() -> HttpParser:
    return HttpParser.AUTO  # the h2 side does not depend on the HTTP/1.1 parser


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    from proxy.tls import ALPN
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(list(ALPN))
    return ctx


def client_context(ca: trustme.CA, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(alpn)
    return ctx


async def test_h2c_prior_knowledge_streams(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, h2c=True)
    c = await H2Client.open(r.port)
    try:
        sids = [await c.get(b"/app/x%d?q=1" % i) for i in range(5)]
        post = await c.get(b"/app/up", body=b"y" * 100_000)  # > one stream window
        for i, sid in enumerate(sids):
            status, body, headers = await c.response(sid)
            assert status == 200, (status, body, c.events)
            seen = json.loads(body)
            assert seen["target"] == f"/x{i}?q=1"
            hs = {k.lower(): v for k, v in seen["headers"]}
            assert hs["host"] == "example.com"
            assert hs["x-forwarded-proto"] == "http"
            names = [k for k, _ in headers]
            assert b"connection" not in names and b"transfer-encoding" not in names
        status, body, _ = await c.response(post)
        assert status == 200
        assert json.loads(body)["body_len"] == 100_000
        # Responses without a body end their stream with the HEADERS frame.
        status, body, _ = await c.response(await c.get(b"/app/status?code=204"))
        assert (status, body) == (204, b"")
        status, body, headers = await c.response(await c.get(b"/app/h", method=b"HEAD"))
        assert status == 200 and body == b"" and dict(headers)[b"content-length"]
        # A route that does not exist: our own 404, on its stream only.
        status, _, _ = await c.response(await c.get(b"/nothing"))
        assert status == 404
    finally:
        await c.close()
    fe = r.stats.frontend("http")
    assert fe.req_total == 9
    assert (fe.h2_tot, fe.h2_streams) == (1, 9)
    for _ in range(100):  # the connection's end is seen by the server a moment later
        if fe.h2_cur == 0:
            break
        await asyncio.sleep(0.01)
    assert fe.h2_cur == 0
    # The stats page's CSV: haproxy's h2 columns of the frontend row.
    view = StatsView(version="t", pid=1, started=0.0, now=0.0, counters=r.stats.snapshot())
    row = next(x for x in stat_rows(view)
               if x["svname"] == "FRONTEND" and x["pxname"] == "http")
    assert (row["h2_total_connections"], row["h2_headers_rcvd"]) == (1, 9)
    metrics = row_families(view)  # and /metrics
    assert 'pylb_frontend_h2_streams_total{frontend="http"} 9' in metrics
    assert 'pylb_frontend_h2_connections_total{frontend="http"} 1' in metrics
    # The backends were reached over pooled HTTP/1.1 keep-alive connections.
    assert sum(len(b.seen) for b in r.backends) == 8


async def test_plain_port_without_flag_is_http1_only(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await H2Client.open(r.port)
    try:
        await c.get()
        await c.until(lambda: c.closed, 5)
        assert c.closed  # the preface is a bad HTTP/1.1 request: 400, closed
    finally:
        await c.close()


async def test_tls_alpn_h2_and_http11(start_proxy: StartProxy, ca: trustme.CA) -> None:
    r = await start_proxy(1, tls=True, ssl_context=server_context(ca))
    c = await H2Client.open(r.port, client_context(ca, ["h2", "http/1.1"]))
    try:
        ssl_obj = c.writer.get_extra_info("ssl_object")
        assert ssl_obj.selected_alpn_protocol() == "h2"
        status, body, headers = await c.response(await c.get())
        assert status == 200
        hs = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert hs["x-forwarded-proto"] == "https"
        assert dict(headers)[b"strict-transport-security"]
    finally:
        await c.close()
    # An HTTP/1.1-only client on the same port.
    ctx = client_context(ca, ["http/1.1"])
    rd, wr = await asyncio.open_connection("127.0.0.1", r.port, ssl=ctx,
                                           server_hostname="localhost")
    wr.write(b"GET /app/y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(rd.read(), 10)
    assert data.startswith(b"HTTP/1.1 200")
    wr.close()


async def test_tls_client_certificate_over_h2(start_proxy: StartProxy,
                                              ca: trustme.CA) -> None:
    """X-SSL-Client-* come from the TLS session on h2 streams too; a client's own are
    dropped."""
    sctx = server_context(ca)
    ca.configure_trust(sctx)
    sctx.verify_mode = ssl.CERT_OPTIONAL
    r = await start_proxy(1, tls=True, ssl_context=sctx)
    cctx = client_context(ca, ["h2"])
    ca.issue_cert("alice@example.com", common_name="alice").configure_cert(cctx)
    c = await H2Client.open(r.port, cctx)
    try:
        status, body, _ = await c.response(await c.get(extra=[
            (b"x-ssl-client-dn", b"CN=mallory"), (b"x-ssl-client-verify", b"SUCCESS")]))
        assert status == 200
        hs = [(k.lower(), v) for k, v in json.loads(body)["headers"]]
        assert [v for k, v in hs if k == "x-ssl-client-verify"] == ["SUCCESS"]
        dns = [v for k, v in hs if k == "x-ssl-client-dn"]
        assert len(dns) == 1 and "CN=alice" in dns[0]
    finally:
        await c.close()


async def test_expect_100_continue_relayed(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, h2c=True)
    c = await H2Client.open(r.port)
    try:
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                                  (b":authority", b"x"), (b":path", b"/app/e"),
                                  (b"expect", b"100-continue"), (b"content-length", b"3")])
        await c.flush()
        await c.until(lambda: bool(c.of(sid, h2.events.InformationalResponseReceived)), 5)
        assert c.of(sid, h2.events.InformationalResponseReceived)
        c.conn.send_data(sid, b"abc", end_stream=True)
        await c.flush()
        status, body, _ = await c.response(sid)
        assert status == 200 and json.loads(body)["body_len"] == 3
    finally:
        await c.close()


async def test_graceful_shutdown_finishes_streams(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, h2c=True)
    c = await H2Client.open(r.port)
    try:
        sid = await c.get(b"/app/slow?delay=0.5")
        await asyncio.sleep(0.2)
        stop = asyncio.create_task(r.proxy.shutdown(5))
        status, body, _ = await c.response(sid)
        assert status == 200 and json.loads(body)["target"] == "/slow?delay=0.5"
        assert c.graceful == [sid]  # GOAWAY NO_ERROR naming the stream under way
        await stop
    finally:
        await c.close()


async def test_slow_reader_bounded(start_proxy: StartProxy) -> None:
    """A client that does not reopen its window: pylb reads the backend only as far as
    the window and its watermark allow, then the stream is reset after timeout client."""
    r = await start_proxy(1, h2c=True, timeouts={"client": 1.0})
    c = await H2Client.open(r.port)
    try:
        sid = await c.get(b"/app/big?n=20000000")
        await c.until(lambda: c.ended(sid), 8)
        # the client never acknowledged: at most its 64 KiB window reached it
        got = sum(len(e.data) for e in c.of(sid, h2.events.DataReceived))
        assert got <= 65535
        assert c.reset_code(sid) == 8  # CANCEL
        # the connection is still usable
        for e in c.of(sid, h2.events.DataReceived):
            c.conn.acknowledge_received_data(e.flow_controlled_length, sid)
        status, _, _ = await c.response(await c.get())
        assert status == 200
    finally:
        await c.close()


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def run(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


@pytest.mark.needs_tool
@needs_curl
async def test_curl_http2_prior_knowledge(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, h2c=True)
    base = f"http://127.0.0.1:{r.port}"
    # One URL per run: curl 7.88.1 fails to reuse a prior-knowledge h2 connection for a
    # second URL ("Error in the HTTP2 framing layer"), against haproxy's h2c alike.
    rc, out, err = await run("curl", "-sS", "--max-time", "20", "--http2-prior-knowledge",
                             "-w", "\n%{http_version}", f"{base}/app/b",
                             "--data-binary", "hello")
    assert rc == 0, err
    body, _, version = out.rpartition(b"\n")
    assert version == b"2"
    seen = json.loads(body)
    assert seen["target"] == "/b" and seen["body_len"] == 5


@pytest.mark.needs_tool
@needs_curl
async def test_curl_http2_tls(start_proxy: StartProxy, ca: trustme.CA,
                              tmp_path: object) -> None:
    import pathlib
    cafile = pathlib.Path(str(tmp_path)) / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    r = await start_proxy(1, tls=True, ssl_context=server_context(ca))
    rc, out, err = await run("curl", "-sS", "--max-time", "20", "--http2", "--cacert",
                             str(cafile), "-w", "\n%{http_version}",
                             f"https://localhost:{r.port}/app/z",
                             "--resolve", f"localhost:{r.port}:127.0.0.1")
    assert rc == 0, err
    body, _, version = out.rpartition(b"\n")
    assert version == b"2"
    assert json.loads(body)["target"] == "/z"


@pytest.mark.needs_tool
@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
async def test_h2load(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, h2c=True)
    rc, out, err = await run("h2load", "-n", "400", "-c", "4", "-m", "10",
                             f"http://127.0.0.1:{r.port}/app/load")
    assert rc == 0, err
    assert b"400 succeeded, 0 failed, 0 errored" in out, out
    assert b"status codes: 400 2xx" in out, out


async def test_httpx_http2(start_proxy: StartProxy, ca: trustme.CA) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2")
    r = await start_proxy(1, tls=True, ssl_context=server_context(ca))
    ctx = client_context(ca, ["h2", "http/1.1"])
    async with httpx.AsyncClient(http2=True, verify=ctx) as client:
        rs = await asyncio.gather(*(client.get(f"https://localhost:{r.port}/app/{i}")
                                    for i in range(10)))
        post = await client.post(f"https://localhost:{r.port}/app/p", content=b"z" * 300_000)
    assert all(x.status_code == 200 and x.http_version == "HTTP/2" for x in rs)
    assert [x.json()["target"] for x in rs] == [f"/{i}" for i in range(10)]
    assert post.json()["body_len"] == 300_000


async def test_upload_to_a_slow_backend_is_bounded(start_proxy: StartProxy) -> None:
    """A client uploading faster than the backend reads: pylb acknowledges the request's
    bytes only as the backend takes them, so the client is held by its windows, not
    buffered for (the bound: kernel socket buffers plus a window and a watermark)."""
    r = await start_proxy(1, h2c=True)
    r.backends[0].read_delay = 0.1  # ~640 KiB/s
    c = await H2Client.open(r.port)
    total = 40 * 1024 * 1024
    try:
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                                  (b":authority", b"x"), (b":path", b"/app/up")])
        await c.flush()
        sent = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        chunk = b"u" * 16384
        while sent < total and loop.time() < end:
            window = min(c.conn.local_flow_control_window(sid), len(chunk))
            if window <= 0:
                await c.read_some(max(0.01, end - loop.time()))
                continue
            c.conn.send_data(sid, chunk[:window])
            sent += window
            await c.flush()
        # Held back: far less than the 40 MiB offered went in 2 s (unbounded buffering
        # would take it all at loopback speed).
        assert sent < 12 * 1024 * 1024, sent
        c.conn.reset_stream(sid)
        await c.flush()
    finally:
        await c.close()


async def test_client_not_reading_its_socket_is_bounded(start_proxy: StartProxy) -> None:
    """Windows wide open but the client's socket not read: pylb stops at its write
    buffer's watermark (and reads the backend no further), it does not fill it to the
    window's size; then the client reads and gets the whole response."""
    from proxy.http.h2server import H2Connection
    r = await start_proxy(1, h2c=True)
    c = await H2Client.open(r.port)
    size = 30_000_000
    try:
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        c.conn.increment_flow_control_window(2**31 - 1 - 65535)
        await c.flush()
        await c.read_some(2)  # the server's SETTINGS and ACK
        sid = await c.get(b"/app/big?n=%d" % size)
        await asyncio.sleep(1.5)  # not reading
        (conn,) = [x for x in r.proxy.conns if isinstance(x, H2Connection)]
        assert conn.transport is not None
        held = conn.transport.get_write_buffer_size()
        assert held < 2 * 1024 * 1024, held  # HIGH_WATER and a read or two, not 30 MB
        got = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while not c.ended(sid) and loop.time() < end:
            await c.read_some(5)
        got = sum(len(e.data) for e in c.of(sid, h2.events.DataReceived))
        assert got == size
    finally:
        await c.close()


async def test_slash_redirect_over_h2(start_proxy: StartProxy) -> None:
    from pylb.model import HttpRoute
    from tests.proxy.http.conftest import simple_table
    r = await start_proxy(1, h2c=True, table=False)
    _, backends = simple_table(r.backends)
    r.table([HttpRoute("app", "/app", backends[0].name, slash_redirect=True)], backends)
    c = await H2Client.open(r.port)
    try:
        status, _, headers = await c.response(await c.get(b"/app?x=1"))
        assert status == 301 and dict(headers)[b"location"] == b"/app/?x=1"
        status, body, _ = await c.response(await c.get(b"/app/y"))
        assert status == 200 and json.loads(body)["target"] == "/y"
    finally:
        await c.close()
