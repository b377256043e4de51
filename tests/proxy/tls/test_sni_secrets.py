"""Certificates from Kubernetes TLS Secrets: discovery/secrets.py parsing, and the TLS
store serving them by SNI, rotating them under an open connection, and falling back to the
default certificate for a bad or missing one."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
import trustme

from discovery.secrets import SecretError, parse_tls_secret, sni_certificates
from proxy.tls import TlsStore
from pylb.config import TlsSettings
from pylb.model import SniCertificate
from tests.proxy.tls.helpers import client_context, connection, echo_server, write_leaf


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def secret(ca: trustme.CA, name: str, *hosts: str, ns: str = "default",
           kind: str = "kubernetes.io/tls") -> dict[str, Any]:
    leaf = ca.issue_cert(*hosts, common_name=hosts[0])
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": "7"}, "type": kind,
            "data": {"tls.crt": base64.b64encode(chain).decode(),
                     "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode()}}


def test_parse_tls_secret(ca: trustme.CA) -> None:
    s = parse_tls_secret(secret(ca, "web-tls", "a.test"))
    assert (s.namespace, s.name, s.resource_version) == ("default", "web-tls", "7")
    assert s.chain.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in s.key


@pytest.mark.parametrize(("mangle", "reason"), [
    (lambda o: o.update(type="Opaque"), "not kubernetes.io/tls"),
    (lambda o: o.pop("data"), "data is missing"),
    (lambda o: o["data"].pop("tls.key"), "'tls.key'] is missing"),
    (lambda o: o["data"].update({"tls.crt": "%%%"}), "is not base64"),
    (lambda o: o["data"].update({"tls.crt": base64.b64encode(b"hello").decode()}),
     "is not PEM"),
    (lambda o: o.pop("metadata"), "metadata.namespace"),
])
def test_bad_secrets(ca: trustme.CA, mangle: Any, reason: str) -> None:
    obj = secret(ca, "s", "a.test")
    mangle(obj)
    with pytest.raises(SecretError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_tls_secret(obj)


def test_sni_certificates_merges_hosts_and_reports_problems(ca: trustme.CA) -> None:
    store = {("default", "a"): secret(ca, "a", "a.test", "b.test"),
             ("default", "bad"): {**secret(ca, "bad", "x.test"), "type": "Opaque"}}
    certs, problems = sni_certificates(
        [("default", "a", ["A.test"]), ("default", "a", ["b.test"]),
         ("default", "missing", ["m.test"]), ("default", "bad", ["x.test"])], store)
    assert [(c.source, c.hosts) for c in certs] == [("default/a", ("a.test", "b.test"))]
    assert dict(problems) == {("default", "bad"): "type is 'Opaque', not kubernetes.io/tls",
                              ("default", "missing"): "Secret not found"}


def sni(ca: trustme.CA, source: str, *hosts: str, serve: tuple[str, ...] = ()) -> Any:
    s = parse_tls_secret(secret(ca, source, *hosts))
    return SniCertificate(f"default/{source}", serve or hosts, s.chain, s.key)


async def test_served_by_sni_rotated_under_an_open_connection(
        ca: trustme.CA, tmp_path: Path) -> None:
    default = write_leaf(ca, tmp_path / "default.pem", "default.example")
    store = TlsStore(TlsSettings(cert=str(default)))
    first = sni(ca, "a-tls", "a.test", "*.wild.test")
    assert store.set_sni_certificates((first,)) == []
    async with echo_server(store.server_context()) as srv:
        client = client_context(ca)
        async with connection(srv.port, client, "a.test") as old_conn:
            assert old_conn.peer_cn() == "a.test"
            serial = old_conn.sslobj.getpeercert()["serialNumber"]  # type: ignore[index]
            # rotation: a new certificate for the same host, while old_conn stays open
            assert store.set_sni_certificates((sni(ca, "a-tls", "a.test"),)) == []
            async with connection(srv.port, client, "a.test") as new_conn:
                assert new_conn.peer_cn() == "a.test"
                new_serial = new_conn.sslobj.getpeercert()["serialNumber"]  # type: ignore
                assert new_serial != serial
                assert await new_conn.echo() == b"ping"
            assert await old_conn.echo(b"still here") == b"still here"
        # the wildcard went with the old certificate: now the default answers
        async with connection(srv.port, client_context(ca, check_hostname=False),
                              "x.wild.test") as conn:
            assert conn.peer_cn() == "default.example"


async def test_bad_certificate_logged_once_default_served(
        ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    default = write_leaf(ca, tmp_path / "default.pem", "default.example")
    store = TlsStore(TlsSettings(cert=str(default)))
    good = sni(ca, "good", "g.test")
    other = sni(ca, "other", "b.test")
    mismatched = SniCertificate("default/bad", ("b.test",), good.chain, other.key)
    with caplog.at_level(logging.ERROR, logger="proxy.tls"):
        for _ in range(3):
            problems = store.set_sni_certificates((good, mismatched))
            assert [p[0] for p in problems] == ["default/bad"]
            assert "does not match" in problems[0][1]
    assert sum("default/bad" in r.getMessage() for r in caplog.records) == 1
    async with echo_server(store.server_context()) as srv:
        async with connection(srv.port, client_context(ca, check_hostname=False),
                              "b.test") as conn:
            assert conn.peer_cn() == "default.example"
        async with connection(srv.port, client_context(ca), "g.test") as conn:
            assert conn.peer_cn() == "g.test"
    assert {c.names for c in store.certificates()} == {("default.example",), ("g.test",)}
    store.set_sni_certificates(())
    assert [c.names for c in store.certificates()] == [("default.example",)]


async def test_host_star_serves_any_other_name_and_no_name(
        ca: trustme.CA, tmp_path: Path) -> None:
    """A Gateway listener without hostname: its certificate listed for host `*` answers
    every name no other certificate covers, and handshakes without SNI."""
    default = write_leaf(ca, tmp_path / "default.pem", "default.example")
    store = TlsStore(TlsSettings(cert=str(default)))
    assert store.set_sni_certificates((sni(ca, "named", "named.test"),
                                       sni(ca, "any", "any.test", serve=("*",)))) == []
    async with echo_server(store.server_context()) as srv:
        loose = client_context(ca, check_hostname=False)
        for name, cn in (("named.test", "named.test"), ("other.test", "any.test"),
                         (None, "any.test")):
            async with connection(srv.port, loose, name) as conn:
                assert conn.peer_cn() == cn, name
    store.set_sni_certificates((sni(ca, "named", "named.test"),))
    async with echo_server(store.server_context()) as srv2:
        loose = client_context(ca, check_hostname=False)
        async with connection(srv2.port, loose, "other.test") as conn:
            assert conn.peer_cn() == "default.example"
