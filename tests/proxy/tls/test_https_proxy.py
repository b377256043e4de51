"""The TLS frontend end to end: HttpProxy with TlsStore's context, reached with curl
(--cacert) and with Python's ssl; client certificates reach the backend as headers; a
certificate reload leaves a keep-alive connection working."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import trustme

from pylb.config import SslVerify
from tests.proxy.tls.helpers import (
    BioClient,
    Front,
    client_context,
    connection,
    run,
    write_leaf,
)


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


async def curl(front: Front, host: str, *extra: str) -> tuple[int, str]:
    return await run("curl", "-sS", "-i", "--max-time", "10", "--cacert", str(front.ca_file),
                     "--resolve", f"{host}:{front.port}:127.0.0.1", *extra,
                     f"https://{host}:{front.port}/app/hello")


def _headers(out: str) -> dict[str, str]:
    head = out.split("\r\n\r\n", 1)[0]
    return {k.strip().lower(): v.strip() for k, _, v in
            (line.partition(":") for line in head.split("\r\n")[1:])}


@pytest.mark.needs_tool
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("host", ["www.example.com", "default.example"])
@pytest.mark.parametrize("version", ["--tlsv1.2", "--tlsv1.3"])
async def test_curl_cacert(front_factory: Any, host: str, version: str) -> None:
    front = await front_factory()
    rc, out = await curl(front, host, version, "--http2")  # ALPN h2 (proxy.http.alpn)
    assert rc == 0, out
    assert out.startswith("HTTP/2 200"), out
    hs = _headers(out)
    assert hs["strict-transport-security"] == "max-age=15768000"
    body = json.loads(out.split("\r\n\r\n", 1)[1])
    assert body["name"] == "b0" and body["target"] == "/hello"
    sent = {k.lower(): v for k, v in body["headers"]}
    assert sent["x-forwarded-proto"] == "https"
    assert "x-ssl-client-verify" not in sent


@pytest.mark.needs_tool
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_client_certificate(front_factory: Any, client_ca: trustme.CA,
                                       tmp_path: Path) -> None:
    cca = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(cca))
    front = await front_factory(ca_cert=str(cca), verify=SslVerify.REQUIRED)
    cert = tmp_path / "client.pem"
    client_ca.issue_cert("alice@example", common_name="alice") \
        .private_key_and_cert_chain_pem.write_to_path(str(cert))
    rc, out = await curl(front, "www.example.com", "--cert", str(cert))
    assert rc == 0, out
    body = json.loads(out.split("\r\n\r\n", 1)[1])
    sent = {k.lower(): v for k, v in body["headers"]}
    assert sent["x-ssl-client-verify"] == "SUCCESS"
    assert "CN=alice" in sent["x-ssl-client-dn"]
    rc, out = await curl(front, "www.example.com")
    assert rc != 0, out
    assert len(front.backend.seen) == 1


async def test_python_client_and_reload_keeps_keepalive(front_factory: Any, ca: trustme.CA,
                                                        tmp_path: Path) -> None:
    front = await front_factory()
    ctx = client_context(ca, check_hostname=False)
    request = (b"GET /app/one HTTP/1.1\r\nHost: www.example.com\r\n\r\n")

    async def get(conn: Any) -> bytes:
        conn.writer.write(request)
        head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        await asyncio.wait_for(conn.reader.readexactly(length), 5)
        return bytes(head)

    async with connection(front.port, ctx, "www.example.com") as old:
        assert old.peer_cn() == "www.example.com"
        assert old.sslobj.selected_alpn_protocol() == "http/1.1"
        assert (await get(old)).startswith(b"HTTP/1.1 200")
        write_leaf(ca, front.tmp / "certs" / "10-www.pem", "www.example.com",
                   "new.example.com")
        assert front.store.reload_if_changed()
        assert (await get(old)).startswith(b"HTTP/1.1 200")  # same connection, still served
        async with connection(front.port, ctx, "new.example.com") as new:
            assert new.peer_cn() == "www.example.com"
            assert new.sslobj.getpeercert()["subjectAltName"] == (  # type: ignore[index]
                ("DNS", "www.example.com"), ("DNS", "new.example.com"))
            assert (await get(new)).startswith(b"HTTP/1.1 200")
    assert [s.target for s in front.backend.seen] == ["/one"] * 3


@pytest.mark.parametrize("how", ["close_notify", "fin"])
async def test_a_client_that_ends_after_its_request_still_gets_the_response(
        front_factory: Any, ca: trustme.CA, how: str) -> None:
    """A request followed at once by the client's close_notify (or a bare FIN): the end
    of the client's sending, not of the connection (as on plain HTTP, and as haproxy
    treats it); the response goes out, then pylb's close_notify."""
    front = await front_factory()
    c = BioClient(front.port, ca, server_hostname="default.example")
    try:
        await asyncio.to_thread(c.handshake)
        c.send(b"GET /app/hello HTTP/1.1\r\nHost: default.example\r\n\r\n")
        if how == "close_notify":
            c.close_notify()
        else:
            c.sock.shutdown(socket.SHUT_WR)
        got = await asyncio.to_thread(c.recv_all)
        assert got.startswith(b"HTTP/1.1 200"), got[:100]
        assert c.closed_by_peer
    finally:
        c.close()
