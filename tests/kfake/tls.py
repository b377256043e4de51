"""A test CA and server certificate (trustme), and the files clients read.

The certificate names 127.0.0.1, ::1 and localhost, since kubernetes-asyncio checks the
hostname against the certificate (`ssl.create_default_context(cafile=...)`).
"""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path

import trustme


class TestPKI:
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "::1", "localhost")
        self.client_cert = self.ca.issue_cert("pylb@kfake", common_name="pylb",
                                              organization_name="system:masters")

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    @property
    def ca_b64(self) -> str:
        return base64.b64encode(self.ca_pem).decode()

    def server_context(self) -> ssl.SSLContext:
        """Presents the server certificate; verifies a client certificate when one is sent
        (CERT_OPTIONAL, as the apiserver's --client-ca-file does)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    @property
    def client_cert_b64(self) -> str:
        return base64.b64encode(self.client_cert.cert_chain_pems[0].bytes()).decode()

    @property
    def client_key_b64(self) -> str:
        return base64.b64encode(self.client_cert.private_key_pem.bytes()).decode()

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def write_ca(self, path: str | os.PathLike[str]) -> str:
        Path(path).write_bytes(self.ca_pem)
        return str(path)
