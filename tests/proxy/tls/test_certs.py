"""check_pem: every problem stops start-up with a message naming the file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.certs import (
    CertificateError,
    check_pem,
    find_key_file,
    generate_self_signed,
    is_ca_bundle,
    load_pem,
)
from tests.proxy.tls.helpers import write_leaf

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _leaf(ca: trustme.CA, *names: str, **kw: object) -> trustme.LeafCert:
    return ca.issue_cert(*names, common_name=names[0], **kw)  # type: ignore[arg-type]


def test_good_file_gives_names_expiry_and_key(ca: trustme.CA, tmp_path: Path) -> None:
    p = write_leaf(ca, tmp_path / "site.pem", "www.example.com", "*.example.com",
                   not_after=NOW + dt.timedelta(days=30, hours=1))
    info = check_pem(str(p), NOW)
    assert info.path == str(p)
    assert info.names == ("www.example.com", "*.example.com")
    assert info.days_left == 30
    assert info.key_type == "EC-secp256r1"
    assert info.chain_length == 1
    assert not info.self_signed
    assert info.warnings == ()
    assert info.at(NOW + dt.timedelta(days=31)).days_left == -1
    assert check_pem(str(p), NOW.replace(tzinfo=None)).days_left == 30  # naive = UTC


def test_rsa_key_and_intermediate_chain(tmp_path: Path) -> None:
    root = trustme.CA()
    inter = root.create_child_ca()
    p = write_leaf(inter, tmp_path / "chain.pem", "a.example", key_type=trustme.KeyType.RSA)
    info = check_pem(str(p), NOW)
    assert info.key_type == "RSA-2048"
    assert info.chain_length == 2
    assert info.warnings == ()


def test_chain_out_of_order_is_a_warning(tmp_path: Path) -> None:
    root = trustme.CA()
    inter = root.create_child_ca()
    leaf = _leaf(inter, "a.example")
    chain = [b.bytes() for b in leaf.cert_chain_pems]
    p = tmp_path / "bad-order.pem"
    p.write_bytes(chain[0] + root.cert_pem.bytes() + leaf.private_key_pem.bytes())
    info = check_pem(str(p), NOW)
    assert len(info.warnings) == 1
    assert "out of order" in info.warnings[0]


def _expect(path: Path, fragment: str) -> None:
    with pytest.raises(CertificateError) as e:
        check_pem(str(path), NOW)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    assert fragment in msg, msg


def test_key_mismatch(ca: trustme.CA, tmp_path: Path) -> None:
    a, b = _leaf(ca, "a.example"), _leaf(ca, "b.example")
    p = tmp_path / "mismatch.pem"
    p.write_bytes(a.cert_chain_pems[0].bytes() + b.private_key_pem.bytes())
    _expect(p, "does not match the certificate")


def test_key_matches_a_later_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    a, b = _leaf(ca, "a.example"), _leaf(ca, "b.example")
    p = tmp_path / "order.pem"
    p.write_bytes(a.cert_chain_pems[0].bytes() + b.cert_chain_pems[0].bytes()
                  + b.private_key_pem.bytes())
    _expect(p, "matches certificate #2")


def test_expired(ca: trustme.CA, tmp_path: Path) -> None:
    p = write_leaf(ca, tmp_path / "old.pem", "a.example",
                   not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1))
    _expect(p, "expired on")


def test_not_yet_valid(ca: trustme.CA, tmp_path: Path) -> None:
    p = write_leaf(ca, tmp_path / "future.pem", "a.example",
                   not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=90))
    _expect(p, "not valid before")


def test_no_key(ca: trustme.CA, tmp_path: Path) -> None:
    p = tmp_path / "nokey.pem"
    p.write_bytes(_leaf(ca, "a.example").cert_chain_pems[0].bytes())
    _expect(p, "no private key")


def test_no_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    p = tmp_path / "keyonly.pem"
    p.write_bytes(_leaf(ca, "a.example").private_key_pem.bytes())
    _expect(p, "no certificate")


@pytest.mark.parametrize("content", [b"", b"hello world\n", bytes(range(256)) * 4])
def test_garbage(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "garbage.pem"
    p.write_bytes(content)
    _expect(p, "not a PEM file")


def test_corrupt_base64(ca: trustme.CA, tmp_path: Path) -> None:
    good = write_leaf(ca, tmp_path / "good.pem", "a.example").read_bytes()
    lines = good.split(b"\n")
    lines[3] = b"A" * len(lines[3])
    p = tmp_path / "corrupt.pem"
    p.write_bytes(b"\n".join(lines))
    _expect(p, "does not parse")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    _expect(tmp_path / "absent.pem", "no such file")
    _expect(tmp_path, "is a directory")


def test_encrypted_key(ca: trustme.CA, tmp_path: Path) -> None:
    leaf = _leaf(ca, "a.example")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"secret"))
    p = tmp_path / "enc.pem"
    p.write_bytes(leaf.cert_chain_pems[0].bytes() + enc)
    _expect(p, "encrypted")


def test_weak_rsa_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 1024)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "weak.example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    p = tmp_path / "weak.pem"
    p.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    _expect(p, "1024 bits")


@pytest.mark.parametrize(("crt", "key"), [("tls.crt", "tls.key"), ("site.pem", "site.pem.key"),
                                          ("site.pem", "site.key")])
def test_key_beside_the_certificate(ca: trustme.CA, tmp_path: Path, crt: str,
                                    key: str) -> None:
    leaf = _leaf(ca, "a.example")
    (tmp_path / crt).write_bytes(leaf.cert_chain_pems[0].bytes())
    (tmp_path / key).write_bytes(leaf.private_key_pem.bytes())
    assert find_key_file(str(tmp_path / crt)) == str(tmp_path / key)
    loaded = load_pem(str(tmp_path / crt), NOW)
    assert loaded.info.names == ("a.example",)
    assert loaded.sources == (str(tmp_path / crt), str(tmp_path / key))
    assert b"PRIVATE KEY" in loaded.pem


def test_ca_bundle_is_recognised(ca: trustme.CA, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem.bytes())
    assert is_ca_bundle(str(tmp_path / "ca.crt"))
    leaf = write_leaf(ca, tmp_path / "leaf.pem", "a.example")
    assert not is_ca_bundle(str(leaf))


def test_self_signed_passes_its_own_check(tmp_path: Path) -> None:
    pem = generate_self_signed(["localhost", "127.0.0.1"], now=NOW)
    p = tmp_path / "self.pem"
    p.write_bytes(pem)
    info = check_pem(str(p), NOW)
    assert info.self_signed
    assert info.names == ("localhost",)
    assert info.ip_addresses == ("127.0.0.1",)
    assert info.days_left == 365
    with pytest.raises(ValueError):
        generate_self_signed([])
