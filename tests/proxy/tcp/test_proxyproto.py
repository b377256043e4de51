"""PROXY protocol v1/v2 encoding and parsing, byte-exact against the spec's examples."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.tcp.proxyproto import (
    NEED_MORE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.mark.parametrize(("src", "dst", "want"), [
    (("192.168.0.1", 56324), ("192.168.0.11", 443),
     b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
    (("2001:db8::1", 1), ("::1", 3306), b"PROXY TCP6 2001:db8::1 ::1 1 3306\r\n"),
    (("::ffff:10.0.0.1", 5), ("::ffff:10.0.0.2", 6), b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"),
    (("fe80::1%eth0", 5), ("fe80::2%eth0", 6), b"PROXY TCP6 fe80::1 fe80::2 5 6\r\n"),
    (("10.0.0.1", 5), ("::1", 6), b"PROXY TCP6 ::ffff:10.0.0.1 ::1 5 6\r\n"),
    (None, ("10.0.0.1", 80), b"PROXY UNKNOWN\r\n"),
    (("/run/x.sock", 0), ("10.0.0.1", 80), b"PROXY UNKNOWN\r\n"),
])
def test_encode_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None,
                   want: bytes) -> None:
    assert encode_v1(src, dst) == want


def test_encode_v2_tcp4() -> None:
    got = encode_v2(("10.1.2.3", 1000), ("10.9.8.7", 3306))
    assert got == (SIG + b"\x21\x11\x00\x0c" + bytes([10, 1, 2, 3, 10, 9, 8, 7])
                   + struct.pack("!HH", 1000, 3306))


def test_encode_v2_tcp6() -> None:
    got = encode_v2(("2001:db8::1", 1), ("::1", 2))
    assert got[:16] == SIG + b"\x21\x21\x00\x24"
    assert got[16:32] == bytes.fromhex("20010db8000000000000000000000001")
    assert got[32:48] == bytes(15) + b"\x01"
    assert got[48:] == b"\x00\x01\x00\x02"


def test_encode_v2_unknown() -> None:
    assert encode_v2(None, None) == SIG + b"\x21\x00\x00\x00"


@pytest.mark.parametrize("data", [
    b"", b"P", b"PROXY", b"PROXY TCP4 1.2.3.4", b"\r", SIG[:5], SIG, SIG + b"\x21\x11\x00\x0c",
    SIG + b"\x21\x11\x00\x0c" + bytes(11),
])
def test_parse_needs_more(data: bytes) -> None:
    assert parse(data) is NEED_MORE


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY " + b"x" * 120, b"PROXY TCP4\n", b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4),
    SIG + b"\x31\x11\x00\x00", SIG + b"\x22\x11\x00\x00", SIG + b"\x21\x11\x00\x04" + bytes(4),
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n",
])
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_parse_stops_at_header_end() -> None:
    h = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPAYLOAD")
    assert h == ProxyHeader(1, "TCP4", ("1.2.3.4", 1), ("5.6.7.8", 2), 32)
    v2 = encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2))
    assert parse(v2 + b"PAYLOAD") == ProxyHeader(2, "TCP4", ("1.2.3.4", 1), ("5.6.7.8", 2),
                                                 len(v2))


def test_parse_v2_local_and_tlvs() -> None:
    assert parse(SIG + b"\x20\x00\x00\x00") == ProxyHeader(2, "UNKNOWN", None, None, 16,
                                                          local=True)
    tlv = b"\x04\x00\x01\x00"  # PP2_TYPE_NOOP, skipped with the rest of the block
    body = bytes([1, 2, 3, 4, 5, 6, 7, 8]) + struct.pack("!HH", 9, 10) + tlv
    h = parse(SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body)
    assert h == ProxyHeader(2, "TCP4", ("1.2.3.4", 9), ("5.6.7.8", 10), 16 + len(body))


def _plain(a: IPv4Address | IPv6Address) -> bool:
    """Not IPv4-mapped IPv6 (encoders send those as TCP4)."""
    return not isinstance(a, IPv6Address) or a.ipv4_mapped is None


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6).filter(_plain))
ports = st.integers(0, 65535)


@given(ips, ports, ports, st.data())
def test_roundtrip(sip: IPv4Address | IPv6Address, sport: int, dport: int,
                   data: st.DataObject) -> None:
    version = sip.version
    dip = data.draw((st.ip_addresses(v=4) if version == 4 else st.ip_addresses(v=6))
                    .filter(_plain))
    src, dst = (str(sip), sport), (str(dip), dport)
    fam = "TCP4" if version == 4 else "TCP6"
    for ver, enc in ((1, encode_v1), (2, encode_v2)):
        raw = enc(src, dst)
        assert parse(raw) == ProxyHeader(ver, fam, src, dst, len(raw))
        for cut in range(len(raw)):
            assert parse(raw[:cut]) is NEED_MORE


@given(st.binary(max_size=64))
def test_parse_never_crashes(data: bytes) -> None:
    try:
        res = parse(V2_SIGNATURE[:1] + data)
        res2 = parse(b"P" + data)
    except ProxyProtocolError:
        return
    assert res is NEED_MORE or isinstance(res, ProxyHeader)
    assert res2 is NEED_MORE or isinstance(res2, ProxyHeader)
