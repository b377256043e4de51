"""h2rules: the h2 → HTTP/1.1 translation as tables, no sockets."""

from __future__ import annotations

import pytest

from proxy.http import h2rules
from proxy.http.headers import request_head

BASE = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a.example:8443"),
        (b":path", b"/p?q=1")]


def test_translation() -> None:
    head = h2rules.request_head(
        [*BASE, (b"cookie", b"a=1"), (b"x-b", b"2"), (b"cookie", b"c=3"),
         (b"te", b"trailers"), (b"content-length", b"4")], end_stream=False, max_uri=8192)
    assert (head.method, head.target, head.host) == (b"POST", b"/p?q=1", b"a.example:8443")
    assert head.content_length == 4 and not head.chunked
    out = request_head(head, head.target, client_ip="127.0.0.1", proto=b"https", port=443,
                       chunked=head.chunked)
    assert out.startswith(b"POST /p?q=1 HTTP/1.1\r\nhost: a.example:8443\r\n"
                          b"cookie: a=1; c=3\r\nx-b: 2\r\n")
    assert b"Content-Length: 4\r\n" in out and b"te:" not in out.lower()


def test_unknown_length_goes_chunked() -> None:
    head = h2rules.request_head(BASE, end_stream=False, max_uri=8192)
    assert head.chunked and head.content_length is None
    assert not h2rules.request_head(BASE, end_stream=True, max_uri=8192).chunked


@pytest.mark.parametrize("extra", [
    [(b"connection", b"x")], [(b"transfer-encoding", b"chunked")], [(b"te", b"gzip")],
    [(b"Upper", b"1")], [(b"x", b" lead")], [(b"x", b"trail\t")], [(b"x", b"a\nb")],
    [(b"host", b"b.example")], [(b"content-length", b"-1")],
    [(b"content-length", b"1"), (b"content-length", b"2")],
])
def test_malformed(extra: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(h2rules.Malformed):
        h2rules.request_head([*BASE, *extra], end_stream=False, max_uri=8192)


@pytest.mark.parametrize("path", [b"", b"p", b"/a b", b"/a\x7f", b"/a#f", b"*"])
def test_bad_paths(path: bytes) -> None:
    hs = [(k, path if k == b":path" else v) for k, v in BASE]
    with pytest.raises(h2rules.Malformed):
        h2rules.request_head(hs, end_stream=True, max_uri=8192)


def test_too_long_path() -> None:
    hs = [(k, b"/" + b"a" * 100 if k == b":path" else v) for k, v in BASE]
    with pytest.raises(h2rules.Malformed):
        h2rules.request_head(hs, end_stream=True, max_uri=50)


def test_response_headers() -> None:
    block = h2rules.response_headers(
        200, [(b"Content-Type", b"text/plain"), (b"Connection", b"x-hop"), (b"X-Hop", b"1"),
              (b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"5")],
        frozenset({b"x-hop"}), b"max-age=1", None)
    assert block == [(b":status", b"200"), (b"content-type", b"text/plain"),
                     (b"strict-transport-security", b"max-age=1")]


def test_upstream_headers_for_h2c() -> None:
    head = h2rules.request_head(
        [*BASE, (b"content-type", b"application/grpc"), (b"x-forwarded-for", b"10.0.0.1"),
         (b"x-ssl-client-dn", b"CN=mallory"), (b"x-forwarded-proto", b"gopher")],
        end_stream=False, max_uri=8192)
    out = h2rules.upstream_headers(head, b"/svc/M", client_ip="127.0.0.2", proto=b"https",
                                   ssl_client=(b"SUCCESS", b"CN=alice"))
    assert out == [
        (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.example:8443"),
        (b":path", b"/svc/M"), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
        (b"x-forwarded-for", b"10.0.0.1, 127.0.0.2"), (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"a.example:8443"), (b"x-ssl-client-verify", b"SUCCESS"),
        (b"x-ssl-client-dn", b"CN=alice")]


@pytest.mark.parametrize(("value", "seconds"), [
    (b"5S", 5.0), (b"100m", 0.1), (b"2M", 120.0), (b"1H", 3600.0), (b"7u", 7e-6),
    (b"S", None), (b"5x", None), (b"123456789S", None)])
def test_grpc_timeout(value: bytes, seconds: float | None) -> None:
    assert h2rules.grpc_timeout([(b"grpc-timeout", value)]) == seconds


@pytest.mark.parametrize(("fields", "kept"), [
    ([(b"x-checksum", b"1"), (b"grpc-foo", b"2")], [(b"x-checksum", b"1"), (b"grpc-foo", b"2")]),
    ([(b"content-length", b"5"), (b"host", b"h"), (b"x-a", b"1")], [(b"x-a", b"1")]),
    ([(b"te", b"trailers")], []),
])
def test_request_trailers_kept_and_dropped(fields: h2rules.Headers,
                                           kept: h2rules.Headers) -> None:
    assert h2rules.request_trailers(fields) == kept


@pytest.mark.parametrize("fields", [
    [(b":status", b"200")], [(b"transfer-encoding", b"chunked")], [(b"Up", b"1")],
    [(b"x", b"a\nb")], [(b"x", b" a")], [(b"bad name", b"1")],
])
def test_request_trailers_malformed(fields: h2rules.Headers) -> None:
    with pytest.raises(h2rules.Malformed):
        h2rules.request_trailers(fields)


def test_chunked_end() -> None:
    assert h2rules.chunked_end(None) == b"0\r\n\r\n"
    assert h2rules.chunked_end([(b"a", b"1"), (b"b", b"2")]) == b"0\r\na: 1\r\nb: 2\r\n\r\n"
