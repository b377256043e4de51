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

from dataclasses import dataclass, field

import httptools
import pytest

from proxy.http import headers as hdr
from proxy.http.parser import (
    Headers,
    HttptoolsResponseParser,
    ParseError,
    ResponseHead,
    analyze_response,
)
from pylb.failures import Failure
from tests.hardening._smuggling import RESPONSES


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
