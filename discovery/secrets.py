"""kubernetes.io/tls Secrets → certificates for SNI: the Kubernetes half of TLS from Secrets.

Theory of operation. Whoever terminates TLS for a Kubernetes object — an Ingress's
`spec.tls[]` (discovery/ingress.py), a Gateway's HTTPS listener `certificateRefs` — names
Secrets and the host names they serve. This module turns those into `SniCertificate`s
(pylb/model.py: hosts, the PEM chain and the PEM key, and which Secret they came from), a
plain value that crosses to the data plane; the TLS store (proxy/tls.py
`TlsStore.set_sni_certificates`) checks each with `cryptography` and serves it by SNI.

Here only the Kubernetes shape is checked (no cryptography: discovery does not import the
proxy, and the proxy owns what a usable certificate is): the Secret exists, has `type:
kubernetes.io/tls`, and `data` has `tls.crt` and `tls.key` that decode from base64 into PEM
blocks. A Secret that fails is reported by `sni_certificates` with a reason (the caller
logs it once, and its hosts get the default certificate) — never raised.

Functions:
- `parse_tls_secret(obj)` → `TlsSecret` or raises `SecretError(reason)`.
- `sni_certificates(wanted, secrets)`: `wanted` is an iterable of (namespace, secret name,
  hosts); `secrets` maps (namespace, name) to the Secret dicts (the informer's store).
  Returns (certificates, problems), problems as ((namespace, name), reason). Several
  entries naming one Secret give one certificate serving all their hosts. Deterministic:
  sorted by (namespace, name).

Which Secrets are watched is the caller's choice (discovery/kube.py watches Secrets in
the watched namespaces; see the README for why).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pylb.model import SniCertificate

TLS_TYPE = "kubernetes.io/tls"
MAX_PEM = 1 << 20  # a chain and key far beyond any real one: 1 MiB


class SecretError(Exception):
    """The Secret cannot give a certificate; the message says why."""


@dataclass(frozen=True, slots=True)
class TlsSecret:
    namespace: str
    name: str
    chain: bytes  # PEM: certificate, then its chain
    key: bytes  # PEM private key
    resource_version: str = ""


def _pem(data: Mapping[str, Any], field: str) -> bytes:
    raw = data.get(field)
    if not isinstance(raw, str) or not raw:
        raise SecretError(f"data[{field!r}] is missing")
    if len(raw) > MAX_PEM * 4 // 3 + 4:
        raise SecretError(f"data[{field!r}] is larger than {MAX_PEM} bytes")
    try:
        pem = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"data[{field!r}] is not base64") from None
    if b"-----BEGIN " not in pem:
        raise SecretError(f"data[{field!r}] is not PEM (no -----BEGIN line)")
    return pem


def parse_tls_secret(obj: Any) -> TlsSecret:
    """The PEM pair of a kubernetes.io/tls Secret, or SecretError."""
    if not isinstance(obj, dict):
        raise SecretError("not an object")
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    if not isinstance(ns, str) or not isinstance(name, str) or not ns or not name:
        raise SecretError("metadata.namespace or metadata.name is missing")
    kind = obj.get("type")
    if kind != TLS_TYPE:
        raise SecretError(f"type is {kind!r}, not {TLS_TYPE}")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise SecretError("data is missing")
    rv = meta.get("resourceVersion")
    return TlsSecret(ns, name, _pem(data, "tls.crt"), _pem(data, "tls.key"),
                     rv if isinstance(rv, str) else "")


def by_ident(objs: Iterable[Any]) -> dict[tuple[str, str], Any]:
    """Secrets by (namespace, name), for `sni_certificates` (unnamed ones left out)."""
    out: dict[tuple[str, str], Any] = {}
    for obj in objs:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            ns, name = meta.get("namespace"), meta.get("name")
            if isinstance(ns, str) and isinstance(name, str):
                out[(ns, name)] = obj
    return out


def sni_certificates(
    wanted: Iterable[tuple[str, str, Iterable[str]]],
    secrets: Mapping[tuple[str, str], Any],
) -> tuple[tuple[SniCertificate, ...], tuple[tuple[tuple[str, str], str], ...]]:
    """The certificates for `wanted` (namespace, secret name, hosts), and the Secrets that
    cannot give one, with the reason. Never raises."""
    hosts_of: dict[tuple[str, str], set[str]] = {}
    for ns, name, hosts in wanted:
        hosts_of.setdefault((ns, name), set()).update(h.lower() for h in hosts)
    certs: list[SniCertificate] = []
    problems: list[tuple[tuple[str, str], str]] = []
    for key in sorted(hosts_of):
        obj = secrets.get(key)
        if obj is None:
            problems.append((key, "Secret not found"))
            continue
        try:
            secret = parse_tls_secret(obj)
        except SecretError as e:
            problems.append((key, str(e)))
            continue
        certs.append(SniCertificate(f"{key[0]}/{key[1]}", tuple(sorted(hosts_of[key])),
                                    secret.chain, secret.key))
    return tuple(certs), tuple(problems)

