"""Which Secrets a Gateway listener can terminate TLS with: `kubernetes.io/tls` data whose
`tls.crt` is a PEM certificate and `tls.key` a PEM private key (what the spec calls a
valid certificate reference). Pure; never raises.

(The PEM shape and the certificate each HTTPS listener serves come from discovery/secrets.py,
shared with Ingress TLS; this stricter check decides ResolvedRefs.)
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def valid_tls_secret(secret: Any) -> bool:
    if not isinstance(secret, dict):
        return False
    data = secret.get("data")
    if not isinstance(data, dict):
        return False
    try:
        crt = base64.b64decode(str(data.get("tls.crt") or ""), validate=True)
        key = base64.b64decode(str(data.get("tls.key") or ""), validate=True)
        x509.load_pem_x509_certificate(crt)
        serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, binascii.Error):
        return False
    return True
