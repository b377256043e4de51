"""PROXY protocol v1 and v2 (haproxy's `send-proxy` / `send-proxy-v2`), the header a TCP
frontend writes to a backend first so that the backend sees the client's address.

Both directions are pure functions over bytes: `encode_v1`/`encode_v2` build the header
from the client's and the frontend's addresses; `parse` reads one back (used by the tests,
by a test backend, and by the hardening fuzzer). Spec: haproxy's doc/proxy-protocol.txt.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the spec's worst case, CRLF included
_V2_HEAD = struct.Struct("!12sBBH")


class _Need(enum.Enum):
    MORE = "need-more"


NEED_MORE = _Need.MORE
"""`parse` returns this when the bytes so far are a valid prefix of a header."""


class ProxyProtocolError(ValueError):
    """The bytes are not a PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. `family` is "TCP4", "TCP6" or "UNKNOWN" (then no addresses);
    `length` is how many bytes the header took."""

    version: int
    family: str
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    length: int
    local: bool = False  # v2 LOCAL command (health checks): no addresses apply


def _split(addr: tuple[str, int]) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, addr[1]
    return ip, addr[1]


def _pair(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> tuple[
        ipaddress.IPv4Address | ipaddress.IPv6Address, int,
        ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """Both addresses of one family (IPv4-mapped IPv6 counts as IPv4), or None."""
    if src is None or dst is None:
        return None
    try:
        sip, sport = _split(src)
        dip, dport = _split(dst)
    except ValueError:
        return None
    if sip.version != dip.version:
        # A v4 client on a v6 listener whose own address is not mapped: speak v6 for both.
        sip, dip = (ipaddress.IPv6Address(f"::ffff:{sip}") if sip.version == 4 else sip,
                    ipaddress.IPv6Address(f"::ffff:{dip}") if dip.version == 4 else dip)
    return sip, sport, dip, dport


def encode_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """`PROXY TCP4 1.2.3.4 5.6.7.8 1234 80\\r\\n`; `PROXY UNKNOWN\\r\\n` when the addresses
    are not IP (a UNIX socket) or unknown."""
    p = _pair(src, dst)
    if p is None:
        return b"PROXY UNKNOWN\r\n"
    sip, sport, dip, dport = p
    fam = "TCP4" if sip.version == 4 else "TCP6"
    return f"PROXY {fam} {_text(sip)} {_text(dip)} {sport} {dport}\r\n".encode("ascii")


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as text; IPv4-mapped IPv6 in its dotted form on every Python."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def encode_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """The binary header: the PROXY command over TCP4/TCP6; family UNSPEC when the
    addresses are unknown (the spec: the receiver then uses the connection's own)."""
    p = _pair(src, dst)
    if p is None:
        return _V2_HEAD.pack(V2_SIGNATURE, 0x21, 0x00, 0)
    sip, sport, dip, dport = p
    if sip.version == 4:
        body = sip.packed + dip.packed + struct.pack("!HH", sport, dport)
        return _V2_HEAD.pack(V2_SIGNATURE, 0x21, 0x11, len(body)) + body
    body = sip.packed + dip.packed + struct.pack("!HH", sport, dport)
    return _V2_HEAD.pack(V2_SIGNATURE, 0x21, 0x21, len(body)) + body


def parse(data: bytes) -> ProxyHeader | _Need:
    """Parse a header at the start of `data`: a `ProxyHeader`, `NEED_MORE`, or raise
    `ProxyProtocolError`. Never reads past the header."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        return NEED_MORE
    raise ProxyProtocolError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | _Need:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if not b"PROXY ".startswith(data[:6]) or len(data) >= V1_MAX or b"\n" in data:
            raise ProxyProtocolError("bad v1 header")
        return NEED_MORE
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError as e:
        raise ProxyProtocolError("v1 header is not ASCII") from e
    parts = line.split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyProtocolError("bad v1 header")
    if parts[1] == "UNKNOWN":
        return ProxyHeader(1, "UNKNOWN", None, None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("bad v1 header")
    want = 4 if parts[1] == "TCP4" else 6
    try:
        sip = ipaddress.ip_address(parts[2])
        dip = ipaddress.ip_address(parts[3])
        sport, dport = _port(parts[4]), _port(parts[5])
    except ValueError as e:
        raise ProxyProtocolError(f"bad v1 header: {e}") from e
    if sip.version != want or dip.version != want:
        raise ProxyProtocolError("v1 address family mismatch")
    return ProxyHeader(1, parts[1], (str(sip), sport), (str(dip), dport), end + 2)


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"bad port {text!r}")
    n = int(text)
    if n > 65535:
        raise ValueError(f"bad port {text!r}")
    return n


def _parse_v2(data: bytes) -> ProxyHeader | _Need:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyProtocolError("bad v2 signature")
        return NEED_MORE
    sig, ver_cmd, fam, length = _V2_HEAD.unpack_from(data)
    if sig != V2_SIGNATURE:
        raise ProxyProtocolError("bad v2 signature")
    if ver_cmd >> 4 != 2 or ver_cmd & 0xF > 1:
        raise ProxyProtocolError("bad v2 version/command")
    if len(data) < 16 + length:
        return NEED_MORE
    total = 16 + length
    local = ver_cmd & 0xF == 0
    body = data[16:total]
    if local or fam == 0x00:
        return ProxyHeader(2, "UNKNOWN", None, None, total, local=local)
    if fam == 0x11:
        if length < 12:
            raise ProxyProtocolError("v2 TCP4 body too short")
        s = ipaddress.IPv4Address(body[0:4])
        d = ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack_from("!HH", body, 8)
        return ProxyHeader(2, "TCP4", (str(s), sport), (str(d), dport), total)
    if fam == 0x21:
        if length < 36:
            raise ProxyProtocolError("v2 TCP6 body too short")
        s6 = ipaddress.IPv6Address(body[0:16])
        d6 = ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
        return ProxyHeader(2, "TCP6", (str(s6), sport), (str(d6), dport), total)
    return ProxyHeader(2, "UNKNOWN", None, None, total)
