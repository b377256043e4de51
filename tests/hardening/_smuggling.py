"""Issue #12, request smuggling: the tables of bad requests and responses, a recording
backend, and the runners that send a case through pylb or haproxy over real sockets.

Each request case is raw bytes written in one send on a fresh connection (one read on
loopback: a case is far below the loopback MTU, so nothing reaches a backend because the
bytes were split), then the client reads until the server closes. The backend records
every byte it receives on every connection; the runner stops the proxy before looking,
so bytes in flight have landed (each backend connection is read to its end).

`status` is pylb's verdict on the bad request; `forwarded` counts the valid requests in
front of it (each answered 200 first, each reaching the backend exactly once). `note`
says why, with the RFC where pylb and haproxy 2.6 disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import h11

from proxy.balance import Balancers
from proxy.http import HttpProxy
from pylb.config import HttpParser, Settings
from pylb.counters import Stats
from pylb.model import Backend, HttpRoute, RouteTable, Server
from tests.conftest import free_port

H = b"Host: x\r\n"
GET = b"GET /r HTTP/1.1\r\n" + H
POST = b"POST /r HTTP/1.1\r\n" + H
CHUNKED = b"Transfer-Encoding: chunked\r\n"
VALID = GET + b"\r\n"  # a request that is answered 200 (the prefix of pipelined cases)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int = 400
    forwarded: int = 0
    note: str = ""


def _post_chunked(body: bytes) -> bytes:
    return POST + CHUNKED + b"\r\n" + body


def _cl_te(*lines: bytes, body: bytes = b"0\r\n\r\n") -> bytes:
    """A POST with the given framing lines (each without CRLF) and `body`."""
    return POST + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


_CL4 = b"Content-Length: 4"
_TE = b"Transfer-Encoding"

REQUESTS: tuple[Case, ...] = (
    # -- CL.TE and TE.CL: one message, two framings (RFC 9112 §6.1 lets a server reject).
    Case("cl_te", _cl_te(b"Content-Length: 6", _TE + b": chunked", body=b"0\r\n\r\nX")),
    Case("te_cl", _cl_te(_TE + b": chunked", b"Content-Length: 3",
                         body=b"8\r\nSMUGGLED\r\n0\r\n\r\n")),
    Case("cl_te_get", b"GET /r HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" + CHUNKED
         + b"\r\n0\r\n\r\n"),
    Case("cl_zero_te", _cl_te(b"Content-Length: 0", _TE + b": chunked")),
    # -- TE.TE: a Transfer-Encoding one side may not see as chunked (each also has a CL).
    Case("te_xchunked", _cl_te(_CL4, _TE + b": xchunked", body=b"abcd")),
    Case("te_xchunked_alone", _cl_te(_TE + b": xchunked", body=b"0\r\n\r\n")),
    Case("te_chunked_identity", _cl_te(_CL4, _TE + b": chunked, identity", body=b"abcd")),
    Case("te_identity_chunked", _cl_te(_TE + b": identity, chunked"),
         note="identity is no transfer coding since RFC 7230"),
    Case("te_chunked_chunked_list", _cl_te(_TE + b": chunked, chunked")),
    Case("te_twice", _cl_te(_TE + b": chunked", _TE + b": chunked"),
         note="chunked applied twice (RFC 9112 §6.1: MUST NOT)"),
    Case("te_twice_other_first", _cl_te(_TE + b": identity", _TE + b": chunked")),
    Case("te_gzip_chunked", _cl_te(_TE + b": gzip, chunked"),
         note="valid syntax, but pylb decodes only chunked"),
    Case("te_quoted", _cl_te(_CL4, _TE + b': "chunked"', body=b"abcd")),
    Case("te_param", _cl_te(_CL4, _TE + b": chunked;q=1", body=b"abcd")),
    Case("te_empty", _cl_te(_CL4, _TE + b":", body=b"abcd")),
    Case("te_with_cl_tab_value", _cl_te(_CL4, _TE + b":\tchunked", body=b"abcd")),
    Case("te_with_cl_upper", _cl_te(_CL4, b"TRANSFER-ENCODING: CHUNKED", body=b"abcd")),
    Case("te_with_cl_lower", _cl_te(_CL4, b"transfer-encoding: chunked", body=b"abcd")),
    Case("te_vtab_value", _cl_te(_CL4, _TE + b":\x0bchunked", body=b"abcd")),
    Case("te_vtab_trailing", _cl_te(_CL4, _TE + b": chunked\x0b", body=b"abcd")),
    Case("te_formfeed_value", _cl_te(_CL4, _TE + b": \x0cchunked", body=b"abcd")),
    Case("te_nul_value", _cl_te(_CL4, _TE + b": chunked\x00", body=b"abcd")),
    Case("te_bare_cr_value", _cl_te(_CL4, _TE + b": chunked\r", body=b"abcd")),
    Case("te_name_tab_colon", _cl_te(_CL4, _TE + b"\t: chunked", body=b"abcd")),
    Case("te_name_space_colon", _cl_te(_CL4, _TE + b" : chunked", body=b"abcd")),
    Case("te_line_leading_space", _cl_te(_CL4, b" " + _TE + b": chunked", body=b"abcd"),
         note="an obs-fold line: RFC 9112 §5.2 lets a server unfold it; pylb refuses"),
    Case("te_underscore", _cl_te(b"Transfer_Encoding: chunked", body=b"0\r\n\r\n")),
    Case("te_underscore_with_cl", _cl_te(_CL4, b"Transfer_Encoding: chunked", body=b"abcd")),
    Case("te_http10", b"POST /r HTTP/1.0\r\nHost: x\r\n" + CHUNKED + b"\r\n0\r\n\r\n"),
    # -- Content-Length
    Case("cl_twice_same", _cl_te(_CL4, _CL4, body=b"abcd")),
    Case("cl_twice_diff", _cl_te(_CL4, b"Content-Length: 5", body=b"abcde")),
    Case("cl_list_same", _cl_te(b"Content-Length: 4, 4", body=b"abcd")),
    Case("cl_list_diff", _cl_te(b"Content-Length: 4,5", body=b"abcde")),
    Case("cl_plus", _cl_te(b"Content-Length: +4", body=b"abcd")),
    Case("cl_minus", _cl_te(b"Content-Length: -4", body=b"abcd")),
    Case("cl_hex", _cl_te(b"Content-Length: 0x4", body=b"abcd")),
    Case("cl_decimal", _cl_te(b"Content-Length: 4.0", body=b"abcd")),
    Case("cl_inner_space", _cl_te(b"Content-Length: 4 4", body=b"abcd")),
    Case("cl_trailing_garbage", _cl_te(b"Content-Length: 4abc", body=b"abcd")),
    Case("cl_empty", _cl_te(b"Content-Length:", body=b"abcd")),
    Case("cl_huge", _cl_te(b"Content-Length: 99999999999999999999", body=b"abcd")),
    Case("cl_vtab", _cl_te(b"Content-Length:\x0b4", body=b"abcd")),
    Case("cl_name_space_colon", _cl_te(b"Content-Length : 4", body=b"abcd")),
    Case("cl_underscore", _cl_te(b"Content_Length: 4", body=b"abcd")),
    Case("cl_obs_fold", _cl_te(b"Content-Length:", b" 4", body=b"abcd")),
    # -- the head, lexically
    Case("host_space_before_colon", b"GET /r HTTP/1.1\r\nHost : x\r\n\r\n"),
    Case("obs_fold", GET + b"X-A: a\r\n b\r\n\r\n"),
    Case("obs_fold_tab", GET + b"X-A: a\r\n\tb\r\n\r\n"),
    Case("first_line_folded", b"GET /r HTTP/1.1\r\n Host: x\r\n\r\n",
         note="RFC 9112 §2.2: reject, or ignore the whitespace-preceded line"),
    Case("nul_in_value", GET + b"X-A: a\x00b\r\n\r\n"),
    Case("nul_in_name", GET + b"X\x00A: a\r\n\r\n"),
    Case("bare_cr_in_value", GET + b"X-A: a\rb\r\n\r\n"),
    Case("bare_cr_before_crlf", GET + b"X-A: a\r\r\n\r\n"),
    Case("bare_lf_header", b"GET /r HTTP/1.1\r\nHost: x\nX-A: a\r\n\r\n"),
    Case("bare_lf_request_line", b"GET /r HTTP/1.1\n" + H + b"\r\n"),
    Case("bare_lf_everywhere", b"GET /r HTTP/1.1\nHost: x\n\n"),
    Case("ctl_in_value", GET + b"X-A: a\x01b\r\n\r\n"),
    Case("del_in_value", GET + b"X-A: a\x7fb\r\n\r\n"),
    Case("name_bad_token", GET + b"X(A): a\r\n\r\n"),
    Case("name_space_inside", GET + b"X A: a\r\n\r\n"),
    Case("name_empty", GET + b": a\r\n\r\n"),
    Case("name_non_ascii", GET + b"X\xffA: a\r\n\r\n"),
    Case("line_without_colon", GET + b"X-A\r\n\r\n"),
    # -- limits
    Case("head_too_large", GET + b"X-A: " + b"a" * (20 * 1024) + b"\r\n\r\n", status=431),
    Case("name_too_large", GET + b"X" * (20 * 1024) + b": a\r\n\r\n", status=431),
    Case("too_many_fields", GET + b"".join(b"X-%d: a\r\n" % i for i in range(150))
         + b"\r\n", status=431),
    Case("uri_too_long", b"GET /" + b"a" * (9 * 1024) + b" HTTP/1.1\r\n" + H + b"\r\n",
         status=414),
    # -- the request line
    Case("http09", b"GET /r\r\n\r\n"),
    Case("http20", b"GET /r HTTP/2.0\r\n" + H + b"\r\n"),
    Case("http_lowercase", b"GET /r http/1.1\r\n" + H + b"\r\n"),
    Case("http_version_10dot", b"GET /r HTTP/1.10\r\n" + H + b"\r\n"),
    Case("extra_field", b"GET /r HTTP/1.1 x\r\n" + H + b"\r\n"),
    Case("tab_separator", b"GET\t/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("leading_space", b" GET /r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("method_lowercase", b"get /r HTTP/1.1\r\n" + H + b"\r\n",
         note="methods are case-sensitive (RFC 9110 §9.1)"),
    Case("method_unknown", b"FOO /r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("connect", b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"),
    Case("asterisk_get", b"GET * HTTP/1.1\r\n" + H + b"\r\n"),
    Case("authority_form_get", b"GET x:80 HTTP/1.1\r\n" + H + b"\r\n"),
    Case("relative_target", b"GET r/s HTTP/1.1\r\n" + H + b"\r\n"),
    Case("target_ctl", b"GET /r\x01s HTTP/1.1\r\n" + H + b"\r\n"),
    Case("target_del", b"GET /r\x7fs HTTP/1.1\r\n" + H + b"\r\n"),
    Case("target_fragment", b"GET /r#s HTTP/1.1\r\n" + H + b"\r\n",
         note="RFC 9112 §3.2: no fragment in a request-target"),
    # -- absolute-form targets and Host (RFC 9112 §3.2.2: the target's authority wins;
    #    pylb, like haproxy 2.x, refuses a Host that disagrees with it)
    Case("abs_host_mismatch", b"GET http://y/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_host_port_mismatch", b"GET http://x:81/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_ftp_scheme", b"GET ftp://x/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_httpx_scheme", b"GET httpx://x/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_http_no_slashes", b"GET http:x/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_http_word", b"GET httpfoo HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_userinfo", b"GET http://u@x/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_empty_authority", b"GET http:///r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_bad_authority", b"GET http://x y/r HTTP/1.1\r\n" + H + b"\r\n"),
    Case("abs_host_empty", b"GET http://x/r HTTP/1.1\r\nHost:\r\n\r\n"),
    Case("host_missing", b"GET /r HTTP/1.1\r\n\r\n"),
    Case("host_twice", GET + b"Host: y\r\n\r\n"),
    Case("host_twice_same", GET + H + b"\r\n"),
    Case("host_list", b"GET /r HTTP/1.1\r\nHost: x, y\r\n\r\n"),
    Case("host_inner_space", b"GET /r HTTP/1.1\r\nHost: a b\r\n\r\n"),
    Case("host_at", b"GET /r HTTP/1.1\r\nHost: a@b\r\n\r\n"),
    Case("host_slash", b"GET /r HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    Case("host_bad_port", b"GET /r HTTP/1.1\r\nHost: a:8x\r\n\r\n"),
    Case("host_two_ports", b"GET /r HTTP/1.1\r\nHost: a:80:81\r\n\r\n"),
    Case("host_ctl", b"GET /r HTTP/1.1\r\nHost: a\x01b\r\n\r\n"),
    Case("host_bad_ipv6", b"GET /r HTTP/1.1\r\nHost: [::1\r\n\r\n"),
    # -- Upgrade with a body: the body would be read as tunnel bytes by one side only
    Case("upgrade_with_cl", GET + b"Connection: upgrade\r\nUpgrade: websocket\r\n"
         b"Content-Length: 5\r\n\r\nhello"),
    Case("upgrade_with_te", GET + b"Connection: upgrade\r\nUpgrade: websocket\r\n" + CHUNKED
         + b"\r\n5\r\nhello\r\n0\r\n\r\n"),
    # -- pipelined: a valid request first (served), then a smuggling attempt (refused)
    Case("pipelined_then_cl_te", VALID + _cl_te(b"Content-Length: 6", _TE + b": chunked",
                                                body=b"0\r\n\r\nX"), forwarded=1),
    Case("pipelined_then_bare_lf", VALID + b"GET /r HTTP/1.1\nHost: x\n\n", forwarded=1),
    Case("get_body_then_te_te", GET + b"Content-Length: 5\r\n\r\nhello"
         + _cl_te(_CL4, _TE + b": xchunked", body=b"abcd"), forwarded=1),
    Case("chunked_then_cl_twice", _post_chunked(b"3\r\nabc\r\n0\r\n\r\n")
         + _cl_te(_CL4, _CL4, body=b"abcd"), forwarded=1),
    # -- chunked bodies
    Case("chunk_negative", _post_chunked(b"-5\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_overflow", _post_chunked(b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_overflow_wraps_to_5",
         _post_chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_0x_prefix", _post_chunked(b"0x5\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_space_before", _post_chunked(b" 5\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_space_after", _post_chunked(b"5 \r\nhello\r\n0\r\n\r\n")),
    Case("chunk_space_before_ext", _post_chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_empty_size", _post_chunked(b"\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_not_hex", _post_chunked(b"g\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_ext_bare_lf", _post_chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_ext_bare_cr", _post_chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_ext_nul", _post_chunked(b"5;a\x00\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_lf_only", _post_chunked(b"5\nhello\n0\n\n")),
    Case("chunk_missing_crlf", _post_chunked(b"5\r\nhelloXX0\r\n\r\n")),
    Case("chunk_data_too_long", _post_chunked(b"3\r\nhello\r\n0\r\n\r\n")),
    Case("chunk_data_lf_only", _post_chunked(b"5\r\nhello\n0\r\n\r\n")),
    Case("trailer_request_line", _post_chunked(b"0\r\nGET /admin HTTP/1.1\r\n" + H
                                               + b"\r\n")),
    Case("trailer_space_before_colon", _post_chunked(b"0\r\nX-A : b\r\n\r\n")),
    Case("trailer_obs_fold", _post_chunked(b"0\r\nX-A: b\r\n c\r\n\r\n")),
    Case("trailer_bare_lf", _post_chunked(b"0\r\nX-A: b\n\r\n")),
    Case("trailer_nul", _post_chunked(b"0\r\nX-A: b\x00\r\n\r\n")),
    Case("trailer_ctl", _post_chunked(b"0\r\nX-A: b\x01\r\n\r\n")),
    Case("trailer_content_length", _post_chunked(b"0\r\nContent-Length: 5\r\n\r\nhello")),
    Case("trailer_transfer_encoding", _post_chunked(b"0\r\n" + CHUNKED + b"\r\n")),
    Case("trailer_connection_close", _post_chunked(b"0\r\nConnection: close\r\n\r\n")
         + VALID),
)


@dataclass(frozen=True)
class Accepted:
    """An odd but valid request: it must reach the backend as `target` with `host`."""

    name: str
    data: bytes
    target: str
    host: str
    body: bytes = b""
    content_length: str | None = None  # as the backend sees it


ACCEPTED: tuple[Accepted, ...] = (
    Accepted("plain", VALID, "/r", "x"),
    Accepted("abs_form_routes_by_path", b"GET http://x/app/a?q=1 HTTP/1.1\r\n" + H + b"\r\n",
             "/a?q=1", "x"),
    Accepted("abs_form_host_case", b"GET http://X:80/r HTTP/1.1\r\nHost: x:80\r\n\r\n",
             "/r", "x:80"),
    Accepted("abs_form_https_scheme", b"GET HTTPS://x/r HTTP/1.1\r\n" + H + b"\r\n",
             "/r", "x"),
    Accepted("abs_form_http10_no_host", b"GET http://x/app/b HTTP/1.0\r\n\r\n", "/b", "x"),
    Accepted("abs_form_no_path", b"GET http://x?q HTTP/1.1\r\n" + H + b"\r\n", "/?q", "x"),
    Accepted("host_empty_http10", b"GET /r HTTP/1.0\r\nHost:\r\n\r\n", "/r", ""),
    # RFC 9112 §3.2: an empty Host is what a client sends when it has no authority
    Accepted("host_empty_http11", b"GET /r HTTP/1.1\r\nHost:\r\n\r\n", "/r", ""),
    Accepted("host_ipv6_port", b"GET /r HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "/r",
             "[::1]:8080"),
    Accepted("cl_leading_zeros", _cl_te(b"Content-Length: 0004", body=b"abcd"), "/r", "x",
             b"abcd", "4"),
    Accepted("cl_ows", _cl_te(b"Content-Length: \t4 ", body=b"abcd"), "/r", "x", b"abcd",
             "4"),
    Accepted("te_upper_case", _cl_te(b"TRANSFER-ENCODING: Chunked", body=b"4\r\nabcd\r\n"
                                     b"0\r\n\r\n"), "/r", "x", b"abcd"),
    Accepted("chunk_ext", _post_chunked(b"4;a=b;c=\"d\"\r\nabcd\r\n0\r\n\r\n"), "/r", "x",
             b"abcd"),
    Accepted("chunk_upper_hex_zeros", _post_chunked(b"0004\r\nabcd\r\n0000\r\n\r\n"),
             "/r", "x", b"abcd"),
    Accepted("trailer_ignored", _post_chunked(b"4\r\nabcd\r\n0\r\nX-Sum: 1\r\n\r\n"),
             "/r", "x", b"abcd"),
    Accepted("empty_lines_first", b"\r\n\r\n" + VALID, "/r", "x"),
    Accepted("get_body_hides_request", GET + b"Content-Length: 30\r\n\r\n"
             b"GET /admin HTTP/1.1\r\nHost: x\r\n", "/r", "x",
             b"GET /admin HTTP/1.1\r\nHost: x\r\n", "30"),
)


# -- responses: backend -> pylb ------------------------------------------------------------

RESPONSES: tuple[Case, ...] = (
    Case("resp_cl_twice_diff", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
         b"Content-Length: 2\r\n\r\nab", status=502),
    Case("resp_cl_twice_same", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
         b"Content-Length: 2\r\n\r\nab", status=502),
    Case("resp_cl_list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab", status=502),
    Case("resp_cl_te", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + CHUNKED
         + b"\r\n2\r\nab\r\n0\r\n\r\n", status=502),
    Case("resp_te_xchunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nab",
         status=502),
    Case("resp_cl_plus", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab", status=502),
    Case("resp_bad_chunk_size", b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"\r\nzz\r\nab\r\n"
         b"0\r\n\r\n", status=502),
    Case("resp_chunk_missing_crlf", b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"\r\n2\r\nabXX"
         b"0\r\n\r\n", status=502),
    Case("resp_space_before_colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nab",
         status=502),
    Case("resp_obs_fold", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\nab",
         status=502),
    Case("resp_bare_lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nab", status=502),
    Case("resp_nul", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00\r\n\r\nab",
         status=502),
    Case("resp_bad_status", b"HTTP/1.1 20x OK\r\nContent-Length: 2\r\n\r\nab", status=502),
    Case("resp_http09", b"hello there\r\n\r\n", status=502),
)


# -- a backend that records bytes ------------------------------------------------------------


@dataclass
class Conn:
    data: bytearray = field(default_factory=bytearray)
    requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = field(
        default_factory=list)  # method, target, headers, body
    closed: bool = False
    error: str = ""


class _Recorder(asyncio.Protocol):
    def __init__(self, backend: RecordingBackend) -> None:
        self.backend = backend
        self.conn = Conn()
        self.h11 = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self.req: h11.Request | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        self.transport = t
        self.backend.conns.append(self.conn)
        self.backend.transports.add(t)

    def data_received(self, data: bytes) -> None:
        self.conn.data += data
        if self.conn.error:
            return
        self.h11.receive_data(data)
        try:
            self._events()
        except h11.ProtocolError as e:
            self.conn.error = str(e)
            if self.transport is not None:
                self.transport.close()  # no answer: a proxy in front says 502, not 400

    def _events(self) -> None:
        while True:
            ev = self.h11.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                return
            if isinstance(ev, h11.Request):
                self.req = ev
                self.body = bytearray()
            elif isinstance(ev, h11.Data):
                self.body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                req = self.req
                assert req is not None
                self.conn.requests.append((req.method, req.target, list(req.headers.raw_items()),
                                           bytes(self.body)))
                self._answer()
                if self.conn.error or self.h11.our_state is h11.MUST_CLOSE:
                    return
                self.h11.start_next_cycle()

    def _answer(self) -> None:
        t = self.transport
        assert t is not None
        canned = self.backend.response
        if canned is not None:
            t.write(canned)  # and the connection stays open: pylb must not reuse it
            self.conn.error = "canned response sent"
            return
        t.write(self.h11.send(h11.Response(status_code=200, headers=[
            ("Content-Length", "2"), ("X-Backend", "rec")])) or b"")
        t.write(self.h11.send(h11.Data(data=b"ok")) or b"")
        t.write(self.h11.send(h11.EndOfMessage()) or b"")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.closed = True
        if self.transport is not None:
            self.backend.transports.discard(self.transport)
        self.backend.changed.set()


class RecordingBackend:
    """Answers each request 200 "ok" (or with `response`, then closes) and keeps every
    byte received, per connection."""

    def __init__(self, response: bytes | None = None) -> None:
        self.response = response
        self.conns: list[Conn] = []
        self.transports: set[asyncio.Transport] = set()
        self.changed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> RecordingBackend:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Recorder(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def received(self) -> bytes:
        return b"".join(bytes(c.data) for c in self.conns)

    @property
    def requests(self) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]]:
        return [r for c in self.conns for r in c.requests]

    async def wait_all_closed(self, timeout: float) -> bool:
        """True once every connection has ended (so every byte sent to it has landed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(c.closed for c in self.conns):
            self.changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self.transports):
            t.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)


# -- the client side ---------------------------------------------------------------------------


@dataclass
class Outcome:
    statuses: list[int]
    closed: bool  # the server closed (FIN or reset) within the wait
    reset: bool = False

    def verdict(self) -> str:
        s = ",".join(str(x) for x in self.statuses) or "no answer"
        return f"{s} {'closed' if self.closed else 'open'}"


def parse_statuses(raw: bytes) -> list[int]:
    """Status codes of the responses in `raw` (Content-Length or chunked bodies)."""
    out: list[int] = []
    pos = 0
    for _ in range(100):
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0 or not raw.startswith(b"HTTP/", pos):
            break
        lines = raw[pos:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        out.append(status)
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(b":") for line in lines[1:])}
        pos = end + 4
        if b"content-length" in fields:
            pos += int(fields[b"content-length"])
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            for _ in range(10000):
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    return out
                size = int(raw[pos:eol].split(b";")[0], 16)
                pos = eol + 2 + size + 2
                if size == 0:
                    break
        elif 100 <= status < 200 or status in (204, 304):
            continue
        else:
            break  # close-delimited: the rest is its body
    return out


async def send_case(port: int, data: bytes, wait: float, responses: int | None = None
                    ) -> Outcome:
    """Write `data` in one go; read until the server closes, `wait` seconds pass, or
    (when given) `responses` responses have begun."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = bytearray()
    closed = reset = False
    try:
        writer.write(data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            raw += chunk
            if responses is not None and len(parse_statuses(bytes(raw))) >= responses:
                break
    except (ConnectionResetError, BrokenPipeError):
        closed = reset = True
    finally:
        writer.transport.abort()
        await asyncio.sleep(0)
    return Outcome(parse_statuses(bytes(raw)), closed, reset)


# -- haproxy, the reference ------------------------------------------------------------------


def haproxy_version() -> str | None:
    exe = shutil.which("haproxy")
    if exe is None:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10).stdout
    first = out.splitlines()[0] if out else ""
    return first.split()[2] if len(first.split()) > 2 else first


@contextlib.asynccontextmanager
async def haproxy(backends: Sequence[int], *, keep_alive_ms: int = 300
                  ) -> AsyncIterator[list[int]]:
    """A haproxy with one `mode http` frontend per backend port (so cases run in parallel
    and each backend's bytes belong to one case); yields the frontends' ports. Ports come
    from free_port(): if another process takes one first, haproxy exits and is started
    again on new ones."""
    exe = shutil.which("haproxy")
    assert exe is not None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "haproxy.cfg")
        errors = os.path.join(tmp, "stderr")
        for _attempt in range(5):
            ports = [free_port() for _ in backends]
            lines = ["global", "  maxconn 2000", "defaults", "  mode http",
                     "  timeout connect 2s", "  timeout client 3s", "  timeout server 3s",
                     "  timeout http-request 2s", f"  timeout http-keep-alive {keep_alive_ms}ms"]
            for i, (fport, bport) in enumerate(zip(ports, backends, strict=True)):
                lines += [f"frontend f{i}", f"  bind 127.0.0.1:{fport}",
                          f"  default_backend b{i}", f"backend b{i}",
                          f"  server s 127.0.0.1:{bport}"]
            with open(cfg, "w") as f:
                f.write("\n".join(lines) + "\n")
            with open(errors, "wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    exe, "-db", "-f", cfg, stdout=asyncio.subprocess.DEVNULL, stderr=err)
            try:
                if await _wait_listening(proc, ports, 60.0):
                    yield ports
                    return
            finally:
                if proc.returncode is None:
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        with open(errors) as f:
            raise RuntimeError(f"haproxy would not start: {f.read()[-2000:]}")


async def _wait_listening(proc: asyncio.subprocess.Process, ports: list[int],
                          timeout: float) -> bool:
    """True once haproxy accepts on every port; False if it exited (a port was taken)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for port in ports:
        while True:
            if proc.returncode is not None:
                return False
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            w.transport.abort()
            await asyncio.sleep(0)
            break
    return True


# -- pylb ------------------------------------------------------------------------------------


@dataclass
class Pylb:
    port: int
    proxy: HttpProxy
    backend: RecordingBackend
    stats: Stats


@contextlib.asynccontextmanager
async def pylb(kind: HttpParser, *, response: bytes | None = None,
               wait: float = 10.0) -> AsyncIterator[Pylb]:
    """A fresh pylb HttpProxy in front of a fresh recording backend. On exit the proxy is
    shut down and every backend connection read to its end, so that `backend` then
    holds every byte pylb sent it."""
    backend = await RecordingBackend(response).start()
    settings = Settings(http_parser=kind)
    stats = Stats()
    proxy = HttpProxy(settings, stats, Balancers(settings.limits), frontend="http")
    try:
        _, port = await proxy.start("127.0.0.1", 0)
        proxy.set_table(route_table(backend))
        yield Pylb(port, proxy, backend, stats)
    finally:
        await proxy.shutdown(0.5)
        await backend.wait_all_closed(wait)
        await backend.stop()


def route_table(backend: RecordingBackend) -> RouteTable:
    """`/app/…` (prefix stripped) and everything else (kept), both to `backend`."""
    be = Backend("default/rec:80", (Server("127.0.0.1", backend.port, name="rec"),))
    return RouteTable(http=(HttpRoute("app", "/app", be.name),
                            HttpRoute("root", "/", be.name, strip_prefix=False)),
                      backends=(be,))


async def run_pylb(kind: HttpParser, data: bytes, *, wait: float = 10.0,
                   responses: int | None = None) -> tuple[Outcome, Pylb]:
    """Send `data` through a fresh pylb (see `pylb`); read until it closes, or until
    `responses` responses have come."""
    async with pylb(kind, wait=wait) as p:
        outcome = await send_case(p.port, data, wait, responses)
    return outcome, p


# -- where haproxy 2.6 answers otherwise, and who is right (RFC 9112 / RFC 9110) -----------
# "allowed": the RFC lets either answer stand; "haproxy wrong": it breaks a MUST (or a
# SHOULD, said so); "lenient": invalid syntax that haproxy forwards with no MUST broken.

_CL_TE = "allowed: haproxy drops Content-Length and goes by chunked (RFC 9112 §6.1 allows " \
         "that or a 400); pylb refuses, as a server behind that went by CL would desync"
_HOST = "haproxy wrong: RFC 9112 §3.2, a server MUST answer 400 to an invalid Host; " \
        "haproxy forwards it"
_FOLD = "allowed: RFC 9112 §5.2 lets a recipient unfold (haproxy) or reject (pylb)"
_LF = "allowed: RFC 9112 §2.2 lets a recipient take a bare LF as a line end (haproxy); " \
      "pylb's two parsers both refuse it"
_CHUNK = "lenient: invalid chunk framing (RFC 9112 §7.1) that haproxy takes; it re-chunks, " \
         "so its backend sees clean framing"
_LIMIT = "allowed: haproxy's one limit is its 16 KiB buffer and its answer 400; pylb " \
         "answers 431/414 (RFC 6585, RFC 9110 §15.5.15), more precise"
_CTL = "lenient: not a field-vchar (RFC 9110 §5.5), no MUST; haproxy forwards it"
_TRAILER = "allowed: RFC 9110 §6.5.1 only forbids using it for framing; haproxy forwards " \
           "it as a trailer, pylb (and llhttp) refuse it"

HAPROXY: dict[str, str] = {
    "cl_te": _CL_TE, "te_cl": _CL_TE, "cl_te_get": _CL_TE, "cl_zero_te": _CL_TE,
    "te_with_cl_tab_value": _CL_TE + "; then its chunk parser waits on 'abcd' (504)",
    "te_with_cl_upper": _CL_TE + "; then its chunk parser waits on 'abcd' (504)",
    "te_with_cl_lower": _CL_TE + "; then its chunk parser waits on 'abcd' (504)",
    "pipelined_then_cl_te": _CL_TE,
    "te_identity_chunked": "allowed: both refuse; haproxy says 422, RFC 9112 §6.1 "
                           "suggests 501",
    "te_twice_other_first": "allowed: both refuse (haproxy 422)",
    "te_gzip_chunked": "allowed: both refuse (haproxy 422, RFC 9112 §6.1 suggests 501)",
    "te_underscore": "allowed by RFC (a valid token): haproxy forwards it and reads the "
                     "body as a next request (200,400); pylb refuses, for CGI-style backends",
    "te_underscore_with_cl": "allowed by RFC (a valid token); pylb refuses it on purpose",
    "cl_underscore": "allowed by RFC (a valid token): haproxy forwards it and waits on the "
                     "body as a next request (200,408); pylb refuses it on purpose",
    "te_http10": "haproxy wrong: RFC 9112 §6.1, Transfer-Encoding in HTTP/1.0 MUST be "
                 "treated as faulty framing; haproxy forwards the chunked body",
    "cl_twice_same": "allowed: RFC 9110 §8.6 lets a recipient merge identical values",
    "cl_list_same": "allowed: RFC 9110 §8.6 lets a recipient merge identical values",
    "chunked_then_cl_twice": "allowed: as cl_twice_same",
    "cl_obs_fold": _FOLD, "obs_fold": _FOLD, "obs_fold_tab": _FOLD, "trailer_obs_fold": _FOLD,
    "nul_in_value": "haproxy wrong: RFC 9110 §5.5, NUL in a field value MUST be refused "
                    "or replaced by SP; haproxy forwards the NUL",
    "trailer_nul": "haproxy wrong: RFC 9110 §5.5 (NUL), forwarded in a trailer",
    "bare_lf_header": _LF, "bare_lf_request_line": _LF, "bare_lf_everywhere": _LF,
    "pipelined_then_bare_lf": _LF, "trailer_bare_lf": _LF,
    "ctl_in_value": _CTL, "del_in_value": _CTL, "trailer_ctl": _CTL,
    "target_del": "lenient: DEL is no URI character (RFC 3986); haproxy forwards it",
    "head_too_large": _LIMIT, "name_too_large": _LIMIT, "too_many_fields": _LIMIT,
    "uri_too_long": _LIMIT,
    "http20": "lenient: haproxy forwards an HTTP/2.0 request line as HTTP/1.1; RFC 9110 "
              "§15.6.6 has 505, pylb says 400",
    "tab_separator": "allowed: RFC 9112 §3 lets a recipient split the request line on any "
                     "whitespace (haproxy); h11 and pylb do not",
    "method_lowercase": "allowed: methods are extensible (RFC 9110 §9.1) and haproxy "
                        "forwards any token; pylb knows llhttp's list (RFC: 501 for others)",
    "method_unknown": "allowed: as method_lowercase",
    "connect": "allowed: haproxy hands CONNECT to its backend; pylb is no forward proxy",
    "asterisk_get": "haproxy wrong-ish: RFC 9112 §3.2.4 keeps '*' for OPTIONS; it forwards",
    "abs_ftp_scheme": "allowed: pylb serves http(s) only; haproxy forwards any scheme",
    "abs_httpx_scheme": "allowed: as abs_ftp_scheme",
    "abs_userinfo": "haproxy wrong (a SHOULD): RFC 9110 §4.2.4, userinfo in an http URI "
                    "is to be treated as an error",
    "abs_empty_authority": "haproxy wrong: RFC 9110 §4.2.1, an http URI with an empty host "
                           "MUST be rejected as invalid",
    "host_missing": "haproxy wrong: RFC 9112 §3.2, a 1.1 request without Host MUST get 400",
    "host_twice_same": "haproxy wrong: RFC 9112 §3.2, more than one Host line MUST get 400",
    "host_list": _HOST, "host_inner_space": _HOST, "host_at": _HOST, "host_slash": _HOST,
    "host_bad_port": _HOST, "host_two_ports": _HOST, "host_ctl": _HOST,
    "host_bad_ipv6": _HOST,
    "upgrade_with_cl": "allowed: nothing forbids content with Upgrade (haproxy forwards "
                       "it); pylb refuses, as a backend switching first would read the body "
                       "as tunnel bytes",
    "upgrade_with_te": "allowed: as upgrade_with_cl",
    "chunk_space_after": _CHUNK,
    "chunk_space_before_ext": "haproxy right: RFC 9112 §7.1.1 allows BWS before ';'; pylb "
                              "refuses it, as llhttp does, so that its parsers agree",
    "chunk_ext_nul": _CHUNK, "chunk_lf_only": _CHUNK, "chunk_data_lf_only": _CHUNK,
    "trailer_space_before_colon": "haproxy wrong: RFC 9112 §5.1, a proxy MUST remove "
                                  "whitespace before the colon before forwarding",
    "trailer_content_length": _TRAILER + " (haproxy then waits on 'hello': 408)",
    "trailer_transfer_encoding": _TRAILER,
    "trailer_connection_close": _TRAILER,
}
