"""parse_client_hello_sni on real ClientHellos (from Python's ssl via MemoryBIO), cut,
re-framed, and on garbage."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.tls_sni import MAX_CLIENT_HELLO, NEED_MORE, NeedMore, parse_client_hello_sni


def client_hello(server_hostname: str | None, *, max_version: ssl.TLSVersion | None = None,
                 alpn: tuple[str, ...] = ()) -> bytes:
    """The first flight a Python ssl client sends: exactly one ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def reframe(hello: bytes, size: int) -> bytes:
    """The same handshake message split into records of at most `size` bytes."""
    assert hello[0] == 0x16
    body = hello[5:5 + struct.unpack(">H", hello[3:5])[0]]
    out = b""
    for i in range(0, len(body), size):
        chunk = body[i:i + size]
        out += hello[:3] + struct.pack(">H", len(chunk)) + chunk
    return out


HELLO = client_hello("www.example.com", alpn=("h2", "http/1.1"))
NO_SNI = client_hello(None)


@pytest.mark.parametrize(("name", "expected"), [
    ("www.example.com", "www.example.com"),
    ("WWW.Example.COM", "www.example.com"),
    ("a", "a"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("under_score.example", "under_score.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
])
def test_real_hello_gives_the_name(name: str, expected: str) -> None:
    assert parse_client_hello_sni(client_hello(name)) == expected


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_each_protocol_version(version: ssl.TLSVersion) -> None:
    assert parse_client_hello_sni(client_hello("v.example", max_version=version)) == "v.example"


def test_no_server_name_is_none() -> None:
    assert parse_client_hello_sni(NO_SNI) is None


def test_ip_address_sends_no_sni() -> None:
    # Python (like browsers) sends no SNI for an IP literal (RFC 6066 forbids it).
    assert parse_client_hello_sni(client_hello("127.0.0.1")) is None


def test_bytes_after_the_hello_are_ignored() -> None:
    assert parse_client_hello_sni(HELLO + b"\x17\x03\x03\x00\x05hello") == "www.example.com"


def test_every_prefix_needs_more() -> None:
    for cut in range(len(HELLO)):
        assert parse_client_hello_sni(HELLO[:cut]) is NEED_MORE, cut


@pytest.mark.parametrize("size", [1, 3, 4, 7, 100, 511])
def test_hello_split_over_records(size: int) -> None:
    framed = reframe(HELLO, size)
    assert parse_client_hello_sni(framed) == "www.example.com"
    for cut in range(0, len(framed), max(1, len(framed) // 97)):
        assert parse_client_hello_sni(framed[:cut]) is NEED_MORE, cut


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"\x80\x2e\x01\x03\x01",  # SSLv2-compatible hello
    b"\x15\x03\x03\x00\x02\x02\x28",  # an alert
    b"\x16\x02\x00\x00\x01\x01",  # record version 2.0
    b"\x16\x03\x01\x00\x00",  # empty record
    b"\x16\x03\x01\x40\x01",  # record longer than 2^14
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
    b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # ClientHello claims 16 MiB
    b"\x16",
    b"\x16\x03",
])
def test_not_a_client_hello(data: bytes) -> None:
    result = parse_client_hello_sni(data)
    if len(data) <= 2:
        assert result is NEED_MORE
    else:
        assert result is None


def test_first_bytes_of_garbage_fail_fast() -> None:
    assert parse_client_hello_sni(b"G") is None
    assert parse_client_hello_sni(b"\x16\x04") is None
    assert parse_client_hello_sni(b"") is NEED_MORE


def test_hello_larger_than_the_limit_is_refused() -> None:
    body_len = MAX_CLIENT_HELLO - 3
    data = b"\x16\x03\x01\x40\x00\x01" + body_len.to_bytes(3, "big") + b"\x00" * (16384 - 4)
    assert parse_client_hello_sni(data) is None
    assert parse_client_hello_sni(data[:9]) is None


def _padded(hello: bytes, hs_len: int) -> bytes:
    """`hello` grown to a handshake message of `hs_len` bytes with a padding extension
    (RFC 7685), in one record."""
    body = bytearray(hello[9:])
    pos = 34
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher suites
    pos += 1 + body[pos]  # compression methods
    pad = hs_len - 4 - len(body) - 4
    ext_len = int.from_bytes(body[pos:pos + 2], "big") + 4 + pad
    body[pos:pos + 2] = ext_len.to_bytes(2, "big")
    body += b"\x00\x15" + pad.to_bytes(2, "big") + b"\x00" * pad
    hs = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def test_need_more_never_beyond_the_buffer_bound() -> None:
    tiny = reframe(HELLO, 1)  # 6 bytes on the wire per byte of hello
    assert parse_client_hello_sni(tiny) == "www.example.com"
    whole = _padded(HELLO, MAX_CLIENT_HELLO)
    assert len(whole) == MAX_CLIENT_HELLO + 5
    assert parse_client_hello_sni(whole) == "www.example.com"
    assert parse_client_hello_sni(whole[:-1]) is NEED_MORE
    assert parse_client_hello_sni(_padded(HELLO, MAX_CLIENT_HELLO + 1)[:100]) is None
    split = reframe(whole, 8000)  # the same hello in three records: 10 more bytes
    assert parse_client_hello_sni(split[:MAX_CLIENT_HELLO + 4]) is NEED_MORE
    for cut in (MAX_CLIENT_HELLO + 5, len(split) - 1):
        assert parse_client_hello_sni(split[:cut]) is None
    assert parse_client_hello_sni(split) == "www.example.com"  # complete: answered anyway


def _hello_with_sni_ext(ext: bytes) -> bytes:
    """A minimal ClientHello carrying one server_name extension with content `ext`."""
    body = (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack(">H", 4 + len(ext)) + b"\x00\x00" + struct.pack(">H", len(ext)) + ext)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def _names(*entries: tuple[int, bytes]) -> bytes:
    lst = b"".join(bytes([t]) + struct.pack(">H", len(n)) + n for t, n in entries)
    return struct.pack(">H", len(lst)) + lst


@pytest.mark.parametrize(("ext", "expected"), [
    (_names((0, b"ok.example")), "ok.example"),
    (_names((0, b"ok.example.")), "ok.example"),
    (_names((0, b"bad name")), None),
    (_names((0, b"bad..name")), None),
    (_names((0, b"-bad.example")), None),
    (_names((0, b"caf\xc3\xa9.example")), None),
    (_names((0, b"a" * 64 + b".example")), None),
    (_names((0, b"a.example"), (0, b"b.example")), None),  # two host names
    (_names((1, b"other"), (0, b"c.example")), "c.example"),  # unknown type skipped
    (_names((1, b"other")), None),
    (b"\x00\x06\x00\x00\x02ab", None),  # list length disagrees
    (b"\x00\x05\x00\x00\x03ab", None),  # name length overruns
    (b"", None),
])
def test_server_name_extension_table(ext: bytes, expected: str | None) -> None:
    assert parse_client_hello_sni(_hello_with_sni_ext(ext)) == expected


def test_duplicate_server_name_extension_is_refused() -> None:
    one = _hello_with_sni_ext(_names((0, b"a.example")))
    assert parse_client_hello_sni(one) == "a.example"
    ext = b"\x00\x00" + struct.pack(">H", 12) + _names((0, b"a.example"))
    body_start = 9
    body = bytearray(one[body_start:])
    ext_total_at = 2 + 32 + 1 + 4 + 2
    old_total = struct.unpack(">H", body[ext_total_at:ext_total_at + 2])[0]
    body[ext_total_at:ext_total_at + 2] = struct.pack(">H", old_total + len(ext))
    body += ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    assert parse_client_hello_sni(b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs) is None


def test_need_more_is_a_singleton_with_a_readable_repr() -> None:
    assert isinstance(NEED_MORE, NeedMore)
    assert repr(NEED_MORE) == "NEED_MORE"


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_client_hello_sni(data)
    assert result is None or result is NEED_MORE or isinstance(result, str)


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_behind_a_record_header_never_raise(tail: bytes) -> None:
    data = b"\x16\x03\x01" + struct.pack(">H", len(tail)) + tail
    result = parse_client_hello_sni(data)
    assert result is None or result is NEED_MORE or isinstance(result, str)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_real_hello_never_raises(data: st.DataObject) -> None:
    hello = bytearray(HELLO)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(hello) - 1))
        hello[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    result = parse_client_hello_sni(bytes(hello[:cut]))
    assert result is None or result is NEED_MORE or isinstance(result, str)
    if isinstance(result, str):
        assert result.isascii() and result == result.lower() and " " not in result
