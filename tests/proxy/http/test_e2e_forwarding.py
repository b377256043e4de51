"""End to end on loopback: bodies, framing, 100-continue, errors, redirects, counters."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import struct

import pytest

from proxy.http.routing import Router
from pylb.failures import Failure
from pylb.model import Backend, HttpRoute, Server
from tests.conftest import free_port, until
from tests.proxy.http.client import RawClient, Response, get
from tests.proxy.http.conftest import StartProxy, servers_of


async def roundtrip(port: int, data: bytes, method: str = "GET") -> tuple[RawClient, Response]:
    c = await RawClient.connect(port)
    await c.send(data)
    return c, await c.read_response(method)


async def test_post_content_length_and_chunked(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(b"POST /app/u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        resp = await c.read_response()
        assert resp.json()["body_len"] == 5
        assert resp.json()["sha256"] == hashlib.sha256(b"hello").hexdigest()
        await c.send(b"POST /app/u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n")
        await c.send(b"2\r\nde\r\n0\r\n\r\n")
        resp = await c.read_response()
        assert resp.json()["sha256"] == hashlib.sha256(b"abcde").hexdigest()
        hs = dict((k.lower(), v) for k, v in resp.json()["headers"])
        assert hs["transfer-encoding"] == "chunked"
    finally:
        await c.close()
    assert r.backends[0].connections == 1


async def test_chunked_response_and_http10_client(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/x?chunked=1"))
        resp = await c.read_response()
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.json()["name"] == "b0"
    finally:
        await c.close()
    c = await RawClient.connect(r.port)
    try:
        await c.send(b"GET /app/x?chunked=1 HTTP/1.0\r\n\r\n")
        resp = await c.read_response()
        assert resp.header("transfer-encoding") is None
        assert resp.json()["name"] == "b0"  # delimited by close
        assert await c.at_eof()
    finally:
        await c.close()


async def test_head_204_304(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/x", method="HEAD"))
        resp = await c.read_response("HEAD")
        assert resp.status == 200 and int(resp.header("content-length") or 0) > 0
        for code in (204, 304):
            await c.send(get(f"/app/status?code={code}"))
            resp = await c.read_response()
            assert resp.status == code
        await c.send(get("/app/after"))
        resp = await c.read_response()
        assert resp.json()["target"] == "/after"
    finally:
        await c.close()


async def test_expect_100_continue(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(b"POST /app/e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 4\r\n\r\n")
        line = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 100 Continue")
        await c.send(b"data")
        resp = await c.read_response()
        assert resp.status == 200 and resp.json()["body_len"] == 4
    finally:
        await c.close()


async def test_pipelined_requests(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/1") + b"POST /app/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2"
                     b"\r\n\r\nhi" + get("/nowhere") + get("/app/4"))
        targets = []
        for _ in range(4):
            resp = await c.read_response()
            targets.append(resp.json()["target"] if resp.status == 200 else resp.status)
        assert targets == ["/1", "/2", 404, "/4"]
    finally:
        await c.close()


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_large_body_bounded_memory(start_proxy: StartProxy, direction: str) -> None:
    """64 MiB through the proxy while the far side reads slowly: the proxy's buffers
    stay near the watermarks (RSS of this whole process grows far less than 64 MiB)."""
    r = await start_proxy(1)
    size = 64 * 1024 * 1024
    rss: list[int] = []

    async def sample() -> None:
        for _ in range(100_000):
            with open(f"/proc/{os.getpid()}/statm") as f:
                rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    await asyncio.sleep(0.01)
    c = await RawClient.connect(r.port)
    try:
        if direction == "upload":
            r.backends[0].read_delay = 0.0005
            await c.send(b"POST /app/up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % size)
            block = b"y" * (1 << 20)
            digest = hashlib.sha256()
            for _ in range(size // len(block)):
                c.writer.write(block)
                digest.update(block)
                await c.writer.drain()
            resp = await c.read_response(timeout=60)
            assert resp.json()["body_len"] == size
            assert resp.json()["sha256"] == digest.hexdigest()
        else:
            await c.send(get(f"/app/big?n={size}"))
            head = await c.reader.readuntil(b"\r\n\r\n")
            assert b"200" in head.split(b"\r\n")[0]
            got = 0
            while got < size:
                chunk = await asyncio.wait_for(c.reader.read(1 << 16), 30)
                assert chunk
                got += len(chunk)
                if got % (1 << 22) < (1 << 16):
                    await asyncio.sleep(0.001)
            assert got == size
        # The same client and pooled backend connection serve the next request (reading
        # was paused for backpressure and must have been resumed).
        await c.send(get("/app/again"))
        resp = await c.read_response()
        assert resp.json()["target"] == "/again"
        assert r.backends[0].connections == 1
    finally:
        sampler.cancel()
        await c.close()
    assert rss
    growth = max(rss) - rss[0]
    assert growth < 24 * 1024 * 1024, growth


async def test_no_route_uses_error_page_and_code(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, default_return_code=503, error_page_body=b"<p>down</p>")
    c, resp = await roundtrip(r.port, get("/nothing"))
    await c.close()
    assert resp.status == 503 and resp.body == b"<p>down</p>"
    assert r.stats.failures[Failure.NO_ROUTE] == 1
    assert r.stats.frontend("http").hrsp[4] == 1


async def test_ssl_redirect(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, table=False)
    b = Backend("ns/s:80", servers_of(r.backends[0]))
    r.table([HttpRoute("s", "/s", b.name, ssl_redirect=True)], [b])
    c, resp = await roundtrip(r.port, get("/s/a?b=1", host="h.example.com"))
    await c.close()
    assert resp.status == 301
    assert resp.header("location") == "https://h.example.com/s/a?b=1"


async def test_malformed_400_and_next_client_served(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c, resp = await roundtrip(r.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n")
    assert resp.status == 400
    assert await c.at_eof()
    await c.close()
    c, resp = await roundtrip(r.port, b"POST /app HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert resp.status == 400
    await c.close()
    c, resp = await roundtrip(r.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 414
    await c.close()
    c, resp = await roundtrip(r.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 17000
                              + b"\r\n\r\n")
    assert resp.status == 431
    await c.close()
    c, resp = await roundtrip(r.port, get("/app/fine"))
    assert resp.status == 200
    await c.close()
    assert r.stats.frontend("http").req_errors == 4
    assert r.backends[0].connections == 1


async def test_no_server_503(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, table=False)
    b = Backend("ns/empty:80", ())
    r.table([HttpRoute("e", "/e", b.name)], [b])
    c, resp = await roundtrip(r.port, get("/e"))
    await c.close()
    assert resp.status == 503
    assert r.stats.failures[Failure.NO_SERVER] == 1


async def test_connect_failed_502_after_retries(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, table=False, limits={"retries": 2})
    dead = Server("127.0.0.1", free_port(), name="dead")
    b = Backend("ns/dead:80", (dead,))
    r.table([HttpRoute("d", "/d", b.name)], [b])
    c, resp = await roundtrip(r.port, get("/d"))
    await c.close()
    assert resp.status == 502
    assert r.stats.failures[Failure.CONNECT_FAILED] == 3
    assert r.stats.backend(b.name).retries == 2
    assert r.stats.backend(b.name).conn_errors == 1


async def test_redispatch_to_live_server(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, table=False)
    dead = Server("127.0.0.1", free_port(), name="dead")
    b = Backend("ns/mixed:80", (dead, *servers_of(r.backends[0])))
    r.table([HttpRoute("m", "/m", b.name)], [b])
    c = await RawClient.connect(r.port)
    try:
        for _ in range(6):
            await c.send(get("/m/x"))
            resp = await c.read_response()
            assert resp.status == 200 and resp.json()["name"] == "b0"
    finally:
        await c.close()
    assert r.stats.backend(b.name).redispatches >= 1
    bal = r.balancers.get(b.name)
    assert bal is not None and not bal.is_up(dead)  # passive down after `passive_fall`


async def test_bad_response_502(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c, resp = await roundtrip(r.port, get("/app/garbage"))
    await c.close()
    assert resp.status == 502
    assert r.stats.failures[Failure.BAD_RESPONSE] == 1


async def test_backend_dies_midway_client_sees_truncation(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/midway"))
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await c.read_response()
    finally:
        await c.close()
    assert r.stats.failures[Failure.BACKEND_RESET] == 1


async def test_stale_pooled_connection_retried(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/one"))
        assert (await c.read_response()).status == 200
        # The backend drops its idle keep-alive connections behind the proxy's back.
        for w in list(r.backends[0]._writers):
            w.transport.abort()
        await asyncio.sleep(0.05)
        await c.send(get("/app/two"))
        resp = await c.read_response()
        assert resp.status == 200 and resp.json()["target"] == "/two"
    finally:
        await c.close()


async def test_removed_server_idle_connections_closed(start_proxy: StartProxy) -> None:
    r = await start_proxy(2, table=False)
    b0, b1 = r.backends
    b = Backend("ns/s:80", servers_of(b0, b1))
    r.table([HttpRoute("s", "/s", b.name)], [b])
    c = await RawClient.connect(r.port)
    try:
        for _ in range(4):
            await c.send(get("/s"))
            assert (await c.read_response()).status == 200
        # one idle connection to each server: one in the pool, the other (the last
        # exchange's) kept by the client connection for its next request
        # (proxy.http.server; which is which depends on where round robin started)
        assert r.proxy.pool.idle_count() == 1
        assert b0.open_connections == 1 and b1.open_connections == 1
        r.table([HttpRoute("s", "/s", b.name)], [Backend(b.name, servers_of(b0))])
        # b1's, if pooled, is closed at once
        assert r.proxy.pool.idle_count(("127.0.0.1", b1.port)) == 0
        for _ in range(2):
            await c.send(get("/s"))
            assert (await c.read_response()).json()["name"] == "b0"
        # b1's, if kept, went to the pool as the next request went to b0, and the pool
        # closed it (b1 has left the table)
        await until(lambda: b1.open_connections == 0)
        assert r.proxy.pool.idle_count(("127.0.0.1", b1.port)) == 0
        assert b0.open_connections == 1
    finally:
        await c.close()


async def test_access_log_line(start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
                               ) -> None:
    r = await start_proxy(1)
    with caplog.at_level(logging.INFO, logger="pylb.access"):
        c, _ = await roundtrip(r.port, get("/app/logged"))
        await c.close()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "pylb.access"]
    assert len(lines) == 1
    pattern = (r'127\.0\.0\.1:\d+ \[[^]]+\] http default/app:80/b0 '
               r'\d+/0/\d+/\d+/\d+ 200 \d+ -- "GET /app/logged HTTP/1\.1"')
    assert re.fullmatch(pattern, lines[0]), lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pylb.access"):
        c, _ = await roundtrip(r.port, b"BAD\x01 / HTTP/1.1\r\n\r\n")
        await c.close()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "pylb.access"]
    assert len(lines) == 1 and '<NOSRV>/<NOSRV>' in lines[0] and " 400 " in lines[0]
    assert ' PR "<BADREQ> ' in lines[0], lines[0]  # haproxy's "PR": refused by the proxy


async def test_access_log_follows_runtime_changes(start_proxy: StartProxy,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The exchange's end asks the access logger's cached answer first (server.py's
    _access_log_known): a level set, a logging.disable and a disabled logger are followed
    at once, on the same keep-alive connection."""
    r = await start_proxy(1)
    access = logging.getLogger("pylb.access")
    level, disabled = access.level, access.disabled
    c = await RawClient.connect(r.port)

    async def lines_of_one_request() -> int:
        caplog.clear()
        await c.send(get("/app/x"))
        assert (await c.read_response()).status == 200
        return sum(rec.name == "pylb.access" for rec in caplog.records)

    caplog.set_level(logging.DEBUG)  # the handler takes all; the logger's level decides
    try:
        access.setLevel(logging.WARNING)
        assert await lines_of_one_request() == 0
        assert await lines_of_one_request() == 0  # (its answer cached now)
        access.setLevel(logging.INFO)
        assert await lines_of_one_request() == 1
        logging.disable(logging.INFO)
        assert await lines_of_one_request() == 0
        logging.disable(logging.NOTSET)
        assert await lines_of_one_request() == 1
        access.disabled = True
        assert await lines_of_one_request() == 0
        access.disabled = False
        assert await lines_of_one_request() == 1
    finally:
        logging.disable(logging.NOTSET)
        access.setLevel(level)
        access.disabled = disabled
        await c.close()


async def test_counters(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        for _ in range(3):
            await c.send(get("/app/x"))
            await c.read_response()
    finally:
        await c.close()
    await asyncio.sleep(0.01)
    fe = r.stats.frontend("http")
    be = r.stats.backend("default/app:80")
    srv = r.stats.server("default/app:80", "b0")
    assert fe.req_total == 3 and fe.hrsp[1] == 3 and fe.total_conns == 1
    assert fe.bytes_in > 0 and fe.bytes_out > 0
    assert be.lbtot == 3 and be.hrsp[1] == 3 and be.cur_conns == 0
    assert srv.lbtot == 3 and srv.bytes_in > 0 and srv.bytes_out > 0


async def test_internal_error_ends_one_connection_only(start_proxy: StartProxy,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    r = await start_proxy(1)

    class Broken(Router):
        __slots__ = ()

        def route(self, host: bytes, path: bytes,
                  query: bytes) -> tuple[HttpRoute, bytes] | None:
            if path == b"/boom":
                raise RuntimeError("bug")
            return super().route(host, path, query)

    monkeypatch.setattr(r.proxy, "router", Broken(r.proxy.table.http))
    with caplog.at_level(logging.ERROR, logger="pylb.http"):
        c = await RawClient.connect(r.port)
        try:
            await c.send(get("/boom"))
            assert await c.at_eof()
        finally:
            await c.close()
    assert "internal error" in caplog.text
    assert r.stats.failures[Failure.INTERNAL] == 1
    c, resp = await roundtrip(r.port, get("/app/ok"))
    await c.close()
    assert resp.status == 200


async def test_pooled_connection_idle_timeout(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, timeouts={"backend_idle": 0.1})
    c = await RawClient.connect(r.port)
    try:
        await c.send(get("/app/a"))
        assert (await c.read_response()).status == 200
        assert r.proxy.pool.idle_count() == 1
        for _ in range(100):  # the sweep runs every backend_idle / 2
            await asyncio.sleep(0.02)
            if not r.proxy.pool.idle_count():
                break
        assert r.proxy.pool.idle_count() == 0
        await c.send(get("/app/b"))
        assert (await c.read_response()).json()["conn"] == 2
    finally:
        await c.close()


async def test_pool_bounded_per_server(start_proxy: StartProxy) -> None:
    r = await start_proxy(1, limits={"pool_per_server": 2})
    clients = [await RawClient.connect(r.port) for _ in range(4)]
    try:
        for c in clients:
            await c.send(get("/app/x?delay=0.1"))
        for c in clients:
            assert (await c.read_response()).status == 200
        assert r.backends[0].connections == 4
        assert r.proxy.pool.idle_count() == 2
    finally:
        for c in clients:
            await c.close()


async def test_early_response_before_body_closes_client(start_proxy: StartProxy) -> None:
    r = await start_proxy(1)
    c = await RawClient.connect(r.port)
    try:
        await c.send(b"POST /app/early HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                     b"\r\n" + b"z" * 1000)
        resp = await c.read_response()
        assert resp.status == 413 and resp.body == b"big!"
        assert resp.header("connection") == "close"
        assert await c.at_eof()
    finally:
        await c.close()


async def test_bare_prefix_slash_redirect_with_curl(start_proxy: StartProxy) -> None:
    """lb.slash-redirect: the bare prefix answers 301 to prefix + '/' with the query, as
    nginx does for a directory; `curl -L` then lands on the backend's `/`. Without it
    (the 2015 rule), the bare prefix is forwarded as `/`."""
    r = await start_proxy(1, table=False)
    b = Backend("ns/web:80", servers_of(r.backends[0]))
    r.table([HttpRoute("web", "/web", b.name, slash_redirect=True),
             HttpRoute("old", "/old", b.name)], [b])
    c, resp = await roundtrip(r.port, get("/web?x=1&y=2"))
    await c.close()
    assert resp.status == 301
    assert resp.header("location") == "/web/?x=1&y=2"
    base = f"http://127.0.0.1:{r.port}"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sSL", "--max-redirs", "2", "-w", "\\n%{num_redirects} %{url_effective}",
        f"{base}/web?x=1", stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    body, _, tail = out.decode().rpartition("\n")
    assert tail == f"1 {base}/web/?x=1"
    assert '"target": "/?x=1"' in body
    for path, target in (("/web/a.png", "/a.png"), ("/old", "/"), ("/old?q", "/?q")):
        c, resp = await roundtrip(r.port, get(path))
        await c.close()
        assert resp.status == 200 and resp.json()["target"] == target, path


async def test_a_client_reset_while_its_first_request_is_answered_is_seen_soon(
        start_proxy: StartProxy) -> None:
    """A new connection whose first read brings the whole request is not read again while
    it is answered (proxy.fdtransport; flow.Pause.ANSWER), but only until the frontend's
    next tick (≤ 50 ms): a client that resets meanwhile is seen then — its exchange is
    counted a client abort and its backend connection closed — not when the slow
    server's answer comes (3 s here)."""
    r = await start_proxy(1)
    sock = socket.create_connection(("127.0.0.1", r.port))
    try:
        sock.sendall(get("/app/slow?delay=3"))
        await until(lambda: r.backends[0].seen)  # the server has the request
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        await until(lambda: r.stats.failures.get(Failure.CLIENT_ABORT) == 1, timeout=2.0)
        await until(lambda: not r.proxy.conns, timeout=1.0)
    finally:
        sock.close()


async def test_a_keep_alive_client_is_read_again_once_answered(start_proxy: StartProxy) -> None:
    """The whole first request, there when the connection is accepted, is answered
    unwatched; the connection is read again when its answer is done (not only from the
    frontend's tick), so a second request sent then is read at once."""
    r = await start_proxy(1)
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", r.port))
    sock.sendall(get("/app/one"))  # (before the loop runs: there when it is accepted)
    sock.setblocking(False)
    try:
        first = await read_one_response(sock)
        assert first.startswith(b"HTTP/1.1 200")
        # read again from the answer's end: were it only from the tick (50 ms after the
        # connection came), a slow machine would pass this too, a normal one would not
        (conn,) = r.proxy.conns
        assert conn.transport is not None and conn.transport.is_reading()
        await loop.sock_sendall(sock, get("/app/two"))
        second = await read_one_response(sock)
        assert second.startswith(b"HTTP/1.1 200") and b'"target": "/two"' in second
    finally:
        sock.close()


async def read_one_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, from a non-blocking socket."""
    loop = asyncio.get_running_loop()
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        assert chunk, "closed before a response"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        assert chunk, "closed within a response"
        body += chunk
    return head + b"\r\n\r\n" + body

