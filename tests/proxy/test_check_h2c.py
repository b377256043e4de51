"""Active health checks of h2c (gRPC) backends: the gRPC health checking protocol against
a real grpcio server, `GET path` over h2c against an h2 server, and the checker taking an
h2c backend's servers down and up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from proxy import check_h2c
from proxy.check import (
    L7OK,
    L7RSP,
    L7STS,
    L7TOUT,
    HealthChecker,
    check_targets,
    probe_h2c,
    probe_server,
)
from pylb.config import Settings
from pylb.model import Backend, RouteTable, Server
from tests.proxy.test_check import FAST, Changes

grpc = pytest.importorskip("grpc")

HEALTH = "/grpc.health.v1.Health/Check"


@pytest.mark.parametrize(("service", "wire"), [
    ("", b"\x00\x00\x00\x00\x00"),
    ("db", b"\x00\x00\x00\x00\x04\x0a\x02db"),
])
def test_health_request(service: str, wire: bytes) -> None:
    assert check_h2c.health_request(service) == wire


@pytest.mark.parametrize(("body", "status"), [
    (b"\x00\x00\x00\x00\x02\x08\x01", 1),
    (b"\x00\x00\x00\x00\x02\x08\x02", 2),
    (b"\x00\x00\x00\x00\x00", 0),  # status left out: UNKNOWN (protobuf's default)
    (b"\x00\x00\x00\x00\x06\x12\x02ab\x08\x01", 1),  # an unknown field skipped
])
def test_health_status(body: bytes, status: int) -> None:
    assert check_h2c.health_status(body) == status


@pytest.mark.parametrize("body", [b"", b"\x01\x00\x00\x00\x00", b"\x00\x00\x00\x00\x05\x08",
                                  b"\x00\x00\x00\x00\x02\x08\x80", b"\x00\x00\x00\x00\x01\x0f"])
def test_health_status_bad(body: bytes) -> None:
    with pytest.raises(check_h2c.BadResponse):
        check_h2c.health_status(body)


def test_check_targets_h2c_prefix() -> None:
    t = RouteTable(backends=(
        Backend("g", (Server("10.0.0.1", 50051),), check_path=HEALTH, h2c=True),
        Backend("w", (Server("10.0.0.2", 80),), check_path="/healthz"),
        Backend("x", (Server("10.0.0.3", 50051),), h2c=True),  # no path: TCP
    ))
    assert check_targets(t) == {("10.0.0.1", 50051): "h2c:" + HEALTH,
                                ("10.0.0.2", 80): "/healthz", ("10.0.0.3", 50051): None}


class Health:
    """grpc.health.v1.Health/Check on a grpcio server, the statuses set by the test
    (what grpcio-health-checking's servicer answers: NOT_FOUND for an unknown service)."""

    def __init__(self) -> None:
        self.status = {"": 1, "db": 2}

    def check(self, req: bytes, ctx: Any) -> bytes:
        service = req[2:].decode() if req else ""
        if service not in self.status:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08" + bytes([self.status[service]])


@pytest.fixture
def health() -> Iterator[tuple[Health, int]]:
    h = Health()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(h.check)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield h, port
    server.stop(0)


async def test_grpc_health_probe(health: tuple[Health, int]) -> None:
    h, port = health
    p = await probe_h2c("127.0.0.1", port, HEALTH, 5.0)
    assert (p.status, p.code, p.detail) == (L7OK, 200, "")
    p = await probe_h2c("127.0.0.1", port, HEALTH + "?service=db", 5.0)
    assert (p.status, p.detail) == (L7STS, "NOT_SERVING")
    p = await probe_h2c("127.0.0.1", port, HEALTH + "?service=nope", 5.0)
    assert p.status == L7STS and p.detail.startswith("grpc-status 5")
    h.status[""] = 2
    p = await probe_server(("127.0.0.1", port), "h2c:" + HEALTH, 5.0)
    assert (p.status, p.detail) == (L7STS, "NOT_SERVING")


async def _h2_server(status: dict[str, int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hs = dict(ev.headers)
                        code = status["code"] if hs[b":path"] == b"/healthz" else 404
                        assert hs[b":method"] == b"GET"
                        conn.send_headers(ev.stream_id, [(b":status", b"%d" % code)],
                                          end_stream=True)
                writer.write(conn.data_to_send())
        except (ConnectionError, AssertionError):
            pass
        finally:
            writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    made: list[asyncio.Server] = []
    yield made
    for s in made:
        s.close()
        await s.wait_closed()


async def test_h2c_get_probe(servers: list[asyncio.Server]) -> None:
    state = {"code": 200}
    srv = await _h2_server(state)
    servers.append(srv)
    port = srv.sockets[0].getsockname()[1]
    p = await probe_h2c("127.0.0.1", port, "/healthz", 5.0)
    assert (p.status, p.code) == (L7OK, 200)
    state["code"] = 503
    p = await probe_h2c("127.0.0.1", port, "/healthz", 5.0)
    assert (p.status, p.code) == (L7STS, 503)


async def test_h2c_probe_of_a_server_not_speaking_h2(servers: list[asyncio.Server]) -> None:
    async def http11(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()
    a = await asyncio.start_server(http11, "127.0.0.1", 0)
    b = await asyncio.start_server(silent, "127.0.0.1", 0)
    servers += [a, b]
    p = await probe_h2c("127.0.0.1", a.sockets[0].getsockname()[1], "/healthz", 5.0)
    assert p.status == L7RSP
    p = await probe_h2c("127.0.0.1", b.sockets[0].getsockname()[1], HEALTH, 0.3)
    assert p.status == L7TOUT


async def test_checker_takes_a_grpc_server_down_and_up(health: tuple[Health, int]) -> None:
    h, port = health
    key = ("127.0.0.1", port)
    changes = Changes()
    checker = HealthChecker(Settings(), changes, params=FAST)
    task = asyncio.create_task(checker.run())
    try:
        checker.set_table(RouteTable(backends=(
            Backend("default/grpc:50051", (Server(*key),), check_path=HEALTH, h2c=True),)))
        for _ in range(200):  # bounded: 2 s
            if checker.results()[key].status == L7OK:
                break
            await asyncio.sleep(0.01)
        assert checker.results()[key].status == L7OK
        h.status[""] = 2  # NOT_SERVING
        await changes.wait(1)
        key_, up, res = changes.seen[0]
        assert (key_, up, res.status, res.detail) == (key, False, L7STS, "NOT_SERVING")
        h.status[""] = 1
        await changes.wait(2)
        assert changes.seen[1][:2] == (key, True)
    finally:
        checker.stop()
        await task
