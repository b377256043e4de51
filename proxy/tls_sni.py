"""The server name of a TLS ClientHello, read without terminating TLS (for passthrough).

`parse_client_hello_sni(data)` takes the first bytes a client sent on a TCP connection and
answers one of three things:

- a `str`: the ClientHello is complete and names this host (the `host_name` of its
  server_name extension, RFC 6066 §3), lowercased and without a trailing dot;
- `None`: no name can ever be had from this stream — a complete ClientHello without a
  server_name, a name that is not a valid DNS host name, or bytes that are not a TLS
  ClientHello at all (plain HTTP, SSLv2, garbage, a record or message that breaks the
  grammar or the size limits below);
- `NEED_MORE` (the one `NeedMore` instance): the bytes so far are a valid beginning of a
  ClientHello; call again with the same bytes plus what arrives next. The caller bounds
  the wait in time; in size, `NEED_MORE` is never the answer once `data` holds
  `MAX_CLIENT_HELLO + 5` bytes (the handshake message, at most `MAX_CLIENT_HELLO` bytes,
  plus a record header): a longer hello, or one cut into tiny records, gets `None`.

It is a pure function over bytes: no I/O, no state, and it never raises on any input
(the grammar is walked with explicit bounds checks; tests feed it random bytes). The
ClientHello may be split over several TLS records, as RFC 8446 §5.1 allows; records are
reassembled. Nothing after the ClientHello is looked at.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_CLIENT_HELLO", "NEED_MORE", "NeedMore", "parse_client_hello_sni"]


class NeedMore:
    """The type of `NEED_MORE`: not enough bytes yet to decide."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore()

# A ClientHello is usually 250-600 bytes; post-quantum key shares (X25519MLKEM768) bring
# it near 1.8 KiB. haproxy's `tcp-request inspect-delay` buffer is tune.bufsize (16 KiB);
# a hello larger than this is refused rather than buffered.
MAX_CLIENT_HELLO: Final = 16 * 1024

_RECORD_HANDSHAKE = 0x16
_HANDSHAKE_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_NAME_TYPE_HOST = 0x00
_MAX_RECORD = 1 << 14  # TLSPlaintext.length limit, RFC 8446 §5.1
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*")


def parse_client_hello_sni(data: bytes) -> str | NeedMore | None:
    """The SNI host name in `data`, `None` if there is none, or `NEED_MORE` (see module)."""
    hello = _reassemble(data)
    if isinstance(hello, NeedMore):
        return None if len(data) >= MAX_CLIENT_HELLO + 5 else hello
    if hello is None:
        return None
    return _server_name(hello)


def _reassemble(data: bytes) -> bytes | NeedMore | None:
    """The ClientHello handshake body (after its 4-byte header), from one or more records."""
    message = bytearray()
    need: int | None = None  # body length, once the 4-byte handshake header is in
    pos = 0
    n = len(data)
    while True:
        if n - pos < 5:
            # A partial record header: check what is there so garbage fails fast.
            head = data[pos:]
            if (head[:1] and head[0] != _RECORD_HANDSHAKE) or (
                    len(head) >= 2 and head[1] != 3):
                return None
            return NEED_MORE
        if data[pos] != _RECORD_HANDSHAKE or data[pos + 1] != 3:
            return None
        length = (data[pos + 3] << 8) | data[pos + 4]
        if length == 0 or length > _MAX_RECORD:
            return None
        fragment = data[pos + 5:pos + 5 + length]
        complete = len(fragment) == length
        message += fragment
        if need is None and len(message) >= 4:
            if message[0] != _HANDSHAKE_CLIENT_HELLO:
                return None
            need = (message[1] << 16) | (message[2] << 8) | message[3]
            if 4 + need > MAX_CLIENT_HELLO:
                return None
        if need is not None and len(message) >= 4 + need:
            return bytes(message[4:4 + need])
        if not complete:
            if need is None and message and message[0] != _HANDSHAKE_CLIENT_HELLO:
                return None
            return NEED_MORE
        pos += 5 + length


def _server_name(body: bytes) -> str | None:
    """Walk a ClientHello body to the server_name extension (RFC 8446 §4.1.2)."""
    end = len(body)
    pos = 2 + 32  # legacy_version, random
    if pos + 1 > end:
        return None
    pos += 1 + body[pos]  # legacy_session_id
    if pos + 2 > end:
        return None
    suites = (body[pos] << 8) | body[pos + 1]
    if suites == 0 or suites % 2:
        return None
    pos += 2 + suites
    if pos + 1 > end:
        return None
    pos += 1 + body[pos]  # legacy_compression_methods
    if pos == end:
        return None  # no extensions at all (an SSLv3/TLS 1.0 style hello)
    if pos + 2 > end:
        return None
    ext_len = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if pos + ext_len != end:
        return None
    found: str | None = None
    seen = False
    while pos < end:
        if pos + 4 > end:
            return None
        etype = (body[pos] << 8) | body[pos + 1]
        elen = (body[pos + 2] << 8) | body[pos + 3]
        pos += 4
        if pos + elen > end:
            return None
        if etype == _EXT_SERVER_NAME:
            if seen:
                return None  # a duplicated extension is a malformed hello (RFC 8446 §4.2)
            seen = True
            found = _host_name(body[pos:pos + elen])
            if found is None:
                return None
        pos += elen
    return found


def _host_name(ext: bytes) -> str | None:
    """The host_name in a ServerNameList (RFC 6066 §3), validated as a DNS name."""
    if len(ext) < 2:
        return None
    list_len = (ext[0] << 8) | ext[1]
    if list_len + 2 != len(ext) or list_len == 0:
        return None
    pos, end = 2, len(ext)
    name: str | None = None
    while pos < end:
        if pos + 3 > end:
            return None
        name_type = ext[pos]
        nlen = (ext[pos + 1] << 8) | ext[pos + 2]
        pos += 3
        if nlen == 0 or pos + nlen > end:
            return None
        if name_type == _NAME_TYPE_HOST:
            if name is not None:
                return None  # RFC 6066: at most one name of each type
            name = _valid_host(ext[pos:pos + nlen])
            if name is None:
                return None
        pos += nlen
    return name


def _valid_host(raw: bytes) -> str | None:
    if len(raw) > 254 or not raw.isascii():
        return None
    host = raw.decode("ascii").lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253 or not _HOST_NAME.fullmatch(host):
        return None
    return host
