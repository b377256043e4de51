"""Fuzzing the peeking parsers (issue #12): the PROXY protocol header (v1 and v2) and the
SNI of a TLS ClientHello. Properties (tests/hardening/_fuzzing.py): encode → parse round
trips for any addresses; any bytes give a header, NEED_MORE or the documented error
(ProxyProtocolError), consistently over prefixes and with bytes after the header; real
ClientHellos made by Python's ssl module give their name, whole, truncated (NEED_MORE),
cut into records of any size; random and mutated bytes never raise. The long run is
`python -m bench.fuzz --target proxyproto|sni`."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.tcp import proxyproto as pp
from proxy.tls_sni import NEED_MORE, parse_client_hello_sni
from tests.hardening._fuzzing import (
    Violation,
    check_proxyproto,
    check_proxyproto_roundtrip,
    check_sni,
    check_sni_hello,
    client_hello,
    mutate,
)

ports = st.integers(0, 65535)
addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["fe80::1%eth0", "0.0.0.0", "255.255.255.255", "::", "::1"]))


@settings(max_examples=100, deadline=None)
@given(addresses, ports, addresses, ports, st.binary(max_size=20))
def test_proxyproto_round_trip(src: str, sport: int, dst: str, dport: int, tail: bytes
                               ) -> None:
    check_proxyproto_roundtrip((src, sport), (dst, dport), tail)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n")
@example(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0b" + bytes(11))
def test_proxyproto_random_bytes(data: bytes) -> None:
    check_proxyproto(data)


v1_parts = st.lists(st.sampled_from(
    ["PROXY", "TCP4", "TCP6", "UNKNOWN", "1.2.3.4", "::1", "::ffff:1.2.3.4", "fe80::1%lo",
     "80", "65535", "65536", "0", "00", "-1", "", " ", "1.2.3", "٣", "TCP5"]),
    min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(v1_parts, st.sampled_from(["\r\n", "\n", "\r", "", "\r\n\r\n"]),
       st.binary(max_size=8))
def test_proxyproto_v1_lines(parts: list[str], eol: str, tail: bytes) -> None:
    check_proxyproto((" ".join(parts) + eol).encode() + tail)


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.booleans(), st.integers(1, 4))
def test_proxyproto_mutated_headers(rng: random.Random, v2: bool, n: int) -> None:
    src = (rng.choice(["10.1.2.3", "2001:db8::7"]), rng.randrange(65536))
    dst = (rng.choice(["192.0.2.1", "2001:db8::1"]), rng.randrange(65536))
    header = (pp.encode_v2 if v2 else pp.encode_v1)(src, dst)
    check_proxyproto(mutate(rng, header, n))


def test_proxyproto_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were parse() to raise anything but its documented error, the check says so."""
    def broken(data: bytes) -> object:
        raise IndexError("oops")

    monkeypatch.setattr(pp, "parse", broken)
    with pytest.raises(IndexError):
        check_proxyproto(b"PROXY")


labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9_-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
host_names = st.lists(labels, min_size=1, max_size=4).map(".".join)


@settings(max_examples=15, deadline=None)
@given(host_names, st.booleans(), st.sampled_from(["TLSv1_2", "TLSv1_3"]),
       st.sampled_from([(), ("h2", "http/1.1")]), st.randoms(use_true_random=False))
def test_sni_of_real_client_hellos(name: str, dot: bool, version: str,
                                   alpn: tuple[str, ...], rng: random.Random) -> None:
    name = name + "." if dot else name
    check_sni_hello(client_hello(name, version, alpn), name, rng)


@pytest.mark.parametrize("name", [None, "10.0.0.1", "::1", "a" * 63 + ".example"])
def test_sni_special_names(name: str | None) -> None:
    check_sni_hello(client_hello(name), name, random.Random(0))


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 8), st.sampled_from(
    ["www.example.com", "a.b", None]))
def test_sni_mutated_client_hellos(rng: random.Random, n: int, name: str | None) -> None:
    got = check_sni(mutate(rng, client_hello(name), n))
    if isinstance(got, str):
        assert got == got.lower() and not got.endswith(".") and len(got) <= 253


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"", b"\x16", b"\x16\x03\x01", b"\x16\x03\x01\x02\x00\x01",
                        b"\x16\x03\x01\x40\x01"]), st.binary(max_size=300))
def test_sni_random_bytes(start: bytes, data: bytes) -> None:
    check_sni(start + data)


def test_sni_size_bound() -> None:
    """A ClientHello announcing the maximum length, fed as it arrives: NEED_MORE stops
    at the bound (check_sni asserts it for every length)."""
    head = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc"
    data = head + bytes(20000)
    for n in range(0, len(data), 997):
        check_sni(data[:n])
    assert parse_client_hello_sni(data) is None
    assert parse_client_hello_sni(data[:100]) is NEED_MORE


def test_sni_check_can_fail() -> None:
    with pytest.raises(Violation):
        check_sni(client_hello("a.example"), "b.example")
