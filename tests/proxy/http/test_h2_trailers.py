"""Request trailers from HTTP/2 clients: to an HTTP/1.1 backend in the chunked body's
trailer section (dropped when the body has a Content-Length), to an h2c backend as a
trailing HEADERS frame; malformed trailers are the stream's error."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil

import h2.config
import h2.connection
import h2.events
import pytest

from pylb.config import HttpParser
from pylb.model import Backend, HttpRoute, Server
from tests.proxy.http.conftest import StartProxy
from tests.proxy.http.h2client import H2Client, req_headers
from tests.proxy.http.test_e2e_h2 import run

needs_nghttp = pytest.mark.skipif(shutil.which("nghttp") is None,
                                  reason="needs nghttp (nghttp2-client)")


@pytest.fixture
def parser_kind() -> HttpParser:
    return HttpParser.AUTO


@pytest.mark.needs_tool
@needs_nghttp
async def test_nghttp_trailers_reach_http11_backend_chunked(
        start_proxy: StartProxy, tmp_path: pathlib.Path) -> None:
    r = await start_proxy(1, h2c=True)
    body = tmp_path / "body"
    body.write_bytes(b"t" * 100_000)
    rc, out, err = await run("nghttp", "--no-content-length", "-d", str(body),
                             "--trailer", "x-checksum: abc123",
                             "--trailer", "content-length: 5",  # not allowed: dropped
                             f"http://127.0.0.1:{r.port}/app/up")
    assert rc == 0, err
    seen = json.loads(out)
    assert seen["body_len"] == 100_000
    hs = {k.lower(): v for k, v in seen["headers"]}
    assert hs.get("transfer-encoding") == "chunked" and "content-length" not in hs
    (s,) = r.backends[0].seen
    assert s.trailers == [("x-checksum", "abc123")]


@pytest.mark.needs_tool
@needs_nghttp
async def test_nghttp_trailers_dropped_with_content_length(
        start_proxy: StartProxy, tmp_path: pathlib.Path) -> None:
    """With a Content-Length the HTTP/1.1 body has no place for trailers (RFC 9110
    §6.5.1 lets a forwarding intermediary discard them): the request still goes whole."""
    r = await start_proxy(1, h2c=True)
    body = tmp_path / "body"
    body.write_bytes(b"t" * 5000)
    rc, out, err = await run("nghttp", "-d", str(body), "--trailer", "x-checksum: abc",
                             f"http://127.0.0.1:{r.port}/app/up")
    assert rc == 0, err
    seen = json.loads(out)
    assert seen["body_len"] == 5000
    hs = {k.lower(): v for k, v in seen["headers"]}
    assert hs["content-length"] == "5000"
    (s,) = r.backends[0].seen
    assert s.trailers == []


@pytest.mark.parametrize("bad", [
    [(b":path", b"/x")],  # a pseudo-header in trailers (RFC 9113 §8.1)
    [(b"connection", b"close")],  # connection-specific (§8.2.2)
    [(b"x-a", b"1\r\nx-b: 2")],  # CR/LF in a value (§8.2.1): would split the trailer
    [(b"X-Up", b"1")],  # upper case name
])
async def test_malformed_trailers_reset_only_their_stream(
        start_proxy: StartProxy, bad: list[tuple[bytes, bytes]]) -> None:
    r = await start_proxy(1, h2c=True)
    c = await H2Client.open(r.port)
    try:
        slow = await c.get(b"/app/slow?delay=0.3")
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, req_headers(b"/app/t", b"POST"))
        c.conn.send_data(sid, b"abc")
        c.conn.send_headers(sid, bad, end_stream=True)
        await c.flush()
        await c.until(lambda: c.ended(sid))
        assert c.reset_code(sid) == 1  # PROTOCOL_ERROR, a stream error
        status, _, _ = await c.response(slow)
        assert status == 200 and c.goaway() is None
        status, _, _ = await c.response(await c.get())
        assert status == 200
        assert [s.target for s in r.backends[0].seen] == ["/slow?delay=0.3", "/x"]
    finally:
        await c.close()


async def test_trailers_without_data(start_proxy: StartProxy) -> None:
    """HEADERS, then trailers with END_STREAM and no DATA: an empty chunked body with
    its trailer section."""
    r = await start_proxy(1, h2c=True)
    c = await H2Client.open(r.port)
    try:
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, req_headers(b"/app/t", b"POST"))
        c.conn.send_headers(sid, [(b"x-sum", b"0")], end_stream=True)
        await c.flush()
        status, body, _ = await c.response(sid)
        assert status == 200 and json.loads(body)["body_len"] == 0
        assert r.backends[0].seen[0].trailers == [("x-sum", "0")]
    finally:
        await c.close()


class TrailerServer:
    """A raw h2c server that records each request's body and trailers and answers as a
    gRPC server does (200, a message, grpc-status in trailers)."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, list[tuple[bytes, bytes]] | None]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> TrailerServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        trailers: dict[int, list[tuple[bytes, bytes]]] = {}
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length,
                                                       ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        trailers[ev.stream_id] = list(ev.headers)
                    elif isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id
                        self.requests.append((bodies.get(sid, b""), trailers.get(sid)))
                        conn.send_headers(sid, [(b":status", b"200"),
                                                (b"content-type", b"application/grpc")])
                        conn.send_data(sid, b"\x00\x00\x00\x00\x02ok")
                        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
                writer.write(conn.data_to_send())
        except ConnectionError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.needs_tool
@needs_nghttp
async def test_trailers_passed_to_h2c_backend(start_proxy: StartProxy,
                                              tmp_path: pathlib.Path) -> None:
    srv = await TrailerServer().start()
    try:
        r = await start_proxy(0, h2c=True, table=False)
        backend = Backend("default/grpc:50051", (Server("127.0.0.1", srv.port, name="g0"),),
                          h2c=True)
        r.table([HttpRoute("grpc", "/test.Svc", backend.name, strip_prefix=False)],
                [backend])
        body = tmp_path / "body"
        body.write_bytes(b"g" * 70_000)  # over a stream window: DATA, then trailers
        rc, out, err = await run("nghttp", "-d", str(body),
                                 "--trailer", "x-checksum: abc",
                                 "--trailer", "grpc-foo: 1",
                                 f"http://127.0.0.1:{r.port}/test.Svc/Up")
        assert rc == 0, err
        assert out.endswith(b"ok")
        ((got, trailers),) = srv.requests
        assert got == b"g" * 70_000
        assert trailers == [(b"x-checksum", b"abc"), (b"grpc-foo", b"1")]
        # a request without trailers still ends with its last DATA frame
        c = await H2Client.open(r.port)
        try:
            sid = await c.get(b"/test.Svc/Up", body=b"plain")
            status, _, _ = await c.response(sid)
            assert status == 200
        finally:
            await c.close()
        assert srv.requests[1] == (b"plain", None)
    finally:
        srv.close()
