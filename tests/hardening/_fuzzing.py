"""Fuzzing drivers and input generators shared by the CI tests (tests/hardening/test_fuzz_*)
and the long runs (`python -m bench.fuzz`): each target is a plain function of its input
that raises `Violation` (or lets an unexpected exception out) when a property breaks, so
hypothesis and atheris drive the same checks.

HTTP (`run_http`): the REAL client-side protocol (`proxy.http.server.ClientProtocol`) on
fake transports (tests/proxy/http/test_protocol_bytes.py's habit), with a fake backend
that parses what pylb forwards with h11 as a server and answers it. Nothing touches a
socket: a backend connection is made synchronously by `_FuzzProxy.connect`.
`check_http_differential` runs both parsers and compares what each accepted.

Kubernetes objects (`check_translate`, `check_yaml`): translate() of good objects plus
bad ones (mutated copies moved to other services, random JSON, truncated objects), and
the file source's YAML parsing of damaged texts.

Peeking parsers (`check_proxyproto`, `check_sni`, `check_sni_hello`): the PROXY protocol
header and the SNI of real ClientHellos made by Python's ssl module.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import ipaddress
import logging
import pathlib
import random
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import h11
import yaml

from discovery.translate import KubeObjects, translate
from proxy.balance import Balancers
from proxy.http import HttpProxy
from proxy.http.exchange import State
from proxy.http.parser import METHODS as PARSER_METHODS
from proxy.http.parser import RequestHead
from proxy.http.server import ClientProtocol
from proxy.http.upstream import UpstreamProtocol
from proxy.tcp import proxyproto as pp
from proxy.tcp.proxyproto import ProxyHeader
from proxy.tls_sni import MAX_CLIENT_HELLO, parse_client_hello_sni
from proxy.tls_sni import NEED_MORE as SNI_NEED_MORE
from pylb.config import HttpParser, Limits, Settings
from pylb.counters import Stats
from pylb.failures import Failure
from pylb.model import Affinity, Backend, HttpRoute, RouteTable, Server

try:
    import uvloop
except ImportError:  # pragma: no cover - a test dependency
    uvloop = None  # type: ignore[assignment]


class Violation(AssertionError):
    """A fuzzing property broke; the message says which."""


# --------------------------------------------------------------------------------------
# HTTP: the request path through ClientProtocol
# --------------------------------------------------------------------------------------

S1 = Server("192.0.2.10", 8080, name="s1")
S2 = Server("192.0.2.11", 8080, name="s2")
S3 = Server("192.0.2.12", 9090, name="s3")
DOWN = Server("192.0.2.13", 80, name="down")  # every connect to it fails

# One of each kind of route the router knows: strip, keep, `/svc:port`, host, -i,
# ssl-redirect, cookie affinity, a backend with no server, a backend whose only server
# refuses connections.
TABLE = RouteTable(
    http=(
        HttpRoute("a", "/a", "default/a:80"),
        HttpRoute("svc:8080", "/svc:8080", "default/svc:8080"),
        HttpRoute("h", "/h", "default/a:80", host="h.example"),
        HttpRoute("/keep", "/keep", "default/a:80", strip_prefix=False),
        HttpRoute("ci", "/CI", "default/svc:8080", case_insensitive=True),
        HttpRoute("r", "/r", "default/a:80", ssl_redirect=True),
        HttpRoute("c", "/c", "default/c:80"),
        HttpRoute("none", "/none", "default/none:80"),
        HttpRoute("down", "/down", "default/down:80"),
    ),
    backends=(
        Backend("default/a:80", (S1, S2)),
        Backend("default/svc:8080", (S3,)),
        Backend("default/c:80", (S1, S2), affinity=Affinity.COOKIE),
        Backend("default/none:80", ()),
        Backend("default/down:80", (DOWN,)),
    ),
)

# How the fake backend answers: Content-Length, chunked, close-delimited, before the
# request body is whole, or 101 to an upgrade request (then it echoes the tunnel).
BACKEND_STYLES = ("length", "chunked", "close", "early", "upgrade")
_PARSE_ERROR_STATUSES = frozenset((400, 413, 414, 431))


class _Clock:
    """Counts callbacks scheduled by the harness, so `pump` knows when all is quiet."""

    def __init__(self, loop: asyncio.AbstractEventLoop, errors: list[str]) -> None:
        self.loop = loop
        self.pending = 0
        self.errors = errors

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.pending += 1
        self.loop.call_soon(self._run, fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.pending -= 1
        try:
            fn(*args)
        except Exception as e:  # an exception out of a Protocol method: a finding
            self.errors.append(f"{getattr(fn, '__qualname__', fn)} raised {e!r}")

    async def pump(self) -> None:
        for _ in range(2000):
            await asyncio.sleep(0)
            if not self.pending:
                await asyncio.sleep(0)
                if not self.pending:
                    return
        raise Violation("the exchange never settles (2000 loop turns)")


class _Transport:
    """The fake transport of tests/proxy/http/test_protocol_bytes.py, with the close
    callbacks scheduled through the harness's clock and an `aborted` flag."""

    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int], clock: _Clock
                 ) -> None:
        self.protocol = protocol
        self.peer = peer
        self.clock = clock
        self.out = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True
        self.write_after_close = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 80)}.get(name, default)

    def write(self, data: bytes) -> None:
        if self.closing:
            self.write_after_close = True
            return
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.clock.soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


@dataclasses.dataclass
class Forwarded:
    """What one backend connection received, as h11 (server side) parsed it."""

    events: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    error: str | None = None
    partial: bool = False  # the stream ended inside a request
    aborted: bool = False


class _Backend(_Transport):
    """The transport of a backend connection, with the backend itself behind it: what
    pylb writes is parsed by h11 as a server; each whole request is answered."""

    def __init__(self, up: UpstreamProtocol, clock: _Clock, style: str,
                 log: list[Forwarded], timeline: list[tuple[Any, ...]]) -> None:
        super().__init__(up, up.key, clock)
        self.up = up
        self.style = style
        self.h11 = h11.Connection(h11.SERVER)
        self.record = Forwarded()
        log.append(self.record)
        self.timeline = timeline  # every backend's events, in the order they came
        self.tunnel = False
        self.answered = False
        self.method = b"GET"
        self.upgrade = False

    def write(self, data: bytes) -> None:
        if self.closing:
            self.write_after_close = True
            return
        self.out += data
        if self.tunnel:
            self.clock.soon(self._deliver, bytes(data))  # an echo server
            return
        if self.record.error is not None:
            return
        try:
            self.h11.receive_data(bytes(data))
            self._events()
        except h11.RemoteProtocolError as e:
            self.record.error = f"{e!r} after {bytes(self.out)[:400]!r}"

    def _events(self) -> None:
        rec = self.record
        while True:
            ev = self.h11.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                self.answered = False
                self.method = ev.method
                names = {k for k, _ in ev.headers}
                self.upgrade = b"upgrade" in names
                rec.events.append(("request", ev.method, ev.target, tuple(ev.headers)))
                self.timeline.append(rec.events[-1])
                if self.style == "early":
                    self._answer(close=False)
            elif isinstance(ev, h11.Data):
                if rec.events and rec.events[-1][0] == "data":
                    rec.events[-1] = ("data", rec.events[-1][1] + ev.data)
                else:
                    rec.events.append(("data", bytes(ev.data)))
                tl = self.timeline
                if tl and tl[-1][0] == "data":
                    tl[-1] = ("data", tl[-1][1] + ev.data)
                else:
                    tl.append(("data", bytes(ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                rec.events.append(("end",))
                self.timeline.append(("end",))
                if self.upgrade and self.style == "upgrade":
                    self._switch()
                    return
                if not self.answered:
                    self._answer(close=self.style == "close")
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                else:
                    self._close_soon()
                    return
            elif isinstance(ev, h11.ConnectionClosed):
                return

    def _answer(self, close: bool) -> None:
        self.answered = True
        body = b"hello from the backend"
        if self.style == "chunked":
            headers = [(b"Transfer-Encoding", b"chunked")]
        elif close:
            headers = [(b"Connection", b"close")]
        else:
            headers = [(b"Content-Length", b"%d" % len(body))]
        out = self.h11.send(h11.Response(status_code=200, headers=headers)) or b""
        if self.method != b"HEAD":
            out += self.h11.send(h11.Data(data=body[:5])) or b""
            out += self.h11.send(h11.Data(data=body[5:])) or b""
        out += self.h11.send(h11.EndOfMessage()) or b""
        self.clock.soon(self._deliver, out)

    def _switch(self) -> None:
        self.answered = True
        out = self.h11.send(h11.InformationalResponse(
            status_code=101, headers=[(b"Upgrade", b"echo"), (b"Connection", b"upgrade")]))
        self.tunnel = True
        rest, _ = self.h11.trailing_data
        self.clock.soon(self._deliver, (out or b"") + bytes(rest))

    def _close_soon(self) -> None:
        self.clock.soon(self._eof_and_close)

    def _deliver(self, data: bytes) -> None:
        if not self.closing and data:
            self.up.data_received(data)

    def _eof_and_close(self) -> None:
        if not self.closing:
            self.up.eof_received()
            self.close()

    def finish(self) -> None:
        """The connection is gone: was a request cut short?"""
        if self.record.error is None and not self.tunnel:
            self.record.partial = self.h11.their_state is h11.SEND_BODY or bool(
                self.h11.trailing_data[0])
        self.record.aborted = self.aborted


class _FuzzProxy(HttpProxy):
    """HttpProxy whose backend connections are fake and made at once (the real connect is
    a Task over a socket; the rest of the path is untouched)."""

    clock: _Clock
    style: str
    forwarded: list[Forwarded]
    timeline: list[tuple[Any, ...]]
    backends_made: list[_Backend]

    def connect(self, client: ClientProtocol, server: Server) -> None:
        if server.key == DOWN.key:
            self.clock.soon(client.connect_done, server, None, Failure.CONNECT_FAILED)
            return
        up = UpstreamProtocol(server.key, self.parser_kind)
        t = _Backend(up, self.clock, self.style, self.forwarded, self.timeline)
        self.backends_made.append(t)
        up.connection_made(t)  # type: ignore[arg-type]
        self.clock.soon(client.connect_done, server, up, None)


class _Client(ClientProtocol):
    """ClientProtocol that notes each request head it starts an exchange for (the
    responses' parser must know the request methods: HEAD responses have no body)."""

    heads: list[RequestHead]
    exchanges: list[tuple[int, bool]]  # (status, request read whole) of each exchange

    def on_head(self, head: RequestHead) -> None:
        if self._state is not State.CLOSED and self._queue is None and self._req is None:
            self.heads.append(head)  # it starts an exchange now (else ignored, or queued)
        super().on_head(head)

    def _end_exchange(self, reusable: bool, now: float = 0.0, last: bool = False) -> None:
        if self._req is not None:
            self.exchanges.append((self._status, self.request_whole))
        super()._end_exchange(reusable, now, last)


@dataclasses.dataclass
class HttpOutcome:
    statuses: list[int]
    forwarded: list[Forwarded]  # per backend connection
    closed: bool  # the client connection was closed by pylb before the input's end
    errors: list[str]
    timeline: list[tuple[Any, ...]]  # what every backend received, in order
    exchanges: list[tuple[int, bool]]  # (status, request read whole) per exchange

    def summary(self) -> tuple[Any, ...]:
        """The responses' statuses, the requests forwarded (method, target, headers,
        body: not the chunking), and whether pylb closed."""
        return tuple(self.statuses), tuple(self.timeline), self.closed


def new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run_http(kind: HttpParser, chunks: Sequence[bytes], *, eof: bool = True,
             style: str = "length", limits: Limits | None = None) -> HttpOutcome:
    """Feed `chunks` to a fresh client connection of a proxy serving `TABLE` and check the
    properties; raise `Violation` when one breaks. Returns what happened."""
    loop = new_loop()
    try:
        return loop.run_until_complete(_run_http(kind, chunks, eof, style, limits or Limits()))
    finally:
        loop.close()


async def _run_http(kind: HttpParser, chunks: Sequence[bytes], eof: bool, style: str,
                    limits: Limits) -> HttpOutcome:
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(str(ctx.get("exception")
                                                                 or ctx["message"])))
    clock = _Clock(loop, errors)
    proxy = _FuzzProxy(Settings(http_parser=kind, limits=limits), Stats(), Balancers(limits))
    proxy.clock, proxy.style, proxy.forwarded, proxy.backends_made = clock, style, [], []
    proxy.timeline = []
    proxy.set_table(TABLE)
    client = _Client(proxy)
    client.heads, client.exchanges = [], []
    ct = _Transport(client, ("192.0.2.7", 40000), clock)

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            errors.append(f"{fn.__name__} raised {e!r}")
            return None

    call(client.connection_made, ct)
    fed = 0
    for chunk in chunks:
        await clock.pump()
        if ct.closing or not ct.reading:
            break  # a real transport delivers nothing more
        call(client.data_received, chunk)
        fed += 1
    await clock.pump()
    closed_early = ct.closing
    if eof and not ct.closing and ct.reading:
        keep_open = call(client.eof_received)
        await clock.pump()
        if not keep_open and not ct.closing:
            ct.close()
    if not ct.closing:
        ct.close()
    await clock.pump()
    await proxy.shutdown(0)
    await clock.pump()
    for b in proxy.backends_made:
        b.finish()

    internal = proxy.stats.failures.get(Failure.INTERNAL, 0)
    if internal:
        errors.append(f"{internal} INTERNAL failure(s) counted")
    if ct.write_after_close:
        errors.append("pylb wrote to a client transport it had closed")
    if errors:
        raise Violation("; ".join(errors))
    statuses = check_responses(bytes(ct.out), client.heads, ct)
    for i, st in enumerate(statuses):
        if st in _PARSE_ERROR_STATUSES and st != statuses[-1]:
            raise Violation(f"a response follows a {st}: {statuses}")
        if st in _PARSE_ERROR_STATUSES and not closed_early and i == len(statuses) - 1 \
                and fed == len(chunks) and _local_error_status(proxy, st):
            raise Violation(f"the connection stays open after a {st}")
    for f in proxy.forwarded:
        if f.error is not None:
            raise Violation(f"pylb sent a malformed request upstream: {f.error}")
        # A partial request upstream is fine on a connection that is then closed; one
        # reused after it shows as the next request's h11 error above.
    answered = [st for st in statuses if st not in _PARSE_ERROR_STATUSES]
    whole = sum(1 for f in proxy.forwarded for ev in f.events if ev[0] == "end")
    if len(answered) < whole and not ct.aborted and 101 not in statuses:
        raise Violation(f"{whole} requests reached the backend whole, {len(answered)} "
                        f"answered: {statuses}")
    return HttpOutcome(statuses, proxy.forwarded, closed_early, errors, proxy.timeline,
                       client.exchanges)


def _local_error_status(proxy: HttpProxy, status: int) -> bool:
    """The status was pylb's answer to bad input (not a backend's)."""
    f = proxy.stats.failures
    return any(f.get(x, 0) for x in Failure if x.status == status and x.column == "ereq")


def check_responses(out: bytes, heads: Sequence[RequestHead], ct: _Transport) -> list[int]:
    """Parse what pylb wrote to the client as a sequence of HTTP/1.1 responses (h11, client
    side), the i-th answering `heads[i]` (answers to bad input come after every started
    exchange). Returns their statuses; raises Violation on anything malformed."""
    conn = h11.Connection(h11.CLIENT)
    statuses: list[int] = []
    i = 0

    def send_request() -> None:
        head = heads[i] if i < len(heads) else None
        method = head.method if head is not None else b"GET"
        headers = [(b"Host", b"x")]
        if head is not None and head.upgrade:
            headers += [(b"Connection", b"upgrade"), (b"Upgrade", b"echo")]
        if head is not None and not head.keep_alive:
            headers.append((b"Connection", b"close"))
        # h11 sends only HTTP/1.1: an HTTP/1.0 request is stood in for by a 1.1 one that
        # keeps (or not) the connection alive alike; chunked answers to 1.0 are checked
        # below.
        conn.send(h11.Request(method=method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())

    if not out:
        return statuses
    send_request()
    conn.receive_data(out)
    at_eof = False
    for _ in range(10_000):
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as e:
            if at_eof and ct.aborted:
                return statuses  # a response cut short by an abort: allowed
            raise Violation(f"malformed response to the client: {e!r} in {out[:600]!r}"
                            ) from None
        if ev is h11.NEED_DATA:
            if at_eof:
                raise Violation("h11 needs data after EOF")
            at_eof = True
            conn.receive_data(b"")
            continue
        if isinstance(ev, h11.InformationalResponse):
            if ev.status_code == 101:
                statuses.append(101)
                return statuses  # a tunnel from here
            continue
        if isinstance(ev, h11.Response):
            statuses.append(ev.status_code)
            if i < len(heads) and heads[i].version == b"1.0" and any(
                    k == b"transfer-encoding" for k, _ in ev.headers):
                raise Violation(f"a chunked response to an HTTP/1.0 request: {ev!r}")
            continue
        if isinstance(ev, h11.EndOfMessage):
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                if not conn.trailing_data[0]:
                    return statuses
                i += 1
                send_request()
            continue
        if isinstance(ev, h11.ConnectionClosed):
            return statuses
        if ev is h11.PAUSED:
            if conn.their_state is h11.MUST_CLOSE or conn.their_state is h11.CLOSED:
                rest, _closed = conn.trailing_data
                if rest:
                    raise Violation(f"bytes after a response that closes: {rest[:200]!r}")
                return statuses
            raise Violation(f"h11 paused in {conn.states}")
    raise Violation("too many events")


# -- input generators (seeds and structure-aware mutation), used by hypothesis & atheris --

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
           b"CONNECT", b"get", b"PRI", b"M-SEARCH", b"G\x00T", b"", b"GET ", b"\xffGET")
TARGETS = (b"/a", b"/a/x?y=1", b"/svc:8080/p?q", b"/svc:8080", b"/svc:8080x", b"/ci/X",
           b"http://h.example/a/b", b"http://h.example", b"https://x:1/svc:8080?q",
           b"http://h.example?x", b"http://[::1]:80/a", b"*", b"/", b"/A", b"/a%2Fb",
           b"/a%00b", b"/%", b"/a/../b", b"//a", b"a", b"/r/x?y", b"/c/x", b"/none",
           b"/gone/", b"/down/x", b"/keep/x", b"/h", b"/a#frag", b"/a?x=%ZZ", b"/a\xc3\xa9",
           b"/a\x7f", b"/a b", b"/a\tb", b"/" + b"x" * 9000, b"h.example:80", b"/a?\x00")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1",
            b"HTTP/1.1 ", b"HTTP/11", b"HTTP/1.1\x00", b"")
HEADER_NAMES = (b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade",
                b"Expect", b"Cookie", b"X-Forwarded-For", b"X-Forwarded-Host", b"Keep-Alive",
                b"TE", b"Trailer", b"Proxy-Connection", b"X-A", b"Host ", b" Host",
                b"Content-Length ", b"Transfer-Encoding\x0b", b"X\x00Y", b"X Y", b"",
                b"X:Y", b"\xffX", b"Content-length", b"HOST")
HEADER_VALUES: dict[bytes, tuple[bytes, ...]] = {
    b"host": (b"h", b"h.example", b"h.example:80", b"H.EXAMPLE", b"", b"h, h2", b"[::1]:80",
              b"h.example.", b"a b", b"h\x00", b"h.example:99999"),
    b"content-length": (b"0", b"1", b"5", b"22", b"-1", b"+5", b" 5", b"5 ", b"1,1", b"5, 5",
                        b"0x5", b"99999999999999999999", b"", b"1e3", b"5\x00"),
    b"transfer-encoding": (b"chunked", b"Chunked", b"chunked, chunked", b"gzip, chunked",
                           b"chunked, gzip", b"identity", b" chunked", b"chunked;", b"xchunked",
                           b"chunked\x0b", b""),
    b"connection": (b"close", b"keep-alive", b"upgrade", b"Upgrade, keep-alive",
                    b"close, upgrade", b"x-a", b"content-length", b"transfer-encoding", b"host",
                    b""),
    b"upgrade": (b"websocket", b"h2c", b"echo", b""),
    b"expect": (b"100-continue", b"100-Continue", b"200-ok"),
    b"cookie": (b"SERVERID=s1", b"SERVERID=s2; a=b", b"a=b; SERVERID=", b"SERVERID",
                b"SERVERID=s1; SERVERID=s2"),
}
ANY_VALUES = (b"v", b"", b"a\tb", b"a\x00b", b"a\rb", b"a\nb", b"a\r\n b", b"\xff\xfe",
              b"\x7f", b" lead", b"trail ", b"x" * 300)
SEPARATORS = (b": ", b":", b" : ", b":\t", b"::", b": \x00")
EOLS = (b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r")
CONTROL = bytes(range(0x20)) + b"\x7f\x80\xff"


def build_request(rng: random.Random) -> bytes:
    """One request built from parts, mostly valid, each part sometimes wrong."""
    def pick(options: Sequence[bytes], valid: bytes, p_valid: float = 0.7) -> bytes:
        return valid if rng.random() < p_valid else rng.choice(options)

    method = pick(METHODS, rng.choice((b"GET", b"POST", b"HEAD", b"PUT")))
    target = rng.choice(TARGETS) if rng.random() < 0.9 else _random_bytes(rng, 20)
    version = pick(VERSIONS, b"HTTP/1.1", 0.85)
    eol = pick(EOLS, b"\r\n", 0.95)
    sp = pick((b"  ", b"\t", b"", b" \x00"), b" ", 0.95)
    lines = [method + sp + target + b" " + version]
    headers: list[tuple[bytes, bytes]] = []
    if rng.random() < 0.9:
        headers.append((b"Host", pick(HEADER_VALUES[b"host"], b"h.example", 0.8)))
    body = b""
    framing = rng.random()
    if framing < 0.3:
        body = _random_bytes(rng, 30) if rng.random() < 0.5 else b"hello"
        cl = b"%d" % len(body) if rng.random() < 0.8 else rng.choice(
            HEADER_VALUES[b"content-length"])
        headers.append((b"Content-Length", cl))
    elif framing < 0.55:
        headers.append((b"Transfer-Encoding", pick(HEADER_VALUES[b"transfer-encoding"],
                                                   b"chunked", 0.8)))
        body = build_chunks(rng)
        if rng.random() < 0.1:
            headers.append((b"Content-Length", rng.choice(HEADER_VALUES[b"content-length"])))
    for _ in range(rng.randrange(0, 4)):
        name = rng.choice(HEADER_NAMES)
        value = rng.choice(HEADER_VALUES.get(name.strip().lower(), ANY_VALUES)) \
            if rng.random() < 0.8 else rng.choice(ANY_VALUES)
        headers.append((name, value))
    if rng.random() < 0.1:
        headers += [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]
    if rng.random() < 0.2:
        rng.shuffle(headers)
    for name, value in headers:
        lines.append(name + pick(SEPARATORS, b": ", 0.93) + value)
    head = eol.join(lines) + eol + eol
    return head + body


def build_chunks(rng: random.Random) -> bytes:
    out = []
    for _ in range(rng.randrange(0, 4)):
        data = _random_bytes(rng, 12)
        size = b"%x" % len(data)
        r = rng.random()
        if r < 0.1:
            size = rng.choice((b"", b"-1", b"0x5", b" 5", b"5 ", b"ffffffffffffffffff",
                               b"G", b"5;", b"5\x00", b"+5", b"%X" % len(data)))
        elif r < 0.2:
            size = b"%x" % (len(data) + rng.choice((-1, 1, 7)))
        ext = rng.choice((b";a=b", b"; a=b", b";a=\"b\"", b";", b"\x00")) if r > 0.9 else b""
        out.append(size + ext + b"\r\n" + data + rng.choice((b"\r\n",) * 9 + (b"\n", b"")))
    last = rng.choice((b"0\r\n\r\n",) * 8 + (b"0\r\nX-T: 1\r\n\r\n", b"0\r\n", b"00\r\n\r\n",
                                               b"0;x\r\n\r\n", b"0\n\n", b"0\r\nX-T\r\n\r\n"))
    return b"".join(out) + last


def mutate(rng: random.Random, data: bytes, n: int) -> bytes:
    """`n` byte-level mutations: control bytes in, bytes out, ranges duplicated, flipped."""
    buf = bytearray(data)
    for _ in range(n):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0:
            buf[pos:pos] = bytes([rng.choice(CONTROL)])
        elif op == 1 and buf:
            del buf[pos:pos + rng.randrange(1, 4)]
        elif op == 2 and buf:
            a = rng.randrange(len(buf))
            buf[pos:pos] = buf[a:a + rng.randrange(1, 16)]
        elif op == 3 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        else:
            buf[pos:pos] = rng.choice((b"\r\n", b" ", b":", b"0\r\n\r\n", b"\r\n\r\n",
                                       b"Transfer-Encoding: chunked\r\n",
                                       b"Content-Length: 3\r\n"))
    return bytes(buf)


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(n + 1)))


def split(rng: random.Random, data: bytes, max_cuts: int = 6) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(set(rng.randrange(1, len(data)) for _ in range(rng.randrange(max_cuts + 1))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def http_case(rng: random.Random) -> tuple[list[bytes], bool, str]:
    """A whole fuzz case from a seeded generator: the chunks, EOF or not, the backend."""
    stream = b"".join(build_request(rng) for _ in range(rng.randrange(1, 4)))
    if rng.random() < 0.5:
        stream = mutate(rng, stream, rng.randrange(1, 4))
    return split(rng, stream), rng.random() < 0.7, rng.choice(BACKEND_STYLES)


def check_http_differential(chunks: Sequence[bytes], eof: bool, style: str) -> None:
    """Both parsers: every property holds, and they agree on what reaches the backend
    (method, target, fields, body) and on the responses to what was accepted. Allowed
    differences: which 4xx answers bad input (h11 sees a head whole, llhttp byte by byte:
    400 vs 414, or a 400 vs still waiting for the head's end), and llhttp's one documented
    leniency (repeated spaces in the request line, see proxy/http/parser.py)."""
    a = run_http(HttpParser.H11, chunks, eof=eof, style=style)
    b = run_http(HttpParser.HTTPTOOLS, chunks, eof=eof, style=style)
    if _accepted(a) == _accepted(b):
        return
    if _REPEATED_SPACES.search(b"".join(chunks)):
        return
    raise Violation(f"h11 and httptools differ:\n  h11:       {_short(a.summary())}\n"
                    f"  httptools: {_short(b.summary())}")


# A request line (a method llhttp knows, anywhere: a request may follow a body) with a run
# of blanks or a tab in it.
_REPEATED_SPACES = re.compile(rb"(?:%s)(?:[ \t][^\r\n]*)?(?:[ \t]{2}|\t)" % b"|".join(
    re.escape(m) for m in sorted(PARSER_METHODS, key=len, reverse=True)))


def _accepted(o: HttpOutcome) -> tuple[Any, ...]:
    """What pylb accepted: the statuses of the exchanges whose request it read whole, and
    the whole requests forwarded, in order. A request cut short by bad input is sent, and
    may even be answered (a backend that answers early), as far as a parser had read it
    when it found the fault: h11 reads a head whole and a chunk line to its end, llhttp
    byte by byte. Requests go one after the other, so a cut one is the last."""
    tl = o.timeline
    ends = [i for i, ev in enumerate(tl) if ev[0] == "end"]
    return (tuple(st for st, whole in o.exchanges if whole),
            tuple(tl[:ends[-1] + 1] if ends else ()))


def _short(x: object, n: int = 1500) -> str:
    r = repr(x)
    return r if len(r) <= n else r[:n] + "..."


# --------------------------------------------------------------------------------------
# Translation of Kubernetes objects, and the file source's YAML
# --------------------------------------------------------------------------------------

EXAMPLE_CLUSTER = pathlib.Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"
TRANSLATE_SETTINGS = Settings(namespaces=(), tcp_services=(("mysql", 3306),))
_WRONG: tuple[Any, ...] = (None, True, False, 0, -1, 65536, 2**70, 1.5, float("nan"), "",
                           "80", "x" * 300, "\x00", "é", "-i /x", "10.0.0.1", "::1", "bad ip",
                           [], [None], {}, {"": None}, [[[]]], {"a": {"b": {"c": []}}})


def good_objects() -> list[dict[str, Any]]:
    """Valid objects: examples/cluster.yaml's and pylb.demo's manifests (a fresh copy)."""
    global _good
    if _good is None:
        _good = _read_good_objects()
    return copy.deepcopy(_good)


_good: list[dict[str, Any]] | None = None


def _read_good_objects() -> list[dict[str, Any]]:
    from pylb.demo import service_manifest, slice_manifest

    docs = [d for d in yaml.safe_load_all(EXAMPLE_CLUSTER.read_text()) if isinstance(d, dict)]
    docs += [service_manifest("good-web", 80, "http", port_name="http",
                              annotations={"serviceloadbalancer/lb.host": "good.example"}),
             slice_manifest("good-web-1", "good-web", 18090, ["10.0.0.5", "10.0.0.6"],
                            port_name="http"),
             service_manifest("good-api", 8080, 8080, namespace="prod"),
             slice_manifest("good-api-1", "good-api", 8080, ["10.0.1.5"], namespace="prod"),
             {"apiVersion": "v1", "kind": "Endpoints",
              "metadata": {"name": "good-legacy", "namespace": "default"},
              "subsets": [{"addresses": [{"ip": "10.0.2.1"}], "ports": [{"port": 80}]}]},
             service_manifest("good-legacy", 80, 80)]
    return docs


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def random_json(rng: random.Random, depth: int = 3) -> Any:
    r = rng.random()
    if depth <= 0 or r < 0.5:
        return copy.deepcopy(rng.choice(_WRONG))
    if r < 0.75:
        return [random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    keys = ("metadata", "spec", "ports", "port", "name", "namespace", "labels", "endpoints",
            "addresses", "conditions", "ready", "targetPort", "protocol", "type", "x")
    return {rng.choice(keys): random_json(rng, depth - 1) for _ in range(rng.randrange(4))}


def mutate_object(rng: random.Random, obj: dict[str, Any], n: int) -> dict[str, Any]:
    """`n` structure-aware mutations of a deep copy: a key deleted, a value of the wrong
    type, a list truncated or an element repeated, a key added, a subtree of random JSON."""
    out = copy.deepcopy(obj)
    for _ in range(n):
        path = rng.choice(_paths(out)[1:] or [()])
        if not path:
            break
        parent: Any = out
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        value = parent[key]
        op = rng.randrange(6)
        if op == 0:
            del parent[key]
        elif op == 1:
            parent[key] = copy.deepcopy(rng.choice(_WRONG))
        elif op == 2 and isinstance(value, list):
            del value[rng.randrange(len(value) + 1):]
        elif op == 3 and isinstance(value, list) and value:
            value.append(copy.deepcopy(rng.choice(value)))
        elif op == 4 and isinstance(value, dict):
            value[rng.choice(("x", "port", "name", "ready", "addresses"))] = random_json(rng)
        else:
            parent[key] = random_json(rng)
    return out


def _strings(obj: Any) -> set[str]:
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, dict):
        return set().union(*(_strings(k) | _strings(v) for k, v in obj.items())) \
            if obj else set()
    if isinstance(obj, list):
        return set().union(*(_strings(v) for v in obj)) if obj else set()
    return set()


def _service_view(table: RouteTable, names: set[str]) -> tuple[Any, ...]:
    """The routes, TCP frontends and backends of these services (namespace/name)."""
    def svc_of(backend: str) -> str:
        return backend.rsplit(":", 1)[0]
    return (tuple(r for r in table.http if svc_of(r.backend) in names),
            tuple(r for r in table.https if svc_of(r.backend) in names),
            tuple(f for f in table.tcp if svc_of(f.backend) in names),
            tuple(b for b in table.backends if svc_of(b.name) in names))


def _rename(obj: dict[str, Any], i: int) -> dict[str, Any]:
    """A copy of a good object that belongs to another service, `zz-bad/zz-bad-<i>` (after
    every good one, so a route it shares with a good service is the good one's to keep)."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        meta["namespace"] = "zz-bad"
        if out.get("kind") == "EndpointSlice":
            meta["name"] = f"zz-bad-{i}-slice"
            meta.setdefault("labels", {})["kubernetes.io/service-name"] = f"zz-bad-{i}"
        else:
            meta["name"] = f"zz-bad-{i}"
    return out


def translate_case(rng: random.Random) -> tuple[list[dict[str, Any]], list[Any]]:
    """(good objects, bad ones): the bad are mutated copies of good objects moved to other
    services, random JSON, or truncated good objects."""
    good = good_objects()
    bad: list[Any] = []
    for i in range(rng.randrange(1, 4)):
        r = rng.random()
        if r < 0.7:
            bad.append(mutate_object(rng, _rename(rng.choice(good), i), rng.randrange(1, 5)))
        elif r < 0.85:
            bad.append(random_json(rng, 4))
        else:
            src = _rename(rng.choice(good), i)
            keys = list(src)
            bad.append({k: src[k] for k in keys[:rng.randrange(len(keys) + 1)]})
    return good, bad


def _kinds(objs: Sequence[Any]) -> KubeObjects:
    by: dict[str, list[Any]] = {"Service": [], "EndpointSlice": [], "Endpoints": []}
    for o in objs:
        kind = o.get("kind") if isinstance(o, dict) else None
        # Objects of no known kind go everywhere: translate must cope with anything.
        for k in ([kind] if isinstance(kind, str) and kind in by else list(by)):
            by[k].append(o)
    return KubeObjects(tuple(by["Service"]), tuple(by["EndpointSlice"]),
                       tuple(by["Endpoints"]))


_bases: dict[str, RouteTable] = {}


def check_translate(good: Sequence[dict[str, Any]], bad: Sequence[Any]) -> RouteTable:
    """translate() of good + bad objects: never raises, no internal error, and the good
    services' routes and backends are those they have without the bad objects (unless a
    bad object names a good service: then it is that service's own object)."""
    settings = TRANSLATE_SETTINGS
    quiet = logging.getLogger("pylb.discovery")
    was = quiet.disabled
    quiet.disabled = True
    try:
        key = repr(good)  # the same good objects every time: translated once
        base = _bases.get(key)
        if base is None:
            base = _bases[key] = translate(_kinds(good), settings)
        table = translate(_kinds([*good, *bad]), settings)
    finally:
        quiet.disabled = was
    internal = [s for s in table.skipped if "internal error" in s.reason]
    if internal:
        raise Violation(f"translate had an internal error: {internal}")
    names = {f"{o['metadata'].get('namespace') or 'default'}/{o['metadata']['name']}"
             for o in good if o.get("kind") == "Service"}
    plain = {n.split("/", 1)[1] for n in names}
    isolated = not any(_strings(b) & plain or _elsewhere(b) for b in bad)
    if isolated and _service_view(table, names) != _service_view(base, names):
        raise Violation(f"a bad object changed good services:\n  without: "
                        f"{_short(_service_view(base, names))}\n  with:    "
                        f"{_short(_service_view(table, names))}\n  bad: {_short(bad)}")
    return table


def _elsewhere(obj: Any) -> bool:
    """A mutation moved this object to a namespace or a name that may sort before the good
    ones' (the first keeps a contested route: a rule, not a bug)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return False
    ns, name = meta.get("namespace"), meta.get("name")
    return (isinstance(ns, str) and ns not in ("zz-bad", "")) or (
        isinstance(name, str) and not name.startswith("zz-bad"))


def yaml_case(rng: random.Random) -> str:
    """The example cluster's text, truncated, with bytes changed, or lines shuffled."""
    text = EXAMPLE_CLUSTER.read_text()
    r = rng.random()
    if r < 0.4:
        return text[:rng.randrange(len(text) + 1)]
    if r < 0.8:
        return mutate(rng, text.encode(), rng.randrange(1, 8)).decode("utf-8", "replace")
    lines = text.splitlines(keepends=True)
    a = rng.randrange(len(lines))
    lines[a:a] = lines[rng.randrange(len(lines)):][:rng.randrange(1, 5)]
    return "".join(lines)


def check_yaml(text: str) -> RouteTable | None:
    """objects_from_yaml + translate: a table, or FileSourceError (nothing else)."""
    from discovery.filesource import FileSourceError, objects_from_yaml

    quiet = logging.getLogger("pylb.discovery")
    was = quiet.disabled
    quiet.disabled = True
    try:
        try:
            objects = objects_from_yaml(text, TRANSLATE_SETTINGS, "fuzz.yaml")
        except FileSourceError:
            return None
        table = translate(objects, TRANSLATE_SETTINGS)
    finally:
        quiet.disabled = was
    internal = [s for s in table.skipped if "internal error" in s.reason]
    if internal:
        raise Violation(f"translate had an internal error: {internal}")
    return table


# --------------------------------------------------------------------------------------
# Peeking parsers: the PROXY protocol header and the SNI of a TLS ClientHello
# --------------------------------------------------------------------------------------


def check_proxyproto(data: bytes) -> ProxyHeader | None:
    """parse() of any bytes: a header, NEED_MORE or ProxyProtocolError, and consistent:
    a header is found again with any bytes after it, and never reads past itself; every
    prefix of a NEED_MORE input is NEED_MORE too (or an error for no prefix of it)."""
    try:
        got = pp.parse(data)
    except pp.ProxyProtocolError:
        return None
    if got is pp.NEED_MORE:
        for cut in range(len(data)):
            try:
                if pp.parse(data[:cut]) is not pp.NEED_MORE:
                    raise Violation(f"a prefix of a NEED_MORE input is a header: {data!r}")
            except pp.ProxyProtocolError:
                raise Violation(f"a prefix of a NEED_MORE input is an error: "
                                f"{data[:cut]!r}") from None
        return None
    assert isinstance(got, pp.ProxyHeader)
    if not 0 < got.length <= len(data):
        raise Violation(f"header length {got.length} for {len(data)} bytes")
    again = pp.parse(data[:got.length] + b"\x00more")
    if again != got:
        raise Violation(f"the header depends on the bytes after it: {got} vs {again}")
    for cut in range(got.length):
        try:
            if pp.parse(data[:cut]) is not pp.NEED_MORE:
                raise Violation(f"a strict prefix of a header parses: {data[:cut]!r}")
        except pp.ProxyProtocolError:
            raise Violation(f"a strict prefix of a header is an error: {data[:cut]!r}"
                            ) from None
    return got


def _normal(addr: tuple[str, int]) -> tuple[str, int]:
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), addr[1]


def check_proxyproto_roundtrip(src: tuple[str, int], dst: tuple[str, int], tail: bytes
                               ) -> None:
    for version, encode in ((1, pp.encode_v1), (2, pp.encode_v2)):
        header = encode(src, dst)
        got = check_proxyproto(header + tail)
        if got is None or got.length != len(header) or got.version != version:
            raise Violation(f"v{version} round trip of {src} {dst}: {header!r} -> {got}")
        s, d = _normal(src), _normal(dst)
        if ipaddress.ip_address(s[0]).version == ipaddress.ip_address(d[0]).version:
            if (got.src, got.dst) != (s, d):
                raise Violation(f"v{version}: {src} {dst} came back as {got}")
        else:  # mixed families are sent as IPv6 (v4-mapped)
            if got.family != "TCP6" or (got.src is None or got.dst is None) or \
                    (_normal(got.src), _normal(got.dst)) != (s, d):
                raise Violation(f"v{version}: mixed {src} {dst} came back as {got}")


@functools.lru_cache(maxsize=256)
def client_hello(server_name: str | None, max_version: str = "TLSv1_3",
                 alpn: tuple[str, ...] = ()) -> bytes:
    """A real ClientHello from Python's ssl module (MemoryBIO: no socket)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion[max_version]
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        obj.do_handshake()
    return outgoing.read()


def rechunk(rng: random.Random, hello: bytes) -> bytes:
    """The same handshake message cut into several TLS records (RFC 8446 §5.1)."""
    body = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    out = bytearray()
    pos = 0
    while pos < len(body):
        n = rng.randrange(1, max(2, len(body) // 2))
        piece = body[pos:pos + n]
        out += hello[:3] + len(piece).to_bytes(2, "big") + piece
        pos += n
    return bytes(out)


def expected_sni(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ipaddress.ip_address(name)
        return None  # an IP address is never sent as SNI
    except ValueError:
        pass
    return name.lower().rstrip(".")


def check_sni(data: bytes, expected: object = ...) -> object:
    """parse_client_hello_sni never raises, answers str / None / NEED_MORE, NEED_MORE only
    below the size bound, and (when given) the expected answer."""
    got = parse_client_hello_sni(data)
    if not (got is None or got is SNI_NEED_MORE or isinstance(got, str)):
        raise Violation(f"unexpected answer {got!r}")
    if got is SNI_NEED_MORE and len(data) >= MAX_CLIENT_HELLO + 5:
        raise Violation("NEED_MORE past the size bound")
    if expected is not ... and got != expected:
        raise Violation(f"SNI {got!r}, expected {expected!r}, for {data[:80]!r}")
    return got


def check_sni_hello(hello: bytes, name: str | None, rng: random.Random) -> None:
    """A real hello: the right name; every strict prefix NEED_MORE; the same in records
    of random sizes; bytes after it change nothing."""
    want = expected_sni(name)
    check_sni(hello, want)
    check_sni(hello + b"\x17\x03\x03\x00\x01x", want)
    for cut in sorted({rng.randrange(len(hello)) for _ in range(12)} | {0, 5, len(hello) - 1}):
        check_sni(hello[:cut], SNI_NEED_MORE)
    check_sni(rechunk(rng, hello), want)
