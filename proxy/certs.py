"""Certificate inspection with `cryptography`: what `--ssl-cert` points at, checked before use.

A certificate file is haproxy's `crt` format: one PEM holding the certificate, then its
chain (intermediates, leaf first), and the private key. As haproxy does
(`ssl-load-extra-files key`), a PEM without a key may have it beside it: `cert.pem.key`, or
the same stem with `.key` (`tls.crt` + `tls.key`, which is what a `kubernetes.io/tls`
secret mounted as a volume gives).

`check_pem` reads the bytes once and returns them with the `CertInfo`, so what was checked
is exactly what the TLS context loads: a file swapped between the check and the load cannot
slip through unchecked. Every problem raises `CertificateError` with a message that names
the file and says what is wrong, because it stops start-up and an operator reads it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)
# RSA below 2048 bits is refused by OpenSSL's default security level 2 anyway; saying so at
# start-up is kinder than a handshake failure.
MIN_RSA_BITS = 2048
# A chain longer than this is a mistake (a whole CA bundle pasted in), not a chain.
MAX_CHAIN = 10


class CertificateError(Exception):
    """A certificate file cannot be used. The message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the stats page and the logs say about one certificate in use.

    `names` are the DNS names it serves (subjectAltName DNS entries, then the subject CN if
    it is not among them), lowercased, in certificate order; SNI selection uses them.
    `days_left` is counted from the `now` the info was made with (whole days, negative when
    expired); `TlsStore.certificates()` recomputes it on each call.
    """

    path: str
    names: tuple[str, ...]
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    days_left: int
    key_type: str  # "RSA-2048", "EC-secp256r1", "Ed25519"
    fingerprint_sha256: str  # hex, of the leaf certificate
    self_signed: bool
    chain_length: int  # certificates in the file, leaf included
    ip_addresses: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # problems that do not stop start-up (chain order...)

    def at(self, now: dt.datetime) -> CertInfo:
        """The same info with `days_left` counted from `now`."""
        return replace(self, days_left=days_until(self.not_after, now))


@dataclass(frozen=True, slots=True)
class LoadedPem:
    """A checked certificate: its info and the PEM bytes (chain, then key) to load."""

    info: CertInfo
    pem: bytes
    sources: tuple[str, ...]  # the files read (the cert file, and a key file beside it)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def days_until(when: dt.datetime, now: dt.datetime) -> int:
    """Whole days from `now` to `when`, rounded down (-1 once `when` has passed)."""
    return (when - now) // dt.timedelta(days=1)


def check_pem(path: str, now: dt.datetime | None = None) -> CertInfo:
    """Check the certificate chain and key at `path`; raise `CertificateError` if unusable.

    Checked: the file reads and holds PEM certificates; a private key is there (in the
    file or beside it), unencrypted, and matches the first certificate; the first
    certificate is valid at `now` (default: the current time); RSA keys have at least
    2048 bits. An out-of-order chain is only a warning in `CertInfo.warnings`.
    """
    return load_pem(path, now).info


def load_pem(path: str, now: dt.datetime | None = None) -> LoadedPem:
    """`check_pem`, also returning the exact bytes checked (for `ssl.load_cert_chain`)."""
    data = _read(path)
    sources = [path]
    key_blocks = _blocks(data, _is_key_block)
    if not key_blocks:
        key_path = find_key_file(path)
        if key_path is not None:
            key_blocks = _blocks(_read(key_path), _is_key_block)
            if not key_blocks:
                raise CertificateError(f"{key_path}: no PEM private key in the key file")
            sources.append(key_path)
    return check_pem_bytes(data, key_blocks, path, now, sources=tuple(sources))


def load_pem_pair(chain: bytes, key: bytes, label: str,
                  now: dt.datetime | None = None) -> LoadedPem:
    """`check_pem` of a chain and a key given as bytes (a Kubernetes TLS Secret's
    `tls.crt` and `tls.key`); errors name `label`."""
    return check_pem_bytes(chain, _blocks(key, _is_key_block), label, now)


def find_key_file(cert_path: str) -> str | None:
    """The key file beside a certificate file, as haproxy looks for it, or None."""
    stem, ext = os.path.splitext(cert_path)
    candidates = [cert_path + ".key"]
    if ext in (".crt", ".pem", ".cer", ".cert"):
        candidates.append(stem + ".key")
    for c in candidates:
        if os.path.isfile(c):
            return c
    return None


def check_pem_bytes(data: bytes, key_blocks: Sequence[bytes], path: str,
                    now: dt.datetime | None = None, *,
                    sources: tuple[str, ...] = ()) -> LoadedPem:
    """Check PEM `data` (certificates) with `key_blocks` (PEM private keys) read from
    `path`; errors name `path`."""
    now = now or utcnow()
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)  # a naive time is taken as UTC, as X.509 times are
    cert_blocks = _blocks(data, lambda label: label == b"CERTIFICATE")
    if not cert_blocks:
        if b"-----BEGIN" not in data:
            raise CertificateError(f"{path}: not a PEM file (no -----BEGIN line)")
        raise CertificateError(f"{path}: no certificate in the file")
    if len(cert_blocks) > MAX_CHAIN:
        raise CertificateError(
            f"{path}: {len(cert_blocks)} certificates; a chain has at most {MAX_CHAIN} "
            "(is this a CA bundle?)")
    certs: list[x509.Certificate] = []
    for i, block in enumerate(cert_blocks):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise CertificateError(f"{path}: certificate #{i + 1} does not parse: {e}") from e
    if not key_blocks:
        raise CertificateError(
            f"{path}: no private key (put it in the same PEM after the chain, "
            f"or in {path}.key)")
    if len(key_blocks) > 1:
        raise CertificateError(f"{path}: {len(key_blocks)} private keys; expected one")
    key = _load_key(key_blocks[0], path)
    leaf = certs[0]
    key_pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key_pub != _spki(leaf):
        others = [i for i, c in enumerate(certs[1:], 2) if _spki(c) == key_pub]
        if others:
            raise CertificateError(
                f"{path}: the private key matches certificate #{others[0]}, not the first; "
                "put the server certificate first, then its chain")
        raise CertificateError(
            f"{path}: the private key does not match the certificate "
            f"({_subject(leaf)})")
    key_type = _key_type(key, path)
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    if now >= not_after:
        raise CertificateError(
            f"{path}: certificate expired on {not_after:%Y-%m-%d %H:%M:%S} UTC "
            f"({_subject(leaf)})")
    if now < not_before:
        raise CertificateError(
            f"{path}: certificate not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC "
            f"({_subject(leaf)})")
    names, ips = _names(leaf)
    warnings = _chain_warnings(certs)
    if not names and not ips:
        warnings.append("the certificate names no host (no subjectAltName, no CN)")
    if _is_ca_only(leaf):
        warnings.append("the first certificate is a CA certificate, not a server certificate")
    pem = b"".join(_ensure_nl(b) for b in cert_blocks) + _ensure_nl(key_blocks[0])
    info = CertInfo(
        path=path,
        names=names,
        subject=_subject(leaf),
        issuer=leaf.issuer.rfc4514_string(),
        not_before=not_before,
        not_after=not_after,
        days_left=days_until(not_after, now),
        key_type=key_type,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        self_signed=leaf.issuer == leaf.subject,
        chain_length=len(certs),
        ip_addresses=ips,
        warnings=tuple(warnings),
    )
    return LoadedPem(info=info, pem=pem, sources=sources or (path,))


def is_ca_bundle(path: str) -> bool:
    """True when `path` holds only CA certificates and no key (e.g. cert-manager's
    `ca.crt` beside `tls.crt` in a secret volume): not a server certificate."""
    try:
        data = _read(path)
    except CertificateError:
        return False
    if _blocks(data, _is_key_block) or find_key_file(path) is not None:
        return False
    blocks = _blocks(data, lambda label: label == b"CERTIFICATE")
    if not blocks:
        return False
    try:
        return all(_is_ca_only(x509.load_pem_x509_certificate(b)) for b in blocks)
    except ValueError:
        return False


def generate_self_signed(names: Sequence[str], *, days: int = 365,
                         now: dt.datetime | None = None) -> bytes:
    """A self-signed ECDSA P-256 certificate for `names` and its key, as one PEM.

    The fallback when a service needs TLS and no `--ssl-cert` was given; clients will not
    trust it. P-256 because it is the cheapest key to sign handshakes with.
    """
    if not names:
        raise ValueError("a self-signed certificate needs at least one name")
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pylb self-signed"),
        x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
    ])
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise CertificateError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise CertificateError(f"{path}: is a directory, expected a PEM file") from e
    except OSError as e:
        raise CertificateError(f"{path}: cannot read: {e.strerror or e}") from e


def _is_key_block(label: bytes) -> bool:
    return label.endswith(b"PRIVATE KEY")


def _blocks(data: bytes, want: Callable[[bytes], bool]) -> list[bytes]:
    return [m.group(0) for m in _PEM_BLOCK.finditer(data) if want(m.group(1))]


def _ensure_nl(block: bytes) -> bytes:
    return block if block.endswith(b"\n") else block + b"\n"


def _load_key(block: bytes, path: str) -> PrivateKeyTypes:
    if b"ENCRYPTED" in block.split(b"\n", 1)[0] or b"Proc-Type: 4,ENCRYPTED" in block:
        raise CertificateError(
            f"{path}: the private key is encrypted; pylb needs it unencrypted")
    try:
        return serialization.load_pem_private_key(block, password=None)
    except TypeError as e:
        raise CertificateError(
            f"{path}: the private key is encrypted; pylb needs it unencrypted") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"{path}: the private key does not parse: {e}") from e


def _key_type(key: PrivateKeyTypes, path: str) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateError(
                f"{path}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed")
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC-{key.curve.name}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "Ed448"
    raise CertificateError(f"{path}: unsupported private key type {type(key).__name__}")


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    ips: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names += [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        ips += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        cn = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
        cn = cn.lower()
        if cn and cn not in names and cn not in ips:
            names.append(cn)
    return tuple(dict.fromkeys(names)), tuple(ips)


def _is_ca_only(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def _chain_warnings(certs: list[x509.Certificate]) -> list[str]:
    warnings: list[str] = []
    for i in range(len(certs) - 1):
        child, parent = certs[i], certs[i + 1]
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            warnings.append(
                f"certificate #{i + 2} ({_subject(parent)}) did not issue #{i + 1} "
                f"({_subject(child)}): the chain is out of order or incomplete")
    return warnings
