"""Fuzzing the L7 request path (issue #12): bytes in → the router's response or a 4xx,
through the real `ClientProtocol` with each parser, on fake transports (see
tests/hardening/_fuzzing.py for the harness and the properties it checks: nothing escapes
the Protocol, no INTERNAL failure, the client gets well-formed HTTP/1.1 responses, a 4xx
for bad input closes, every request a backend sees is well-formed, every whole request
forwarded is answered). The long run is `python -m bench.fuzz --target http`."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pylb.config import HttpParser, Limits
from tests.hardening._fuzzing import (
    BACKEND_STYLES,
    Violation,
    build_request,
    check_http_differential,
    mutate,
    run_http,
    split,
)

PARSERS = [HttpParser.H11, HttpParser.HTTPTOOLS]
styles = st.sampled_from(BACKEND_STYLES)


def chunks_of(data: bytes, draw: st.DataObject) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(draw.draw(st.sets(st.integers(1, len(data) - 1), max_size=6), "cuts"))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.booleans(), styles, st.data())
@example(b"\x00", True, "length", None)
@example(b"GET /a HTTP/1.1\r\n\r\n", True, "length", None)
def test_raw_bytes(data: bytes, eof: bool, style: str, draw: st.DataObject | None) -> None:
    chunks = chunks_of(data, draw) if draw is not None else [data]
    check_http_differential(chunks, eof, style)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([b"GET /a/x HTTP/1.1\r\nHost: h\r\n", b"POST /svc:8080 HTTP/1.1\r\n",
                        b"GET http://h.example/a HTTP/1.1\r\nHost: h.example\r\n"]),
       st.binary(max_size=200), st.booleans(), styles, st.data())
def test_valid_start_then_random_bytes(start: bytes, tail: bytes, eof: bool, style: str,
                                       draw: st.DataObject) -> None:
    check_http_differential(chunks_of(start + tail, draw), eof, style)


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 3), st.integers(0, 3),
       st.booleans(), styles)
def test_structured_requests(rng: random.Random, n: int, mutations: int, eof: bool,
                             style: str) -> None:
    """Requests built from parts (methods, absolute-form and `/svc:port` targets,
    %-encodings, control bytes in names and values, CL/TE combinations, chunk sizes that
    lie, upgrades), pipelined, mutated at the byte level, split anywhere."""
    stream = b"".join(build_request(rng) for _ in range(n))
    if mutations:
        stream = mutate(rng, stream, mutations)
    check_http_differential(split(rng, stream), eof, style)


# Inputs the fuzzer found, each a bug fixed in pylb (see the commit named).
REGRESSIONS = [
    # 63e8c6e: the h11 path forwarded control bytes in field values that llhttp refuses.
    ([b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: \x7f\r\n\r\n"], "length"),
    ([b"PUT /none HTTP/1.0\r\nHost: \x07h.example\r\n\r\n"], "length"),
    # d4bacb8: a valid request then garbage in one read: with httptools, a reset and no
    # response although the backend had the request.
    ([b"GET /A HTTP/1.1\r\n", b"Host: h.example\r\nTransfer-Encoding: chunked\r\n\r\n"
      b"0\r\n\r\n8\r\n\xb5\xc3\xd7\x91\x86\xe9Y\x9b\xb9\r\n0\r\n"], "early"),
    # cb2d883: chunk extensions the h11 path took and llhttp refuses.
    ([b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n"
      b"0\r\n\r\n"], "length"),
    ([b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3; a=b\r\nabc\r\n"
      b"0\r\n\r\n"], "length"),
    # 73d92e7: a 400 with a body answered a HEAD request.
    ([b"HEAD /a HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n5\x00\r\n"],
     "length"),
    # 692760d: 'Connection: host' stripped Host from the request sent upstream.
    ([b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n"], "length"),
    # d8300da: the end of a body, then a bad request, in one read: the end never went up.
    ([b"PUT /ci/X HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n.\xbb", b"'",
      b"\xb8\xa9\xb3\x98\xca\x81o\x9b"], "close"),
]


@pytest.mark.parametrize(("chunks", "style"), REGRESSIONS)
def test_regressions(chunks: list[bytes], style: str) -> None:
    check_http_differential(chunks, True, style)


@pytest.mark.parametrize("kind", PARSERS, ids=lambda k: k.value)
def test_pipelined_garbage_answered_after_the_good_request(kind: HttpParser) -> None:
    out = run_http(kind, [b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n"
                          b"\x00\r\n\r\n"])
    assert out.statuses == [200, 400]
    assert out.closed


@pytest.mark.parametrize("kind", PARSERS, ids=lambda k: k.value)
def test_forwarded_requests_are_checked(kind: HttpParser) -> None:
    """The harness itself: a request pylb forwards is parsed by the fake backend, and a
    malformed one would be a Violation (here: a head the backend's h11 refuses)."""
    out = run_http(kind, [b"POST /svc:8080/p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
                          b"abc"], style="chunked")
    assert out.statuses == [200]
    [fwd] = out.forwarded
    assert fwd.events[0][:3] == ("request", b"POST", b"/p")
    assert fwd.events[1:] == [("data", b"abc"), ("end",)]


def test_small_limits() -> None:
    """Oversized targets and heads: 414 / 431, the connection closed."""
    limits = Limits(max_request_head=256, max_uri=64, max_headers=4)
    for kind in PARSERS:
        long_uri = run_http(kind, [b"GET /a/" + b"x" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n"],
                            limits=limits)
        assert long_uri.statuses == [414] and long_uri.closed
        many = run_http(kind, [b"GET /a HTTP/1.1\r\nHost: h\r\n" + b"X-A: 1\r\n" * 6 + b"\r\n"],
                        limits=limits)
        assert many.statuses == [431] and many.closed


def test_violation_is_raised_for_a_bad_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The properties can fail: break the request rewriting (a space in the target sent
    upstream) and the harness must say so."""
    from proxy.http.routing import Router

    real = Router.route

    def broken(self: Router, host: bytes, path: bytes, query: bytes) -> object:
        found = real(self, host, path, query)
        return None if found is None else (found[0], b"/a b")

    monkeypatch.setattr(Router, "route", broken)  # the server routes and rewrites with it
    with pytest.raises(Violation, match="malformed request upstream"):
        run_http(HttpParser.H11, [b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"])


CONTROLS = [*range(0x20), 0x7F]


@pytest.mark.parametrize("kind", PARSERS, ids=lambda k: k.value)
def test_every_control_byte_in_name_value_and_target(kind: HttpParser) -> None:
    """Each control byte in a field name, a field value, the target: a 400 and nothing
    forwarded — but HTAB inside a value, which is allowed (RFC 9110 §5.5)."""
    for c in CONTROLS:
        b = bytes([c])
        for req in (b"GET /a HTTP/1.1\r\nHost: h\r\nX-" + b + b"A: v\r\n\r\n",
                    b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: v" + b + b"v\r\n\r\n",
                    b"GET /a" + b + b"b HTTP/1.1\r\nHost: h\r\n\r\n"):
            out = run_http(kind, [req])
            if c == 0x09 and b"v\tv" in req:
                assert out.statuses == [200], req
            else:
                assert out.statuses == [400] and not out.forwarded, (req, out.statuses)


@pytest.mark.parametrize("kind", PARSERS, ids=lambda k: k.value)
def test_request_cut_by_a_bad_trailer(kind: HttpParser) -> None:
    """Found by atheris (a disagreement of the harness, not a bug): h11 reads a trailer
    line to its end, so the head may already be upstream when the 400 comes; that backend
    connection must then be aborted, never reused."""
    chunks = [b"GET /svc:8080 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
              b"PUT /none", b" HTTP/1.1\r\n\r\n"]
    out = run_http(kind, chunks)
    assert out.statuses == [400] and out.closed
    assert all(f.aborted for f in out.forwarded if f.events)
    check_http_differential(chunks, True, "length")


def test_request_cut_by_a_bad_chunk_after_an_early_answer() -> None:
    """Found by atheris (the harness's, not a bug): h11 finds a bad chunk-size line at its
    end, llhttp at its first byte; in between, a backend that answers early has sent a 200
    for the request being cut. What was read whole must agree, and does."""
    chunks = [b"GET /a?x=%ZZ HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: Chunked\r\n"
              b"\r\nPOS", b"T /a b HTTP/11\r\n\r\n"]
    check_http_differential(chunks, True, "early")
