"""The stats server end to end on loopback: auth, every format, URI options, bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pylb.config import Settings
from pylb.stats import StatsServer
from tests.pylb.stats_fixtures import EVIL, WEB, known_view

Cred = tuple[str, str] | None
AUTH: Cred = ("admin", "s3cret")


@pytest.fixture
async def stats() -> AsyncIterator[str]:
    srv = StatsServer(Settings(stats_auth="admin:s3cret", stats_refresh=7), known_view)
    host, port = await srv.start("127.0.0.1", 0)
    try:
        yield f"http://{host}:{port}"
    finally:
        await srv.close()


async def get(url: str, auth: Cred = AUTH,
              method: str = "GET") -> tuple[int, dict[str, str], str]:
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def test_auth_required(stats: str) -> None:
    status, headers, _ = await get(stats + "/", auth=None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Basic realm="pylb statistics"')
    assert (await get(stats + "/", auth=("admin", "wrong")))[0] == 401
    assert (await get(stats + "/;csv", auth=("root", "s3cret")))[0] == 401
    assert (await get(stats + "/metrics", auth=None))[0] == 401
    assert (await get(stats + "/nope", auth=None))[0] == 401  # no probing without auth


async def test_html(stats: str) -> None:
    status, headers, body = await get(stats + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<meta http-equiv="refresh" content="7">' in body
    assert "&lt;script&gt;" in body and "<script>" not in body
    status, _, body = await get(stats + "/;up;norefresh")
    assert status == 200 and "http-equiv" not in body and "mysql-0" not in body


@pytest.mark.parametrize("path", ["/;csv", "/?stats;csv", "/;csv;norefresh",
                                  "/haproxy?stats;csv"])
async def test_csv_forms(stats: str, path: str) -> None:
    status, headers, body = await get(stats + path)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert body.startswith("# pxname,svname,qcur,")
    assert f"{WEB.name},web-1," in body


async def test_json(stats: str) -> None:
    status, headers, body = await get(stats + "/;json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert any(r["svname"] == EVIL for r in doc["stats"])


async def test_metrics(stats: str) -> None:
    status, headers, body = await get(stats + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"pylb_frontend_sessions", "pylb_server_up", "pylb_failures"} <= names


async def test_not_found_method_and_head(stats: str) -> None:
    assert (await get(stats + "/favicon.ico"))[0] == 404
    status, headers, _ = await get(stats + "/", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = await get(stats + "/;csv", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 100


async def test_keep_alive_and_bad_request(stats: str) -> None:
    host, port = stats.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    cred = base64.b64encode(b"admin:s3cret").decode()
    try:
        req = f"GET /;json HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {cred}\r\n\r\n"
        for _ in range(2):
            writer.write(req.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await asyncio.wait_for(reader.readexactly(length), 10)
        writer.write(b"GARBAGE\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        assert data.startswith(b"HTTP/1.1 400 ")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_view_failure_is_a_500_and_the_server_lives_on() -> None:
    calls = {"n": 0}

    def flaky() -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return known_view()
    srv = StatsServer(Settings(), flaky)  # type: ignore[arg-type]
    host, port = await srv.start("127.0.0.1", 0)
    try:
        assert (await get(f"http://{host}:{port}/", auth=None))[0] == 500
        assert (await get(f"http://{host}:{port}/", auth=None))[0] == 200
    finally:
        await srv.close()


async def test_no_auth_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    srv = StatsServer(Settings(), known_view)
    with caplog.at_level(logging.WARNING, logger="pylb.stats.server"):
        host, port = await srv.start("127.0.0.1", 0)
    try:
        assert any("no password" in r.getMessage() for r in caplog.records)
        assert (await get(f"http://{host}:{port}/;csv", auth=None))[0] == 200
    finally:
        await srv.close()


async def test_auth_file_and_ipv6(tmp_path: object) -> None:
    from pathlib import Path
    p = Path(str(tmp_path)) / "cred"
    p.write_text("ops:from-secret\n")
    srv = StatsServer(Settings(stats_auth=f"@{p}"), known_view)
    try:
        host, port = await srv.start("::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        url = f"http://[{host}]:{port}/;csv"
        assert (await get(url, auth=("ops", "from-secret")))[0] == 200
        assert (await get(url, auth=None))[0] == 401
    finally:
        await srv.close()


async def test_bad_auth_file_fails_start(tmp_path: object) -> None:
    srv = StatsServer(Settings(stats_auth=f"@{tmp_path}/missing"), known_view)
    with pytest.raises(ValueError, match="stats-auth"):
        await srv.start("127.0.0.1", 0)
    await srv.close()


async def test_close_drops_idle_keepalive_connections() -> None:
    srv = StatsServer(Settings(), known_view)
    h, p = await srv.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(h, p)
    try:
        writer.write(b"GET /;csv HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await asyncio.wait_for(reader.readexactly(length), 10)
        await asyncio.wait_for(srv.close(), 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, not left open
    finally:
        writer.close()
        await writer.wait_closed()


async def test_oversized_head_and_idle_client_are_cut_off() -> None:
    from pylb.config import Timeouts
    srv = StatsServer(Settings(timeouts=Timeouts(client=0.2)), known_view)
    host, port = await srv.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000)
            data = await asyncio.wait_for(reader.read(), 10)
            assert data.startswith(b"HTTP/1.1 431 ")
        finally:
            writer.close()
            await writer.wait_closed()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET / HTTP/1.1\r\n")  # and then nothing
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await srv.close()
