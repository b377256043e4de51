"""Test helpers for TLS: certificates written to disk, a TLS echo server, clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from proxy.http import HttpProxy
from proxy.tls import TlsStore
from tests.proxy.http.backends import HttpBackend


@dataclass
class Front:
    """pylb's TLS frontend under test (see conftest.front_factory)."""

    store: TlsStore
    proxy: HttpProxy
    port: int
    backend: HttpBackend
    ca_file: Path
    tmp: Path


def write_leaf(ca: trustme.CA, path: Path, *names: str, key_type: trustme.KeyType =
               trustme.KeyType.ECDSA, not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None) -> Path:
    """A PEM (chain then key, haproxy's format) for `names`, issued by `ca`, CN = names[0]."""
    leaf = ca.issue_cert(*names, common_name=names[0], key_type=key_type,
                         not_before=not_before, not_after=not_after)
    path.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems)
                     + leaf.private_key_pem.bytes())
    return path


def client_context(ca: trustme.CA | None = None, *, alpn: Sequence[str] = ("http/1.1",),
                   max_version: ssl.TLSVersion | None = None, check_hostname: bool = True,
                   client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if client_cert is not None:
        client_cert.configure_cert(ctx)
    if ca is not None:
        ca.configure_trust(ctx)
        ctx.check_hostname = check_hostname
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def common_name(der: bytes | None) -> str:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def format_dn(peercert: dict[str, object] | None) -> str:
    """A subject from `getpeercert()` as `/O=Example/CN=alice`; empty without one."""
    if not peercert:
        return ""
    subject = peercert.get("subject")
    assert isinstance(subject, tuple)
    short = {"organizationName": "O", "organizationalUnitName": "OU", "commonName": "CN",
             "countryName": "C"}
    return "".join(f"/{short.get(k, k)}={v}" for rdn in subject for k, v in rdn)


class _Echo(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.server.accepted += 1
        sslobj = transport.get_extra_info("ssl_object")
        self.server.peer_certs.append(sslobj.getpeercert() if sslobj else None)
        self.server.transports.append(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@dataclass
class EchoServer:
    """A TLS echo server on 127.0.0.1; counts connections whose handshake completed."""

    port: int = 0
    accepted: int = 0
    peer_certs: list[dict[str, object] | None] = field(default_factory=list)
    transports: list[asyncio.Transport] = field(default_factory=list)


@contextlib.asynccontextmanager
async def echo_server(ctx: ssl.SSLContext) -> AsyncIterator[EchoServer]:
    loop = asyncio.get_running_loop()
    state = EchoServer()
    server = await loop.create_server(lambda: _Echo(state), "127.0.0.1", 0, ssl=ctx,
                                      ssl_handshake_timeout=5.0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for t in state.transports:
            t.abort()
        await server.wait_closed()


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def sslobj(self) -> ssl.SSLObject:
        obj = self.writer.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        return obj

    def peer_cn(self) -> str:
        return common_name(self.sslobj.getpeercert(binary_form=True))

    async def echo(self, data: bytes = b"ping") -> bytes:
        self.writer.write(data)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(len(data)), 5.0)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def connect(port: int, ctx: ssl.SSLContext, server_hostname: str | None) -> Conn:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname or None,
        ssl_handshake_timeout=5.0), 10.0)
    return Conn(reader, writer)


@contextlib.asynccontextmanager
async def connection(port: int, ctx: ssl.SSLContext,
                     server_hostname: str | None) -> AsyncIterator[Conn]:
    conn = await connect(port, ctx, server_hostname)
    try:
        yield conn
    finally:
        await conn.close()


async def refused(port: int, ctx: ssl.SSLContext, server_hostname: str | None) -> bool:
    """True when the server ends the connection during or right after the handshake
    (TLS 1.3 clients learn of a refused client certificate only on their first read)."""
    try:
        conn = await connect(port, ctx, server_hostname)
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        await conn.echo()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    finally:
        await conn.close()
    return False


async def run(*argv: str, stdin: bytes = b"", timeout: float = 20.0) -> tuple[int, str]:
    """Run a program; its exit code and stdout+stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "LC_ALL": "C"})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


class BioClient:
    """A TLS client whose every step the test decides: an ssl.SSLObject over memory BIOs
    on a blocking socket (send a close_notify and go on reading, several records in one
    segment, stop in the middle of a handshake)."""

    def __init__(self, port: int, ca: trustme.CA, tls12_ciphers: str = "",
                 server_hostname: str = "localhost") -> None:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        if tls12_ciphers:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(tls12_ciphers)
        ctx.set_alpn_protocols(["http/1.1"])
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(5)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.closed_by_peer = False  # the server's close_notify was read

    def send_pending(self) -> None:
        out = self.outgoing.read()
        if out:
            self.sock.sendall(out)

    def hello(self) -> None:
        """The ClientHello only."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        self.send_pending()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.send_pending()
                self._fill()
            else:
                self.send_pending()
                return

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def send(self, *records: bytes) -> None:
        """Each argument its own record, all in one sendall."""
        for r in records:
            self.tls.write(r)
        self.send_pending()

    def close_notify(self) -> None:
        """Our close_notify, without waiting for the server's."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self.send_pending()

    def recv(self, n: int) -> bytes:
        """Exactly `n` bytes of plaintext, or fewer if the server closed."""
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.tls.read(min(n - len(out), 1 << 16))
            except ssl.SSLWantReadError:
                if not self._fill():
                    break
                continue
            except ssl.SSLZeroReturnError:
                self.closed_by_peer = True
                break
            if not chunk:
                self.closed_by_peer = True
                break
            out += chunk
        return bytes(out)

    def recv_all(self) -> bytes:
        return self.recv(1 << 40)

    def close(self) -> None:
        self.sock.close()
