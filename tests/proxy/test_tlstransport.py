"""proxy.tlstransport: TLS on a `direct` Listener's connections, over real loopback
sockets, against a client whose every TLS step the test decides (tests.proxy.tls.helpers.BioClient:
it can send its close_notify and go on reading, send two records in one segment, or stop
in the middle of a handshake)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme

from proxy.tlstransport import TlsTransport
from tests.conftest import until
from tests.proxy.tls.helpers import BioClient as Client
from tests.proxy.transports import Recorder, Server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@contextlib.asynccontextmanager
async def connected(ctx: ssl.SSLContext, ca: trustme.CA,
                    **kw: Any) -> AsyncIterator[tuple[Server, Client, Recorder]]:
    """A listener, one client through its handshake, and that connection's protocol."""
    srv = Server(ctx, **kw)
    srv.listener.start()
    c = Client(srv.port, ca)
    try:
        await in_thread(c.handshake)
        await until(lambda: srv.protocols)
        yield srv, c, srv.protocols[0]
    finally:
        c.close()
        srv.close()


def echo_upper(p: Recorder, d: bytes) -> None:
    p.transport.write(d.upper())


async def test_a_hello_already_there_is_answered_at_accept_then_data_flows(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    """The ClientHello is read when the connection is accepted (no watching first);
    the protocol is made after the handshake, with ALPN's choice and the TLS extra
    info; then data both ways."""
    srv = Server(server_ctx, on_data=echo_upper)
    c = Client(srv.port, ca)
    try:
        c.hello()
        await asyncio.sleep(0.05)  # (the ClientHello is in the server's socket by now)
        srv.listener.start()
        await in_thread(c.handshake)
        await until(lambda: srv.protocols)
        assert isinstance(srv.protocols[0].transport, TlsTransport)
        c.send(b"hello")
        assert await in_thread(c.recv, 5) == b"HELLO"
        (p,) = srv.protocols
        t = p.transport
        assert t.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        assert t.get_extra_info("cipher") is not None
        assert t.get_extra_info("peercert") is None  # (no client certificate asked)
        assert t.get_extra_info("peername") == c.sock.getsockname()
        assert t.get_extra_info("sslcontext") is server_ctx
        assert not t.can_write_eof()
        with pytest.raises(NotImplementedError):
            t.write_eof()
        c.send(b"again")
        assert await in_thread(c.recv, 5) == b"AGAIN"
    finally:
        c.close()
        srv.close()


async def test_records_in_one_read_each_reach_the_protocol(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    async with connected(server_ctx, ca) as (_, c, p):
        c.send(b"one", b"two", b"three")
        await until(lambda: bytes(p.data) == b"onetwothree")
        assert p.reads == [b"one", b"two", b"three"]


async def test_a_record_split_over_reads_is_delivered_whole(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    big = os.urandom(16384)  # one full record, sent in three pieces
    async with connected(server_ctx, ca) as (_, c, p):
        c.tls.write(big)
        records = c.outgoing.read()
        for i in range(0, len(records), 6000):
            c.sock.sendall(records[i:i + 6000])
            await asyncio.sleep(0.02)
        await until(lambda: len(p.data) == len(big))
        assert bytes(p.data) == big


async def test_pausing_holds_the_records_already_read_until_resumed(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    """Two records in one read, the protocol pauses on the first: the second stays in
    the transport (not delivered while paused) and comes on resume_reading, after the
    protocol's call returns."""
    async with connected(server_ctx, ca,
                         on_data=lambda p, d: p.transport.pause_reading()) as (_, c, p):
        c.send(b"first", b"second")
        await until(lambda: p.data)
        await asyncio.sleep(0.1)
        assert p.reads == [b"first"] and not p.transport.is_reading()
        p.on_data = None
        p.transport.resume_reading()
        assert p.reads == [b"first"]  # (not from inside resume_reading)
        await until(lambda: bytes(p.data) == b"firstsecond")
        c.send(b"third")  # and watching goes on
        await until(lambda: bytes(p.data) == b"firstsecondthird")


async def test_a_slow_reader_is_flow_controlled_and_close_sends_all_then_close_notify(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    payload = os.urandom(8 << 20)
    async with connected(server_ctx, ca) as (srv, c, p):
        t = p.transport
        t.set_write_buffer_limits(256 * 1024, 64 * 1024)
        for i in range(0, len(payload), 64 * 1024):
            t.write(payload[i:i + 64 * 1024])
        assert t.get_write_buffer_size() > 256 * 1024 and p.pauses == 1
        t.close()
        t.write(b"dropped")
        got = await in_thread(c.recv_all)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert c.closed_by_peer  # the close_notify came after the data
        await until(lambda: p.lost)
        assert p.lost == [None] and p.resumes == 1 and srv.limit.current == 0


@pytest.mark.parametrize("how", ["close_notify", "fin"])
async def test_the_client_ends_after_its_request_and_the_answer_still_goes_out(
        server_ctx: ssl.SSLContext, ca: trustme.CA, how: str) -> None:
    """The client's close_notify (or a bare FIN) is a read shutdown: eof_received once;
    a protocol that keeps the connection open still answers, then closes."""
    async with connected(server_ctx, ca, keep_open_on_eof=True) as (_, c, p):
        c.send(b"request")
        if how == "close_notify":
            c.close_notify()
        else:
            c.sock.shutdown(socket.SHUT_WR)
        await until(lambda: p.eof)
        assert bytes(p.data) == b"request"
        await asyncio.sleep(0.05)
        assert p.eof == 1 and not p.lost and not p.transport.is_closing()
        p.transport.write(b"answer")
        p.transport.close()
        assert await in_thread(c.recv_all) == b"answer"
        assert c.closed_by_peer
        await until(lambda: p.lost)
        assert p.lost == [None]


async def test_eof_not_kept_open_closes(server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    async with connected(server_ctx, ca) as (srv, c, p):
        c.close_notify()
        await until(lambda: p.lost)
        assert p.eof == 1 and p.lost == [None] and srv.limit.current == 0


async def test_abort_sends_no_close_notify(server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    async with connected(server_ctx, ca) as (_, c, p):
        p.transport.write(b"partial")
        await asyncio.sleep(0.05)
        p.transport.abort()
        await until(lambda: p.lost)
        assert await in_thread(c.recv_all) == b"partial"
        assert not c.closed_by_peer  # a FIN only


async def test_a_reset_reaches_connection_lost_with_the_error(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    async with connected(server_ctx, ca) as (srv, c, p):
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()
        await until(lambda: p.lost)
        assert isinstance(p.lost[0], ConnectionResetError)
        assert srv.limit.current == 0


async def test_a_corrupt_record_ends_the_connection(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    async with connected(server_ctx, ca) as (srv, c, p):
        c.tls.write(b"x" * 100)
        record = bytearray(c.outgoing.read())
        record[-1] ^= 0xFF  # the authentication tag no longer matches
        c.sock.sendall(bytes(record))
        await until(lambda: p.lost)
        assert isinstance(p.lost[0], ssl.SSLError) and not p.data
        assert srv.limit.current == 0


async def test_failed_handshakes_give_their_slot_back_and_the_listener_goes_on(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    """Not TLS at all; no cipher in common; a client gone in its handshake; one that
    never finishes (the handshake timeout): no protocol is made, each slot comes back,
    a client with no cipher in common gets OpenSSL's alert; the next client is served."""
    srv = Server(server_ctx, handshake_timeout=0.3, on_data=echo_upper)
    srv.listener.start()
    socks: list[socket.socket] = []
    try:
        plain = socket.create_connection(("127.0.0.1", srv.port))
        plain.settimeout(5)
        socks.append(plain)
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await in_thread(plain.recv, 100) == b""  # (OpenSSL sends no alert to this)

        # TLS, but no cipher in common (an RSA suite only; the certificate is ECDSA)
        rsa_only = Client(srv.port, ca, tls12_ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        socks.append(rsa_only.sock)
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            await in_thread(rsa_only.handshake)  # (the server's alert says why)

        gone = Client(srv.port, ca)
        socks.append(gone.sock)
        gone.hello()
        await until(lambda: srv.limit.current >= 1)
        gone.sock.close()

        silent = socket.create_connection(("127.0.0.1", srv.port))
        silent.settimeout(5)
        socks.append(silent)
        assert await in_thread(silent.recv, 100) == b""  # cut at the timeout

        await until(lambda: srv.limit.current == 0)
        assert srv.protocols == []

        c = Client(srv.port, ca)
        socks.append(c.sock)
        await in_thread(c.handshake)
        c.send(b"fine")
        assert await in_thread(c.recv, 4) == b"FINE"
        assert srv.limit.current == 1
    finally:
        for s in socks:
            s.close()
        srv.close()


async def test_closing_the_listener_leaves_a_handshake_to_its_timeout(
        server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    """A handshake under way when its protocol does not exist yet is not reachable by a
    shutdown's close of connections; its timeout still ends it and gives the slot
    back."""
    srv = Server(server_ctx, handshake_timeout=0.2)
    srv.listener.start()
    c = Client(srv.port, ca)
    try:
        c.hello()
        await until(lambda: srv.limit.current == 1)
        srv.listener.close()
        await until(lambda: srv.limit.current == 0)
        assert srv.protocols == []
    finally:
        c.close()
        srv.close()
