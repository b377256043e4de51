"""Header rewriting as tables (pure functions, no sockets)."""

from __future__ import annotations

from proxy.http import headers as hdr
from proxy.http.parser import ResponseHead, analyze_request, analyze_response
from pylb.config import Limits


def req(headers: list[tuple[bytes, bytes]], method: bytes = b"GET", version: bytes = b"1.1"
        ) -> hdr.RequestHead:
    return analyze_request(method, b"/x", version, headers, Limits())


def lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:-2]


def test_request_hop_by_hop_and_forwarded() -> None:
    h = req([(b"Host", b"h.com"), (b"Connection", b"keep-alive, X-Secret"),
             (b"Keep-Alive", b"timeout=5"), (b"X-Secret", b"1"), (b"TE", b"trailers"),
             (b"Proxy-Connection", b"keep-alive"), (b"X-Forwarded-For", b"1.1.1.1"),
             (b"X-Forwarded-For", b"2.2.2.2"), (b"X-Forwarded-Proto", b"https"),
             (b"X-Forwarded-Host", b"evil"), (b"X-SSL-Client-DN", b"CN=forged"),
             (b"X-SSL-Client-Verify", b"SUCCESS"), (b"Accept", b"*/*")])
    out = hdr.request_head(h, b"/y", client_ip="10.0.0.9", proto=b"http", port=80,
                           chunked=False)
    assert out.startswith(b"GET /y HTTP/1.1\r\n") and out.endswith(b"\r\n\r\n")
    assert lines(out) == [
        b"Host: h.com", b"Accept: */*",
        b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9", b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: h.com", b"X-Forwarded-Port: 80"]


def test_request_framing_and_ssl_client() -> None:
    h = req([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], method=b"POST")
    out = hdr.request_head(h, b"/", client_ip="::1", proto=b"https", port=443, chunked=True,
                           ssl_client=(b"SUCCESS", b"CN=alice,O=Example"))
    assert b"Transfer-Encoding: chunked\r\n" in out
    assert b"X-SSL-Client-Verify: SUCCESS\r\nX-SSL-Client-DN: CN=alice,O=Example\r\n" in out
    assert b"X-Forwarded-Proto: https" in out
    h = req([(b"Host", b"h"), (b"Content-Length", b"5")], method=b"POST")
    out = hdr.request_head(h, b"/", client_ip="1.2.3.4", proto=b"http", port=80,
                           chunked=False)
    assert b"Content-Length: 5\r\n" in out and b"Transfer-Encoding" not in out


def test_request_upgrade_kept() -> None:
    h = req([(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
             (b"Sec-WebSocket-Key", b"k")])
    out = hdr.request_head(h, b"/", client_ip="1.2.3.4", proto=b"http", port=80,
                           chunked=False)
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in out
    assert b"Sec-WebSocket-Key: k\r\n" in out


def test_affinity_cookie_removed() -> None:
    h = req([(b"Host", b"h"), (b"Cookie", b"a=1; SERVERID=abc; b=2"),
             (b"Cookie", b"SERVERID=abc")])
    assert hdr.find_cookie(h.headers, b"SERVERID") == b"abc"
    out = hdr.request_head(h, b"/", client_ip="1.2.3.4", proto=b"http", port=80,
                           chunked=False, affinity_cookie=b"SERVERID")
    assert b"Cookie: a=1; b=2\r\n" in out
    assert b"SERVERID" not in out


def test_cookie_helpers() -> None:
    assert hdr.remove_cookie(b"SERVERID=x", b"SERVERID") == b""
    assert hdr.remove_cookie(b"a=1;SERVERID=x;  c=3", b"SERVERID") == b"a=1; c=3"
    assert hdr.remove_cookie(b"XSERVERID=x", b"SERVERID") == b"XSERVERID=x"
    assert hdr.find_cookie([(b"Cookie", b"XSERVERID=1")], b"SERVERID") is None
    assert hdr.find_cookie([(b"cookie", b'SERVERID="q"')], b"SERVERID") == b"q"


def resp(headers: list[tuple[bytes, bytes]], status: int = 200, method: bytes = b"GET",
         version: bytes = b"1.1") -> ResponseHead:
    return analyze_response(status, b"OK", version, headers, method)


def test_response_framings() -> None:
    assert hdr.response_framing(resp([(b"Content-Length", b"3")]), b"1.1") == hdr.FRAME_LENGTH
    assert hdr.response_framing(resp([(b"Transfer-Encoding", b"chunked")]), b"1.1") \
        == hdr.FRAME_CHUNKED
    assert hdr.response_framing(resp([(b"Transfer-Encoding", b"chunked")]), b"1.0") \
        == hdr.FRAME_CLOSE
    assert hdr.response_framing(resp([]), b"1.1") == hdr.FRAME_CHUNKED
    assert hdr.response_framing(resp([(b"Content-Length", b"3")], method=b"HEAD"), b"1.1") \
        == hdr.FRAME_NONE
    assert hdr.response_framing(resp([], status=204), b"1.1") == hdr.FRAME_NONE


def test_response_head_rewrites() -> None:
    r = resp([(b"Content-Length", b"3"), (b"Connection", b"keep-alive, X-Hop"),
              (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"), (b"Server", b"b"),
              (b"Strict-Transport-Security", b"max-age=1")])
    out = hdr.response_head(r, hdr.FRAME_LENGTH, keep_alive=True, client_version=b"1.1",
                            set_cookie=b"SERVERID=abc; path=/", hsts=b"max-age=15768000")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert lines(out) == [
        b"Content-Length: 3", b"Server: b", b"Set-Cookie: SERVERID=abc; path=/",
        b'Cache-Control: no-cache="set-cookie"', b"Strict-Transport-Security: max-age=15768000"]
    out = hdr.response_head(r, hdr.FRAME_LENGTH, keep_alive=False, client_version=b"1.1")
    assert b"Connection: close\r\n" in out and b"Strict-Transport-Security: max-age=1" in out
    out = hdr.response_head(r, hdr.FRAME_LENGTH, keep_alive=True, client_version=b"1.0")
    assert b"Connection: keep-alive\r\n" in out
    r = resp([(b"Transfer-Encoding", b"chunked")])
    out = hdr.response_head(r, hdr.FRAME_CHUNKED, keep_alive=True, client_version=b"1.1")
    assert lines(out) == [b"Transfer-Encoding: chunked"]


def test_ssl_client_dn() -> None:
    cert = {"subject": ((("countryName", "US"),), (("organizationName", "Ex, Inc"),),
                        (("commonName", "alice"),))}
    assert hdr.ssl_client_dn(cert) == b"CN=alice,O=Ex\\, Inc,C=US"
    assert hdr.ssl_client_dn({}) == b""
