"""Differential tests: h11 and httptools, behind the same interface, must agree — on
valid requests split anywhere, and on mutated ones: one may refuse what the other takes
(llhttp skips repeated spaces in the request line, h11 does not), but every message both
take is the same message, with the same framing. A disagreement on where a message ends
is where request smuggling starts."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.parser import ParseError, request_parser
from pylb.config import HttpParser, Limits
from tests.proxy.http.test_parser import Sink

SEED_REQUESTS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"a;x=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
]


def run(kind: HttpParser, chunks: list[bytes]) -> tuple[str, Any]:
    sink = Sink()
    p = request_parser(kind, sink, Limits())
    try:
        for c in chunks:
            p.feed(c)
    except ParseError as e:
        return "error", (e.failure, summary(sink))
    return "ok", summary(sink)


def summary(sink: Sink) -> list[Any]:
    out: list[Any] = []
    for kind, v in sink.events:
        if kind == "head":
            out.append(("head", v.method, v.target, v.version, v.content_length, v.chunked,
                        v.keep_alive, v.host, tuple(v.headers)))
        elif kind == "body":
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + v)
            else:
                out.append(("body", v))
        else:
            out.append((kind,))
    return out


def complete_messages(result: tuple[str, Any]) -> list[Any]:
    """The events of messages that ended (a parser may have seen more of a message that
    the other refused halfway: only whole messages must agree)."""
    events = result[1][1] if result[0] == "error" else result[1]
    last_end = max((i for i, e in enumerate(events) if e[0] == "end"), default=-1)
    return events[:last_end + 1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(SEED_REQUESTS), min_size=1, max_size=4), st.data())
def test_valid_pipelines_split_anywhere(reqs: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(reqs)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    a = run(HttpParser.H11, chunks)
    b = run(HttpParser.HTTPTOOLS, chunks)
    assert a[0] == b[0] == "ok"
    assert a == b
    assert sum(1 for e in a[1] if e[0] == "end") == len(reqs)


_BYTES = [b" ", b"\t", b"\r", b"\n", b"\x00", b":", b",", b";", b"0", b"9", b"a", b"-",
          b"\r\n", b"\r\n ", b"Content-Length: 1\r\n", b"Transfer-Encoding: chunked\r\n",
          b"\x7f", b"\xff", b"HTTP/1.1", b"\r\n0\r\n\r\n", b"Content-Length: 0\r\n",
          b"Transfer-Encoding: chunked, chunked\r\n", b"Connection: close\r\n", b"ff",
          b"Upgrade: x\r\nConnection: upgrade\r\n"]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEED_REQUESTS), st.data())
def test_mutated_requests_agree(seed: bytes, data: st.DataObject) -> None:
    raw = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = data.draw(st.integers(0, len(raw)))
        if op == "insert":
            raw[pos:pos] = data.draw(st.sampled_from(_BYTES))
        elif op == "delete" and pos < len(raw):
            del raw[pos]
        elif pos < len(raw):
            raw[pos:pos + 1] = data.draw(st.sampled_from(_BYTES))
    stream = bytes(raw) + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    a = run(HttpParser.H11, [stream])
    b = run(HttpParser.HTTPTOOLS, [stream])
    ma, mb = complete_messages(a), complete_messages(b)
    # Where one is stricter it stops earlier, but every message both saw is the same one:
    # they never disagree on where a message ends (that is how smuggling starts).
    n = min(len(ma), len(mb))
    assert ma[:n] == mb[:n], (stream, a, b)
    if a[0] == b[0] == "ok":
        assert a == b, (stream, a, b)


RESPONSE_SEEDS = [
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (b"GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
]


def rrun(kind: HttpParser, method: bytes, data: bytes) -> tuple[str, Any]:
    from proxy.http.parser import response_parser
    sink = Sink()
    p = response_parser(kind, sink, method)
    try:
        p.feed(data)
    except ParseError as e:
        return "error", (e.failure, summary_r(sink))
    return "ok", (summary_r(sink), bool(p.rest))


def summary_r(sink: Sink) -> list[Any]:
    out: list[Any] = []
    for kind, v in sink.events:
        if kind == "head":
            out.append(("head", v.status, v.content_length, v.chunked, v.no_body,
                        v.keep_alive, tuple(v.headers)))
        elif kind == "body":
            out.append(("body", v))
        else:
            out.append((kind, v) if kind == "interim" else (kind,))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(RESPONSE_SEEDS), st.data())
def test_mutated_responses_agree(seed: tuple[bytes, bytes], data: st.DataObject) -> None:
    method, raw_seed = seed
    raw = bytearray(raw_seed)
    for _ in range(data.draw(st.integers(1, 2))):
        pos = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()):
            raw[pos:pos] = data.draw(st.sampled_from(_BYTES))
        elif pos < len(raw):
            del raw[pos]
    a = rrun(HttpParser.H11, method, bytes(raw))
    b = rrun(HttpParser.HTTPTOOLS, method, bytes(raw))
    if a[0] == b[0] == "ok":
        ea, eb = a[1][0], b[1][0]
        # A complete response must be framed alike; an incomplete one may be seen to
        # different depths (h11 waits for whole heads, llhttp streams).
        if ("end",) in ea and ("end",) in eb:
            assert ea == eb, (bytes(raw), a, b)
