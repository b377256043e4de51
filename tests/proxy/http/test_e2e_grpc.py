"""End to end: gRPC through pylb with real grpcio clients and servers — h2c to the
backend (Backend.h2c), trailers passed through, streaming both ways, deadlines, large
messages, and gRPC-shaped errors when the call cannot be served."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

from pylb.config import HttpParser
from pylb.model import Backend, HttpRoute, Server
from tests.proxy.http.conftest import Running, StartProxy

grpc = pytest.importorskip("grpc")

BIG = 3 * 1024 * 1024  # under grpc's default 4 MiB message limit


@pytest.fixture
def parser_kind() -> HttpParser:
    return HttpParser.AUTO


def _unary(req: bytes, ctx: Any) -> bytes:
    if req == b"fail":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "nope")
    if req.startswith(b"sleep"):
        time.sleep(float(req[5:]))
    if req.startswith(b"big"):
        return b"r" * BIG
    return b"echo:" + req + b":" + dict(ctx.invocation_metadata()).get(
        "x-forwarded-for", "").encode()


def _server_stream(req: bytes, ctx: Any) -> Iterator[bytes]:
    for i in range(int(req)):
        yield b"m%d" % i


def _client_stream(reqs: Iterator[bytes], ctx: Any) -> bytes:
    total = n = 0
    for r in reqs:
        total += len(r)
        n += 1
    return b"%d/%d" % (n, total)


def _bidi(reqs: Iterator[bytes], ctx: Any) -> Iterator[bytes]:
    for r in reqs:
        yield r.upper()


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler("test.Svc", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


async def proxied(start_proxy: StartProxy, port: int) -> Running:
    r = await start_proxy(0, h2c=True, table=False)
    backend = Backend("default/grpc:50051", (Server("127.0.0.1", port, name="g0"),),
                      h2c=True)
    r.table([HttpRoute("grpc", "/test.Svc", backend.name, strip_prefix=False)], [backend])
    return r


def call(port: int, fn: Any) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return fn(ch)


async def in_thread(port: int, fn: Any) -> Any:
    return await asyncio.to_thread(call, port, fn)


async def test_unary_and_trailers(start_proxy: StartProxy, grpc_server: int) -> None:
    r = await proxied(start_proxy, grpc_server)
    out = await in_thread(r.port, lambda ch: [
        ch.unary_unary("/test.Svc/Unary")(b"hi%d" % i, timeout=10) for i in range(20)])
    assert out[3] == b"echo:hi3:127.0.0.1"

    def fails(ch: Any) -> tuple[Any, str]:
        try:
            ch.unary_unary("/test.Svc/Unary")(b"fail", timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details()
        raise AssertionError("no error")
    code, details = await in_thread(r.port, fails)
    assert code == grpc.StatusCode.NOT_FOUND and details == "nope"  # the trailers
    be = r.stats.backend("default/grpc:50051")
    assert be.lbtot == 21
    # 21 calls, one multiplexed h2c connection to the server
    assert len(r.proxy.h2_pool.conns[("127.0.0.1", grpc_server)]) == 1
    assert r.stats.frontend("http").h2_streams == 21


async def test_streaming(start_proxy: StartProxy, grpc_server: int) -> None:
    r = await proxied(start_proxy, grpc_server)

    def run(ch: Any) -> tuple[list[bytes], bytes, list[bytes]]:
        server = list(ch.unary_stream("/test.Svc/ServerStream")(b"50", timeout=10))
        client = ch.stream_unary("/test.Svc/ClientStream")(
            iter([b"x" * 1000] * 30), timeout=10)
        bidi = list(ch.stream_stream("/test.Svc/Bidi")(
            iter([b"a", b"b", b"c"]), timeout=10))
        return server, client, bidi
    server, client, bidi = await in_thread(r.port, run)
    assert server == [b"m%d" % i for i in range(50)]
    assert client == b"30/30000"
    assert bidi == [b"A", b"B", b"C"]


async def test_large_messages(start_proxy: StartProxy, grpc_server: int) -> None:
    r = await proxied(start_proxy, grpc_server)
    out = await in_thread(r.port, lambda ch: ch.unary_unary("/test.Svc/Unary")(
        b"big" + b"q" * (BIG - 3), timeout=20))
    assert out == b"r" * BIG


async def test_deadline_exceeded(start_proxy: StartProxy, grpc_server: int) -> None:
    r = await proxied(start_proxy, grpc_server)

    def run(ch: Any) -> Any:
        try:
            ch.unary_unary("/test.Svc/Unary")(b"sleep1.5", timeout=0.3)
        except grpc.RpcError as e:
            return e.code()
        return None
    assert await in_thread(r.port, run) == grpc.StatusCode.DEADLINE_EXCEEDED
    # the proxy and the server go on
    out = await in_thread(r.port, lambda ch: ch.unary_unary("/test.Svc/Unary")(b"ok",
                                                                              timeout=10))
    assert out.startswith(b"echo:ok")


async def test_unavailable_is_grpc_shaped(start_proxy: StartProxy) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    r = await proxied(start_proxy, dead)

    def run(ch: Any) -> tuple[Any, Any]:
        try:
            ch.unary_unary("/test.Svc/Unary")(b"x", timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return None, None
    code, _ = await in_thread(r.port, run)
    assert code == grpc.StatusCode.UNAVAILABLE  # HTTP 200 + grpc-status 14, not a 503

    def unrouted(ch: Any) -> Any:
        try:
            ch.unary_unary("/other.Svc/X")(b"x", timeout=10)
        except grpc.RpcError as e:
            return e.code()
        return None
    assert await in_thread(r.port, unrouted) == grpc.StatusCode.UNIMPLEMENTED


async def test_refused_stream_is_sent_again(start_proxy: StartProxy) -> None:
    """An h2c server that refuses the first stream of each connection with GOAWAY
    (last stream 0): the call goes again on a new connection (RFC 9113 §8.7)."""
    import h2.config
    import h2.connection
    import h2.events

    conns = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        first = conns == 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.StreamEnded):
                        if first:
                            conn.close_connection(last_stream_id=0)
                        else:
                            conn.send_headers(ev.stream_id, [
                                (b":status", b"200"), (b"content-type", b"application/grpc")])
                            conn.send_data(ev.stream_id, b"\x00\x00\x00\x00\x02ok")
                            conn.send_headers(ev.stream_id, [(b"grpc-status", b"0")],
                                              end_stream=True)
                writer.write(conn.data_to_send())
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await proxied(start_proxy, port)
        out = await in_thread(r.port, lambda ch: ch.unary_unary("/test.Svc/Unary")(
            b"x", timeout=10))
        assert out == b"ok"
        assert conns == 2
        assert r.stats.backend("default/grpc:50051").retries == 1
    finally:
        server.close()


async def test_server_leaving_the_table_drains_its_connections(
        start_proxy: StartProxy, grpc_server: int) -> None:
    r = await proxied(start_proxy, grpc_server)
    await in_thread(r.port, lambda ch: ch.unary_unary("/test.Svc/Unary")(b"x", timeout=10))
    key = ("127.0.0.1", grpc_server)
    (conn,) = r.proxy.h2_pool.conns[key]
    backend = Backend("default/grpc:50051", (Server("127.0.0.1", 9, name="gone"),), h2c=True)
    r.table([HttpRoute("grpc", "/test.Svc", backend.name, strip_prefix=False)], [backend])
    assert key not in r.proxy.h2_pool.conns
    for _ in range(100):
        if conn.closed:
            break
        await asyncio.sleep(0.01)
    assert conn.closed  # no stream was open: closed at once
