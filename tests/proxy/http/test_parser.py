"""The parser interface on bytes, no sockets: both implementations, the same table."""

from __future__ import annotations

import weakref
from typing import Any

import h11
import pytest

from proxy.http.parser import (
    BodyFramer,
    H11ResponseParser,
    HttptoolsResponseParser,
    ParseError,
    RequestHead,
    ResponseHead,
    _h11_request,
    _h11_response,
    request_parser,
    response_parser,
)
from pylb.config import HttpParser, Limits
from pylb.failures import Failure


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_head(self, head: RequestHead) -> None:
        self.events.append(("head", head))

    def on_body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + bytes(data))
        else:
            self.events.append(("body", bytes(data)))

    def on_end(self) -> None:
        self.events.append(("end", None))

    def on_interim(self, head: ResponseHead) -> None:
        self.events.append(("interim", head.status))

    def on_response(self, head: ResponseHead) -> None:
        self.events.append(("head", head))

    def on_response_body(self, data: bytes) -> None:
        self.on_body(data)

    def on_response_end(self) -> None:
        self.on_end()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    def body(self) -> bytes:
        return b"".join(v for k, v in self.events if k == "body")


def parse(kind: HttpParser, data: bytes, limits: Limits | None = None,
          split: int = 0) -> Sink:
    sink = Sink()
    p = request_parser(kind, sink, limits or Limits())
    if split:
        for i in range(0, len(data), split):
            p.feed(data[i:i + split])
    else:
        p.feed(data)
    return sink


def fails(kind: HttpParser, data: bytes, limits: Limits | None = None) -> Failure:
    with pytest.raises(ParseError) as e:
        parse(kind, data, limits)
    return e.value.failure


H = b"Host: a\r\n"
BAD = Failure.BAD_REQUEST

# (name, request bytes, failure) — every one must be refused by both parsers.
MALFORMED = [
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", BAD),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", BAD),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BAD),
    ("te-space-before-colon",
     b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", BAD),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", BAD),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", BAD),
    ("bare-lf-lines", b"GET / HTTP/1.1\nHost: a\n\n", BAD),
    ("cl-and-te", b"POST / HTTP/1.1\r\n" + H +
     b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", BAD),
    ("te-and-cl", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", BAD),
    ("conflicting-cl", b"POST / HTTP/1.1\r\n" + H +
     b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", BAD),
    ("repeated-cl", b"POST / HTTP/1.1\r\n" + H +
     b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", BAD),
    ("cl-list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", BAD),
    ("cl-plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", BAD),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", BAD),
    ("cl-hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n", BAD),
    ("cl-huge", b"POST / HTTP/1.1\r\n" + H +
     b"Content-Length: 99999999999999999999999\r\n\r\n", BAD),
    ("te-gzip", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", BAD),
    ("te-chunked-gzip", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked, gzip\r\n\r\n", BAD),
    ("te-repeated", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", BAD),
    ("chunk-size-not-hex", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", BAD),
    ("chunk-size-negative", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", BAD),
    ("chunk-size-space", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", BAD),
    ("chunk-size-overflow", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n0\r\n\r\n", BAD),
    ("chunk-no-crlf", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n", BAD),
    ("chunk-bare-lf", b"POST / HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", BAD),
    ("http-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", BAD),
    ("http-0.9", b"GET /\r\n\r\n", BAD),
    # llhttp takes these (the first as an HTTP/0.9 request for "/HTTP/1.1")
    ("http-0.9-version-in-target", b"GET /HTTP/1.1\r\n" + H + b"\r\n", BAD),
    ("http-0.9-target-ends-in-version", b"GET /aHTTP/1.1\r\n" + H + b"\r\n", BAD),
    ("rtsp", b"GET / RTSP/1.0\r\n" + H + b"\r\n", BAD),
    ("ice", b"SOURCE / ICE/1.0\r\n" + H + b"\r\n", BAD),
    ("no-host-1.1", b"GET / HTTP/1.1\r\n\r\n", BAD),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BAD),
    ("tls-hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n", BAD),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", BAD),
    ("unknown-method", b"BREW /pot HTTP/1.1\r\n" + H + b"\r\n", BAD),
    ("lowercase-method", b"get / HTTP/1.1\r\n" + H + b"\r\n", BAD),
    ("bad-target", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", BAD),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", BAD),
    ("expect-other", b"GET / HTTP/1.1\r\n" + H + b"Expect: magic\r\n\r\n", BAD),
    ("upgrade-with-body", b"POST / HTTP/1.1\r\n" + H +
     b"Connection: upgrade\r\nUpgrade: x\r\nContent-Length: 1\r\n\r\na", BAD),
    ("empty-header-name", b"GET / HTTP/1.1\r\n" + H + b": x\r\n\r\n", BAD),
]


@pytest.mark.parametrize(("name", "data", "failure"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_rejected(parser_kind: HttpParser, name: str, data: bytes,
                            failure: Failure) -> None:
    assert fails(parser_kind, data) is failure


def test_uri_too_long_414(parser_kind: HttpParser) -> None:
    limits = Limits(max_uri=100)
    long = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n" + H + b"\r\n"
    assert fails(parser_kind, long, limits) is Failure.URI_TOO_LONG
    # Incomplete: refused before the line even ends.
    assert fails(parser_kind, long[:150], limits) is Failure.URI_TOO_LONG
    assert parse(parser_kind, b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n" + H + b"\r\n",
                 limits).kinds() == ["head", "end"]


def test_head_too_large_431(parser_kind: HttpParser) -> None:
    limits = Limits(max_request_head=1024)
    big = b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 2000 + b"\r\n\r\n"
    assert fails(parser_kind, big, limits) is Failure.HEADERS_TOO_LARGE
    assert fails(parser_kind, big[:1500], limits) is Failure.HEADERS_TOO_LARGE


def test_too_many_headers_431(parser_kind: HttpParser) -> None:
    limits = Limits(max_headers=10)
    many = b"GET / HTTP/1.1\r\n" + H + b"".join(b"X%d: y\r\n" % i for i in range(10)) + b"\r\n"
    assert fails(parser_kind, many, limits) is Failure.HEADERS_TOO_LARGE
    ok = b"GET / HTTP/1.1\r\n" + H + b"".join(b"X%d: y\r\n" % i for i in range(9)) + b"\r\n"
    assert parse(parser_kind, ok, limits).kinds() == ["head", "end"]


@pytest.mark.parametrize("split", [0, 1, 7])
def test_pipelined_mixed_framing(parser_kind: HttpParser, split: int) -> None:
    data = (b"GET /a HTTP/1.1\r\n" + H + b"\r\n"
            b"POST /b HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
            b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
            b"GET /d HTTP/1.0\r\n\r\n")
    sink = parse(parser_kind, data, split=split)
    heads = [v for k, v in sink.events if k == "head"]
    assert [h.target for h in heads] == [b"/a", b"/b", b"/c", b"/d"]
    assert [k for k in sink.kinds() if k != "body"] == ["head", "end"] * 4
    assert sink.body() == b"helloabcde"
    assert heads[1].content_length == 5 and not heads[1].chunked
    assert heads[2].chunked and heads[2].content_length is None
    assert heads[0].keep_alive and not heads[3].keep_alive
    assert heads[3].version == b"1.0"


def test_head_fields(parser_kind: HttpParser) -> None:
    data = (b"PUT http://example.com:8080/x?y HTTP/1.1\r\nHost: Example.com:8080\r\n"
            b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
            b"Expect: 100-continue\r\nX-Case: MiXed \r\n\r\n")
    head = parse(parser_kind, data).events[0][1]
    assert head.method == b"PUT" and head.target == b"http://example.com:8080/x?y"
    assert head.host == b"Example.com:8080"
    assert head.upgrade and head.expect_continue and head.keep_alive
    assert (b"X-Case", b"MiXed") in head.headers
    assert head.idempotent


def test_upgrade_rest_kept(parser_kind: HttpParser) -> None:
    sink = Sink()
    p = request_parser(parser_kind, sink, Limits())
    p.feed(b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
           b"\x81\x05hello")
    p.feed(b"more")
    assert sink.kinds() == ["head", "end"]
    assert p.upgrade_rest == b"\x81\x05hellomore"


def test_http10_keepalive(parser_kind: HttpParser) -> None:
    head = parse(parser_kind, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").events[0][1]
    assert head.keep_alive
    head = parse(parser_kind, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                 ).events[0][1]
    assert not head.keep_alive


# -- responses ------------------------------------------------------------------------


def rparse(kind: HttpParser, data: bytes, method: bytes = b"GET", eof: bool = False,
           split: int = 0) -> tuple[Sink, Any]:
    sink = Sink()
    p = response_parser(kind, sink, method)
    chunks = [data[i:i + split] for i in range(0, len(data), split)] if split else [data]
    for c in chunks:
        p.feed(c)
    if eof:
        p.feed_eof()
    return sink, p


@pytest.mark.parametrize("split", [0, 3])
def test_response_framings(parser_kind: HttpParser, split: int) -> None:
    sink, p = rparse(parser_kind, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                     split=split)
    assert sink.kinds() == ["head", "body", "end"] and sink.body() == b"abc" and not p.rest
    sink, p = rparse(parser_kind, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n", split=split)
    assert sink.body() == b"abc" and sink.kinds()[-1] == "end" and not p.rest
    sink, p = rparse(parser_kind, b"HTTP/1.1 200 OK\r\n\r\nuntil close", eof=True,
                     split=split)
    assert sink.body() == b"until close" and sink.kinds()[-1] == "end"
    assert not sink.events[0][1].keep_alive
    sink, p = rparse(parser_kind, b"HTTP/1.1 204 No Content\r\n\r\n", split=split)
    assert sink.kinds() == ["head", "end"]
    sink, p = rparse(parser_kind, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                     split=split)
    assert sink.kinds() == ["head", "end"]


def test_response_to_head(parser_kind: HttpParser) -> None:
    sink, _ = rparse(parser_kind, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                     method=b"HEAD")
    assert sink.kinds() == ["head", "end"]


def test_interim_then_final(parser_kind: HttpParser) -> None:
    sink, _ = rparse(parser_kind, b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sink.kinds() == ["interim", "head", "body", "end"]


def test_response_101_rest(parser_kind: HttpParser) -> None:
    sink = Sink()
    p = response_parser(parser_kind, sink, b"GET", True)
    p.feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nraw")
    assert sink.kinds() == ["head"]
    assert p.upgrade_rest == b"raw"


def test_response_extra_bytes_are_dirty(parser_kind: HttpParser) -> None:
    _, p = rparse(parser_kind, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naEXTRA")
    assert p.rest


BAD_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
]


@pytest.mark.parametrize("data", BAD_RESPONSES)
def test_bad_responses(parser_kind: HttpParser, data: bytes) -> None:
    with pytest.raises(ParseError) as e:
        rparse(parser_kind, data)
    assert e.value.failure is Failure.BAD_RESPONSE


def test_response_head_limit_is_max_head(parser_kind: HttpParser) -> None:
    """Both response parsers honour `max_head` (h11's once ignored it for a fixed 64 KiB)."""
    cls = H11ResponseParser if parser_kind is HttpParser.H11 else HttptoolsResponseParser
    head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 2000
    small = cls(Sink(), b"GET", max_head=1024)
    with pytest.raises(ParseError) as e:
        small.feed(head)
    assert e.value.failure is Failure.BAD_RESPONSE
    big = cls(Sink(), b"GET", max_head=64 * 1024)
    big.feed(head)  # within its limit: waits for the rest of the head
    big.feed(b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(("method", "data", "eof"), [
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", False),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     False),
    (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", False),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", False),
    (b"GET", b"HTTP/1.1 200 OK\r\n\r\nuntil close", True),
])
def test_response_parser_lets_go_of_its_sink_at_the_end(
        parser_kind: HttpParser, method: bytes, data: bytes, eof: bool) -> None:
    """A response's end is its parser's last callback to the sink: after it the parser
    names the sink no more (a pooled connection keeps its parser for the next exchange,
    but must not keep the last client connection alive)."""
    for _ in range(2):  # the second time httptools knows a length-framed head (its memo)
        sink = Sink()
        p = response_parser(parser_kind, sink, method)
        p.feed(data)
        if eof:
            p.feed_eof()
        assert sink.kinds()[-1] == "end"
        gone = weakref.ref(sink)
        del sink
        assert gone() is None
        assert p.reset(Sink(), b"GET") == (parser_kind is HttpParser.H11 or method != b"HEAD")


def test_a_sink_may_hand_the_parser_on_at_the_response_end(parser_kind: HttpParser) -> None:
    """The sink's response end may give the parser to the next exchange at once (a
    pipelined request that takes the pooled connection): the parser keeps that sink."""
    nxt = Sink()
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"

    class Handing(Sink):
        def on_response_end(self) -> None:
            super().on_response_end()
            assert p.reset(nxt, b"GET")

    first = Handing()
    p = response_parser(parser_kind, first, b"GET")
    for _ in range(2):  # (httptools: through llhttp, then its memo)
        p.feed(resp)
    assert first.kinds() == ["head", "body", "end"] == nxt.kinds()[:3]
    assert nxt.kinds() == ["head", "body", "end"]


def test_truncated_response_is_reset(parser_kind: HttpParser) -> None:
    with pytest.raises(ParseError) as e:
        rparse(parser_kind, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", eof=True)
    assert e.value.failure is Failure.BACKEND_RESET


# -- the body framer on its own ------------------------------------------------------------


def test_framer_length_passthrough() -> None:
    got: list[bytes] = []
    f = BodyFramer(got.append, 5, False, Failure.BAD_REQUEST)
    assert f.feed(b"abc") is None
    assert f.feed(b"defg") == b"fg"
    assert got == [b"abc", b"de"] and f.done


def test_framer_chunked_split_everywhere() -> None:
    data = b"5\r\nhello\r\n1;a=b\r\n!\r\n0\r\nX: y\r\n\r\nNEXT"
    for step in range(1, len(data)):
        got: list[bytes] = []
        f = BodyFramer(got.append, None, True, Failure.BAD_REQUEST)
        rest: bytes | None = None
        for i in range(0, len(data), step):
            r = f.feed(data[i:i + step])
            if r is not None:
                rest = r + data[i + step:]
                break
        assert b"".join(got) == b"hello!", step
        assert rest == b"NEXT", step


def test_bytes_after_closing_request_ignored(parser_kind: HttpParser) -> None:
    sink = parse(parser_kind, b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                 b"Content-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\nHost: a\r\n\r\n\x00junk")
    assert sink.kinds() == ["head", "body", "end"] and sink.body() == b"hi"


def test_trailers_are_not_head_fields(parser_kind: HttpParser) -> None:
    sink = parse(parser_kind, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                 b"\r\n1\r\nx\r\n0\r\nX-Trailer: 1\r\n\r\n")
    head = sink.events[0][1]
    assert [k for k, _ in head.headers] == [b"Host", b"Transfer-Encoding"]
    rsink, _ = rparse(parser_kind, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"1\r\nx\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert [k for k, _ in rsink.events[0][1].headers] == [b"Transfer-Encoding"]


def _h11_connection_verdict(raw: bytes, role: type[h11.CLIENT] | type[h11.SERVER],
                            upgrade: bool = False) -> tuple[Any, ...] | str:
    """What a public `h11.Connection` makes of one head: its fields, or "refused"."""
    conn = h11.Connection(role)
    if role is h11.CLIENT:  # parse a response: the connection must have sent a request
        headers = [(b"Host", b"x")]
        if upgrade:
            headers += [(b"Connection", b"upgrade"), (b"Upgrade", b"x")]
        conn.send(h11.Request(method=b"GET", target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError:
        return "refused"
    if isinstance(ev, h11.Request):
        return (ev.method, ev.target, ev.http_version, ev.headers.raw_items())
    assert isinstance(ev, h11.Response | h11.InformationalResponse), ev
    return (ev.status_code, ev.reason, ev.http_version, ev.headers.raw_items())


def _reader_verdict(read: Any, *args: Any) -> tuple[Any, ...] | str:
    try:
        ev = read(*args)
    except h11.ProtocolError:
        return "refused"
    first = (ev.method, ev.target) if isinstance(ev, h11.Request) else (ev.status_code,
                                                                       ev.reason)
    return (*first, ev.http_version, ev.headers.raw_items())


_HEADS = [m[1] for m in MALFORMED if b"\r\n\r\n" in m[1]] + [
    b"GET / HTTP/1.1\r\n" + H + b"\r\n", b"GET / HTTP/1.0\r\n\r\n",
    b"POST /x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-A:  b \r\n\r\nabc",
    b"GET http://a/b HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\n\r\n",
]
_RESPONSE_HEADS = [*(r for r in BAD_RESPONSES if b"\r\n\r\n" in r),
                   b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                   b"HTTP/1.0 204 No Content\r\nServer: x\r\n\r\n",
                   b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching\r\n\r\n",
                   b"HTTP/1.1 099 Low\r\n\r\n", b"HTTP/1.1 200\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\nX\x00: a\r\n\r\n", b"\r\n\r\n"]


@pytest.mark.parametrize("data", _HEADS)
def test_h11_readers_judge_as_h11_connection(data: bytes) -> None:
    """The h11 parser calls h11's head readers (private `h11._readers`) instead of a
    public `h11.Connection` per head: for every head of the tables above, both must give
    the same verdict and the same fields, so that h11 stays the judge of what the h11
    parser accepts (this breaks first if an h11 release changes the readers)."""
    raw = data[:data.find(b"\r\n\r\n") + 4]
    assert _reader_verdict(_h11_request, raw) == _h11_connection_verdict(raw, h11.SERVER)


@pytest.mark.parametrize("data", _RESPONSE_HEADS)
def test_h11_response_reader_judges_as_h11_connection(data: bytes) -> None:
    """As above, for response heads. The Connection is told an upgrade request (it
    refuses a 101 otherwise); where one told a plain GET refuses a head, the h11
    response parser for a GET refuses it too (the 101 check is the parser's own)."""
    raw = data[:data.find(b"\r\n\r\n") + 4]
    assert _reader_verdict(_h11_response, raw) == \
        _h11_connection_verdict(raw, h11.CLIENT, upgrade=True)
    if _h11_connection_verdict(raw, h11.CLIENT) == "refused":
        with pytest.raises(ParseError):
            H11ResponseParser(Sink(), b"GET").feed(raw)


def test_h11_verdicts_remembered_by_exact_bytes() -> None:
    """A head seen before is not judged again (`_REQUEST_VERDICTS`), but what depends on
    more than its bytes is: a limit, the request's method, the upgrade wish."""
    raw = b"GET /remembered HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"
    for _ in range(2):
        head = parse(HttpParser.H11, raw).events[0][1]
        assert (head.target, head.headers) == (b"/remembered", [(b"Host", b"a"),
                                                                 (b"X-A", b"1")])
    head.headers.append((b"X-B", b"2"))  # a head's fields are its own
    assert parse(HttpParser.H11, raw).events[0][1].headers == [(b"Host", b"a"),
                                                               (b"X-A", b"1")]
    with pytest.raises(ParseError) as e:
        parse(HttpParser.H11, raw, Limits(max_headers=1))
    assert e.value.failure is Failure.HEADERS_TOO_LARGE
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"
    sink = Sink()
    H11ResponseParser(sink, b"GET", request_upgrade=True).feed(switch)
    assert sink.events[0][1].status == 101
    with pytest.raises(ParseError):
        H11ResponseParser(Sink(), b"GET").feed(switch)
    for method, body in ((b"GET", b"ab"), (b"HEAD", b"")):
        sink = Sink()
        H11ResponseParser(sink, method).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab")
        assert sink.kinds()[-1] == "end" and sink.body() == body


def test_httptools_scans_remembered_by_exact_bytes() -> None:
    """The httptools parser scans a head's field lines once per distinct bytes
    (`_REQUEST_SCANS`, `_RESPONSE_SCANS`); what depends on more than those bytes is
    worked out for every head: the limits, the request line, Host against the target's
    authority, the version's keep-alive default, the request's method and the status.
    A head the scan refused is not remembered, and the memo stays bounded."""
    from proxy.http import parser

    kind = HttpParser.HTTPTOOLS
    fields = b"\r\nHost: a\r\nX-Forwarded-For: 192.0.2.1\r\nConnection: keep-alive\r\n"
    parser._REQUEST_SCANS.clear()
    heads = []
    for target in (b"/one", b"/two"):
        head = parse(kind, b"GET %s HTTP/1.1%s\r\n" % (target, fields)).events[0][1]
        heads.append((head.target, head.host, head.xff, head.keep_alive, head.drops))
    assert fields in parser._REQUEST_SCANS  # the second came from the memo
    assert heads[0][1:] == heads[1][1:] and heads[1][0] == b"/two"
    assert heads[0][1:4] == (b"a", [b"192.0.2.1"], True) and len(heads[0][4]) == 2
    assert fails(kind, b"GET /x HTTP/1.1%s\r\n" % fields, Limits(max_headers=2)) \
        is Failure.HEADERS_TOO_LARGE
    assert fails(kind, b"GET http://b/x HTTP/1.1%s\r\n" % fields) is Failure.BAD_REQUEST
    close = b"\r\nHost: a\r\n"
    for version, keep in ((b"1.1", True), (b"1.0", False)):
        head = parse(kind, b"GET / HTTP/%s%s\r\n" % (version, close)).events[0][1]
        assert head.keep_alive is keep, version
    bad = b"\r\nHost: a\r\nContent-Length: 1x\r\n"
    assert fails(kind, b"POST / HTTP/1.1%s\r\n" % bad) is Failure.BAD_REQUEST
    assert bad not in parser._REQUEST_SCANS

    parser._RESPONSE_SCANS.clear()
    ok = b"\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
    for method, status, body, no_body in ((b"GET", 200, b"ab", False),
                                          (b"HEAD", 200, b"", True),
                                          (b"GET", 304, b"", True)):
        sink, _ = rparse(kind, b"HTTP/1.1 %d X%s\r\nab" % (status, ok), method)
        head = sink.events[0][1]
        assert (head.status, head.no_body, head.content_length, sink.body()) == \
            (status, no_body, 2, body), (method, status)
        assert head.keep_alive and len(head.drops) == 1
    assert ok in parser._RESPONSE_SCANS
    sink, _ = rparse(kind, b"HTTP/1.0 200 X%s\r\nab" % ok.replace(b"keep-alive", b"close"))
    assert not sink.events[0][1].keep_alive
    bad = b"\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
    with pytest.raises(ParseError):
        rparse(kind, b"HTTP/1.1 200 OK%s\r\nab" % bad)
    assert bad not in parser._RESPONSE_SCANS
    for i in range(parser._SCANS_MAX + 5):
        rparse(kind, b"HTTP/1.1 200 OK\r\nX-N: %d%s\r\nab" % (i, ok))
    assert 0 < len(parser._RESPONSE_SCANS) <= parser._SCANS_MAX


def test_httptools_whole_responses_remembered_by_exact_head() -> None:
    """A read that is a whole response, its head byte for byte one analysed before and
    its body exactly that head's Content-Length, is answered from `_RESPONSE_HEADS`
    (the same head object: no llhttp, no analysis) with the callbacks the slow path
    makes, and leaves the parser as that path does (reusable, nothing after). Anything
    else takes the slow path: another head, a short or long body, HEAD, 204/304/1xx,
    chunked, a closing response; a refused head is never remembered; bounded."""
    from proxy.http import parser

    kind = HttpParser.HTTPTOOLS
    parser._RESPONSE_HEADS.clear()
    head_bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\n"
    ok = head_bytes + b"ab"
    first, p1 = rparse(kind, ok)
    assert head_bytes in parser._RESPONSE_HEADS
    second, p2 = rparse(kind, ok)
    assert second.events[0][1] is first.events[0][1]  # from the memo
    assert second.kinds() == first.kinds() == ["head", "body", "end"]
    assert second.body() == b"ab"
    for p in (p1, p2):  # the same state after either path
        assert (p.rest, p.upgrade_rest, p._done, p._headers_seen) == (b"", None, True, True)
    # a reused parser: the memo again, and llhttp still in step for a slow response
    for data in (ok, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", ok):
        sink = Sink()
        assert p2.reset(sink, b"GET")
        p2.feed(data)
        assert sink.kinds() == ["head", "body", "end"] and p2.rest == b""
    assert sink.events[0][1] is first.events[0][1]
    # the parser's own last head (`_last`) stands even when the memo has been emptied;
    # on it too, anything but the same head with exactly its body takes the slow path
    for data, method, kinds, rest in ((ok, b"GET", ["head", "body", "end"], False),
                                      (ok + b"H", b"GET", ["head", "body", "end"], True),
                                      (ok[:-1], b"GET", ["head", "body"], False),
                                      (ok, b"HEAD", ["head", "end"], True)):
        sink, p = rparse(kind, ok)
        last = sink.events[0][1]
        parser._RESPONSE_HEADS.clear()
        sink = Sink()
        assert p.reset(sink, method)
        p.feed(data)
        assert sink.kinds() == kinds and bool(p.rest) is rest, (data, method)
        assert (sink.events[0][1] is last) is (data == ok and method == b"GET")
        if kinds[-1] != "end":
            p.feed(b"b")
            assert sink.kinds() == [*kinds, "end"] and sink.body() == b"ab"
    rparse(kind, ok)
    zero = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    rparse(kind, zero)
    sink, _ = rparse(kind, zero)
    assert sink.kinds() == ["head", "end"] and sink.events[0][1] is parser._RESPONSE_HEADS[zero]

    memo = parser._RESPONSE_HEADS[head_bytes]

    def slow(data: bytes, method: bytes = b"GET", split: int = 0) -> tuple[Sink, Any]:
        sink, p = rparse(kind, data, method, split=split)
        assert not sink.events or sink.events[0][1] is not memo, data
        return sink, p

    sink, _ = slow(ok.replace(b"timeout=5", b"timeout=6"))  # one byte different
    assert sink.kinds() == ["head", "body", "end"]
    sink, p = slow(ok[:-1])  # short: the rest comes in the next read
    assert sink.kinds() == ["head", "body"]
    p.feed(b"b")
    assert sink.kinds() == ["head", "body", "end"] and sink.body() == b"ab" and p.rest == b""
    sink, p = slow(ok + b"H")  # a byte after the response: the connection is not clean
    assert sink.kinds() == ["head", "body", "end"] and p.rest
    sink, p = slow(ok, b"HEAD")
    assert sink.kinds() == ["head", "end"] and sink.events[0][1].no_body and p.rest
    sink, _ = slow(ok, split=7)
    assert sink.body() == b"ab"
    for status in (204, 304):
        data = b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\n" % status
        for _ in range(2):
            sink, _ = slow(data)
            assert sink.kinds() == ["head", "end"] and sink.events[0][1].no_body
    for data in (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
                 b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab",
                 b"HTTP/1.1 100 Continue\r\n\r\n" + ok):
        for _ in range(2):
            sink, _ = slow(data)
            assert sink.kinds()[-1] == "end" and sink.body() == b"ab", data
    assert len(parser._RESPONSE_HEADS) == 3  # ok, zero, the "timeout=6" one
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"
    for _ in range(2):
        with pytest.raises(ParseError):
            rparse(kind, bad + b"ab")
    assert bad not in parser._RESPONSE_HEADS
    for i in range(parser._SCANS_MAX + 5):
        rparse(kind, b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i)
    assert 0 < len(parser._RESPONSE_HEADS) <= parser._SCANS_MAX


def test_response_head_edited_is_a_copy() -> None:
    """A Gateway's response filters edit a copy (`ResponseHead.edited`): the head the
    httptools parser hands out again for the same bytes stays as it was read."""
    sink, _ = rparse(HttpParser.HTTPTOOLS,
                     b"HTTP/1.1 201 Made\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nab")
    head = sink.events[0][1]
    copy = head.edited([(b"X-B", b"2")])
    assert (copy.status, copy.reason, copy.version, copy.content_length, copy.chunked,
            copy.keep_alive, copy.no_body, copy.connection) == \
        (201, b"Made", b"1.1", 2, False, True, False, head.connection)
    assert copy.raw is None and copy.headers == [(b"X-B", b"2")]
    assert head.raw is not None and head.headers == [(b"Content-Length", b"2"), (b"X-A", b"1")]
