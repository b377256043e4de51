"""The TLS listener seen by `openssl s_client`: SNI selection, protocol versions, ALPN,
client certificates."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from proxy.tls import TlsStore
from pylb.config import TlsSettings
from tests.proxy.tls.helpers import echo_server, run, write_leaf
from tests.proxy.tls.test_store import _legacy_server

pytestmark = [
    pytest.mark.needs_tool,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def setup(ca: trustme.CA, tmp_path: Path) -> tuple[TlsStore, str]:
    d = tmp_path / "certs"
    d.mkdir()
    write_leaf(ca, d / "00-default.pem", "default.example")
    write_leaf(ca, d / "10-wild.pem", "*.example.com", key_type=trustme.KeyType.RSA)
    write_leaf(ca, d / "20-exact.pem", "www.example.com")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsStore(TlsSettings(cert=str(d))), str(ca_file)


async def s_client(port: int, *args: str) -> tuple[int, str]:
    return await run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args,
                     stdin=b"")


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    assert cond()


def _field(pattern: str, out: str) -> str | None:
    m = re.search(pattern, out, re.MULTILINE)
    return m.group(1) if m else None


@pytest.mark.parametrize(("sni", "cn"), [
    ("www.example.com", "www.example.com"),
    ("foo.example.com", "*.example.com"),
    ("nothing.test", "default.example"),
    (None, "default.example"),
])
async def test_sni_selection(setup: tuple[TlsStore, str], sni: str | None, cn: str) -> None:
    store, ca_file = setup
    name = ["-servername", sni] if sni else ["-noservername"]
    async with echo_server(store.server_context()) as srv:
        rc, out = await s_client(srv.port, *name, "-CAfile", ca_file)
    assert rc == 0, out
    assert _field(r"^subject=.*CN = (\S+)$", out) == cn, out
    assert _field(r"Verify return code: (\d+)", out) == "0", out


@pytest.mark.parametrize(("flag", "accepted"), [
    ("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)])
async def test_protocol_versions(setup: tuple[TlsStore, str], ca: trustme.CA, tmp_path: Path,
                                 flag: str, accepted: bool) -> None:
    store, _ = setup
    legacy = ["-cipher", "DEFAULT:@SECLEVEL=0"] if not accepted else []
    if not accepted:  # control: this openssl can speak the old protocol at all
        async with echo_server(_legacy_server(ca, tmp_path)) as old:
            rc, out = await s_client(old.port, flag, *legacy, "-servername", "legacy.example")
        assert rc == 0, out
    async with echo_server(store.server_context()) as srv:
        rc, out = await s_client(srv.port, flag, *legacy, "-servername", "www.example.com")
        assert (rc == 0) is accepted, out
        if accepted:
            expected = {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[flag]
            assert _field(r"^New, (TLSv[\d.]+), Cipher", out) == expected, out
            await until(lambda: srv.accepted == 1)
        else:
            assert srv.accepted == 0


@pytest.mark.parametrize(("offer", "expected"), [
    ("h2,http/1.1", "ALPN protocol: h2"),
    ("http/1.1", "ALPN protocol: http/1.1"),
    ("spdy/3", "No ALPN negotiated"),
])
async def test_alpn(setup: tuple[TlsStore, str], offer: str, expected: str) -> None:
    store, _ = setup
    async with echo_server(store.server_context()) as srv:
        rc, out = await s_client(srv.port, "-servername", "foo.example.com", "-alpn", offer)
    assert rc == 0, out
    assert expected in out


async def test_client_certificate(setup: tuple[TlsStore, str], tmp_path: Path) -> None:
    del setup  # writes tmp_path/certs
    client_ca = trustme.CA()
    ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_file))
    cert = tmp_path / "client.pem"
    client_ca.issue_cert("client@example", common_name="client") \
        .private_key_and_cert_chain_pem.write_to_path(str(cert))
    wrong = tmp_path / "wrong.pem"
    trustme.CA().issue_cert("x@example", common_name="x") \
        .private_key_and_cert_chain_pem.write_to_path(str(wrong))
    store = TlsStore(TlsSettings(cert=str(tmp_path / "certs"), ca_cert=str(ca_file)))
    async with echo_server(store.server_context()) as srv:
        for n, version in enumerate(("-tls1_2", "-tls1_3"), 1):
            rc, out = await s_client(srv.port, version, "-cert", str(cert))
            assert rc == 0, out
            await until(lambda n=n: srv.accepted == n)
            # TLS 1.3 clients finish their side before the server checks the certificate;
            # -ign_eof keeps s_client until the server closes, which an echo server that
            # accepted the connection never does.
            for extra in ([], ["-cert", str(wrong)]):
                _, out = await run("openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}",
                                   version, "-ign_eof", *extra, stdin=b"ping\n", timeout=10)
                assert "ping" not in out
        assert srv.accepted == 2
