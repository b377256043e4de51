"""The httptools parsers take a head's bytes whole instead of one callback per field
(`parser.analyze_response_raw`, `headers.response_head`'s forwarding as read). Checked
as a table against the path they replace: llhttp with per-field callbacks feeding
`analyze_response` and the list-based `response_head`. Each case is fed whole and then
one byte at a time (a head split anywhere); a case the reference refuses must be refused
with the same failure, a case it takes must give the same analysis, and the head sent to
the client must carry the same fields (byte for byte when the input's fields are spelt
`Name: value`). RFC 9112 §2.2 (CRLF only), §5.1 (no space before the colon), §5.2
(obs-fold), §6.1–6.3 (framing), RFC 9110 §7.6.1 (hop-by-hop fields).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
import pytest

from proxy.http import headers as hdr
from proxy.http.parser import (
    Headers,
    HttptoolsRequestParser,
    HttptoolsResponseParser,
    ParseError,
    RequestHead,
    ResponseHead,
    analyze_request,
    analyze_response,
)
from pylb.config import Limits
from pylb.failures import Failure
from tests.hardening._smuggling import ACCEPTED, REQUESTS, RESPONSES


class _Reference:
    """llhttp with a callback per field, as the httptools parser was before."""

    def __init__(self) -> None:
        self.heads: list[tuple[int, bytes, bytes, Headers]] = []
        self.fields: Headers = []
        self.reason = b""
        self.p = httptools.HttpResponseParser(self)

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        p = self.p
        self.heads.append((p.get_status_code(), self.reason, p.get_http_version().encode(),
                           self.fields))
        self.fields = []
        self.reason = b""


def reference(data: bytes, method: bytes) -> list[ResponseHead] | Failure:
    r = _Reference()
    try:
        r.p.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        if not r.heads:
            return Failure.BAD_RESPONSE
    try:
        return [analyze_response(*h, method) for h in r.heads]
    except ParseError as e:
        return e.failure


@dataclass
class _Sink:
    heads: list[ResponseHead] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False

    def on_interim(self, head: ResponseHead) -> None:
        self.heads.append(head)

    def on_response(self, head: ResponseHead) -> None:
        self.heads.append(head)

    def on_response_body(self, data: bytes) -> None:
        self.body += data

    def on_response_end(self) -> None:
        self.ended = True


def scanned(data: bytes, method: bytes, step: int) -> list[ResponseHead] | Failure:
    sink = _Sink()
    p = HttptoolsResponseParser(sink, method)
    try:
        for i in range(0, len(data), step):
            p.feed(data[i:i + step])
    except ParseError as e:
        return e.failure if not sink.heads else sink.heads
    return sink.heads


def _send(head: ResponseHead, keep_alive: bool = True, version: bytes = b"1.1",
          set_cookie: bytes | None = None, hsts: bytes | None = None) -> bytes:
    framing = hdr.response_framing(head, version)
    return hdr.response_head(head, framing, keep_alive=keep_alive, client_version=version,
                             set_cookie=set_cookie, hsts=hsts)


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    out = []
    for line in lines[1:-2]:
        name, colon, value = line.partition(b":")
        assert colon and name == name.strip()
        out.append((name, value.strip(b" \t")))
    return out


OK = b"HTTP/1.1 200 OK\r\n"
NGINX = (OK + b"Server: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 05:00:00 GMT\r\n"
         b"Content-Type: text/plain\r\nContent-Length: 13\r\n"
         b"Last-Modified: Mon, 07 Dec 2026 04:00:00 GMT\r\nConnection: keep-alive\r\n"
         b'ETag: "6573-d"\r\nAccept-Ranges: bytes\r\n\r\nhello, world\n')

# (name, response bytes, request method, normalized: the fields are spelt `Name: value`)
CASES: list[tuple[str, bytes, bytes, bool]] = [
    ("nginx", NGINX, b"GET", True),
    ("no_fields_close_delimited", OK + b"\r\nabc", b"GET", True),
    ("no_reason", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", b"GET", True),
    ("reason_spaces", b"HTTP/1.1 200  All  fine \r\nContent-Length: 0\r\n\r\n", b"GET", True),
    ("http10", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("http10_keep_alive", b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n"
     b"Keep-Alive: timeout=5\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("chunked", OK + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", b"GET", True),
    ("chunked_any_case", OK + b"TRANSFER-ENCODING:  Chunked \r\n\r\n0\r\n\r\n", b"GET",
     False),
    ("connection_close", OK + b"Connection: close\r\nContent-Length: 1\r\n\r\nx", b"GET",
     True),
    ("connection_names_field", OK + b"Connection: keep-alive, X-Private\r\n"
     b"X-Private: secret\r\nX-Public: yes\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("close_names_close_field", OK + b"Connection: close\r\nClose: x\r\n"
     b"Content-Length: 1\r\n\r\nx", b"GET", True),
    ("close_field_kept", OK + b"Close: x\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("hop_by_hop", OK + b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
     b"TE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx", b"GET",
     True),
    ("names_like_hop_by_hop", OK + b"TEE: 1\r\nX-Connection: 2\r\nConnectionX: 3\r\n"
     b"Upgrade-Insecure: 4\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("upper_case", OK + b"CONTENT-LENGTH: 1\r\nCONNECTION: KEEP-ALIVE\r\n\r\nx", b"GET", True),
    ("ows", OK + b"Content-Length:1\r\nX-A:\t a b \t\r\nX-B:\r\n\r\nx", b"GET", False),
    ("empty_value_last", OK + b"Content-Length: 1\r\nX-Empty:\r\n\r\nx", b"GET", False),
    ("sts", OK + b"Strict-Transport-Security: max-age=1\r\nContent-Length: 1\r\n\r\nx",
     b"GET", True),
    ("head_with_length", OK + b"Content-Length: 99\r\n\r\n", b"HEAD", True),
    ("no_content", b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", b"GET", True),
    ("not_modified", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", b"GET", True),
    ("continue_then_ok", b"HTTP/1.1 100 Continue\r\n\r\n" + OK
     + b"Content-Length: 1\r\n\r\nx", b"POST", True),
    ("early_hints_then_ok", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
     + b"Content-Length: 1\r\n\r\nx", b"GET", True),
    ("empty_lines_before", b"\r\n\r\n" + OK + b"Content-Length: 1\r\n\r\nx", b"GET", True),
    ("obs_text", OK + b"X-A: caf\xc3\xa9\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("many_fields", OK + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(200))
     + b"Content-Length: 1\r\n\r\nx", b"GET", True),
    # refused, as by the reference (RFC 9112 §2.2, §5.1, §5.2, §6.1, §6.3)
    ("te_gzip_chunked", OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", b"GET",
     True),
    ("te_twice", OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", b"GET", True),
    ("te_identity", OK + b"Transfer-Encoding: identity\r\n\r\nx", b"GET", True),
    ("cl_empty", OK + b"Content-Length:\r\n\r\nx", b"GET", True),
    ("cl_hex", OK + b"Content-Length: 0x1\r\n\r\nx", b"GET", True),
    ("cl_space_inside", OK + b"Content-Length: 1 2\r\n\r\nx", b"GET", True),
    ("bare_cr", OK + b"X-A: a\rb\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("lf_after_status", b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("tab_before_colon", OK + b"Content-Length\t: 1\r\n\r\nx", b"GET", True),
    ("del_in_value", OK + b"X-A: a\x7f\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("http20_status_line", b"HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    ("status_two_digits", b"HTTP/1.1 20 OK\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
    *((f"smuggling_{c.name}", c.data, b"GET", True) for c in RESPONSES),
]


@pytest.mark.parametrize(("data", "method", "normalized"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("step", [1 << 20, 1, 7])
def test_scan_agrees_with_the_per_field_path(data: bytes, method: bytes, normalized: bool,
                                             step: int) -> None:
    want = reference(data, method)
    got = scanned(data, method, step)
    if isinstance(want, Failure):
        assert got == want
        return
    assert not isinstance(got, Failure), got
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.status, g.reason, g.version, g.content_length, g.chunked, g.keep_alive,
                g.no_body, g.connection) == (w.status, w.reason, w.version,
                                             w.content_length, w.chunked, w.keep_alive,
                                             w.no_body, w.connection)
        assert g.headers == w.headers  # the list, made from the bytes when asked for
        if g.status < 200:
            continue
        for keep_alive, version, set_cookie, hsts in (
                (True, b"1.1", None, None), (False, b"1.1", None, None),
                (True, b"1.0", None, None), (True, b"1.1", b"srv=abc; path=/", None),
                (True, b"1.1", None, b"max-age=60"), (True, b"1.1", None, b"")):
            fresh = scanned(data, method, step)
            assert not isinstance(fresh, Failure)
            sent = _send(fresh[-1], keep_alive, version, set_cookie, hsts)
            expected = _send(w, keep_alive, version, set_cookie, hsts)
            assert sent.split(b"\r\n")[0] == expected.split(b"\r\n")[0]
            assert _fields(sent) == _fields(expected)
            if normalized:
                assert sent == expected


def test_unusual_connection_tokens_take_the_list_path() -> None:
    """A Connection token naming another field: that field is dropped (RFC 9110 §7.6.1),
    on the list-based path, whatever its spelling."""
    data = OK + b"Connection: X-Private\r\nx-private: 1\r\nContent-Length: 0\r\n\r\n"
    got = scanned(data, b"GET", 1 << 20)
    assert not isinstance(got, Failure)
    sent = _send(got[0])
    assert b"rivate" not in sent
    assert _fields(sent) == [(b"Content-Length", b"0")]


def test_head_bytes_are_not_kept_after_the_head() -> None:
    sink = _Sink()
    p = HttptoolsResponseParser(sink, b"GET")
    p.feed(OK + b"Content-Length: 100000\r\n\r\n")
    for _ in range(10):
        p.feed(b"x" * 10000)
    assert sink.ended and len(sink.body) == 100000
    assert p._hbuf == b""


# -- requests ----------------------------------------------------------------------------


class _OldRequestParser:
    """The httptools request parser as it was, with a callback per field: the reference."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.events: list[tuple[str, object]] = []
        self.p = httptools.HttpRequestParser(self)
        self.url = b""
        self.fields: Headers = []
        self.size = 0
        self.fed = 0
        self.in_body = False
        self.last = False
        self.upgrade_rest: bytes | None = None

    def feed(self, data: bytes) -> None:
        if self.upgrade_rest is not None:
            self.upgrade_rest += data
            return
        if self.last and not self.in_body:
            return
        if not self.in_body and data.find(b"\r\n\r\n") < 0:
            self.fed += len(data)
            if self.fed > self.limits.max_request_head:
                raise ParseError(Failure.HEADERS_TOO_LARGE)
        try:
            self.p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgrade_rest = data[e.args[0]:]
        except httptools.HttpParserCallbackError as e:
            assert isinstance(e.__context__, ParseError)
            raise e.__context__ from None
        except httptools.HttpParserError:
            if self.last and not self.in_body:
                return
            raise ParseError(Failure.BAD_REQUEST) from None

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_uri:
            raise ParseError(Failure.URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")
        if self.in_body and name.lower() == b"connection":
            raise ParseError(Failure.BAD_REQUEST, "Connection in trailers")
        self.fields.append((name, value))
        self.size += len(name) + len(value) + 4
        if len(self.fields) > self.limits.max_headers:
            raise ParseError(Failure.HEADERS_TOO_LARGE)
        if self.size + len(self.url) > self.limits.max_request_head:
            raise ParseError(Failure.HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        p = self.p
        head = analyze_request(p.get_method(), self.url, p.get_http_version().encode(),
                               self.fields, self.limits)
        self.in_body = True
        self.fed = 0
        self.fields = []
        self.last = not head.keep_alive
        self.events.append(("head", head))

    def on_body(self, body: bytes) -> None:
        self.events.append(("body", body))

    def on_message_complete(self) -> None:
        self.in_body = False
        self.url = b""
        self.size = 0
        self.fields = []
        self.events.append(("end", None))


@dataclass
class _RequestSink:
    events: list[tuple[str, object]] = field(default_factory=list)

    def on_head(self, head: RequestHead) -> None:
        self.events.append(("head", head))

    def on_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_end(self) -> None:
        self.events.append(("end", None))


def _merge(events: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Body slices joined (llhttp and BodyFramer cut a body differently)."""
    out: list[tuple[str, object]] = []
    for kind, item in events:
        if kind == "body" and out and out[-1][0] == "body":
            out[-1] = ("body", out[-1][1] + item)  # type: ignore[operator]
        elif kind != "body" or item:
            out.append((kind, item))
    return out


def _requests(make: Callable[[], tuple[object, list[tuple[str, object]]]], data: bytes,
              step: int) -> tuple[list[tuple[str, object]], Failure | None, bytes | None]:
    parser, events = make()
    failure = None
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i:i + step])  # type: ignore[attr-defined]
    except ParseError as e:
        failure = e.failure
    return _merge(events), failure, parser.upgrade_rest  # type: ignore[attr-defined]


def _old(limits: Limits) -> Callable[[], tuple[object, list[tuple[str, object]]]]:
    def make() -> tuple[object, list[tuple[str, object]]]:
        p = _OldRequestParser(limits)
        return p, p.events
    return make


def _new(limits: Limits) -> Callable[[], tuple[object, list[tuple[str, object]]]]:
    def make() -> tuple[object, list[tuple[str, object]]]:
        sink = _RequestSink()
        return HttptoolsRequestParser(sink, limits), sink.events
    return make


def _forwarded(head: RequestHead, **kw: object) -> bytes:
    return hdr.request_head(head, head.target, client_ip="192.0.2.7", proto=b"https",
                            port=443, chunked=head.chunked, **kw)  # type: ignore[arg-type]


def _spelt_plainly(data: bytes) -> bool:
    """Every field line of the first head is `Name: value` (one space, no blanks around
    the value, not empty): the list-based path sends it back byte for byte."""
    head = data.split(b"\r\n\r\n", 1)[0]
    return all(re.fullmatch(rb"[^:\s]+: \S(?:.*\S)?", line) is not None
               for line in head.split(b"\r\n")[1:])


G = b"GET /a?b HTTP/1.1\r\nHost: example.com\r\n"
REQUEST_CASES: list[tuple[str, bytes, bool]] = [
    ("plain", G + b"\r\n", True),
    ("wrk", b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", True),
    ("browser", b"GET /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
     b"User-Agent: Mozilla/5.0\r\nAccept: text/html,*/*;q=0.8\r\n"
     b"Accept-Encoding: gzip, br\r\nAccept-Language: en\r\nCookie: a=1; b=2\r\n\r\n", True),
    ("close", G + b"Connection: close\r\n\r\n" + G + b"\r\n", True),
    ("pipelined", G + b"\r\n" + G + b"X-A: 1\r\n\r\n" + G + b"\r\n", True),
    ("crlf_between", G + b"\r\n\r\n\r\n" + G + b"\r\n", True),
    ("post_cl_pipelined", b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
     + G + b"\r\n", True),
    ("post_cl_spaces", b"POST /p HTTP/1.1\r\nHost: h\r\ncontent-length:  5 \r\n\r\nhello",
     False),
    ("chunked_pipelined", b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n" + G + b"\r\n", True),
    ("chunked_ext", b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;a=b\r\nabc\r\n0\r\n\r\n", True),
    ("chunked_close", b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"Connection: close\r\n\r\n1\r\nx\r\n0\r\n\r\n" + G + b"\r\n", True),
    ("xff", G + b"X-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n"
     b"X-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\n"
     b"X-SSL-Client-Verify: 0\r\nX-SSL-Client-DN: CN=me\r\n\r\n", True),
    ("hop_by_hop", G + b"Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\n"
     b"Trailer: X\r\nUpgrade: h2c\r\nX-Keep: 1\r\n\r\n", True),
    ("names_like_hop_by_hop", G + b"TEE: 1\r\nX-Connection: 2\r\nHostname: 3\r\n"
     b"Content-Lengths: 4\r\n\r\n", True),
    ("connection_names_field", G + b"Connection: X-Private\r\nX-Private: 1\r\n\r\n", True),
    ("connection_names_host", G + b"Connection: host\r\n\r\n", True),
    ("close_names_close", G + b"Connection: close\r\nClose: 1\r\n\r\n", True),
    ("close_field_kept", G + b"Close: 1\r\n\r\n", True),
    ("upgrade", G + b"Connection: Upgrade\r\nUpgrade: WebSocket\r\n\r\nrest", True),
    ("expect", b"POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
     b"Content-Length: 1\r\n\r\nx", True),
    ("http10", b"GET /x HTTP/1.0\r\n\r\n", True),
    ("http10_keep_alive", b"GET /x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
     + b"GET /y HTTP/1.0\r\nHost: h\r\n\r\n", True),
    ("absolute_form", b"GET http://Example.com:80/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
     True),
    ("ows_and_empty", G + b"X-A:\t a b \t\r\nX-B:\r\n\r\n", False),
    ("obs_text", G + b"X-A: caf\xc3\xa9\r\n\r\n", True),
    ("upper_case_names", b"GET / HTTP/1.1\r\nHOST: h\r\nCONNECTION: CLOSE\r\n\r\n", True),
    ("max_headers", G + b"".join(b"X-%d: 1\r\n" % i for i in range(99)) + b"\r\n", True),
    ("too_many_headers", G + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
     True),
    ("head_near_limit", G + b"X-A: " + b"a" * 8100 + b"\r\n\r\n", True),
    ("head_over_limit", G + b"X-A: " + b"a" * 9000 + b"\r\n\r\n", True),
    *((f"limit_{n}", b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * n + b"\r\n\r\n", True)
      for n in range(8165, 8190)),
    *((f"many_fields_no_space_{v}", G + b"".join(b"X-%02d:" % i + b"v" * v + b"\r\n"
                                               for i in range(98)) + b"\r\n", False)
      for v in range(70, 80)),
    ("uri_too_long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", True),
    ("content_length_underscore", G + b"Content_Length: 1\r\n\r\nx", True),
    ("transfer_encoding_underscore", G + b"transfer_encoding: chunked\r\n\r\n", True),
    ("trailer_connection", b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\nConnection: close\r\n\r\n" + G + b"\r\n", True),
    *((f"smuggling_{c.name}", c.data, _spelt_plainly(c.data)) for c in REQUESTS),
    *((f"accepted_{c.name}", c.data, _spelt_plainly(c.data)) for c in ACCEPTED),
]
LIMITS = Limits(max_request_head=8192, max_headers=100, max_uri=8192)


@pytest.mark.parametrize(("data", "normalized"), [c[1:] for c in REQUEST_CASES],
                         ids=[c[0] for c in REQUEST_CASES])
@pytest.mark.parametrize("step", [1 << 20, 1, 7])
def test_request_scan_agrees_with_the_per_field_path(data: bytes, normalized: bool,
                                                     step: int) -> None:
    want, want_failure, want_rest = _requests(_old(LIMITS), data, step)
    got, failure, rest = _requests(_new(LIMITS), data, step)
    assert failure == want_failure
    assert rest == want_rest
    assert [k for k, _ in got] == [k for k, _ in want]
    for (kind, g), (_, w) in zip(got, want, strict=True):
        if kind != "head":
            assert g == w
            continue
        assert isinstance(g, RequestHead) and isinstance(w, RequestHead)
        assert (g.method, g.target, g.version, g.host, g.content_length, g.chunked,
                g.keep_alive, g.upgrade, g.expect_continue, g.connection, g.idempotent) == (
            w.method, w.target, w.version, w.host, w.content_length, w.chunked,
            w.keep_alive, w.upgrade, w.expect_continue, w.connection, w.idempotent)
        for kw in ({}, {"ssl_client": (b"SUCCESS", b"CN=c")}, {"affinity_cookie": b"a"}):
            sent = _forwarded(g, **kw)
            expected = _forwarded(w, **kw)
            assert sent.split(b"\r\n")[0] == expected.split(b"\r\n")[0]
            assert _fields(sent) == _fields(expected)
            if normalized:
                assert sent == expected
        assert g.headers == w.headers


def test_request_bytes_are_not_kept_after_a_request() -> None:
    sink = _RequestSink()
    p = HttptoolsRequestParser(sink, LIMITS)
    p.feed(G + b"\r\n")
    assert [k for k, _ in sink.events] == ["head", "end"]
    assert p._hbuf == b""
