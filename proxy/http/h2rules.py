"""HTTP/2 ↔ HTTP/1.1 translation rules: pure functions over header lists, no I/O.

A request stream's header block becomes a `parser.RequestHead` that `headers.request_head`
turns into an HTTP/1.1 head; an HTTP/1.1 response head becomes an h2 header block. What
makes a request malformed (RFC 9113 §8.1.1, §8.2, §8.3) is decided here, so that a
request that would read differently once written as HTTP/1.1 (the smuggling of the h2→h1
downgrade: CR/LF or spaces in `:path`, `transfer-encoding`, `connection`, a
`content-length` the DATA frames do not match) never reaches a backend. The h2 library
checks part of this too (with `validate_inbound_headers`); these checks do not rely on
it, and the ones it lacks (characters of `:path`, `:authority`, `:method`, and of
field values) are what make the downgrade safe.

A malformed request is a stream error of type PROTOCOL_ERROR (RFC 9113 §8.1.1): only that
stream is reset, the connection's other streams go on.
"""

from __future__ import annotations

import re

from proxy.http.parser import METHODS, RequestHead

Headers = list[tuple[bytes, bytes]]

# RFC 9113 §8.2.2: connection-specific fields are malformed in HTTP/2 ("te" is allowed
# with the value "trailers" only).
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"})
_PSEUDO_REQUEST = frozenset({b":method", b":scheme", b":authority", b":path"})
# RFC 9110 §5.1 token characters, lower case only (RFC 9113 §8.2.1: upper case in a
# field name is malformed).
_NAME = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
# RFC 9113 §8.2.1: a value must not contain NUL, CR or LF, nor start or end with
# whitespace.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
# :path: visible ASCII only (RFC 3986's characters; a space or a control character would
# split or end the HTTP/1.1 request line).
_PATH = re.compile(rb"^/[\x21-\x7e]*$")
_AUTHORITY = re.compile(rb"^[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+$")


class Malformed(Exception):
    """The request is malformed: a stream error of type PROTOCOL_ERROR."""


def request_head(headers: Headers, end_stream: bool, max_uri: int) -> RequestHead:
    """The HTTP/1.1 view of a request stream's header block (names lower case, pseudo
    fields first, as h2 hands them over); raises Malformed."""
    method = scheme = path = authority = None
    regular: Headers = []
    host: bytes | None = None
    length: int | None = None
    cookies: list[bytes] = []
    seen_regular = False
    for name, value in headers:
        if name[:1] == b":":
            if seen_regular or name not in _PSEUDO_REQUEST:
                raise Malformed(f"pseudo-header {name!r} misplaced or unknown")
            if name == b":method":
                if method is not None:
                    raise Malformed("repeated :method")
                method = value
            elif name == b":scheme":
                if scheme is not None:
                    raise Malformed("repeated :scheme")
                scheme = value
            elif name == b":path":
                if path is not None:
                    raise Malformed("repeated :path")
                path = value
            else:
                if authority is not None:
                    raise Malformed("repeated :authority")
                authority = value
            continue
        seen_regular = True
        if not _NAME.match(name):
            raise Malformed(f"bad field name {name!r}")
        if _BAD_VALUE.search(value):
            raise Malformed(f"bad value of {name!r}")
        if name in CONNECTION_SPECIFIC:
            raise Malformed(f"connection-specific field {name!r}")
        if name == b"te":
            if value != b"trailers":
                raise Malformed("te other than trailers")
            continue  # hop-by-hop: not forwarded to an HTTP/1.1 backend
        if name == b"host":
            if host is not None:
                raise Malformed("repeated host")
            host = value
            continue
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise Malformed("bad content-length")
            length = int(value)
            continue
        if name == b"cookie":
            cookies.append(value)  # RFC 9113 §8.2.3: joined with "; " for HTTP/1.1
            continue
        regular.append((name, value))
    if method is None or method == b"CONNECT":
        # CONNECT (RFC 9113 §8.5) and extended CONNECT are not proxied.
        raise Malformed("no :method, or CONNECT")
    if method not in METHODS:
        raise Malformed("unknown method")
    if scheme is None or path is None:
        raise Malformed("missing :scheme or :path")
    if path == b"*":
        if method != b"OPTIONS":
            raise Malformed("* without OPTIONS")
    elif not _PATH.match(path) or b"#" in path:
        raise Malformed("bad :path")
    if len(path) > max_uri:
        raise Malformed(":path too long")
    name_host = authority if authority is not None else host
    if not name_host or not _AUTHORITY.match(name_host):
        raise Malformed("no or bad :authority/host")
    if authority is not None and host is not None and host != authority:
        raise Malformed("host differs from :authority")  # RFC 9113 §8.3.1
    if end_stream and length:
        raise Malformed("content-length with no DATA")
    out: Headers = [(b"host", name_host)]
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    out += regular
    head = RequestHead(method, path, b"1.1", out)
    head.host = name_host
    head.content_length = length
    # A body of unknown length goes chunked to the HTTP/1.1 backend.
    head.chunked = length is None and not end_stream
    return head


# Fields a trailer section cannot carry (RFC 9110 §6.5.1: framing, routing, request
# modifiers, authentication, content format; their evaluation precedes the content): a
# sender must not generate them, so pylb forwards none (dropped, not a stream error:
# §6.5.2 lets a recipient discard trailer fields).
_NOT_IN_TRAILERS = frozenset({
    b"content-length", b"content-type", b"content-encoding", b"content-range", b"host",
    b"te", b"trailer", b"authorization", b"proxy-authorization", b"expect", b"range",
    b"max-forwards", b"cache-control", b"if-match", b"if-none-match",
    b"if-modified-since", b"if-unmodified-since", b"if-range", b"cookie", b"set-cookie"})


def request_trailers(headers: Headers) -> Headers:
    """The trailer section of a request stream, to forward (to an h2c server as a
    HEADERS frame with END_STREAM, to an HTTP/1.1 server as the chunked body's trailer
    section); raises Malformed. The rules of the header block apply (RFC 9113 §8.1: no
    pseudo-header; §8.2.1 and §8.2.2: names, values, connection-specific fields: a
    malformed stream), and what a trailer section cannot carry is dropped."""
    out: Headers = []
    for name, value in headers:
        if name[:1] == b":":
            raise Malformed("pseudo-header in trailers")
        if not _NAME.match(name):
            raise Malformed(f"bad trailer field name {name!r}")
        if _BAD_VALUE.search(value):
            raise Malformed(f"bad value of trailer {name!r}")
        if name in CONNECTION_SPECIFIC:
            raise Malformed(f"connection-specific field {name!r} in trailers")
        if name not in _NOT_IN_TRAILERS:
            out.append((name, value))
    return out


def chunked_end(trailers: Headers | None) -> bytes:
    """The last chunk of an HTTP/1.1 chunked body, with its trailer section (fields
    checked by `request_trailers`)."""
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n%s\r\n" % b"".join(b"%s: %s\r\n" % kv for kv in trailers)


def upstream_headers(req: RequestHead, target: bytes, *, client_ip: str, proto: bytes,
                     ssl_client: tuple[bytes, bytes] | None = None) -> Headers:
    """The header block sent to an h2c server: the request's (checked by
    `request_head`), `te: trailers` (gRPC servers require it, RFC 9113 §8.2.2 allows
    it) and the X-Forwarded-* fields HTTP/1.1 backends get."""
    out: Headers = [(b":method", req.method), (b":scheme", b"http"),
                    (b":authority", req.host), (b":path", target), (b"te", b"trailers")]
    xff = [v for k, v in req.headers if k == b"x-forwarded-for"]
    for k, v in req.headers[1:]:  # [0] is the host
        if k[:11] != b"x-forwarded" and k[:12] != b"x-ssl-client":  # (ours to set)
            out.append((k, v))
    xff.append(client_ip.encode())
    out += [(b"x-forwarded-for", b", ".join(xff)), (b"x-forwarded-proto", proto),
            (b"x-forwarded-host", req.host)]
    if ssl_client is not None:
        out += [(b"x-ssl-client-verify", ssl_client[0]), (b"x-ssl-client-dn", ssl_client[1])]
    return out


_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(headers: Headers) -> float | None:
    """The `grpc-timeout` of a gRPC request in seconds (gRPC over HTTP/2: 1 to 8 digits
    and a unit), or None."""
    for k, v in headers:
        if k == b"grpc-timeout":
            unit = _GRPC_UNITS.get(v[-1:])
            if unit is None or not v[:-1].isdigit() or len(v) > 9:
                return None
            return int(v[:-1]) * unit
    return None


def response_headers(status: int, headers: Headers, connection: frozenset[bytes],
                     hsts: bytes | None, set_cookie: bytes | None) -> Headers:
    """The h2 header block of an HTTP/1.1 response: `:status`, names in lower case,
    connection-specific fields (and those `Connection` names) dropped."""
    out: Headers = [(b":status", b"%d" % status)]
    for name, value in headers:
        lname = name.lower()
        if lname in CONNECTION_SPECIFIC or lname in connection or lname == b"te":
            continue
        if hsts is not None and lname == b"strict-transport-security":
            continue
        out.append((lname, value))
    if set_cookie is not None:
        out.append((b"set-cookie", set_cookie))
        out.append((b"cache-control", b'no-cache="set-cookie"'))
    if hsts is not None:
        out.append((b"strict-transport-security", hsts))
    return out
