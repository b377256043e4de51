"""Header rewriting between client and backend: pure functions over header lists.

Requests: hop-by-hop fields go (RFC 9110 §7.6.1: Connection and every field it names,
Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade); X-Forwarded-For
is appended to, X-Forwarded-Proto/-Host/-Port are set (any the client sent are replaced),
X-SSL-Client-* are set from the TLS session or removed, and the affinity cookie is taken
out of Cookie (haproxy's `cookie … indirect`: the backend never sees it). The framing is
ours: the message goes to the backend as HTTP/1.1, its body length or chunked.

Responses: the same hop-by-hop removal, our own framing and Connection, the affinity
cookie inserted with `Cache-Control: no-cache="set-cookie"` (haproxy's `nocache`) and,
on the TLS frontend, Strict-Transport-Security.
"""

from __future__ import annotations

from proxy.http.parser import Headers, RequestHead, ResponseHead, cut

_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade"))
_REQ_DROP = _HOP | frozenset((b"content-length", b"x-forwarded-proto", b"x-forwarded-host",
                              b"x-forwarded-port", b"x-forwarded-for", b"x-ssl-client-verify",
                              b"x-ssl-client-dn"))
_RESP_DROP = _HOP | frozenset((b"content-length",))
# Field names, as usually spelt, that pass through unchanged both ways (unless Connection
# names them): no lower() for them. Connection tokens that name no such field:
_PLAIN = frozenset((b"Date", b"ETag", b"Server", b"Accept", b"User-Agent", b"Content-Type",
                    b"Last-Modified", b"Accept-Ranges", b"Accept-Encoding", b"Vary",
                    b"Accept-Language", b"Location", b"Referer", b"Origin", b"Expires",
                    b"Content-Encoding", b"If-None-Match", b"If-Modified-Since",
                    b"Authorization", b"Host", b"Expect"))
_USUAL_TOKENS = frozenset((b"keep-alive", b"close", b"upgrade"))
# Fields a client's Connection cannot make hop-by-hop: a request without Host is invalid.
_NOT_HOP = frozenset((b"host",))


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of `name` (lower case)."""
    n = len(name)
    for k, v in headers:
        if len(k) == n and k.lower() == name:
            return v
    return None


def find_cookie(headers: Headers, name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's Cookie header(s), if any."""
    for k, v in headers:
        if len(k) == 6 and k.lower() == b"cookie" and name in v:
            for part in v.split(b";"):
                key, eq, value = part.strip().partition(b"=")
                if eq and key == name:
                    return value.strip().strip(b'"')
    return None


def remove_cookie(value: bytes, name: bytes) -> bytes:
    """A Cookie header value without cookie `name` (b"" when nothing is left)."""
    kept = [p.strip() for p in value.split(b";")]
    kept = [p for p in kept if p and p.partition(b"=")[0].strip() != name]
    return b"; ".join(kept)


def request_head(head: RequestHead, target: bytes, *, client_ip: str, proto: bytes,
                 port: int, chunked: bool, affinity_cookie: bytes | None = None,
                 ssl_client: tuple[bytes, bytes] | None = None) -> bytes:
    """The head sent to the backend (a complete HTTP/1.1 head, CRLF CRLF included).

    `chunked`: the body is re-framed as chunks (the client sent chunks); otherwise the
    client's Content-Length, if any, is kept. `ssl_client`: (verify, DN) of a TLS client
    certificate."""
    named = head.connection
    raw = head.raw
    if raw is not None and named <= _USUAL_TOKENS and affinity_cookie is None \
            and head.version == b"1.1":
        # The fields as read, but for those the parser's scan marked to drop
        # (parser.analyze_request_raw), then ours, in the order of the list-based path.
        if head.drops:  # the parser's scan cut them already (remembered with the scan)
            kept = head.kept
            raw = kept if kept is not None else cut(raw, head.drops)
        seen = head.xff
        client = client_ip.encode()
        out = [b"%s %s HTTP/1.1%sX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n"
               b"X-Forwarded-Host: %s\r\nX-Forwarded-Port: %d\r\n"
               % (head.method, target, raw, b"%s, %s" % (b", ".join(seen), client)
                  if seen else client, proto, head.host, port)]
        if ssl_client is not None:
            out.append(b"X-SSL-Client-Verify: %s\r\nX-SSL-Client-DN: %s\r\n" % ssl_client)
        if head.upgrade and head.upgrade_value is not None:
            out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % head.upgrade_value)
        elif chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif head.content_length is not None:
            out.append(b"Content-Length: %d\r\n" % head.content_length)
        out.append(b"\r\n")
        return b"".join(out)
    headers = head.headers
    if b"host" in named:
        named = named - _NOT_HOP
    out = [b"%s %s HTTP/1.1\r\n" % (head.method, target)]
    if head.version == b"1.0" and get_header(headers, b"host") is None:
        # HTTP/1.1 needs one: the absolute-form target's authority, else empty (RFC 9112
        # §3.2)
        out.append(b"Host: %s\r\n" % head.host)
    xff: list[bytes] = []
    upgrade: bytes | None = None
    plain = _PLAIN if named <= _USUAL_TOKENS else frozenset()
    for k, v in headers:
        if k in plain:
            out += (k, b": ", v, b"\r\n")
            continue
        lk = k.lower()
        if lk in _REQ_DROP or lk in named:
            if lk == b"x-forwarded-for":
                xff.append(v)
            elif lk == b"upgrade":
                upgrade = v
            continue
        if affinity_cookie is not None and lk == b"cookie" and affinity_cookie in v:
            v = remove_cookie(v, affinity_cookie)
            if not v:
                continue
        out.append(b"%s: %s\r\n" % (k, v))
    xff.append(client_ip.encode())
    out.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n"
               b"X-Forwarded-Port: %d\r\n" % (b", ".join(xff), proto, head.host, port))
    if ssl_client is not None:
        out.append(b"X-SSL-Client-Verify: %s\r\nX-SSL-Client-DN: %s\r\n" % ssl_client)
    if head.upgrade and upgrade is not None:
        out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
    elif chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        out.append(b"Content-Length: %d\r\n" % head.content_length)
    out.append(b"\r\n")
    return b"".join(out)


# Response framing towards the client.
FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE = range(4)


def response_framing(resp: ResponseHead, client_version: bytes) -> int:
    if resp.no_body or resp.status == 101:
        return FRAME_NONE
    if resp.content_length is not None:
        return FRAME_LENGTH
    return FRAME_CHUNKED if client_version == b"1.1" else FRAME_CLOSE


def response_head(resp: ResponseHead, framing: int, *, keep_alive: bool,
                  client_version: bytes, set_cookie: bytes | None = None,
                  hsts: bytes | None = None) -> bytes:
    """The head sent to the client. `keep_alive` says whether pylb keeps the client
    connection open after this response; `set_cookie` is a complete Set-Cookie value."""
    named = resp.connection
    raw = resp.raw
    if raw is not None and resp.status != 101 and named <= _USUAL_TOKENS:
        # The head as read, but for the fields the parser's scan marked to drop
        # (parser.analyze_response_raw): no list of fields, no lower() per field.
        drops = resp.drops
        if hsts is not None and resp.sts:
            raw = cut(raw, sorted(drops + resp.sts))
        elif drops:  # the parser's scan cut them already (remembered with the scan)
            kept = resp.kept
            raw = kept if kept is not None else cut(raw, drops)
        if set_cookie is None and not hsts and framing != FRAME_CHUNKED:
            if not keep_alive:
                last = b"Connection: close\r\n\r\n"
            elif client_version == b"1.0":
                last = b"Connection: keep-alive\r\n\r\n"
            else:
                last = b"\r\n"
            return b"HTTP/1.1 %d %s%s%s" % (resp.status, resp.reason, raw, last)
        out = [b"HTTP/1.1 %d %s%s" % (resp.status, resp.reason, raw)]
        if set_cookie is not None:
            out.append(b'Set-Cookie: %s\r\nCache-Control: no-cache="set-cookie"\r\n'
                       % set_cookie)
        if hsts:
            out.append(b"Strict-Transport-Security: %s\r\n" % hsts)
        if framing == FRAME_CHUNKED:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        elif client_version == b"1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        return b"".join(out)
    headers = resp.headers
    out = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason)]
    upgrade: bytes | None = None
    plain = _PLAIN if named <= _USUAL_TOKENS else frozenset()
    for k, v in headers:
        if k in plain:
            out += (k, b": ", v, b"\r\n")
            continue
        lk = k.lower()
        if lk in _RESP_DROP or lk in named:
            if lk == b"upgrade":
                upgrade = v
            elif lk == b"content-length" and framing != FRAME_CHUNKED \
                    and framing != FRAME_CLOSE:
                out.append(b"%s: %s\r\n" % (k, v))
            continue
        if hsts is not None and lk == b"strict-transport-security":
            continue
        out.append(b"%s: %s\r\n" % (k, v))
    if set_cookie is not None:
        out.append(b'Set-Cookie: %s\r\nCache-Control: no-cache="set-cookie"\r\n' % set_cookie)
    if hsts:
        out.append(b"Strict-Transport-Security: %s\r\n" % hsts)
    if resp.status == 101:
        out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % (upgrade or b""))
    elif framing == FRAME_CHUNKED:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if resp.status != 101:
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        elif client_version == b"1.0":
            out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def ssl_client_dn(cert: dict[str, object]) -> bytes:
    """RFC 4514-style string of a certificate subject as `ssl.getpeercert()` gives it
    (most specific RDN first, special characters escaped)."""
    subject = cert.get("subject") or ()
    parts: list[str] = []
    for rdn in reversed(subject):  # type: ignore[call-overload]
        attrs = []
        for key, value in rdn:
            short = _RDN_NAMES.get(key, key)
            attrs.append(f"{short}={_escape_dn(str(value))}")
        parts.append("+".join(attrs))
    return ",".join(parts).encode("utf-8", "replace")


_RDN_NAMES = {"commonName": "CN", "countryName": "C", "localityName": "L",
              "stateOrProvinceName": "ST", "organizationName": "O",
              "organizationalUnitName": "OU", "domainComponent": "DC", "userId": "UID",
              "streetAddress": "STREET", "emailAddress": "emailAddress"}


def _escape_dn(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch in " #" and i == 0) or (ch == " " and i == len(value) - 1):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)
