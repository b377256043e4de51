"""discovery.gateway.secrets: what counts as a valid TLS Secret for a listener."""

from __future__ import annotations

import base64

import trustme

from discovery.gateway.secrets import valid_tls_secret


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_valid_and_invalid_tls_secrets() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("example.org")
    good = {"type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(cert.cert_chain_pems[0].bytes()),
                     "tls.key": b64(cert.private_key_pem.bytes())}}
    assert valid_tls_secret(good)
    hello = b64(b"Hello world\n")  # the conformance suite's malformed-certificate
    assert not valid_tls_secret({"data": {"tls.crt": hello, "tls.key": hello}})
    assert not valid_tls_secret({"data": {"tls.crt": good["data"]["tls.crt"]}})
    assert not valid_tls_secret({"data": {"tls.crt": "not base64!", "tls.key": "x"}})
    assert not valid_tls_secret({"data": None})
    assert not valid_tls_secret("nonsense")
