"""Reload from disk as Kubernetes updates a secret volume: a new timestamped directory,
then an atomic rename of the `..data` symlink. Open connections keep their certificate;
new handshakes get the new one; a broken new certificate is refused and the old stays."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from proxy.tls import TlsStore
from pylb.config import TlsSettings
from tests.proxy.tls.helpers import (
    client_context,
    common_name,
    connection,
    echo_server,
    refused,
)


class SecretVolume:
    """A directory laid out as the kubelet lays out a `kubernetes.io/tls` secret."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()

    def publish(self, files: dict[str, bytes]) -> None:
        self.version += 1
        data_dir = f"..2026_11_21_00_00_{self.version:02d}.{os.getpid()}"
        (self.root / data_dir).mkdir()
        for name, content in files.items():
            (self.root / data_dir / name).write_bytes(content)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data_dir)
        os.rename(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")

    @staticmethod
    def tls(ca: trustme.CA, name: str) -> dict[str, bytes]:
        leaf = ca.issue_cert(name, common_name=name)
        return {"tls.crt": b"".join(b.bytes() for b in leaf.cert_chain_pems),
                "tls.key": leaf.private_key_pem.bytes()}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("as_file", [False, True])
async def test_symlink_swap_reloads_and_open_connection_keeps_old(
        ca: trustme.CA, tmp_path: Path, as_file: bool) -> None:
    vol = SecretVolume(tmp_path / "secret")
    vol.publish(SecretVolume.tls(ca, "old.example"))
    cert = str(vol.root / "tls.crt") if as_file else str(vol.root)
    store = TlsStore(TlsSettings(cert=cert))
    assert not store.reload_if_changed()
    client = client_context(ca, check_hostname=False)
    async with echo_server(store.server_context()) as srv, connection(
            srv.port, client, "site.example") as before:
        assert before.peer_cn() == "old.example"
        vol.publish(SecretVolume.tls(ca, "new.example"))
        assert store.reload_if_changed()
        assert not store.reload_if_changed()
        assert [c.names for c in store.certificates()] == [("new.example",)]
        assert await before.echo(b"still here") == b"still here"
        assert before.peer_cn() == "old.example"
        async with connection(srv.port, client, "site.example") as after:
            assert after.peer_cn() == "new.example"
            assert await after.echo() == b"ping"


async def test_corrupt_new_certificate_keeps_the_old(
        ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vol = SecretVolume(tmp_path / "secret")
    vol.publish(SecretVolume.tls(ca, "old.example"))
    store = TlsStore(TlsSettings(cert=str(vol.root)))
    client = client_context(ca, check_hostname=False)
    good_new = SecretVolume.tls(ca, "new.example")
    other = SecretVolume.tls(ca, "other.example")
    broken_versions = [
        {"tls.crt": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
         "tls.key": good_new["tls.key"]},
        {"tls.crt": good_new["tls.crt"], "tls.key": other["tls.key"]},  # key mismatch
        {"tls.crt": good_new["tls.crt"][:100], "tls.key": good_new["tls.key"]},  # truncated
    ]
    async with echo_server(store.server_context()) as srv:
        for broken in broken_versions:
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="proxy.tls"):
                vol.publish(broken)
                assert not store.reload_if_changed()
                assert not store.reload_if_changed()  # logged once, not on every poll
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1
            assert "tls.crt" in errors[0].getMessage()
            assert [c.names for c in store.certificates()] == [("old.example",)]
            async with connection(srv.port, client, "site.example") as conn:
                assert conn.peer_cn() == "old.example"
        vol.publish(good_new)
        assert store.reload_if_changed()
        async with connection(srv.port, client, "site.example") as conn:
            assert conn.peer_cn() == "new.example"


async def test_in_place_rewrite_and_new_file_in_directory(ca: trustme.CA,
                                                          tmp_path: Path) -> None:
    d = tmp_path / "certs"
    d.mkdir()
    files = SecretVolume.tls(ca, "a.example")
    (d / "a.pem").write_bytes(files["tls.crt"] + files["tls.key"])
    store = TlsStore(TlsSettings(cert=str(d)))
    b = SecretVolume.tls(ca, "b.example")
    (d / "b.pem").write_bytes(b["tls.crt"] + b["tls.key"])
    assert store.reload_if_changed()
    assert [c.names for c in store.certificates()] == [("a.example",), ("b.example",)]
    (d / "b.pem").unlink()
    assert store.reload_if_changed()
    assert [c.names for c in store.certificates()] == [("a.example",)]


async def test_client_ca_change_is_picked_up(ca: trustme.CA, tmp_path: Path) -> None:
    d = tmp_path / "certs"
    d.mkdir()
    files = SecretVolume.tls(ca, "a.example")
    (d / "a.pem").write_bytes(files["tls.crt"] + files["tls.key"])
    old_ca, new_ca = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_bytes(old_ca.cert_pem.bytes())
    store = TlsStore(TlsSettings(cert=str(d), ca_cert=str(ca_file)))
    new_client = new_ca.issue_cert("c@example", common_name="c")
    ctx = client_context(ca, check_hostname=False, client_cert=new_client)
    async with echo_server(store.server_context()) as srv:
        assert await refused(srv.port, ctx, "a.example")
        (tmp_path / "new-ca.pem").write_bytes(new_ca.cert_pem.bytes())
        os.replace(tmp_path / "new-ca.pem", ca_file)
        assert store.reload_if_changed()
        async with connection(srv.port, ctx, "a.example") as conn:
            assert await conn.echo() == b"ping"


async def test_watch_reloads_in_the_background(ca: trustme.CA, tmp_path: Path) -> None:
    vol = SecretVolume(tmp_path / "secret")
    vol.publish(SecretVolume.tls(ca, "old.example"))
    store = TlsStore(TlsSettings(cert=str(vol.root)))
    task = asyncio.create_task(store.watch(interval=0.01))
    try:
        vol.publish(SecretVolume.tls(ca, "new.example"))
        for _ in range(500):
            if store.certificates()[0].names == ("new.example",):
                break
            await asyncio.sleep(0.01)
        assert store.certificates()[0].names == ("new.example",)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await TlsStore(TlsSettings(), need_tls=True).watch(0.01) is None  # nothing to watch


async def test_tls12_session_resumed_after_reload_keeps_old_certificate(
        ca: trustme.CA, tmp_path: Path) -> None:
    """What the theory of operation says: the session cache outlives a reload."""
    p = tmp_path / "a.pem"
    files = SecretVolume.tls(ca, "old.example")
    p.write_bytes(files["tls.crt"] + files["tls.key"])
    store = TlsStore(TlsSettings(cert=str(p)))
    ctx = client_context(ca, check_hostname=False, max_version=ssl.TLSVersion.TLSv1_2)
    async with echo_server(store.server_context()) as srv:
        async with connection(srv.port, ctx, "site.example") as first:
            session = first.sslobj.session
        new = SecretVolume.tls(ca, "new.example")
        (tmp_path / "b.pem").write_bytes(new["tls.crt"] + new["tls.key"])
        os.replace(tmp_path / "b.pem", p)
        assert store.reload_if_changed()
        assert session is not None
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            resumed = await asyncio.to_thread(ctx.wrap_socket, sock,
                                              server_hostname="site.example", session=session)
            with resumed:
                assert resumed.session_reused
                assert common_name(resumed.getpeercert(binary_form=True)) == "old.example"
        async with connection(srv.port, ctx, "site.example") as fresh:
            assert fresh.peer_cn() == "new.example"
