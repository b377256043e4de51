"""HTTP/1.x parsing behind one small interface, with two implementations.

Theory of operation. A parser takes bytes (`feed`) and calls a sink back: `on_head` with a
fully analysed head, `on_body` with decoded body bytes, `on_end` at the end of a message.
It never does I/O. The two implementations are interchangeable and pass the same tests:

- `h11`: the reference. h11 tokenizes each head (we find the end of the head, check it
  lexically, and hand exactly those bytes to h11's head reader, `_h11_request`); the body is framed
  here (`BodyFramer`): Content-Length bodies pass through as they arrive, with no parser
  event per chunk, and chunked bodies go through a strict decoder.
- `httptools`: llhttp in C does everything; its callbacks feed the same analysis. A
  head's field lines are scanned in one regex pass, remembered by their exact bytes
  (`_REQUEST_SCANS`, `_RESPONSE_SCANS`, as the h11 path remembers h11's verdicts): what
  depends on more than those bytes is checked on every head. A whole read that was one
  bodiless request is remembered whole (`_READS`): the same read again gets the same
  head without llhttp; so does a whole keep-alive response in one read whose head was
  seen before (`_RESPONSE_HEADS`). Before the memo, a read is compared with the last
  one met there: one for all requests (`known_request`, asked by connections without a
  parser and by parsers at rest alike), one per response parser (its server's last head).

Both heads go through `analyze_request` / `analyze_response`, where the rules that prevent
request smuggling live in one place: one Content-Length of digits only, no
Content-Length with Transfer-Encoding, no transfer coding but `chunked`, HTTP/1.0 or 1.1
only, Host required in 1.1. Lexically both reject obs-fold, bare CR or LF, NUL and space
before a colon; only the methods llhttp knows are taken (`METHODS`), and bytes after a
request that closes the connection are ignored. One leniency of llhttp remains: it skips
repeated spaces in the request line, which h11 refuses (the differential tests allow that
one: it does not move message boundaries). Limits (`Limits`): a target longer than
`max_uri` → 414; a head longer than `max_request_head` or with more than `max_headers`
fields → 431; anything else malformed → 400. A parser that raised is dead: the caller
answers and closes.

Request targets and Host (tests/hardening/test_smuggling.py holds the table of bad
requests and haproxy 2.6's verdicts beside pylb's). A target is origin-form (no `#`),
`*` for OPTIONS only, or absolute-form `http[s]://authority…` (pylb is no forward proxy:
no other scheme, no authority-form, so no CONNECT). RFC 9112 §3.2.2 has a server route
by an absolute-form target's authority and ignore Host; pylb routes on the authority and
forwards Host, so the two must agree: a Host that differs from the authority (but for
case and a default port) is a 400, as in haproxy 2.x. The backend gets the origin form,
and a 1.0 request without Host gets the authority as its Host. Host must be uri-host
[":" port] (RFC 9110 §4.2: no space, userinfo, `/`...); empty is allowed (RFC 9112 §3.2).
Also refused: Transfer-Encoding in a 1.0 request (RFC 9112 §6.1: faulty framing);
`Transfer_Encoding` / `Content_Length` (valid tokens that CGI-style servers read as
framing); Content-Length, Transfer-Encoding and Connection among trailer fields. Empty
lines (CRLF, or a bare CR or LF as llhttp takes them) before a request line are skipped.

An upgrade request (Upgrade + Connection: upgrade, no body) ends parsing: the bytes after
it are kept in `upgrade_rest` for the tunnel. Responses are parsed by a fresh
`ResponseParser` per exchange, told the request method (HEAD responses have no body);
interim 1xx answers go to `on_interim`, 101 ends parsing like an upgrade request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import h11

# h11's own head readers, the functions its Connection calls for a request or response
# head (private names: pyproject pins h11 to the versions where they are as used here;
# `tests/proxy/http/test_parser.py::test_h11_readers_judge_as_h11_connection` checks
# they still judge as the public Connection does). See `_h11_request`.
from h11._readers import maybe_read_from_IDLE_client as _h11_read_request
from h11._readers import maybe_read_from_SEND_RESPONSE_server as _h11_read_response
from h11._receivebuffer import ReceiveBuffer as _H11Buffer

from pylb.config import HttpParser, Limits
from pylb.failures import Failure

try:  # the optional [fast] extra
    import httptools
except ImportError:  # pragma: no cover - httptools is installed with the test extra
    httptools = None  # type: ignore[assignment]

Headers = list[tuple[bytes, bytes]]
_T = TypeVar("_T")
_HTTPTOOLS = HttpParser.HTTPTOOLS  # (an Enum member's lookup costs ten times a global's)

_DIGITS = re.compile(rb"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# Chunk extensions as llhttp takes them (checked against it on random input): each `;`
# run followed by a token, `=value` or both; a value is a token or a quoted string.
_TCHARS = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\r\n\x00])*"'
_CHUNK_EXT = re.compile(rb"(?:;+(?:%s(?:=(?:%s|%s)?)?|=(?:%s|%s)?))*" % (
    _TCHARS, _TCHARS, _QUOTED, _TCHARS, _QUOTED))
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # CR, LF: _check_head_bytes
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"))
# The methods llhttp knows (RFC 9110, WebDAV, CalDAV, PATCH, PURGE, QUERY...): h11 would
# take any token, and both parsers must accept the same requests. Others get a 400.
# CONNECT is refused too: pylb is not a forward proxy.
METHODS = frozenset(
    b"DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH "
    b"UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split())


class ParseError(Exception):
    """Malformed or oversized input; `failure` says what the client is told."""

    def __init__(self, failure: Failure, detail: str = "") -> None:
        super().__init__(detail or failure.label)
        self.failure = failure


class RequestHead:
    __slots__ = ("_headers", "chunked", "connection", "content_length", "drops",
                 "expect_continue", "host", "idempotent", "keep_alive", "kept", "method",
                 "raw", "remembered", "target", "upgrade", "upgrade_value", "version", "xff")

    def __init__(self, method: bytes, target: bytes, version: bytes,
                 headers: Headers | None) -> None:
        self.method = method
        self.idempotent = method in _IDEMPOTENT  # safe to send again (read per request)
        self.target = target
        self.version = version  # b"1.0" or b"1.1"
        # Names as received; values without surrounding blanks. Or (the httptools
        # parser) the field lines as read, `raw`, with what its scan found: `drops`, the
        # spans `headers.request_head` cuts; `xff`, X-Forwarded-For values; the last
        # Upgrade value (see `analyze_request_raw`).
        self._headers = headers
        self.raw: bytes | None = None
        self.drops: list[tuple[int, int]] = _NO_SPANS
        self.kept: bytes | None = None  # `raw` without the `drops` spans, when known
        self.xff: list[bytes] | None = None
        self.upgrade_value: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False
        self.host = b""
        self.connection: frozenset[bytes] = _NO_TOKENS  # tokens of Connection, lower case
        # The parser remembers this head (`_READS`): the same bytes will give this very
        # object again, so what is worked out from it is worth keeping (ClientProtocol's
        # route decision). The one field set after the head is handed out (by the parser,
        # at the end of the read that made it); a hint, never a fact of the request.
        self.remembered = False

    @property
    def headers(self) -> Headers:
        """The fields as (name, value) pairs, made from `raw` when first asked for."""
        headers = self._headers
        if headers is None:
            headers = self._headers = _field_list(self.raw or b"")
        return headers

    @headers.setter
    def headers(self, headers: Headers) -> None:
        self._headers = headers
        self.raw = self.kept = None  # changed: sent from the list

    def replaced(self, headers: Headers) -> RequestHead:
        """This head with other fields (gwplane's header filters), as a copy: a head the
        parser made may be shared by several exchanges (`_READS`), so none changes it."""
        head = RequestHead(self.method, self.target, self.version, headers)
        head.drops = self.drops
        head.xff = self.xff
        head.upgrade_value = self.upgrade_value
        head.content_length = self.content_length
        head.chunked = self.chunked
        head.keep_alive = self.keep_alive
        head.upgrade = self.upgrade
        head.expect_continue = self.expect_continue
        head.host = self.host
        head.connection = self.connection
        return head

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead:
    __slots__ = ("_headers", "chunked", "connection", "content_length", "drops", "keep_alive",
                 "kept", "no_body", "raw", "reason", "sent", "status", "sts", "version")

    def __init__(self, status: int, reason: bytes, version: bytes,
                 headers: Headers | None) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        # Either the fields as a list, or (the httptools parser) the head's field lines as
        # read, `raw`, with the spans a proxy drops (`drops`: hop-by-hop fields;
        # `sts`: Strict-Transport-Security) found by one scan: see `analyze_response_raw`.
        self._headers = headers
        self.raw: bytes | None = None
        self.drops: list[tuple[int, int]] = _NO_SPANS
        self.sts: list[tuple[int, int]] = _NO_SPANS
        self.kept: bytes | None = None  # `raw` without the `drops` spans, when known
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.no_body = False  # HEAD, 1xx, 204, 304: framing headers say nothing
        self.connection: frozenset[bytes] = _NO_TOKENS
        # The head as `headers.response_head` last wrote it for a client, with what that
        # depended on besides this head: (client version, keep-alive, hsts, bytes). Set
        # by the client side (server.ClientProtocol.on_response) for a head written with
        # no cookie and no filter, and used again when the parser hands the same head
        # out again (`_RESPONSE_HEADS`).
        self.sent: tuple[bytes, bool, bytes | None, bytes] | None = None

    @property
    def headers(self) -> Headers:
        """The fields as (name, value) pairs, values without surrounding blanks (made
        from `raw` when first asked for: the proxy's own path never asks)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = _field_list(self.raw or b"")
        return headers

    @headers.setter
    def headers(self, headers: Headers) -> None:
        self._headers = headers
        self.raw = self.kept = None

    def edited(self, headers: Headers) -> ResponseHead:
        """A copy of this head with `headers` for its fields (sent from the list): the
        Gateway's response filters edit this copy, never the head itself, which the
        httptools parser may hand out again for the next response with the same bytes
        (`_RESPONSE_HEADS`)."""
        head = ResponseHead(self.status, self.reason, self.version, headers)
        head.content_length = self.content_length
        head.chunked = self.chunked
        head.keep_alive = self.keep_alive
        head.no_body = self.no_body
        head.connection = self.connection
        return head


def cut(raw: bytes, drops: Sequence[tuple[int, int]]) -> bytes:
    """`raw` without the (start, end) byte ranges `drops` (in order, not overlapping):
    the fields the parser's scan marked to drop, the rest forwarded as read."""
    parts: list[bytes] = []
    pos = 0
    for start, end in drops:
        parts.append(raw[pos:start])
        pos = end
    parts.append(raw[pos:])
    return b"".join(parts)


class RequestSink(Protocol):
    def on_head(self, head: RequestHead) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...


class ResponseSink(Protocol):
    def on_interim(self, head: ResponseHead) -> None: ...
    def on_response(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...


# -- analysis shared by both parsers -----------------------------------------------------


_HOST, _EXPECT, _UPGRADE, _CONNECTION, _CONTENT_LENGTH, _TRANSFER_ENCODING = range(6)
_SPECIAL = {b"host": _HOST, b"expect": _EXPECT, b"upgrade": _UPGRADE,
            b"connection": _CONNECTION, b"content-length": _CONTENT_LENGTH,
            b"transfer-encoding": _TRANSFER_ENCODING}
_SPECIAL_LENGTHS = frozenset(len(k) for k in _SPECIAL)
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
# Exact spellings seen on most requests and responses: special ones map to their kind,
# common others to -1, so that most fields need neither lower() nor a second lookup.
_KNOWN: dict[bytes, int] = {
    **dict.fromkeys((b"Date", b"date", b"ETag", b"etag", b"Server", b"server", b"Accept",
                     b"accept", b"User-Agent", b"user-agent", b"Content-Type",
                     b"content-type", b"Last-Modified", b"last-modified", b"Accept-Ranges",
                     b"Cache-Control", b"Accept-Encoding", b"Accept-Language", b"Cookie",
                     b"Set-Cookie", b"Vary", b"Location", b"Referer", b"Origin"), -1),
    **_SPECIAL, **{k.title(): v for k, v in _SPECIAL.items()}}
_NO_TOKENS: frozenset[bytes] = frozenset()
_NO_SPANS: list[tuple[int, int]] = []  # shared, never appended to


# Connection values as usually sent, already split into their tokens.
_USUAL_CONNECTION: dict[bytes, frozenset[bytes]] = {
    v: frozenset((v.lower(),)) for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close",
                                         b"upgrade", b"Upgrade")}

# What one pass over the header fields found (only the fields that matter here):
# (Content-Length, chunked, first Host, number of Host fields, Connection tokens, Upgrade
# present, Expect value).
_Scan = tuple[int | None, bool, bytes, int, frozenset[bytes], bool, bytes | None]


def _scan(headers: Headers, failure: Failure) -> _Scan:
    length: int | None = None
    chunked = False
    seen_te = False
    host = b""
    hosts = 0
    tokens = _NO_TOKENS
    upgrade = False
    expect: bytes | None = None
    for name, value in headers:
        kind = _KNOWN.get(name)
        if kind is None:
            if len(name) not in _SPECIAL_LENGTHS:
                continue
            lname = name.lower()
            kind = _SPECIAL.get(lname)
            if kind is None:
                if b"_" in name and failure is Failure.BAD_REQUEST \
                        and lname.replace(b"_", b"-") in _FRAMING:
                    # Valid tokens, but CGI and WSGI servers map '_' and '-' alike
                    # (HTTP_TRANSFER_ENCODING): a backend could frame by them.
                    raise ParseError(failure, "framing field spelt with '_'")
                continue
        elif kind < 0:
            continue
        if kind == _CONTENT_LENGTH:
            if length is not None or not _DIGITS.fullmatch(value):
                raise ParseError(failure, "bad or repeated Content-Length")
            length = int(value)
        elif kind == _TRANSFER_ENCODING:
            if seen_te or value.strip().lower() != b"chunked":
                raise ParseError(failure, "unsupported Transfer-Encoding")
            seen_te = chunked = True
        elif kind == _CONNECTION:
            more = _USUAL_CONNECTION.get(value)
            if more is None:
                more = frozenset(t.strip().lower() for t in value.split(b",")) - {b""}
            tokens = tokens | more if tokens else more
        elif kind == _HOST:
            if not hosts:
                host = value
            hosts += 1
        elif kind == _UPGRADE:
            upgrade = True
        else:
            expect = value
    if chunked and length is not None:
        raise ParseError(failure, "Content-Length with Transfer-Encoding")
    return length, chunked, host, hosts, tokens, upgrade, expect


def analyze_request(method: bytes, target: bytes, version: bytes, headers: Headers,
                    limits: Limits) -> RequestHead:
    """Check a tokenized request head and derive its framing and connection semantics."""
    if len(target) > limits.max_uri:
        raise ParseError(Failure.URI_TOO_LONG)
    if len(headers) > limits.max_headers:
        raise ParseError(Failure.HEADERS_TOO_LARGE, "too many header fields")
    authority = _check_request_line(method, target, version)
    head = RequestHead(method, target, version, headers)
    return _request_semantics(head, authority,
                              _scan(headers, Failure.BAD_REQUEST))


def _check_request_line(method: bytes, target: bytes, version: bytes) -> bytes | None:
    """The checks of the request line; the authority of an absolute-form target."""
    if version != b"1.1" and version != b"1.0":
        raise ParseError(Failure.BAD_REQUEST, "unsupported HTTP version")
    if method not in METHODS:
        raise ParseError(Failure.BAD_REQUEST, "unknown method")
    if not target:
        raise ParseError(Failure.BAD_REQUEST, "bad request target")
    if target[0] == 0x2F:  # origin-form, nearly every request
        if 0x23 in target:  # "#"; an int is the fast operand of bytes.__contains__
            raise ParseError(Failure.BAD_REQUEST, "fragment in request target")
        return None
    if target == b"*":
        if method != b"OPTIONS":
            raise ParseError(Failure.BAD_REQUEST, "asterisk-form target without OPTIONS")
        return None
    return _absolute_authority(target)


def _request_semantics(head: RequestHead, authority: bytes | None,
                       scan: _Scan) -> RequestHead:
    length, chunked, host, hosts, tokens, upgrade, expect = scan
    version = head.version
    target = head.target
    head.content_length = length
    head.chunked = chunked
    if chunked and version == b"1.0":
        raise ParseError(Failure.BAD_REQUEST, "Transfer-Encoding in HTTP/1.0")
    if hosts > 1 or (version == b"1.1" and not hosts):
        raise ParseError(Failure.BAD_REQUEST, "missing or repeated Host")
    if hosts:
        head.host = host
        if host and not _valid_host(host):
            raise ParseError(Failure.BAD_REQUEST, "bad Host")
        if authority is not None and not _same_authority(authority, host, target):
            raise ParseError(Failure.BAD_REQUEST, "Host differs from the target's authority")
    elif authority is not None:
        head.host = authority
    head.connection = tokens
    if version == b"1.1":
        head.keep_alive = b"close" not in tokens
    else:
        head.keep_alive = b"keep-alive" in tokens
    if upgrade and b"upgrade" in tokens:
        head.upgrade = True
        if chunked or length or version != b"1.1":
            raise ParseError(Failure.BAD_REQUEST, "upgrade request with a body")
    if expect is not None:
        if expect.lower() != b"100-continue":
            raise ParseError(Failure.BAD_REQUEST, "unsupported Expect")
        head.expect_continue = version == b"1.1"
    return head


# The request fields pylb acts on or replaces, in a head's field lines lower-cased (each
# line preceded by CRLF): group 1 the name, group 2 the value without leading blanks.
# (Scanning the lower-cased bytes costs sre a third less than a case-insensitive group.)
# The spellings with '_' are here to be refused (see `_scan`); `close` for a field that
# `Connection: close` makes hop-by-hop.
_REQ_FIELDS = re.compile(
    rb"\r\n(host|content[-_]length|transfer[-_]encoding|connection|expect|upgrade|"
    rb"keep-alive|proxy-connection|te|trailer|x-forwarded-(?:for|proto|host|port)|"
    rb"x-ssl-client-(?:verify|dn)|close):[ \t]*([^\r]*)")
_REQ_KEEP = frozenset((b"host", b"expect", b"close"))  # not dropped (close: see above)
_REQ_KEEP_ALL_BUT_CLOSE = frozenset((b"host", b"expect"))
_NOTHING_FOUND: _Scan = (None, False, b"", 0, _NO_TOKENS, False, None)


def _as_sent(raw: bytes, low: bytes, key: bytes, value: bytes, nth: int = 0) -> bytes:
    """The `nth` (from 0) value of field `key` (b"\\r\\nname:") as sent, not lower-cased:
    `value` is it lower-cased; `raw` and `low` have the same offsets."""
    at = low.find(key)
    while nth:
        at = low.find(key, at + 1)
        nth -= 1
    at = low.find(value, at + len(key))  # past the blanks before the value
    return raw[at:at + len(value)]


def analyze_request_raw(method: bytes, target: bytes, version: bytes, raw: bytes,
                        limits: Limits) -> RequestHead:
    """`analyze_request` for a head llhttp has taken, from its field lines as read
    (`raw`: each preceded by CRLF, the last followed by one; b"\r\n" when there are
    none). llhttp has refused anything but CRLF line ends, obs-fold, controls and bad
    tokens, so the lines are exactly the fields: one scan finds those that framing,
    routing and the forwarded head need, and the same rules as `_scan` apply to them in
    the same order. The rest is forwarded as read (`headers.request_head`)."""
    if len(target) > limits.max_uri:
        raise ParseError(Failure.URI_TOO_LONG)
    scan = _REQUEST_SCANS.get(raw)
    n = raw.count(b"\n") - 1 if scan is None else scan[5]  # the field lines
    if n > limits.max_headers:
        raise ParseError(Failure.HEADERS_TOO_LARGE, "too many header fields")
    # The per-field path's size: name + value + 4 per field, and the target; the raw
    # length + n bounds it from above, so it is counted exactly only near the limit.
    if len(raw) + n + len(target) > limits.max_request_head and sum(
            len(k) + len(v) + 4 for k, v in _field_list(raw)) + len(target) \
            > limits.max_request_head:
        raise ParseError(Failure.HEADERS_TOO_LARGE)
    if target and target[0] == 0x2F and 0x23 not in target and version == b"1.1" \
            and method in METHODS:
        authority = None  # _check_request_line's answer for nearly every request
    else:
        authority = _check_request_line(method, target, version)
    head = RequestHead(method, target, version, None)
    head.raw = raw
    if scan is None:
        scan = _scan_request_raw(raw, n)
        if len(raw) <= _SCAN_HEAD_MAX:
            if len(_REQUEST_SCANS) >= _SCANS_MAX:
                _REQUEST_SCANS.clear()
            _REQUEST_SCANS[raw] = scan
    fields, head.drops, head.kept, head.xff, head.upgrade_value, _ = scan
    return _request_semantics(head, authority, fields)


# What `_scan_request_raw` found in the field lines of the request heads seen lately, by
# their exact bytes (a keep-alive client repeats its head's fields byte for byte: wrk,
# health checks, API clients, a browser between two cookie changes; the request line
# is not in them). As `_RESPONSE_SCANS`, for the same reasons and with the same bounds;
# the limits, the request line and the Host checks (`_request_semantics`) run on every
# head.
_RequestScan = tuple[_Scan, list[tuple[int, int]], bytes, "list[bytes] | None",
                     "bytes | None", int]
_REQUEST_SCANS: dict[bytes, _RequestScan] = {}


def _scan_request_raw(raw: bytes, n: int) -> _RequestScan:
    """What framing, routing and the forwarded head need of a request head's field
    lines (see `analyze_request_raw`; `n`: how many there are): `_request_semantics`'
    input, the spans to drop, the lines without them, the X-Forwarded-For values and the
    last Upgrade value as sent, and `n`; ParseError if they frame the message badly."""
    length: int | None = None
    chunked = False
    host = b""
    hosts = 0
    tokens = _NO_TOKENS
    upgrade = 0  # Upgrade fields seen
    expect: bytes | None = None
    close = False
    to_cut = False  # a field to drop was found
    # findall (tuples) costs sre half what finditer (match objects) does; the spans to
    # cut are looked for only when there is something to cut (most requests: nothing).
    low = raw.lower()
    found = _REQ_FIELDS.findall(low)
    if not found:
        return _NOTHING_FOUND, _NO_SPANS, raw, None, None, n
    drops = _NO_SPANS
    xff: list[bytes] | None = None
    upgrade_value: bytes | None = None
    for name, value in found:
        if value and value[-1] <= 0x20:  # SP or HTAB: llhttp refused other controls
            value = value.rstrip(b" \t")
        if name == b"host":
            if not hosts:
                # no letter in it (an address): as sent; else find it in `raw`
                host = value if value.upper() == value else \
                    _as_sent(raw, low, b"\r\nhost:", value)
            hosts += 1
            continue
        if name == b"expect":
            expect = value
            continue
        to_cut = True
        if name == b"close":
            close = True
        elif name == b"content-length":
            if length is not None or not _DIGITS.fullmatch(value):
                raise ParseError(Failure.BAD_REQUEST, "bad or repeated Content-Length")
            length = int(value)
        elif name == b"connection":
            more = _USUAL_CONNECTION.get(value)
            if more is None:
                more = frozenset(t.strip() for t in value.split(b",")) - {b""}
            tokens = tokens | more if tokens else more
        elif name == b"x-forwarded-for":
            if xff is None:
                xff = []
            xff.append(_as_sent(raw, low, b"\r\nx-forwarded-for:", value, len(xff)))
        elif name == b"transfer-encoding":
            if chunked or value != b"chunked":
                raise ParseError(Failure.BAD_REQUEST, "unsupported Transfer-Encoding")
            chunked = True
        elif name == b"upgrade":
            upgrade_value = _as_sent(raw, low, b"\r\nupgrade:", value, upgrade)
            upgrade += 1  # the last one is sent
        elif 0x5F in name:  # "_": content_length, transfer_encoding
            raise ParseError(Failure.BAD_REQUEST, "framing field spelt with '_'")
    if chunked and length is not None:
        raise ParseError(Failure.BAD_REQUEST, "Content-Length with Transfer-Encoding")
    if to_cut:
        # Connection: close makes a field named Close hop-by-hop (else it is kept)
        keep = _REQ_KEEP if not close or b"close" not in tokens else _REQ_KEEP_ALL_BUT_CLOSE
        # Each line to cut, found in order with two finds (cheaper than a second sre
        # pass): "\r\n" appears in the field lines only where a line starts, and a name's
        # fields are either all cut or all kept, so none is skipped.
        spans = drops = []
        pos = 0
        for name, _ in found:
            if name not in keep:
                pos = low.find(b"\r\n%s:" % name, pos)
                end = low.find(b"\r", pos + 2)
                spans.append((pos, end))
                pos = end
    return ((length, chunked, host, hosts, tokens, upgrade > 0, expect), drops,
            cut(raw, drops) if drops else raw, xff, upgrade_value, n)


# RFC 9110 §4.2 / RFC 3986 §3.2.2: a host is a reg-name (unreserved, pct-encoded,
# sub-delims) or an IP literal in brackets, then an optional port. Bytes outside this set
# (space, '@' of a userinfo, '/', controls, non-ASCII...) make a Host or authority invalid.
_HOST_BYTES = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~%!$&'()*+,;=:[]")
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}


_HOSTS_OK: set[bytes] = set()  # Host values found valid: most requests repeat a few


def _valid_host(host: bytes) -> bool:
    """`host` is uri-host [":" port], the port 1 to 5 digits."""
    if host in _HOSTS_OK:
        return True
    if not _check_host(host):
        return False
    if len(_HOSTS_OK) >= 1024:  # clients choose Host: the set stays small
        _HOSTS_OK.clear()
    _HOSTS_OK.add(host)
    return True


def _check_host(host: bytes) -> bool:
    if host.translate(None, _HOST_BYTES):
        return False
    if host[0] == 0x5B:  # "[": an IP literal
        end = host.find(b"]")
        if end < 2 or host.find(b"[", 1) >= 0 or host.find(b"]", end + 1) >= 0 \
                or host[1:end].translate(None, b"0123456789abcdefABCDEF:."):
            return False
        port = host[end + 1:]
    else:
        # An int operand: `b"[" in host` costs a TypeError inside bytes.__contains__.
        if 0x5B in host or 0x5D in host:
            return False
        colon = host.find(b":")
        port = host[colon:] if colon >= 0 else b""
        if colon == 0:
            return False
    return not port or (port[0] == 0x3A and 2 <= len(port) <= 6 and port[1:].isdigit())


def _absolute_authority(target: bytes) -> bytes:
    """The authority of an absolute-form target `http[s]://authority[/path][?query]`;
    anything else that is not origin- or asterisk-form is a bad target (pylb is no
    forward proxy: no other scheme, no authority-form)."""
    sep = target.find(b"://")
    if sep < 0 or target[:sep].lower() not in _DEFAULT_PORTS or 0x23 in target:
        raise ParseError(Failure.BAD_REQUEST, "bad request target")
    rest = target[sep + 3:]
    end = len(rest)
    for c in (b"/", b"?"):
        i = rest.find(c)
        if 0 <= i < end:
            end = i
    authority = rest[:end]
    if not authority or not _valid_host(authority):
        raise ParseError(Failure.BAD_REQUEST, "bad authority in request target")
    return authority


def _same_authority(authority: bytes, host: bytes, target: bytes) -> bool:
    """RFC 9112 §3.2.2 has a server take an absolute-form target's authority and ignore
    Host. Two components that each pick one differ on where a request goes (an ACL
    checked on one, the backend routed on the other), so pylb, like haproxy 2.x, refuses
    a Host that disagrees with the authority: equal but for case and a default port."""
    if authority == host:
        return True
    default = _DEFAULT_PORTS[target[:target.find(b":")].lower()]
    a = authority.lower()
    h = host.lower()
    if a.endswith(default):
        a = a[:-len(default)]
    if h.endswith(default):
        h = h[:-len(default)]
    return a == h


def analyze_response(status: int, reason: bytes, version: bytes, headers: Headers,
                     method: bytes) -> ResponseHead:
    if version != b"1.1" and version != b"1.0":
        raise ParseError(Failure.BAD_RESPONSE, "unsupported HTTP version")
    if not 100 <= status <= 999:
        raise ParseError(Failure.BAD_RESPONSE, "bad status")
    head = ResponseHead(status, reason, version, headers)
    length, chunked, _, _, tokens, _, _ = _scan(headers, Failure.BAD_RESPONSE)
    head.content_length = length
    head.chunked = chunked
    no_body = head.no_body = (method == b"HEAD" or status < 200 or status == 204
                              or status == 304)
    head.connection = tokens
    head.keep_alive = (b"close" not in tokens) if version == b"1.1" else b"keep-alive" in tokens
    if not no_body and length is None and not chunked:
        head.keep_alive = False  # delimited by close
    return head


# The response fields a proxy acts on, in a head's field lines (each line preceded by
# CRLF, see `analyze_response_raw`): group 1 the name (any case), group 2 the value
# without leading blanks; the span from the CRLF before the line to the CRLF ending it
# is what dropping the line cuts. `close` is here for `Connection: close`, which
# makes a field named Close hop-by-hop (as `headers.response_head` drops it).
_RESP_FIELDS = re.compile(
    rb"\r\n((?i:content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|"
    rb"trailer|upgrade|strict-transport-security|close)):[ \t]*([^\r]*)")
# (A greedy value, its trailing blanks cut in Python: a lazy one with a look-ahead for
# the CRLF costs sre twice the instructions.)


def analyze_response_raw(status: int, line: bytes, version: bytes, raw: bytes,
                         method: bytes) -> ResponseHead:
    """`analyze_response` for a head llhttp has taken, from its bytes: `line` the status
    line, `raw` its field lines as read, each preceded by CRLF and the last followed by
    one (b"\r\n" when there are none). llhttp has refused anything but CRLF line ends,
    obs-fold, controls and bad tokens, so the lines are exactly the fields; one scan
    finds the few that framing and hop-by-hop removal need, and the rest is forwarded as
    read (`headers.response_head`), never split into a list."""
    if version != b"1.1" and version != b"1.0":
        raise ParseError(Failure.BAD_RESPONSE, "unsupported HTTP version")
    if not 100 <= status <= 999:
        raise ParseError(Failure.BAD_RESPONSE, "bad status")
    # llhttp's status line: "HTTP/d.d ddd" then " reason" or nothing
    head = ResponseHead(status, line[13:], version, None)
    head.raw = raw
    scan = _RESPONSE_SCANS.get(raw)
    if scan is None:
        scan = _scan_response_raw(raw)
        if len(raw) <= _SCAN_HEAD_MAX:
            if len(_RESPONSE_SCANS) >= _SCANS_MAX:
                _RESPONSE_SCANS.clear()
            _RESPONSE_SCANS[raw] = scan
    length, chunked, tokens, drops, sts, head.kept = scan
    head.drops = drops
    head.sts = sts
    head.content_length = length
    head.chunked = chunked
    no_body = head.no_body = (method == b"HEAD" or status < 200 or status == 204
                              or status == 304)
    head.connection = tokens
    head.keep_alive = (b"close" not in tokens) if version == b"1.1" else b"keep-alive" in tokens
    if not no_body and length is None and not chunked:
        head.keep_alive = False  # delimited by close
    return head


# What `_scan_response_raw` found in the field lines of the response heads seen lately,
# by their exact bytes: a backend repeats its head byte for byte (nginx's changes with
# its Date field, once a second; an API server's with its Content-Length). The scan is a
# pure function of those bytes, so a head seen before gets the same answer without the
# sre pass (~2.5 us of the ~3 us `analyze_response_raw` took for nginx's 9 fields);
# what depends on more (status, version, the request's method) is worked out for every
# head. Heads the scan refused are not remembered. Bounded as h11's verdicts are: heads
# of at most 1 KiB, 128 per kind, emptied when full (~0.3 MiB at most per worker, with
# the field lines the response is forwarded with, `kept`). The lists in an answer are
# shared by the heads that get it: nothing changes them.
_ResponseScan = tuple["int | None", bool, frozenset[bytes], list[tuple[int, int]],
                      list[tuple[int, int]], bytes]
_RESPONSE_SCANS: dict[bytes, _ResponseScan] = {}
_SCANS_MAX = 128
# The httptools parser goes one step further for the commonest response: a final,
# keep-alive, Content-Length-framed one to a request other than HEAD. Its whole head
# (status line to the empty line) maps to the head analysed from it, which the next
# response with the same bytes gets as it is, with neither llhttp nor the analysis
# (`HttptoolsResponseParser.feed`): nothing else in it depends on more than those bytes
# (the request method only through HEAD, which is not remembered). Heads refused by
# llhttp or the analysis never get here. The heads are shared by every response that
# gets them: nothing changes one (a Gateway's response filters edit a copy,
# `ResponseHead.edited`). Bounded as `_RESPONSE_SCANS`.
_RESPONSE_HEADS: dict[bytes, ResponseHead] = {}
_SCAN_HEAD_MAX = 1024


def _scan_response_raw(raw: bytes) -> _ResponseScan:
    """Content-Length, chunked, the Connection tokens, the spans to drop and the
    Strict-Transport-Security spans of a response head's field lines (see
    `analyze_response_raw`), and the lines without the spans to drop; ParseError if they
    frame the message badly."""
    if raw.count(b"\n") > 1001:  # as the list-based path: more than 1,000 fields
        raise ParseError(Failure.BAD_RESPONSE, "too many response header fields")
    length: int | None = None
    chunked = False
    tokens = _NO_TOKENS
    drops: list[tuple[int, int]] | None = None
    sts: list[tuple[int, int]] | None = None
    close: list[tuple[int, int]] | None = None
    for m in _RESP_FIELDS.finditer(raw):
        name, value = m.groups()
        name = name.lower()
        if value and value[-1] <= 0x20:  # SP or HTAB: llhttp refused other controls
            value = value.rstrip(b" \t")
        if name == b"content-length":
            if length is not None or not _DIGITS.fullmatch(value):
                raise ParseError(Failure.BAD_RESPONSE, "bad or repeated Content-Length")
            length = int(value)
            continue
        if name == b"strict-transport-security":
            if sts is None:
                sts = []
            sts.append(m.span())
            continue
        if name == b"close":
            if close is None:
                close = []
            close.append(m.span())
            continue
        if drops is None:
            drops = []
        drops.append(m.span())
        if name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise ParseError(Failure.BAD_RESPONSE, "unsupported Transfer-Encoding")
            chunked = True
        elif name == b"connection":
            more = _USUAL_CONNECTION.get(value)
            if more is None:
                more = frozenset(t.strip().lower() for t in value.split(b",")) - {b""}
            tokens = tokens | more if tokens else more
    if chunked and length is not None:
        raise ParseError(Failure.BAD_RESPONSE, "Content-Length with Transfer-Encoding")
    if close is not None and b"close" in tokens:
        drops = sorted((drops or []) + close)
    return (length, chunked, tokens, drops or _NO_SPANS, sts or _NO_SPANS,
            cut(raw, drops) if drops else raw)


def _field_list(raw: bytes) -> Headers:
    """The (name, value) pairs of field lines llhttp has taken (`analyze_response_raw`)."""
    out: Headers = []
    for line in raw.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


def _check_partial_head(buf: bytes, failure: Failure) -> None:
    """`_check_head_bytes` on the complete lines of a head still incomplete, so that a
    head with bare LFs (which never ends in CRLF CRLF) is refused at once."""
    last = buf.rfind(b"\n")
    if last >= 0:
        _check_head_bytes(buf[:last + 1], failure)


def _raw_headers(raw: bytes) -> Headers:
    """The header fields of a head h11 accepted, as sent: h11 merges repeated
    Content-Length fields, and the smuggling rules must see them as they came."""
    out: Headers = []
    for line in raw.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


def _check_head_bytes(head: bytes | bytearray, failure: Failure) -> None:
    """Lexical rules h11 is lenient about and llhttp is not: every line ends in CRLF
    (no bare LF, no bare CR), no obs-fold continuation lines, no control byte but HTAB
    (h11 takes any of them but NUL in a field value)."""
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        raise ParseError(failure, "bare CR or LF")
    if b"\n " in head or b"\n\t" in head:
        raise ParseError(failure, "obs-fold")
    if _CTL.search(head) is not None:
        raise ParseError(failure, "control byte in the head")


# -- body framing (used by the h11 implementation) ---------------------------------------

_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _CLOSE, _DONE = range(7)


class BodyFramer:
    """Decodes one message body: a Content-Length count, strict chunked, or until close.

    `feed` returns None while the body goes on, or the bytes that follow its end.
    """

    __slots__ = ("_buf", "_failure", "_left", "_max_line", "_on_body", "_state")

    def __init__(self, on_body: Callable[[bytes], None], length: int | None, chunked: bool,
                 failure: Failure, max_line: int = 16 * 1024) -> None:
        self._on_body = on_body
        self._failure = failure
        self._max_line = max_line
        self._buf = b""
        if chunked:
            self._state = _CHUNK_SIZE
            self._left = 0
        elif length is None:
            self._state = _CLOSE
            self._left = 0
        else:
            self._state = _LENGTH if length else _DONE
            self._left = length

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def until_close(self) -> bool:
        return self._state == _CLOSE

    def feed(self, data: bytes) -> bytes | None:
        on_body = self._on_body
        state = self._state
        if state == _LENGTH:
            n = len(data)
            if n < self._left:
                self._left -= n
                on_body(data)
                return None
            left = self._left
            self._left = 0
            self._state = _DONE
            if left:
                on_body(data[:left] if n > left else data)
            return data[left:]
        if state == _CLOSE:
            if data:
                on_body(data)
            return None
        if state == _DONE:
            return data
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> bytes | None:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        end = len(buf)
        on_body = self._on_body
        while pos < end:
            state = self._state
            if state == _CHUNK_DATA:
                take = min(self._left, end - pos)
                on_body(buf[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ParseError(self._failure, "chunk data not followed by CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                eol = self._line_end(buf, pos, "chunk size line too long")
                if eol < 0:
                    break
                line = buf[pos:eol]
                semi = line.find(b";")
                size = line if semi < 0 else line[:semi]
                if not _HEX.fullmatch(size) or b"\n" in line or b"\r" in line \
                        or b"\x00" in line \
                        or (semi >= 0 and _CHUNK_EXT.fullmatch(line, semi) is None):
                    raise ParseError(self._failure, "bad chunk size")
                self._left = int(size, 16)
                pos = eol + 2
                self._state = _CHUNK_DATA if self._left else _TRAILERS
            elif state == _TRAILERS:
                eol = self._line_end(buf, pos, "trailers too long")
                if eol < 0:
                    break
                line = buf[pos:eol]
                pos = eol + 2
                if not line:
                    self._state = _DONE
                    return buf[pos:]
                colon = line.find(b":")
                if colon <= 0 or not _TOKEN.fullmatch(line[:colon]) or b"\r" in line \
                        or b"\n" in line or _CTL.search(line, colon):
                    raise ParseError(self._failure, "bad trailer")
                name = line[:colon].lower()
                if name == b"content-length" or (self._failure is Failure.BAD_REQUEST and (
                        name == b"transfer-encoding" or name == b"connection")):
                    # Framing and connection fields have no place in trailers (RFC 9110
                    # §6.5.1). Refused where llhttp refuses them (Connection: see
                    # HttptoolsRequestParser.on_header), so that both parsers agree.
                    raise ParseError(self._failure, "framing field in trailers")
        self._buf = buf[pos:]
        return None

    def _line_end(self, buf: bytes, pos: int, too_long: str) -> int:
        """Where the CRLF ending the line at `pos` starts, or -1 while it is still to
        come. A bare LF is refused at once, as llhttp does: waiting for a CRLF that never
        comes would leave the two parsers disagreeing (one answers 400, one waits)."""
        lf = buf.find(b"\n", pos)
        if lf < 0:
            if len(buf) - pos > self._max_line:
                raise ParseError(self._failure, too_long)
            return -1
        if lf == pos or buf[lf - 1] != 0x0D:
            raise ParseError(self._failure, "bare LF in chunked framing")
        return lf - 1


# -- the interface ------------------------------------------------------------------------


class RequestParser(Protocol):
    upgrade_rest: bytes | None

    def feed(self, data: bytes) -> None: ...
    def drop(self) -> None:
        """The connection lets the parser go between two requests (proxy.http.idle):
        it must be freed now, by reference counting, not by a later run of the cyclic
        GC (the 10,000 parsers of as many idle connections would wait for a full
        collection, which idle connections never trigger)."""

    def at_rest(self) -> bool:
        """A message has ended, the connection stays open after it, and the parser holds
        no byte of a next one: a fresh parser would go on exactly where this one is."""


class ResponseParser(Protocol):
    upgrade_rest: bytes | None
    # Non-empty when bytes followed the response's end, or may have (httptools cannot say
    # where a HEAD response with a Content-Length ends): the connection is not reused.
    rest: bytes

    def feed(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...
    def reset(self, sink: ResponseSink, method: bytes, request_upgrade: bool = False
              ) -> bool: ...
    def drop(self) -> None:
        """The server connection has closed: the parser is never fed again and must be
        freed by reference counting, with the client connection its sink may still name
        (as RequestParser.drop)."""


class _Unowned:
    """The sink of a response parser after its response's end, the last callback of an
    exchange: the parser lets go of its sink just before it. A connection is pooled only
    after that end, and its parser is kept for the next exchange (`reset` is ~15x cheaper
    than a new httptools parser, and names the next sink), but must not keep the last
    client connection alive through its sink: up to `pool_per_server` dead
    ClientProtocols (their transports, parsers and buffers) per server would stay
    reachable as long as the pooled connections live."""

    __slots__ = ()

    def on_interim(self, head: ResponseHead) -> None:
        pass

    def on_response(self, head: ResponseHead) -> None:
        pass

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self) -> None:
        pass


_UNOWNED: ResponseSink = _Unowned()


def _h11_error(e: h11.ProtocolError, failure: Failure) -> ParseError:
    if e.error_status_hint == 431:
        return ParseError(Failure.HEADERS_TOO_LARGE, str(e))
    return ParseError(failure, str(e))


class H11RequestParser:
    __slots__ = ("_body", "_buf", "_last", "_limits", "_sink", "upgrade_rest")

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self._sink = sink
        self._limits = limits
        self._buf = b""
        self._body: BodyFramer | None = None
        self._last = False  # the last request ended: it did not keep the connection alive
        self.upgrade_rest: bytes | None = None

    def drop(self) -> None:
        pass  # in no cycle but the one through its sink, which the connection breaks

    def at_rest(self) -> bool:
        return not self._buf and self._body is None and not self._last \
            and self.upgrade_rest is None

    def feed(self, data: bytes) -> None:
        while data:
            if self.upgrade_rest is not None:
                self.upgrade_rest += data
                return
            body = self._body
            if body is not None:
                rest = body.feed(data)
                if rest is None:
                    return
                self._body = None
                self._sink.on_end()
                data = rest
                continue
            if self._last:
                return  # bytes after a request that closes the connection are ignored
            if not self._buf and (data[0] == 0x0D or data[0] == 0x0A):
                # RFC 9112 §2.2: empty lines before a request line are ignored; llhttp
                # skips any CR and LF there, and so does this path, to agree with it.
                data = data.lstrip(b"\r\n")
                continue
            buf = self._buf + data if self._buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                self._check_incomplete(buf)
                return
            self._buf = b""
            head = self._parse_head(buf[:end + 4])
            data = buf[end + 4:]
            self._last = not head.keep_alive
            self._sink.on_head(head)
            if head.upgrade:
                self.upgrade_rest = b""
                self._sink.on_end()
                continue
            if not head.has_body:
                self._sink.on_end()
                continue
            self._body = BodyFramer(self._sink.on_body, head.content_length, head.chunked,
                                    Failure.BAD_REQUEST)

    def _check_incomplete(self, buf: bytes) -> None:
        limits = self._limits
        eol = buf.find(b"\n")
        line = buf if eol < 0 else buf[:eol]
        sp = line.find(b" ")
        if sp >= 0:
            sp2 = line.find(b" ", sp + 1)
            if (sp2 if sp2 >= 0 else len(line)) - sp - 1 > limits.max_uri:
                raise ParseError(Failure.URI_TOO_LONG)
        if len(buf) > limits.max_request_head:
            raise ParseError(Failure.HEADERS_TOO_LARGE)
        if buf.count(b"\n") > limits.max_headers + 1:
            raise ParseError(Failure.HEADERS_TOO_LARGE, "too many header fields")
        _check_partial_head(buf, Failure.BAD_REQUEST)

    def _parse_head(self, raw: bytes) -> RequestHead:
        limits = self._limits
        seen = _REQUEST_VERDICTS.get(raw)
        if seen is None:
            _check_head_bytes(raw, Failure.BAD_REQUEST)
            try:
                ev = _h11_request(raw)
            except h11.ProtocolError as e:
                first = raw[:raw.find(b"\r\n")].split(b" ")
                if len(first) == 3 and len(first[1]) > limits.max_uri:
                    raise ParseError(Failure.URI_TOO_LONG) from None
                raise _h11_error(e, Failure.BAD_REQUEST) from None
            seen = (ev.method, ev.target, ev.http_version, tuple(_raw_headers(raw)))
            _remember(_REQUEST_VERDICTS, raw, seen)
        method, target, version, fields = seen
        head = analyze_request(method, target, version, list(fields), limits)
        if len(raw) > limits.max_request_head:
            raise ParseError(Failure.HEADERS_TOO_LARGE)
        return head


# h11's verdicts on the heads it accepted lately, by the head's exact bytes: a keep-alive
# client repeats its head byte for byte (wrk, health checks, API clients: only the path
# or a cookie changes now and then), and a backend its response head within a second
# (the Date field). The readers are pure functions of those bytes (and so is
# `_check_head_bytes`), so a head seen before gets the same verdict as the first time
# without h11's ~15 us per request head and ~30 us per 9-field response head: every head
# the h11 parser accepts was judged by h11. Refused heads are not remembered. What
# depends on more than the bytes (limits, method, upgrade) is checked on every head.
# Bounded: heads of at most 1 KiB and 24 fields, 128 per kind, emptied when full (the
# clients choose the heads; one that never repeats a head costs a dict insertion per
# head). Worst case, filled with the largest such heads: ~0.7 MiB per kind and worker.
_Fields = tuple[tuple[bytes, bytes], ...]
_REQUEST_VERDICTS: dict[bytes, tuple[bytes, bytes, bytes, _Fields]] = {}
_RESPONSE_VERDICTS: dict[bytes, tuple[int, bytes, bytes, _Fields]] = {}
_VERDICTS_MAX = 128
_VERDICT_HEAD_MAX = 1024
_VERDICT_FIELDS_MAX = 24


def _remember(verdicts: dict[bytes, tuple[_T, bytes, bytes, _Fields]], raw: bytes,
              verdict: tuple[_T, bytes, bytes, _Fields]) -> None:
    if len(raw) <= _VERDICT_HEAD_MAX and len(verdict[3]) <= _VERDICT_FIELDS_MAX:
        if len(verdicts) >= _VERDICTS_MAX:
            verdicts.clear()
        verdicts[raw] = verdict


def _h11_request(raw: bytes) -> h11.Request:
    """h11's verdict on one complete request head (`raw` ends at its first CRLF CRLF).

    The adapter used to build an `h11.Connection` per head (and, per response, a second
    one told a dummy request): 2/3 of an h11 exchange's instructions went to the
    connection's state machine, which a proxy framing bodies itself has no use for. h11
    has no public entry point for "judge this head" short of an endpoint that also sends
    (`start_next_cycle` needs both sides DONE, i.e. our own response sent through it), so
    this calls the reader its Connection calls in state IDLE: the same regexes, the same
    `Request` event validation (header names and values, Content-Length, Transfer-Encoding,
    Host). What the Connection adds on top raises nothing for a head alone."""
    buf = _H11Buffer()
    buf += raw
    ev = _h11_read_request(buf)
    if ev is None:  # pragma: no cover - raw always holds a whole head
        raise h11.LocalProtocolError("incomplete request head")
    return ev


def _h11_response(raw: bytes) -> h11.Response | h11.InformationalResponse:
    """As `_h11_request`, for a response head. h11's Connection, told the request, also
    refuses a 101 to a request that asked for no upgrade: `H11ResponseParser` does."""
    buf = _H11Buffer()
    buf += raw
    ev = _h11_read_response(buf)
    if ev is None:  # pragma: no cover - raw always holds a whole head
        raise h11.LocalProtocolError("incomplete response head")
    return ev


class H11ResponseParser:
    __slots__ = ("_body", "_buf", "_max_head", "_method", "_request_upgrade", "_sink", "rest",
                 "upgrade_rest")

    def __init__(self, sink: ResponseSink, method: bytes, request_upgrade: bool = False,
                 max_head: int = 64 * 1024) -> None:
        self._max_head = max_head
        self.reset(sink, method, request_upgrade)

    def reset(self, sink: ResponseSink, method: bytes, request_upgrade: bool = False) -> bool:
        self._sink = sink
        self._method = method
        self._request_upgrade = request_upgrade
        self._buf = b""
        self._body: BodyFramer | None = None
        self.upgrade_rest: bytes | None = None
        self.rest = b""
        return True

    def _end(self) -> None:
        """The response's end, its last callback: let go of the sink first (`_Unowned`)."""
        sink = self._sink
        self._sink = _UNOWNED
        sink.on_response_end()

    def drop(self) -> None:
        pass  # in no cycle: freed with its connection

    def feed(self, data: bytes) -> None:
        while data:
            if self.upgrade_rest is not None:
                self.upgrade_rest += data
                return
            body = self._body
            if body is not None:
                rest = body.feed(data)
                if rest is None:
                    return
                if body.done:
                    self._body = None
                    self.rest = rest
                    self._end()
                return
            buf = self._buf + data if self._buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self._max_head:
                    raise ParseError(Failure.BAD_RESPONSE, "response head too long")
                if not b"HTTP/".startswith(buf[:5]):
                    # Garbage or an HTTP/0.9 body: refused now, as llhttp does, rather
                    # than waited on until the server timeout or the close.
                    raise ParseError(Failure.BAD_RESPONSE, "not an HTTP/1.x status line")
                _check_partial_head(buf, Failure.BAD_RESPONSE)
                self._buf = buf
                return
            self._buf = b""
            head = self._parse_head(buf[:end + 4])
            data = buf[end + 4:]
            if head.status < 200 and head.status != 101:
                self._sink.on_interim(head)
                continue
            self._sink.on_response(head)
            if head.status == 101:
                self.upgrade_rest = b""
                continue
            if head.no_body:
                self.rest = data
                self._end()
                return
            self._body = BodyFramer(self._sink.on_response_body, head.content_length,
                                    head.chunked, Failure.BAD_RESPONSE)
            if self._body.done:
                self._body = None
                self.rest = data
                self._end()
                return

    def feed_eof(self) -> None:
        body = self._body
        if body is not None and body.until_close:
            self._body = None
            self._end()
        elif self.upgrade_rest is None:
            raise ParseError(Failure.BACKEND_RESET, "backend closed mid-response")

    def _parse_head(self, raw: bytes) -> ResponseHead:
        seen = _RESPONSE_VERDICTS.get(raw)
        if seen is None:
            _check_head_bytes(raw, Failure.BAD_RESPONSE)
            try:
                ev = _h11_response(raw)
            except h11.ProtocolError as e:
                raise ParseError(Failure.BAD_RESPONSE, str(e)) from None
            seen = (ev.status_code, ev.reason, ev.http_version, tuple(_raw_headers(raw)))
            _remember(_RESPONSE_VERDICTS, raw, seen)
        status, reason, version, fields = seen
        if status == 101 and not self._request_upgrade:
            # h11's Connection, told the request, refuses a 101 to a request that asked
            # for no upgrade (a fact of the exchange, not of the head: checked each time)
            raise ParseError(Failure.BAD_RESPONSE, "101 Switching Protocols without an "
                             "upgrade request")
        return analyze_response(status, reason, version, list(fields), self._method)


# The end of a request line llhttp took, with its version: what analysis is given
_VERSIONS = {b" HTTP/1.1": b"1.1", b" HTTP/1.0": b"1.0"}


class HttptoolsRequestParser:
    """llhttp checks the request and frames Content-Length bodies; it calls back once per
    head (`on_url`, `on_headers_complete`), not per field. The bytes of the current
    message, from its start, are kept in `_hbuf` (`_pos` is where the parser is in
    them: past the head, then past each body slice), so the head is analysed from its
    bytes (`analyze_request_raw`) and forwarded as read. A chunked body is decoded by
    `BodyFramer` (as on the h11 path): it checks trailer fields, which llhttp would only
    report through per-field callbacks; the next request gets a fresh llhttp parser."""

    __slots__ = ("_body", "_hbuf", "_head_fed", "_in_body", "_last", "_limits", "_p", "_pos",
                 "_sink", "_url", "_whole", "upgrade_rest")

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        assert httptools is not None
        self._sink = sink
        self._limits = limits
        # llhttp's parser, made for the first read it must see (a remembered read needs
        # none: `_READS`; a new connection's first read often is one)
        self._p: httptools.HttpRequestParser | None = None
        self._url = b""
        self._hbuf = b""
        self._pos = 0
        self._body: BodyFramer | None = None
        self._head_fed = 0  # bytes of a head still incomplete (see `feed`)
        self._in_body = False
        self._last = False  # as in H11RequestParser
        self._whole: RequestHead | None = None  # the last head, if it was all of `_hbuf`
        self.upgrade_rest: bytes | None = None

    def drop(self) -> None:
        # llhttp's parser object holds this one as its protocol: a cycle
        self._p = None

    def at_rest(self) -> bool:
        # `_hbuf` is emptied at a message's end only when nothing follows it in the read
        return not self._hbuf and not self._in_body and self._body is None \
            and not self._last and self.upgrade_rest is None

    def feed(self, data: bytes) -> None:
        known = known_request(_HTTPTOOLS, data, self._limits)
        if known is not None and not self._hbuf and self._body is None \
                and not self._in_body and not self._last \
                and self.upgrade_rest is None:  # self.at_rest(), inline
            # This read, at rest, was a whole bodiless request before: what llhttp and
            # the analysis made of it then, they would make of it again, and would leave
            # the parser as they did then (see `_READS`).
            if not known.keep_alive:
                self._last = True  # as on_headers_complete: what follows is ignored
            sink = self._sink
            sink.on_head(known)
            sink.on_end()
            return
        while data:
            if self.upgrade_rest is not None:
                self.upgrade_rest += data
                return
            body = self._body
            if body is not None:
                rest = body.feed(data)
                if rest is None:
                    return
                self._body = None
                self._in_body = False
                self._url = b""
                self._sink.on_end()
                data = rest
                continue
            if self._last and not self._in_body:
                return
            if self._in_body:
                self._hbuf = data
                self._pos = 0
            else:
                if data.find(b"\r\n\r\n") < 0:
                    # llhttp keeps partial fields to itself: count what a head still
                    # incomplete has taken (exact when a head begins a read).
                    self._head_fed += len(data)
                    if self._head_fed > self._limits.max_request_head:
                        raise ParseError(Failure.HEADERS_TOO_LARGE)
                hbuf = self._hbuf
                pos = self._pos
                self._hbuf = hbuf[pos:] + data if pos < len(hbuf) else data
                self._pos = 0
            p = self._p
            if p is None:
                p = self._p = httptools.HttpRequestParser(self)
            try:
                p.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                self.upgrade_rest = data[e.args[0]:]
            except httptools.HttpParserCallbackError as e:
                ctx = e.__context__
                if isinstance(ctx, ParseError):
                    raise ctx from None
                if not isinstance(ctx, _StopParsing):
                    raise  # an error of ours, not of the request
                # A chunked body follows (on_headers_complete): BodyFramer takes the bytes
                # after the head, and a fresh llhttp parser the next request.
                self._p = None
                data = self._hbuf[self._pos:]
                self._hbuf = b""
                self._pos = 0
                continue
            except httptools.HttpParserError as e:
                if self._last and not self._in_body:
                    return  # llhttp refuses data after a closing request; we ignore it
                raise ParseError(Failure.BAD_REQUEST, str(e)) from None
            return

    # No on_message_begin (a Python call per request saved): what it would reset is reset
    # by __init__ and at the end of each message (on_message_complete).

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_uri:
            raise ParseError(Failure.URI_TOO_LONG)

    def on_headers_complete(self) -> None:
        buf = self._hbuf
        start = self._pos
        c = buf[start]
        if c == 0x0D or c == 0x0A:  # empty lines before the request line: llhttp skips them
            start = len(buf) - len(buf[start:].lstrip(b"\r\n"))
        # llhttp took this head, so its lines end in CRLF and the first empty line ends it
        line = buf.find(b"\r\n", start)
        end = buf.find(b"\r\n\r\n", line)
        self._pos = end + 4
        # The version as the request line ends with it (get_http_version() formats a str
        # from llhttp's numbers: ~2k instructions a request). llhttp also takes other
        # protocols ("RTSP/1.0", "ICE/1.0") and a line with no version at all ("GET
        # /HTTP/1.1" is the target "/HTTP/1.1" of an HTTP/0.9 request): no version
        # then, refused as h11 refuses them.
        p = self._p
        assert p is not None  # (it calls us back)
        head = analyze_request_raw(p.get_method(), self._url,
                                   _VERSIONS.get(buf[line - 9:line], b""),
                                   buf[line:end + 2], self._limits)
        self._in_body = True
        self._head_fed = 0
        self._last = not head.keep_alive
        # the head is all the bytes held, from the first (`on_message_complete`)
        self._whole = head if start == 0 and end + 4 == len(buf) else None
        self._sink.on_head(head)
        if head.chunked:
            self._body = BodyFramer(self._sink.on_body, None, True, Failure.BAD_REQUEST)
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        self._pos += len(body)
        self._sink.on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._url = b""
        buf = self._hbuf
        if self._pos >= len(buf):  # nothing follows in this read: hold no bytes
            self._hbuf = b""
            self._pos = 0
            head = self._whole
            if head is not None and len(buf) <= _READ_MAX:
                # The message was all the bytes held (its head was, and no body followed):
                # remember them (`_READS`) the second time they come.
                once = hash(buf)  # (computed by feed's lookup already, when one read)
                if once not in _ONCE:
                    if len(_ONCE) >= _ONCE_MAX:
                        _ONCE.clear()
                    _ONCE.add(once)
                elif not head.content_length and not head.chunked and not head.upgrade \
                        and not head.expect_continue and (p := self._p) is not None \
                        and not p.should_upgrade() \
                        and (not head.keep_alive or p.should_keep_alive()):
                    _remember_read(buf, self._limits, head)
        self._sink.on_end()


# Reads that were one whole bodiless request, by their exact bytes, with the Limits they
# were judged under and the head they made: a client repeats its request byte for byte
# (wrk, health checks, API polls, on one connection or on a new one each time). The same
# bytes fed to a parser at rest make the same callbacks (`on_head` with an equal head,
# `on_end`) and leave the parser as they did then: at rest (llhttp's state after a whole
# keep-alive message is its state before one), or, after a request that closes the
# connection, ignoring what follows (`_last`); the analysis (`analyze_request_raw`) is a
# pure function of those bytes and the limits. A hit skips llhttp and the analysis (~20k
# instructions of a keep-alive GET's ~136k: bench/instructions.py).
#
# Remembered (`on_message_complete`): the bytes held when a message ended with them, if
# its head began at the first of them (no empty line before it, no message before it)
# and ended with the last (no body): the message was those bytes, whether one read
# brought them or several (each a part of its head). Not remembered: a Content-Length
# above 0, chunked, an upgrade, a 100-continue, a refused read, a read llhttp takes as an
# upgrade or as closing where the analysis does not (none is known: llhttp will not see
# the read again to say so). The head is shared by every exchange the same bytes make,
# on any connection: nothing changes a RequestHead after the parser made it (gwplane's
# header filters make a copy, `RequestHead.replaced`). Bounded as `_REQUEST_SCANS`.
_READS: dict[bytes, tuple[Limits, RequestHead]] = {}
_READ_MAX = 2 * _SCAN_HEAD_MAX  # a request line and 1 KiB of field lines
# The hashes of such reads seen once lately: a read is remembered when it comes again, so
# that a client that never repeats itself costs a set's add per request, not an entry of
# `_READS` (and its head kept alive) that no read will ask for, nor empties `_READS` of
# the reads that do come again (bench.instructions --unique-heads). A hash that collides
# only lets a read in one sighting early.
_ONCE: set[int] = set()
_ONCE_MAX = 1024


class HttptoolsResponseParser:
    """llhttp checks and frames the response; it calls back once per head, not per field
    (there is no `on_header`): the head's bytes, kept in `_hbuf` while it comes, are
    analysed in one scan (`analyze_response_raw`) and forwarded as read."""

    __slots__ = ("_close_delimited", "_done", "_hbuf", "_head_fed", "_headers_seen",
                 "_last", "_last_raw", "_max_head", "_method", "_p", "_quick", "_sink",
                 "_stopped", "rest", "upgrade_rest")

    def __init__(self, sink: ResponseSink, method: bytes, request_upgrade: bool = False,
                 max_head: int = 64 * 1024) -> None:
        assert httptools is not None
        self._p = httptools.HttpResponseParser(self)
        self._max_head = max_head
        self._stopped = False
        self.rest = b""
        self.upgrade_rest: bytes | None = None
        # The head of `_RESPONSE_HEADS` this connection's server sent last, and its bytes:
        # looked at before the memo (a comparison, not a slice and its hash)
        self._last: ResponseHead | None = None
        self._last_raw = b""
        self._done = True  # as after a clean response: `reset` starts the first one
        self.reset(sink, method)

    def reset(self, sink: ResponseSink, method: bytes, request_upgrade: bool = False) -> bool:
        """Parse the next response on the same connection with this parser: True when the
        last one ended cleanly; else (llhttp was stopped mid-message, or bytes followed)
        False, and a new parser must be made."""
        if self._stopped or not self._done or self.rest or self.upgrade_rest is not None:
            return False
        self._sink = sink
        self._method = method
        self._hbuf = b""  # the bytes from the start of a head still incomplete
        self._done = False
        self._headers_seen = False
        self._close_delimited = False
        self._head_fed = 0
        # No byte of this response fed yet, and the request was not HEAD: its first read
        # may be a whole response seen before (`_RESPONSE_HEADS`). llhttp is at the start
        # of a message here: a new parser, or one after a response that ended cleanly
        # with keep-alive (the only kind whose connection is pooled and reused).
        self._quick = method != b"HEAD"
        return True

    def _end(self) -> None:
        """The response's end, its last callback: let go of the sink first (`_Unowned`)."""
        sink = self._sink
        self._sink = _UNOWNED
        sink.on_response_end()

    def drop(self) -> None:
        # llhttp's parser object holds this one as its protocol: a cycle, which would
        # keep the sink (the last client connection) too until a run of the cyclic GC
        del self._p

    def feed(self, data: bytes) -> None:
        if self._quick:
            self._quick = False
            # A whole response in one read, its head byte for byte one analysed before
            # and its body exactly that head's Content-Length: llhttp would make the same
            # calls (it took that head, and a length-framed body ends where its length
            # says), so make them without it, and without the analysis.
            head = self._last
            if head is not None and data.startswith(self._last_raw):
                end = len(self._last_raw)
            else:
                head = None
                end = data.find(b"\r\n\r\n") + 4
                if end > 3:
                    raw = data[:end]
                    head = _RESPONSE_HEADS.get(raw)
                    if head is not None:
                        self._last = head
                        self._last_raw = raw
            if head is not None and len(data) - end == head.content_length:
                self._headers_seen = True
                sink = self._sink
                sink.on_response(head)
                if end < len(data):
                    sink.on_response_body(data[end:])
                self._done = True  # as on_message_complete
                self._sink = _UNOWNED  # (self._end(), inline: the sink is at hand)
                sink.on_response_end()
                return
        if self.upgrade_rest is not None:
            self.upgrade_rest += data
            return
        if self._done:
            self.rest += data
            return
        if not self._headers_seen:
            self._hbuf = self._hbuf + data if self._hbuf else data
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgrade_rest = data[e.args[0]:]
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, ParseError):
                raise ctx from None
            if isinstance(ctx, _StopParsing):
                return
            raise
        except httptools.HttpParserError as e:
            if self._done:
                self.rest = b"?"  # garbage after a complete response
                return
            raise ParseError(Failure.BAD_RESPONSE, str(e)) from None
        if not self._headers_seen and not self._done:
            # llhttp puts no bound on a head: hold it to the h11 path's (64 KiB). Every
            # byte fed so far belongs to a head still incomplete.
            self._head_fed += len(data)
            if self._head_fed > self._max_head:
                raise ParseError(Failure.BAD_RESPONSE, "response head too long")

    def feed_eof(self) -> None:
        if self._done or self.upgrade_rest is not None:
            return
        if self._headers_seen and self._close_delimited:
            self._done = True
            self._end()
            return
        raise ParseError(Failure.BACKEND_RESET, "backend closed mid-response")

    def on_message_begin(self) -> None:
        if self._done:
            self.rest = b"?"  # more bytes after the response: the connection is not clean

    def on_headers_complete(self) -> None:
        buf = self._hbuf
        start = 0
        if buf[0] == 0x0D or buf[0] == 0x0A:  # empty lines before it: llhttp skips them
            start = len(buf) - len(buf.lstrip(b"\r\n"))
        # llhttp took this head, so its lines end in CRLF and the first empty line ends it
        line = buf.find(b"\r\n", start)
        end = buf.find(b"\r\n\r\n", line)
        status_line = buf[start:line]  # "HTTP/d.d ddd[ reason]": llhttp checked it
        head = analyze_response_raw(self._p.get_status_code(), status_line,
                                    status_line[5:8], buf[line:end + 2], self._method)
        self._hbuf = buf[end + 4:] if head.status < 200 else b""  # what follows a 1xx
        if head.status < 200 and head.status != 101:
            self._sink.on_interim(head)
            return
        self._headers_seen = True
        self._close_delimited = (not head.no_body and head.content_length is None
                                 and not head.chunked)
        if start == 0 and head.content_length is not None and head.keep_alive \
                and not head.no_body and head.status != 101 and end < _SCAN_HEAD_MAX:
            # (`no_body` is False: the request was not HEAD, the status not 204 or 304)
            if len(_RESPONSE_HEADS) >= _SCANS_MAX:
                _RESPONSE_HEADS.clear()
            raw = buf[:end + 4]
            _RESPONSE_HEADS[raw] = head
            self._last = head
            self._last_raw = raw
        self._sink.on_response(head)
        if self._method == b"HEAD" and head.status != 101:
            # llhttp cannot be told the request was HEAD; stop here (204 and 304 it knows).
            # If a length was announced, whether bytes followed in this read is unknown:
            # the connection is not reused.
            self._done = True
            self._stopped = True
            if head.content_length or head.chunked:
                self.rest = b"?"
            self._end()
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        if not self._done:
            self._sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._done or not self._headers_seen or self._p.get_status_code() == 101:
            return  # an interim response ended, or a 101 (its tunnel follows)
        self._done = True
        self._end()


class _StopParsing(Exception):
    pass


def resolve(kind: HttpParser) -> HttpParser:
    if kind is HttpParser.AUTO:
        return HttpParser.HTTPTOOLS if httptools is not None else HttpParser.H11
    if kind is HttpParser.HTTPTOOLS and httptools is None:
        raise RuntimeError("--http-parser httptools: httptools is not installed "
                           "(pip install pylb[fast])")
    return kind


def request_parser(kind: HttpParser, sink: RequestSink, limits: Limits) -> RequestParser:
    if kind is _HTTPTOOLS:
        return HttptoolsRequestParser(sink, limits)
    return H11RequestParser(sink, limits)


def known_request(kind: HttpParser, data: bytes, limits: Limits) -> RequestHead | None:
    """The head of `data` if a fresh `kind` parser under `limits` would take `data` as a
    whole read it has seen before (`_READS`: one bodiless request, no upgrade): it would
    call back `on_head(head)` and `on_end()`, and be left at rest, or, if the head does
    not keep the connection alive, as `AFTER_CLOSE`. A connection without a parser (a
    new one, or one idle between requests) then makes none; a parser at rest asks the
    same for each read (HttptoolsRequestParser.feed)."""
    global _known_read, _known
    if kind is _HTTPTOOLS:
        seen = _known
        if seen is None or data != _known_read or seen[0] is not limits:
            seen = _READS.get(data)
            if seen is None or seen[0] is not limits:
                return None
            _known_read = data
            _known = seen
        return seen[1]
    return None


# The read of `_READS` that `known_request` met (or `_remember_read` stored) last, and its
# entry: looked at before the memo, a comparison in place of the read's hash and a lookup
# (a client repeats itself, and clients alike send alike: wrk, health checks). It holds
# after `_READS` is emptied.
_known_read = b""
_known: tuple[Limits, RequestHead] | None = None


def _remember_read(data: bytes, limits: Limits, head: RequestHead) -> None:
    """`data` was one whole bodiless request, judged under `limits` (see `_READS`)."""
    global _known_read, _known
    if len(_READS) >= _SCANS_MAX:
        _READS.clear()
    seen = _READS[data] = (limits, head)
    head.remembered = True
    _known_read = data
    _known = seen


class _AfterClose:
    """A request parser after a request that does not keep the connection alive: it
    ignores all that follows, as both parsers do (`_last`). It holds nothing, so every
    connection shares one (`AFTER_CLOSE`)."""

    __slots__ = ()
    upgrade_rest: bytes | None = None

    def feed(self, data: bytes) -> None:
        pass

    def drop(self) -> None:
        pass

    def at_rest(self) -> bool:
        return False


AFTER_CLOSE: RequestParser = _AfterClose()


def response_parser(kind: HttpParser, sink: ResponseSink, method: bytes,
                    request_upgrade: bool = False) -> ResponseParser:
    if kind is HttpParser.HTTPTOOLS:
        return HttptoolsResponseParser(sink, method, request_upgrade)
    return H11ResponseParser(sink, method, request_upgrade)
