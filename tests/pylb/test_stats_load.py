"""Counters on the stats page after a known load through the real data plane.

N requests through the :80 frontend to one server (some answered 503), K malformed
requests, one request with no route; then the CSV, the JSON and /metrics must show exactly
that: bytes to the byte, responses by class, lbtot, errors by reason.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pylb.config import Settings
from pylb.counters import merge_snapshots
from pylb.dataplane import DataPlane
from pylb.model import Backend, HttpRoute, RouteTable, Server
from pylb.stats import StatsView, render_csv, render_json
from pylb.stats.prom import Exposition
from tests.conftest import free_port

N_OK, N_503, N_BAD = 5, 2, 3
BODY = b"x" * 100
REPLY_SIZE = len(b"HTTP/1.1 200 X\r\nContent-Length: 100\r\n\r\n") + len(BODY)
BACKEND = Backend("default/web:80", ())


async def _backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        for _ in range(100):
            head = await reader.readuntil(b"\r\n\r\n")
            status = 503 if b"/fail" in head.split(b"\r\n")[0] else 200
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 100\r\n\r\n" % status + BODY)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def loaded() -> AsyncIterator[tuple[StatsView, int]]:
    """A data plane after the known load; the view and the bytes the clients sent."""
    server = await asyncio.start_server(_backend, "127.0.0.1", 0)
    settings = Settings(bind="127.0.0.1", http_port=free_port())
    plane = DataPlane(settings)
    await plane.start()
    try:
        port = int(server.sockets[0].getsockname()[1])
        backend = Backend(BACKEND.name, (Server("127.0.0.1", port, name="web-1"),))
        table = RouteTable(http=(HttpRoute("web", "/web", backend.name),),
                           backends=(backend,), version=3)
        await plane.apply(table)
        sent = 0
        for i in range(N_OK + N_503):
            path = b"/web/fail" if i >= N_OK else b"/web/ok"
            req = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path
            sent += len(req)
            assert (await _exchange(settings.http_port, req)).startswith(b"HTTP/1.1 ")
        for _ in range(N_BAD):
            req = b"NOT HTTP AT ALL\r\n\r\n"
            sent += len(req)
            assert (await _exchange(settings.http_port, req)).startswith(b"HTTP/1.1 400")
        req = b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sent += len(req)
        assert (await _exchange(settings.http_port, req)).startswith(b"HTTP/1.1 404")
        async with asyncio.timeout(10):  # the proxy counts a close after the client sees it
            while plane.stats.frontend("http").cur_conns:
                await asyncio.sleep(0.01)
        now = time.time()
        view = StatsView(version="t", pid=1, started=now - 5, now=now, table=table,
                         counters=merge_snapshots([plane.stats.snapshot()]), maxconn=100)
        yield view, sent
    finally:
        await plane.shutdown(1.0)
        server.close()
        await server.wait_closed()


def _rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    recs = list(csv.reader(io.StringIO(text)))
    header = [f.removeprefix("# ") for f in recs[0]]
    return {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in recs[1:]}


async def test_counters_after_a_known_load(loaded: tuple[StatsView, int]) -> None:
    view, sent = loaded
    rows = _rows(render_csv(view))
    fe = rows[("http", "FRONTEND")]
    n = N_OK + N_503
    assert fe["bin"] == str(sent)
    assert fe["stot"] == str(n + N_BAD + 1)
    assert (fe["hrsp_2xx"], fe["hrsp_4xx"], fe["hrsp_5xx"]) == (
        str(N_OK), str(N_BAD + 1), str(N_503))
    assert fe["ereq"] == str(N_BAD)
    assert fe["scur"] == "0"
    sv = rows[(BACKEND.name, "web-1")]
    assert (sv["lbtot"], sv["stot"], sv["hrsp_2xx"], sv["hrsp_5xx"]) == (
        str(n), str(n), str(N_OK), str(N_503))
    assert sv["bout"] == str(n * REPLY_SIZE)
    assert sv["status"] == "no check"
    be = rows[(BACKEND.name, "BACKEND")]
    assert (be["lbtot"], be["bout"], be["status"], be["act"]) == (
        str(n), str(n * REPLY_SIZE), "UP", "1")

    doc = json.loads(render_json(view))
    assert doc["failures"] == {"BAD_REQUEST": N_BAD, "NO_ROUTE": 1}

    text = Exposition(lambda: view).render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("pylb_failures_total", (("reason", "bad_request"),))] == N_BAD
    assert samples[("pylb_failures_total", (("reason", "no_route"),))] == 1
    assert samples[("pylb_frontend_bytes_in_total", (("frontend", "http"),))] == sent
    assert samples[("pylb_server_bytes_out_total",
                    (("backend", BACKEND.name), ("server", "web-1")))] == n * REPLY_SIZE
