"""TlsStore end to end on loopback: SNI selection, protocol versions, ALPN, tickets, client
certificates, self-signed fallback, start-up errors. Clients are Python's ssl."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import socket
import ssl
import types
import warnings
from pathlib import Path

import pytest
import trustme

from proxy.certs import CertificateError
from proxy.tls import DirectSSLObject, TlsStore
from pylb.config import SslVerify, TlsSettings
from tests.proxy.tls.helpers import (
    client_context,
    connection,
    echo_server,
    format_dn,
    refused,
    write_leaf,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_dir(ca: trustme.CA, tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    d.mkdir()
    write_leaf(ca, d / "00-default.pem", "default.example")
    write_leaf(ca, d / "10-wild.pem", "*.example.com", key_type=trustme.KeyType.RSA)
    write_leaf(ca, d / "20-exact.pem", "www.example.com", "api.example.com")
    (d / "ca.crt").write_bytes(ca.cert_pem.bytes())  # cert-manager's extra file: skipped
    (d / ".hidden").mkdir()
    return d


@pytest.mark.parametrize(("sni", "cn"), [
    ("www.example.com", "www.example.com"),  # exact beats the wildcard
    ("API.Example.com", "www.example.com"),  # second SAN, any case
    ("foo.example.com", "*.example.com"),
    ("a.b.example.com", "default.example"),  # a wildcard covers one label only
    ("example.com", "default.example"),
    ("other.test", "default.example"),
    (None, "default.example"),  # no SNI at all
])
async def test_sni_selection(ca: trustme.CA, cert_dir: Path, sni: str | None, cn: str) -> None:
    store = TlsStore(TlsSettings(cert=str(cert_dir)))
    assert [Path(i.path).name for i in store.certificates()] == [
        "00-default.pem", "10-wild.pem", "20-exact.pem"]
    async with echo_server(store.server_context()) as srv, connection(
            srv.port, client_context(ca, check_hostname=False), sni) as conn:
        assert conn.peer_cn() == cn
        assert await conn.echo() == b"ping"


async def test_hostname_verification_passes_for_each_name(
        ca: trustme.CA, cert_dir: Path) -> None:
    store = TlsStore(TlsSettings(cert=str(cert_dir)))
    async with echo_server(store.server_context()) as srv:
        for name in ("www.example.com", "x.example.com", "default.example"):
            async with connection(srv.port, client_context(ca), name) as conn:
                assert await conn.echo() == b"ping"
                assert conn.sslobj.server_hostname == name


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls12_and_13_accepted_with_modern_ciphers(
        ca: trustme.CA, cert_dir: Path, version: ssl.TLSVersion) -> None:
    store = TlsStore(TlsSettings(cert=str(cert_dir)))
    async with echo_server(store.server_context()) as srv:
        for name in ("www.example.com", "foo.example.com"):  # ECDSA and RSA
            async with connection(srv.port, client_context(ca, max_version=version),
                                  name) as conn:
                assert conn.sslobj.version() == version.name.replace("v1_", "v1.")
                cipher = conn.sslobj.cipher()
                assert cipher is not None
                assert "GCM" in cipher[0] or "CHACHA20" in cipher[0]
                if version is ssl.TLSVersion.TLSv1_2:
                    assert cipher[0].startswith("ECDHE-")


def _legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = client_context(None)
        ctx.minimum_version = version
        ctx.maximum_version = version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _legacy_server(ca: trustme.CA, tmp_path: Path) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(write_leaf(ca, tmp_path / "legacy.pem", "legacy.example",
                                   key_type=trustme.KeyType.RSA))
    return ctx


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls10_and_11_refused(ca: trustme.CA, cert_dir: Path, tmp_path: Path,
                                    version: ssl.TLSVersion) -> None:
    client = _legacy_client(version)
    # Control: this client does speak the old protocol to a server that allows it.
    async with echo_server(_legacy_server(ca, tmp_path)) as legacy:
        assert not await refused(legacy.port, client, "legacy.example")
    store = TlsStore(TlsSettings(cert=str(cert_dir)))
    async with echo_server(store.server_context()) as srv:
        assert await refused(srv.port, client, "www.example.com")
        assert srv.accepted == 0


@pytest.mark.parametrize(("offer", "chosen"), [
    (("h2", "http/1.1"), "h2"),  # h2 preferred (proxy.http.alpn dispatches)
    (("http/1.1", "h2"), "h2"),  # the server's preference
    (("http/1.1",), "http/1.1"),
    (("h2",), "h2"),
    (("spdy/3",), None),  # no overlap: the handshake goes on without ALPN
    ((), None),
])
async def test_alpn(ca: trustme.CA, cert_dir: Path, offer: tuple[str, ...],
                    chosen: str | None) -> None:
    store = TlsStore(TlsSettings(cert=str(cert_dir)))
    async with echo_server(store.server_context()) as srv:
        for name in ("www.example.com", "foo.example.com", None):  # on every context
            ctx = client_context(ca, alpn=offer, check_hostname=False)
            async with connection(srv.port, ctx, name) as conn:
                assert conn.sslobj.selected_alpn_protocol() == chosen


def _resumes(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession) -> bool:
    """A new connection offering `session`: was it resumed?"""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="www.example.com", session=session) as t:
        t.sendall(b"ping")
        assert t.recv(16) == b"ping"
        return t.session_reused


@pytest.mark.parametrize("tickets", [False, True])
async def test_session_tickets_only_when_asked(ca: trustme.CA, cert_dir: Path,
                                               tickets: bool) -> None:
    """Off (the default, haproxy's `no-tls-tickets`): no stateless ticket, so no ticket key;
    the session stays in the server's cache (TLS 1.2: a session ID; TLS 1.3: a "stateful"
    ticket that only names it) and resumes from there. On: stateless tickets, nothing
    cached server-side. Either way a returning client resumes (no full handshake)."""
    store = TlsStore(TlsSettings(cert=str(cert_dir), session_tickets=tickets))
    front = store.server_context()
    async with echo_server(front) as srv:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(ca, max_version=version)
            cached = front.session_stats()["number"]
            async with connection(srv.port, ctx, "www.example.com") as conn:
                assert await conn.echo() == b"ping"  # TLS 1.3 tickets come after the handshake
                session = conn.sslobj.session
            assert session is not None
            if version is ssl.TLSVersion.TLSv1_2:
                assert session.has_ticket is tickets
            assert (front.session_stats()["number"] > cached) is not tickets, version
            assert await asyncio.to_thread(_resumes, srv.port, ctx, session), version


def _client_ctx(ca: trustme.CA, leaf: trustme.LeafCert | None,
                version: ssl.TLSVersion) -> ssl.SSLContext:
    return client_context(ca, client_cert=leaf, max_version=version)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_client_certificate_required(ca: trustme.CA, client_ca: trustme.CA,
                                           cert_dir: Path, tmp_path: Path,
                                           version: ssl.TLSVersion) -> None:
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    good = client_ca.issue_cert("alice@example", common_name="alice",
                                organization_name="Example")
    wrong = trustme.CA().issue_cert("mallory@example", common_name="mallory")
    store = TlsStore(TlsSettings(cert=str(cert_dir), ca_cert=str(ca_path)))
    async with echo_server(store.server_context()) as srv:
        for name in ("www.example.com", "foo.example.com", "default.example"):
            async with connection(srv.port, _client_ctx(ca, good, version), name) as conn:
                assert await conn.echo() == b"ping"
            assert await refused(srv.port, _client_ctx(ca, None, version), name)
            assert await refused(srv.port, _client_ctx(ca, wrong, version), name)
        assert srv.accepted == 3
        dns = [format_dn(p) for p in srv.peer_certs]
        assert all(d.startswith("/O=Example/OU=") and d.endswith("/CN=alice") for d in dns), dns


async def test_client_certificate_optional(ca: trustme.CA, client_ca: trustme.CA,
                                           cert_dir: Path, tmp_path: Path) -> None:
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    good = client_ca.issue_cert("bob@example", common_name="bob")
    wrong = trustme.CA().issue_cert("mallory@example", common_name="mallory")
    store = TlsStore(TlsSettings(cert=str(cert_dir), ca_cert=str(ca_path),
                                 verify=SslVerify.OPTIONAL))
    v13 = ssl.TLSVersion.TLSv1_3
    async with echo_server(store.server_context()) as srv:
        async with connection(srv.port, _client_ctx(ca, None, v13), "www.example.com") as c:
            assert await c.echo() == b"ping"
        async with connection(srv.port, _client_ctx(ca, good, v13), "www.example.com") as c:
            assert await c.echo() == b"ping"
        assert await refused(srv.port, _client_ctx(ca, wrong, v13), "www.example.com")
        assert srv.accepted == 2
        assert srv.peer_certs[0] in (None, {})
        assert format_dn(srv.peer_certs[1]).endswith("/CN=bob")


async def test_verify_none_asks_for_no_certificate(ca: trustme.CA, client_ca: trustme.CA,
                                                   cert_dir: Path, tmp_path: Path) -> None:
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    store = TlsStore(TlsSettings(cert=str(cert_dir), ca_cert=str(ca_path),
                                 verify=SslVerify.NONE))
    assert store.server_context().verify_mode == ssl.CERT_NONE
    async with echo_server(store.server_context()) as srv, connection(
            srv.port, client_context(ca), "www.example.com") as c:
        assert await c.echo() == b"ping"


async def test_self_signed_fallback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.tls"):
        store = TlsStore(TlsSettings(), need_tls=True)
    assert store.enabled
    assert any("self-signed" in r.getMessage() for r in caplog.records)
    [info] = store.certificates()
    assert info.self_signed and "localhost" in info.names
    async with echo_server(store.server_context()) as srv:
        assert await refused(srv.port, client_context(trustme.CA()), "localhost")
        async with connection(srv.port, client_context(None), "localhost") as conn:
            assert conn.peer_cn() == "localhost"
            assert await conn.echo() == b"ping"
    assert not store.reload_if_changed()


def test_self_signed_made_once_is_shared_by_workers() -> None:
    first = TlsStore(TlsSettings(), need_tls=True)
    assert first.self_signed_pem is not None
    second = TlsStore(TlsSettings(), need_tls=True, self_signed_pem=first.self_signed_pem)
    third = TlsStore(TlsSettings(), need_tls=True)
    fp = [s.certificates()[0].fingerprint_sha256 for s in (first, second, third)]
    assert fp[0] == fp[1] != fp[2]
    with pytest.raises(CertificateError, match="self-signed"):
        TlsStore(TlsSettings(), need_tls=True, self_signed_pem=b"garbage")


def test_no_certificate_and_no_need_means_closed() -> None:
    store = TlsStore(TlsSettings())
    assert not store.enabled
    assert store.certificates() == []
    assert not store.reload_if_changed()
    with pytest.raises(CertificateError, match="--ssl-cert"):
        store.server_context()


def test_startup_error_names_the_bad_file(ca: trustme.CA, cert_dir: Path) -> None:
    bad = cert_dir / "30-expired.pem"
    write_leaf(ca, bad, "old.example", not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
               not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(CertificateError, match="^" + re.escape(f"{bad}: certificate expired")):
        TlsStore(TlsSettings(cert=str(cert_dir)))


def test_startup_errors(tmp_path: Path, ca: trustme.CA) -> None:
    with pytest.raises(CertificateError, match="no certificate file"):
        TlsStore(TlsSettings(cert=str(tmp_path)))
    with pytest.raises(CertificateError, match="no such file"):
        TlsStore(TlsSettings(cert=str(tmp_path / "absent.pem")))
    good = write_leaf(ca, tmp_path / "a.pem", "a.example")
    with pytest.raises(CertificateError, match=r"absent-ca\.pem"):
        TlsStore(TlsSettings(cert=str(good), ca_cert=str(tmp_path / "absent-ca.pem")))


def test_certificates_count_days_with_the_clock(ca: trustme.CA, tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    clock = [now]
    p = write_leaf(ca, tmp_path / "a.pem", "a.example", not_after=now + dt.timedelta(days=10))
    store = TlsStore(TlsSettings(cert=str(p)), clock=lambda: clock[0])
    assert [c.days_left for c in store.certificates()] == [10]
    clock[0] = now + dt.timedelta(days=9, hours=1)
    assert [c.days_left for c in store.certificates()] == [0]


def test_selection_table(cert_dir: Path) -> None:
    store = TlsStore(TlsSettings(cert=str(cert_dir)))
    default = store.select(None)
    assert store.select("www.example.com.") is store.select("WWW.EXAMPLE.COM")
    assert store.select("www.example.com") is not default
    assert store.select("x.example.com") is not store.select("www.example.com")
    assert store.select("x.y.example.com") is default


def test_expiry_warning_once_a_day(ca: trustme.CA, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    clock = [now]
    d = tmp_path / "certs"
    d.mkdir()
    write_leaf(ca, d / "a.pem", "soon.example", not_after=now + dt.timedelta(days=20))
    write_leaf(ca, d / "b.pem", "later.example", not_after=now + dt.timedelta(days=90))
    store = TlsStore(TlsSettings(cert=str(d)), clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="proxy.tls"):
        assert store.warn_expiring() == []
        clock[0] = now + dt.timedelta(days=7)  # 13 days left
        assert [c.names for c in store.warn_expiring()] == [("soon.example",)]
        assert [c.names for c in store.warn_expiring()] == [("soon.example",)]
        clock[0] = now + dt.timedelta(days=8)
        store.warn_expiring()
        clock[0] = now + dt.timedelta(days=21)
        store.warn_expiring()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "expires in 13 days" in messages[0]
    assert "expires in 12 days" in messages[1]
    assert "EXPIRED" in messages[2] and "a.pem" in messages[2]


def test_configured_certificate_wins_over_self_signed(cert_dir: Path) -> None:
    store = TlsStore(TlsSettings(cert=str(cert_dir)), need_tls=True)
    assert not any(c.self_signed for c in store.certificates())
    assert len(store.certificates()) == 3


def test_reloads_leak_no_file_descriptors(ca: trustme.CA, tmp_path: Path) -> None:
    p = write_leaf(ca, tmp_path / "a.pem", "a.example")
    store = TlsStore(TlsSettings(cert=str(p)))
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    for i in range(20):
        write_leaf(ca, tmp_path / "new.pem", f"n{i}.example")
        os.replace(tmp_path / "new.pem", p)  # a new inode, as atomic writers do
        assert store.reload_if_changed()
    assert store.certificates()[0].names == ("n19.example",)
    if fds:
        assert len(os.listdir("/proc/self/fd")) == fds


def test_tls_records_go_through_the_c_object_itself(ca: trustme.CA, cert_dir: Path) -> None:
    """The server contexts' connection objects (DirectSSLObject) hand out the C object's
    own read, write and pending, as uvloop and asyncio call them per record: read(n) and
    read(n, buffer) as ssl.SSLObject's would; the SNI callback still moves a connection
    to its certificate's context."""
    store = TlsStore(TlsSettings(cert=str(cert_dir)))
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = store.server_context().wrap_bio(s_in, s_out, server_side=True)
    client = client_context(ca).wrap_bio(c_in, c_out, server_hostname="www.example.com")
    assert type(server) is DirectSSLObject
    for name in ("read", "write", "pending"):
        assert isinstance(getattr(server, name), types.BuiltinMethodType), name
    for _ in range(10):  # the handshake, over memory
        for obj, bio_out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            peer_in.write(bio_out.read())
    assert server.version() == client.version() and client.getpeercert() is not None
    assert "www.example.com" in str(client.getpeercert()["subject"])
    client.write(b"hello, server")
    s_in.write(c_out.read())
    assert server.read(5) == b"hello" and server.pending() == 8
    buf = bytearray(16)
    assert server.read(16, buf) == 8 and bytes(buf[:8]) == b", server"
    assert server.write(b"hello, client") == 13
    c_in.write(s_out.read())
    assert client.read(64) == b"hello, client"
