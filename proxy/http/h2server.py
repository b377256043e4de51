"""The HTTP/2 client side: one asyncio Protocol per h2 client connection, one exchange
per stream, forwarded to HTTP/1.1 backends through the frontend's router, balancers,
pool and counters.

Theory of operation. `H2Connection` feeds the client's bytes to the h2 library's
connection (a protocol engine: bytes in, events out, no I/O) and acts on its events; it
writes what the engine has to send once per read. Each request stream is an `H2Stream`:
an exchange of `proxy.http.exchange` (its state moved through the same table as an
HTTP/1.1 connection's), and the `Owner` of the `UpstreamProtocol` that carries it to a
server as HTTP/1.1 (the header block translated and checked by `h2rules`: a malformed
request is reset with PROTOCOL_ERROR, a stream error, and never reaches a server). Its
response comes back through the response parser's callbacks, as for HTTP/1.1, and goes
out as HEADERS and DATA frames. A stream of an h2c backend (gRPC, `Backend.h2c`) goes to
a stream of a pooled multiplexed `h2upstream.H2Upstream` instead, the `UpOwner`
methods carrying its response, trailers and windows.

Flow control, both ways bounded:
- client → server: a DATA frame's bytes are acknowledged to the client (its window
  reopened) only once written to the server's connection with that connection's write
  buffer below the high watermark; while it is above (or the server is not connected
  yet), acknowledgements wait. So what pylb holds of a request body is at most the
  stream's window (`INITIAL_WINDOW`), and of all streams the connection's
  (`CONNECTION_WINDOW`).
- server → client: DATA goes out as the client's windows allow; what does not fit waits
  in the stream, and past the high watermark the server connection is not read (an h2c
  server's DATA is not acknowledged) until the client reopens the window (WINDOW_UPDATE).
  While the client's socket is above its watermark nothing more is written to it, and
  every HTTP/1.1 server connection of the client's streams is paused. A client that
  keeps a window (or its socket) shut longer than `timeout client` loses the stream
  (zero-window stall).

Limits and abuse (each tested in tests/proxy/http/test_h2_attacks.py):
- SETTINGS: MAX_CONCURRENT_STREAMS 100 (nginx's `http2_max_concurrent_streams`, haproxy's
  `tune.h2.max-concurrent-streams` default; a stream beyond it is the engine's connection
  error), MAX_HEADER_LIST_SIZE = `Limits.max_request_head` + 32 × `max_headers` (HTTP/1.1's
  head bound in HPACK's accounting; decoding stops at it: an HPACK bomb costs no more),
  INITIAL_WINDOW_SIZE 64 KiB (the RFC default; each stream then buffers at most that),
  ENABLE_PUSH 0. The h2 engine refuses more than 64 CONTINUATION frames per block.
- Rapid reset (CVE-2023-44487): each stream the client resets before its response is
  whole costs one unit of a budget (`RESET_BUDGET`), each stream answered whole gives one
  back; an empty budget ends the connection with GOAWAY ENHANCE_YOUR_CALM. Malformed
  streams count too.
- Control-frame floods (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, empty DATA): a token
  bucket (`CONTROL_BURST`, refilled at `CONTROL_RATE` a second and by
  `CONTROL_PER_STREAM` for each stream answered, so that a busy client's window updates
  never count against it); empty, GOAWAY ENHANCE_YOUR_CALM. A client that does not
  read what its PINGs and SETTINGS make us send is also cut when our write buffer to it
  passes `WRITE_LIMIT`.
- A connection error (GOAWAY) closes lingering: FIN, then the client's frames read and
  dropped for `LINGER` seconds, so that a TCP reset does not destroy the GOAWAY.
- Graceful shutdown: `close()` sends GOAWAY with the last stream id seen, refuses new
  streams (REFUSED_STREAM) and closes when the streams under way are finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState
from hyperframe.frame import GoAwayFrame

from proxy import admission, flow
from proxy.balance import Balancer, cookie_value
from proxy.http import accesslog, h2rules
from proxy.http import headers as hdr
from proxy.http.exchange import ON, Event, State, termination
from proxy.http.frontend import Frontend, accepted
from proxy.http.h2upstream import H2Upstream
from proxy.http.parser import Headers, RequestHead, ResponseHead
from proxy.http.routing import slash_redirect
from proxy.http.upstream import UpstreamProtocol
from proxy.queue import Ticket
from pylb.counters import Counters
from pylb.failures import Failure
from pylb.model import Affinity, Backend, Server

log = logging.getLogger("pylb.http")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_CONCURRENT_STREAMS = 100
INITIAL_WINDOW = 65535
CONNECTION_WINDOW = 1024 * 1024  # 16 full stream windows in flight at once
RESET_BUDGET = 200
CONTROL_BURST = 1000
CONTROL_RATE = 100.0  # control frames a second, sustained
CONTROL_PER_STREAM = 10  # and this many more for each stream answered
WRITE_LIMIT = 4 * 1024 * 1024
LINGER = 2.0  # seconds a connection cut for an error drains the client's frames
_HIGH = flow.HIGH_WATER
_LOW = flow.LOW_WATER
_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
_PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
_CANCEL = h2.errors.ErrorCodes.CANCEL
_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_INTERNAL = h2.errors.ErrorCodes.INTERNAL_ERROR
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM
_ON_HEAD = ON[Event.HEAD]
_ON_REQUEST_END = ON[Event.REQUEST_END]
_ON_RESPONSE_HEAD = ON[Event.RESPONSE_HEAD]
_ON_RESPONSE_END = ON[Event.RESPONSE_END]
_ON_ANSWER = ON[Event.ANSWER]
_ON_CLOSE = ON[Event.CLOSE]
_COOKIE = Affinity.COOKIE
_FRAME = 16384  # response bytes sent at once (a DATA frame's default maximum); less waits
# for the end of the server's read
_REPLAY_MAX = 64 * 1024  # request body kept to resend a refused h2c stream (as HTTP/1.1's)
_NO_TOKENS: frozenset[bytes] = frozenset()
# grpc-status for our own refusals (14 UNAVAILABLE otherwise)
_GRPC_CODE = {Failure.NO_ROUTE: 12, Failure.RATE_LIMITED: 8}


class H2Stream:
    """One request stream: an exchange, and the owner of its server connection."""

    __slots__ = (
        "_active",
        "_balancer",
        "_be_c",
        "_body_timer",
        "_conn",
        "_cookie",
        "_deadline",
        "_end_sent",
        "_exclude",
        "_grpc",
        "_h2up",
        "_held",
        "_out",
        "_out_size",
        "_pending",
        "_replay",
        "_req_ended",
        "_req_trailers",
        "_resp_end",
        "_srv_c",
        "_stall",
        "_timer",
        "_trailers",
        "_tw",
        "_unacked",
        "_up_end_sent",
        "_up_headers",
        "_up_paused",
        "_up_sid",
        "_up_unacked",
        "attempts",
        "backend",
        "body_seen",
        "bytes_in",
        "bytes_out",
        "closed",
        "connecting",
        "req",
        "resp",
        "response_edit",
        "server",
        "state",
        "status",
        "stream_id",
        "t0",
        "t_conn",
        "t_resp",
        "term",
        "up",
        "up_blocked",
    )

    def __init__(self, conn: H2Connection, stream_id: int, req: RequestHead) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.req = req
        self.state = _ON_HEAD[State.IDLE]
        self.resp: ResponseHead | None = None
        # set by a Gateway listener (proxy.http.gwfilters), else None
        self.response_edit: Callable[[Headers], Headers] | None = None
        self.backend: Backend | None = None
        self.server: Server | None = None
        self._balancer: Balancer | None = None
        self.up: UpstreamProtocol | None = None
        self._srv_c: Counters | None = None
        self._be_c: Counters | None = None
        self._cookie: bytes | None = None
        self._exclude: set[tuple[str, int]] | None = None
        self.attempts = 0
        self.connecting = False
        self.closed = False  # (read by HttpProxy._dialed)
        self._pending: list[bytes] = []  # head and body before the server is attached
        self._unacked = 0  # request bytes not yet acknowledged to the client
        self.up_blocked = False  # the server's write buffer is full
        self._out: list[bytes] = []  # response bytes waiting for the client's window
        self._out_size = 0
        self._resp_end = False
        self._end_sent = False
        self._up_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._stall = 0.0  # when the client's window last shut this stream (0: open)
        self.status = 0
        self.term = "--"
        self.bytes_in = 0  # request body bytes sent to the server
        self.bytes_out = 0  # response bytes sent to the client
        self.body_seen = 0  # request DATA bytes seen (checked against content-length)
        self.t0 = conn.loop.time()
        self.t_conn = 0.0
        self.t_resp = 0.0
        # h2c to the server (a gRPC backend): its connection and stream, the request's
        # header block for it, the response's trailers, response bytes not yet
        # acknowledged to the server
        self._h2up: H2Upstream | None = None
        self._up_sid = 0
        self._up_headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._up_unacked = 0
        self._up_end_sent = False
        self._replay: list[bytes] | None = []  # body sent to an h2c server, to resend
        self._req_ended = False
        self._req_trailers: list[tuple[bytes, bytes]] | None = None  # the client's
        self._grpc = False
        self._deadline = 0.0
        self._active = 0.0  # the h2c stream's last DATA either way (its inactivity timer)
        # A backend with lb.maxconn (proxy.admission): the slot held on `server`, or the
        # place in its queue, from the dispatch till the stream ends; `_tw`, the seconds
        # it waited for the slot (the log's Tw).
        self._held: Server | Ticket | None = None
        self._tw = 0.0
        self._body_timer: asyncio.TimerHandle | None = None  # --timeout-request-body

    # -- the request ------------------------------------------------------------------

    def data(self, data: bytes, flow_len: int) -> None:
        if self.state not in (State.REQUEST, State.EARLY, State.DRAIN):
            self._conn.ack(self.stream_id, flow_len)
            return
        self.body_seen += len(data)
        length = self.req.content_length
        if length is not None and self.body_seen > length:
            self._conn.malformed(self)
            return
        if self.state is State.DRAIN or not data:
            self._conn.ack(self.stream_id, flow_len)
            return
        if self.backend is not None and self.backend.h2c:
            if self._active:
                self._active = self._conn.loop.time()
            self._unacked += flow_len
            self._pending.append(data)
            self._pump_up()
            return
        part = b"%x\r\n%s\r\n" % (len(data), data) if self.req.chunked else data
        self._unacked += flow_len
        up = self.up
        if up is None or up.transport is None:
            self._pending.append(part)
            return
        self.bytes_in += len(part)
        up.transport.write(part)
        self._ack()

    def trailers_in(self, headers: list[tuple[bytes, bytes]]) -> None:
        """The client's trailer section (its END_STREAM follows: `end`). Forwarded to an
        h2c server as trailers; to an HTTP/1.1 server in the chunked body's trailer
        section, or dropped when the body went with a Content-Length, which leaves
        HTTP/1.1 no place for them (RFC 9110 §6.5.1: an intermediary forwarding to
        another version may discard trailers; merging them into the head, sent before
        the body, is impossible without buffering the body whole). Malformed trailers
        are the stream's error, as a malformed header block is."""
        if self.state not in (State.REQUEST, State.EARLY):
            return  # (DRAIN: the body is dropped, and its trailers with it)
        try:
            fields = h2rules.request_trailers(headers)
        except h2rules.Malformed:
            self._conn.malformed(self)
            return
        if fields:
            self._req_trailers = fields

    def end(self) -> None:
        """The client's END_STREAM: the request is whole."""
        state = self.state
        if state not in (State.REQUEST, State.EARLY, State.DRAIN):
            return
        length = self.req.content_length
        if length is not None and self.body_seen != length:
            self._conn.malformed(self)
            return
        self.state = _ON_REQUEST_END[state]
        self._req_ended = True
        if self.backend is not None and self.backend.h2c:
            self._pump_up()
        elif self.req.chunked and state is not State.DRAIN:
            self._send_up(h2rules.chunked_end(self._req_trailers))
        if self.state is State.DONE:
            self._finish()

    def _send_up(self, part: bytes) -> None:
        up = self.up
        if up is None or up.transport is None:
            self._pending.append(part)
            return
        self.bytes_in += len(part)
        up.transport.write(part)

    def _ack(self) -> None:
        """Reopen the client's window for what the server has taken."""
        up = self.up
        if self._unacked and not self.up_blocked and up is not None \
                and up.transport is not None \
                and up.transport.get_write_buffer_size() < _HIGH:
            n, self._unacked = self._unacked, 0
            self._conn.ack(self.stream_id, n)

    # -- routing and the server --------------------------------------------------------------

    def start(self) -> None:
        conn = self._conn
        proxy = conn.proxy
        req = self.req
        proxy.fe_counters.req_total += 1
        if req.chunked or req.content_length:  # a body to come
            body_timeout = proxy.settings.timeouts.http_body
            if body_timeout is not None:
                self._body_timer = conn.loop.call_later(body_timeout, self._body_late)
        ctype = hdr.get_header(req.headers, b"content-type")
        self._grpc = ctype is not None and ctype.startswith(b"application/grpc")
        path, _, q = req.target.partition(b"?")
        query = b"?" + q if q else b""
        gateway = proxy.gateway
        if gateway is not None:  # a Gateway API listener: it answers what it refuses
            found = gateway.route(self, req, req.host, path, query)
            if found is None:
                return
            # the head to forward: with the route's request filters applied
            route, target, req = found
            self.req = req
        else:
            found = proxy.router.route(req.host, path, query)
            if found is None:
                self._local(proxy.settings.default_return_code, proxy.error_page,
                            Failure.NO_ROUTE)
                return
            route, target = found
        if route.ssl_redirect and not proxy.tls:
            self._redirect(b"https://%s%s" % (req.host, req.target), 301)
            return
        if route.redirect is not None:
            self._redirect(target, route.redirect_code)
            return
        if route.slash_redirect:
            location = slash_redirect(route, path, query)
            if location is not None:
                self._redirect(location, 301)
                return
        backend = proxy.table.get_backend(route.backend)
        balancer = proxy.balancers.get(route.backend)
        if backend is None or balancer is None:
            self._local(503, None, Failure.NO_SERVER)
            return
        self.backend = backend
        self._balancer = balancer
        if balancer.limiter is not None:
            wait = admission.rate_limited(balancer.limiter, conn.client_ip,
                                          proxy.fe_counters, proxy.stats, backend.name)
            if wait:
                self._local(429, None, Failure.RATE_LIMITED,
                            [(b"retry-after", b"%d" % wait)])
                return
        cookie_name = None
        if backend.affinity is _COOKIE:
            cookie_name = backend.cookie_name.encode()
            self._cookie = hdr.find_cookie(req.headers, cookie_name)
        if backend.h2c:
            self._up_headers = h2rules.upstream_headers(
                req, target, client_ip=conn.client_ip, proto=proxy.proto,
                ssl_client=conn.ssl_client)
            timeout = h2rules.grpc_timeout(req.headers)
            if timeout is not None:
                # The server should answer DEADLINE_EXCEEDED itself; a moment later, we
                # do (and cancel its stream).
                self._deadline = timeout
                self._arm(timeout + 1.0)
            else:
                # No deadline: an inactivity timeout (`_on_timer`).
                self._active = conn.loop.time()
                self._arm(proxy.settings.timeouts.server)
            self._dispatch(None)
            return
        head = hdr.request_head(req, target, client_ip=conn.client_ip, proto=proxy.proto,
                                port=conn.local_port, chunked=req.chunked,
                                affinity_cookie=cookie_name, ssl_client=conn.ssl_client)
        self._pending.insert(0, head)
        self._arm(proxy.settings.timeouts.server)
        self._dispatch(None)

    def _dispatch(self, last: Failure | None) -> None:
        balancer = self._balancer
        assert balancer is not None and self.backend is not None
        proxy = self._conn.proxy
        cookie = self._cookie.decode("latin-1") if self._cookie else None
        if self._held is not None:
            self._free_slot()  # a retry: the failed attempt's slot goes back first
        server = balancer.pick(self._conn.client_ip, self._exclude or (), cookie)
        if balancer.gate is not None:
            got = admission.admit(self, balancer, server, self._conn.client_ip,
                                  self._exclude or (), proxy.stats, self.backend.name)
            if type(got) is Ticket:
                self._held = got  # queue_granted or queue_expired comes later
                return
            if type(got) is Failure:
                self._error(got)
                return
            server = cast("Server | None", got)
            if server is not None:
                self._held = server
                self._tw = 0.0
        if server is None:
            failure = last or Failure.NO_SERVER
            if last is None:
                proxy.stats.fail(Failure.NO_SERVER)
            else:
                proxy.stats.backend(self.backend.name).conn_errors += 1
            self._error(failure)
            return
        self._go(server)

    def _go(self, server: Server) -> None:
        proxy = self._conn.proxy
        self.server = server
        if self.backend is not None and self.backend.h2c:
            self.connecting = True
            proxy.h2_pool.get(server.key, self)
            return
        up = proxy.pool.take(server.key, proxy.loop.time()) if not self.attempts else None
        if up is not None:
            self._attach(up)
            return
        self.connecting = True
        proxy.connect(self, server)

    # -- the queue (proxy.queue calls these, as HTTP/1.1's ClientProtocol's) -----------------

    def queue_granted(self, server: Server) -> None:
        ticket = self._held
        self._tw = self._conn.loop.time() - ticket.since if type(ticket) is Ticket else 0.0
        self._held = server
        self._go(server)

    def queue_expired(self, failure: Failure) -> None:
        # `_held` keeps the spent ticket till the stream ends (the log's Tw reads it; the
        # gate's cancel of it is a no-op).
        if self.backend is not None:
            admission.refused(self._conn.proxy.stats, self.backend.name, failure)
        else:
            self._conn.proxy.stats.fail(failure)
        self._error(failure)

    def _free_slot(self) -> None:
        held = self._held
        self._held = None
        admission.free(self._balancer, held)

    def _body_late(self) -> None:
        """--timeout-request-body: the body is not whole in time (a slow POST). 408 and
        RST_STREAM NO_ERROR for this stream only (RFC 9113 §8.1: the rest of the request
        is not wanted); its server slot and connection are freed."""
        self._body_timer = None
        if self.closed or self._req_ended:
            return
        conn = self._conn
        conn.proxy.stats.fail(Failure.BODY_TIMEOUT)
        conn.proxy.fe_counters.req_errors += 1
        self._note(Failure.BODY_TIMEOUT)
        if self.resp is None:
            self._error(Failure.BODY_TIMEOUT)
            if not self.closed:
                conn.reset(self, _NO_ERROR)
        else:
            self._drop_up()
            conn.reset(self, _CANCEL)

    def connect_done(self, server: Server, up: UpstreamProtocol | None,
                     failure: Failure | None, local: bool = False) -> None:
        proxy = self._conn.proxy
        if up is not None and (self.closed or self.server is not server
                               or not self.connecting):
            proxy.pool.put(up, proxy.loop.time())
            return
        if self.closed or not self.connecting:
            return
        self.connecting = False
        balancer = self._balancer
        assert balancer is not None and self.backend is not None
        if up is None:
            assert failure is not None
            proxy.stats.fail(failure)
            srv = proxy.stats.server(self.backend.name, server.label)
            if not local:
                balancer.failed(server)
                srv.conn_errors += 1
            self.attempts += 1
            self.server = None
            if not local and self.attempts <= proxy.settings.limits.retries:
                srv.retries += 1
                exclude = self._exclude
                if exclude is None:
                    exclude = self._exclude = set()
                exclude.add(server.key)
                if len(exclude) >= len(balancer.candidates):
                    exclude.clear()
                self._dispatch(failure)
                return
            proxy.stats.backend(self.backend.name).conn_errors += 1
            self._error(failure)
            return
        balancer.succeeded(server)
        self._attach(up)
        # (a dial's callback, outside `data_received`: the WINDOW_UPDATE goes now, or a
        # client that filled its window before the server was connected would wait for
        # it forever)
        self._conn.flush()

    def _attach(self, up: UpstreamProtocol) -> None:
        server, backend, balancer = self.server, self.backend, self._balancer
        assert server is not None and backend is not None and balancer is not None
        self.up = up
        self._account(server)
        up.begin(self, self.req.method, False)
        data = b"".join(self._pending)
        self._pending = []
        self.bytes_in += len(data)
        if up.transport is not None:
            up.transport.write(data)
        self._ack()

    # -- h2c to the server (h2upstream.UpOwner) ------------------------------------------------

    def up_ready(self, conn: H2Upstream | None, failure: Failure | None,
                 local: bool) -> None:
        server = self.server
        if self.closed or not self.connecting or server is None:
            return
        if conn is None:
            assert failure is not None
            self.connect_done(server, None, failure, local)
            return
        self.connecting = False
        assert self._balancer is not None
        self._balancer.succeeded(server)
        self._account(server)
        self._h2up = conn
        whole = self._req_ended and not self._pending and self._req_trailers is None
        self._up_sid = conn.open(self, self._up_headers, end=whole)
        self._up_end_sent = whole
        self._pump_up()

    def _pump_up(self) -> None:
        """Send the request body as the server's windows allow; acknowledge to the
        client what went."""
        conn = self._h2up
        if conn is None:
            return
        sid = self._up_sid
        pending = self._pending
        sent = False
        while pending:
            window = conn.window(sid)
            if window <= 0:
                break
            data = pending[0]
            if len(data) > window:
                pending[0] = data[window:]
                data = data[:window]
            else:
                pending.pop(0)
            last = not pending and self._req_ended and self._req_trailers is None
            conn.send(sid, data, last)
            self.bytes_in += len(data)
            replay = self._replay
            if replay is not None:
                if self.bytes_in > _REPLAY_MAX:
                    self._replay = None
                else:
                    replay.append(data)
            sent = True
            if last:
                self._up_end_sent = True
        if not pending:
            if self._req_ended and not self._up_end_sent:
                self._up_end_sent = True
                trailers = self._req_trailers
                if trailers is not None:
                    conn.trailers(sid, trailers)
                else:
                    conn.end(sid)
            if sent or self._unacked:
                n, self._unacked = self._unacked, 0
                self._conn.ack(self.stream_id, n)
                self._conn.flush()

    def up_window(self) -> None:
        self._pump_up()

    def up_headers(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.state is State.CLOSED:
            return
        if self._active:
            self._active = self._conn.loop.time()
        status = 0
        rest: list[tuple[bytes, bytes]] = []
        for k, v in headers:
            if k == b":status":
                status = int(v)
            elif k[:1] != b":":
                rest.append((k, v))
        if status < 200:
            return  # 1xx: not relayed
        self._replay = None  # answered: nothing to resend any more
        head = ResponseHead(status, b"", b"2.0", rest)
        head.connection = _NO_TOKENS
        head.no_body = ended  # gRPC's trailers-only response: one HEADERS, END_STREAM
        self.on_response(head)

    def up_data(self, data: bytes, flow_len: int) -> None:
        if self._active:
            self._active = self._conn.loop.time()
        self.on_response_body(data)
        if self._out_size:  # (an h2c server's message goes at once: gRPC streams)
            self._conn.send_out(self)
        conn = self._h2up
        if conn is not None:
            if self._out_size < _HIGH:
                conn.ack(self._up_sid, flow_len)
            else:
                self._up_unacked += flow_len

    def up_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._trailers = [(k, v) for k, v in headers if k[:1] != b":"]

    def up_end(self) -> None:
        self.on_response_end()

    def up_reset(self, failure: Failure, refused: bool) -> None:
        conn = self._h2up
        if conn is None or self.closed:
            return
        self._h2up = None
        proxy = self._conn.proxy
        replay = self._replay
        if refused and self.resp is None and replay is not None and self.server is not None \
                and self.attempts < proxy.settings.limits.retries \
                and self.state is not State.CLOSED:
            # REFUSED_STREAM, or above a GOAWAY's last stream: the server did nothing
            # with it (RFC 9113 §8.7), and the body sent so far is kept: send it again.
            self._pending[:0] = replay
            self._replay = []
            self.bytes_in = 0
            self._up_end_sent = False
            srv, be, balancer = self._srv_c, self._be_c, self._balancer
            if srv is not None and be is not None and balancer is not None:
                self._srv_c = self._be_c = None
                balancer.release(self.server)
                srv.close()
                be.close()
                srv.retries += 1
                be.retries += 1
            self.attempts += 1
            self._dispatch(failure)
            return
        proxy.stats.fail(failure)
        self._end_failed(failure)

    def _account(self, server: Server) -> None:
        """The exchange holds a server from now on: its stats and the balancer's
        count."""
        proxy = self._conn.proxy
        backend, balancer = self.backend, self._balancer
        assert backend is not None and balancer is not None
        self.t_conn = self._conn.loop.time()
        balancer.acquire(server)
        now = time.time()
        srv = self._srv_c = proxy.stats.server(backend.name, server.label)
        srv.open(now)
        srv.lbtot += 1
        be = self._be_c = proxy.stats.backend(backend.name)
        be.open(now)
        be.lbtot += 1

    # -- Owner: the server's side --------------------------------------------------------------

    def pause_reading(self, why: int) -> None:
        self.up_blocked = True  # the server is not taking the body: stop acknowledging

    def resume_reading(self, why: int) -> None:
        self.up_blocked = False
        self._ack()
        self._conn.flush()

    def upstream_failed(self, up: UpstreamProtocol, failure: Failure) -> None:
        self._conn.proxy.stats.fail(failure)
        self._lost(failure)

    def upstream_lost(self, up: UpstreamProtocol) -> None:
        if self.up is up:
            self._conn.proxy.stats.fail(Failure.BACKEND_RESET)
            self._lost(Failure.BACKEND_RESET)

    def _lost(self, failure: Failure) -> None:
        up = self.up
        if up is not None:
            up.detach()
            up.abort()
        self._end_failed(failure)

    def _end_failed(self, failure: Failure) -> None:
        """The stream cannot be served: its error response while none has begun, else a
        reset (the client has part of a response already)."""
        if self.resp is None and self.state is not State.CLOSED:
            self._error(failure)
        else:
            self._note(failure)
            self._conn.reset(self, _INTERNAL)

    def start_tunnel(self, upstream_rest: bytes) -> None:
        self.upstream_failed(cast(UpstreamProtocol, self.up), Failure.BAD_RESPONSE)

    def tunnel_from_upstream(self, data: bytes) -> None:
        pass

    def tunnel_upstream_eof(self) -> bool | None:
        return None

    def flush(self) -> None:
        """The end of a read of the server's connection."""
        if self._out_size and not self._end_sent:
            self._conn.send_out(self)
        self._conn.flush()

    # (no inactivity stamping: the server timer is the whole exchange's)
    upstream_read = flush

    # ResponseSink

    def on_interim(self, head: ResponseHead) -> None:
        # 100 Continue goes to a client that asked for it (RFC 9110 §10.1.1); other 1xx
        # (102, 103) are dropped.
        if head.status == 100 and self.resp is None \
                and hdr.get_header(self.req.headers, b"expect") is not None:
            self._conn.send_headers(self, [(b":status", b"100")], end_stream=False)

    def on_response(self, head: ResponseHead) -> None:
        if self.state is State.CLOSED:
            return
        conn = self._conn
        proxy = conn.proxy
        self.resp = head
        self.state = _ON_RESPONSE_HEAD[self.state]
        self.status = head.status
        self.t_resp = conn.loop.time()
        set_cookie = None
        backend = self.backend
        if backend is not None and backend.affinity is _COOKIE and self.server is not None:
            value = cookie_value(self.server).encode()
            if self._cookie != value:
                set_cookie = b"%s=%s; path=/" % (backend.cookie_name.encode(), value)
        proxy.fe_counters.response(head.status)
        if self.response_edit is not None:  # a Gateway route's (proxy.http.gwfilters)
            # on a copy: the parser may hand this head out again (parser._RESPONSE_HEADS)
            head = self.resp = head.edited(self.response_edit(head.headers))
        block = h2rules.response_headers(head.status, head.headers, head.connection,
                                         proxy.hsts, set_cookie)
        conn.send_headers(self, block, end_stream=head.no_body)
        if head.no_body:
            self._end_sent = True

    def on_response_body(self, data: bytes) -> None:
        if self.state is State.CLOSED or self._end_sent:
            return
        self._out.append(data)
        self._out_size += len(data)
        self.bytes_out += len(data)
        if self._out_size >= _FRAME:
            self._conn.send_out(self)
        # (else at the end of the server's read, `flush`, or with the response's end: a
        # small response whose end came in the same read goes as one DATA frame with
        # END_STREAM, not a DATA frame and an empty one)
        if self._out_size > _HIGH and not self._up_paused:
            up = self.up
            if up is not None and up.transport is not None:
                self._up_paused = True
                up.transport.pause_reading()

    def on_response_end(self) -> None:
        if self.state is State.CLOSED:
            return
        self._resp_end = True
        self.state = _ON_RESPONSE_END[self.state]
        if self.state is State.DRAIN:
            # The server answered before the request was whole: the rest of the body is
            # dropped, so its connection cannot carry another request.
            self._drop_up()
        if self._end_sent:  # a response without a body: its HEADERS ended the stream
            self.sent_end()
            return
        self._conn.send_out(self)

    # -- sending to the client (H2Connection calls these) ----------------------------------------

    def take_out(self, window: int) -> tuple[bytes, bool]:
        """Up to `window` bytes of the response to send now, and whether they end it."""
        out = self._out
        if not out:
            data = b""
        elif self._out_size <= window:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
        else:
            joined = b"".join(out)
            data, rest = joined[:window], joined[window:]
            out[:] = [rest]
        self._out_size -= len(data)
        end = self._resp_end and not self._out_size and not self._end_sent
        if end:
            self._end_sent = True
        if self._up_unacked and self._out_size < _LOW and self._h2up is not None:
            n, self._up_unacked = self._up_unacked, 0
            self._h2up.ack(self._up_sid, n)
        if self._up_paused and self._out_size < _LOW:
            self._up_paused = False
            up = self.up
            if up is not None and up.transport is not None and not up.closed \
                    and not self._conn.paused:  # (else the socket's resume does it)
                up.transport.resume_reading()
        if self._out_size:
            if not self._stall:
                self._stall = self._conn.loop.time()
        else:
            self._stall = 0.0
        return data, end

    def stalled(self, now: float) -> None:
        """Waiting for the client (its socket) from `now`, unless already."""
        if not self._stall:
            self._stall = now

    @property
    def holding(self) -> bool:
        """Its server's reading is paused for this stream's own buffer."""
        return self._up_paused

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        return self._trailers

    @property
    def waiting_out(self) -> bool:
        return bool(self._out_size) or (self._resp_end and not self._end_sent)

    def sent_end(self) -> None:
        """The response's END_STREAM went out."""
        if self.state is State.DONE:
            self._finish()

    # -- answers of our own --------------------------------------------------------------------

    def _local(self, status: int, body: bytes | None, failure: Failure,
               fields: list[tuple[bytes, bytes]] | None = None) -> None:
        self._conn.proxy.stats.fail(failure)
        self._note(failure)
        if self._grpc:
            self._grpc_error(_GRPC_CODE.get(failure, 14), failure)
            return
        self._answer(status, [(b"content-type", b"text/html"), *(fields or ())], body
                     if body is not None else b"<html><body><h1>%d</h1></body></html>\n"
                     % status)

    def _redirect(self, location: bytes, code: int) -> None:
        self._answer(code, [(b"location", location)], b"")

    def _error(self, failure: Failure) -> None:
        self._note(failure)
        self._drop_up()
        if self._grpc:
            self._grpc_error(14, failure)
            return
        self._answer(failure.status, [(b"content-type", b"text/html")],
                     b"<html><body><h1>%d</h1></body></html>\n" % failure.status)

    def _grpc_error(self, code: int, failure: Failure) -> None:
        """A gRPC-shaped error: HTTP 200, trailers only, grpc-status `code` (14
        UNAVAILABLE as Envoy answers for an upstream it cannot reach, a full queue or
        one waited out; 12 UNIMPLEMENTED for no route; 4 DEADLINE_EXCEEDED; 8
        RESOURCE_EXHAUSTED for a rate-limited client, as Envoy's rate limit filter)."""
        self._answer(200, [(b"content-type", b"application/grpc"),
                           (b"grpc-status", b"%d" % code),
                           (b"grpc-message", failure.label.encode())], b"", length=False)

    def _answer(self, status: int, fields: list[tuple[bytes, bytes]], body: bytes,
                length: bool = True) -> None:
        if self.state is State.CLOSED:
            return
        conn = self._conn
        self.status = status
        conn.proxy.fe_counters.response(status)
        self.state = _ON_ANSWER[self.state]
        if self.req.method == b"HEAD":
            body = b""
        block = [(b":status", b"%d" % status), *fields]
        if length:
            block.append((b"content-length", b"%d" % len(body)))
        conn.send_headers(self, block, end_stream=not body)
        if body:
            self._out.append(body)
            self._out_size += len(body)
            self.bytes_out += len(body)
        self._resp_end = True
        if not body:
            self._end_sent = True
            if self.state is State.DONE:
                self._finish()
            return
        conn.send_out(self)

    def _note(self, failure: Failure) -> None:
        if self.term == "--":
            self.term = termination(failure, self.state, self.connecting)

    # -- the end -----------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._timer = self._conn.loop.call_later(seconds, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self._active:
            self._inactive()
            return
        if self._deadline:
            if not self._resp_end:  # the server let the deadline pass
                self._conn.proxy.stats.fail(Failure.BACKEND_TIMEOUT)
                self._note(Failure.BACKEND_TIMEOUT)
                if self.resp is None:
                    self._drop_up()
                    self._grpc_error(4, Failure.BACKEND_TIMEOUT)
                else:
                    self._drop_up()
                    self._conn.reset(self, _CANCEL)
            return
        if self.connecting or type(self._held) is Ticket:
            # (neither connecting nor the wait in the queue, bounded by `timeout queue`,
            # is the server's time)
            self._arm(self._conn.proxy.settings.timeouts.connect)
            return
        if self.resp is None:
            self._conn.proxy.stats.fail(Failure.BACKEND_TIMEOUT)
            self._error(Failure.BACKEND_TIMEOUT)

    def _inactive(self) -> None:
        """An h2c stream without `grpc-timeout`: inactivity (no DATA either way) is
        bounded as haproxy bounds it: by `timeout server` until the response begins,
        then by `timeout tunnel`, as once a WebSocket's two sides talk: a long-lived
        stream (a gRPC watch, a bidi chat) is legitimate, a silent one for an hour is
        not. Connecting and waiting in the queue are not the server's time."""
        loop = self._conn.loop
        t = self._conn.proxy.settings.timeouts
        now = loop.time()
        if self.connecting or type(self._held) is Ticket:
            self._active = now
        limit = t.server if self.resp is None else t.tunnel
        idle = now - self._active
        if idle < limit:
            self._arm(limit - idle)
            return
        self._conn.proxy.stats.fail(Failure.BACKEND_TIMEOUT)
        self._note(Failure.BACKEND_TIMEOUT)
        self._drop_up()
        if self.resp is None:
            self._error(Failure.BACKEND_TIMEOUT)  # (a gRPC call: grpc-status 14)
        else:
            self._conn.reset(self, _CANCEL)

    def _finish(self) -> None:
        """Request and response whole: the exchange ends; the server connection goes
        back to the pool if it can carry another request."""
        up = self.up
        reusable = False
        if up is not None:
            parser = up.parser
            resp = self.resp
            reusable = (resp is not None and resp.keep_alive and parser is not None
                        and not parser.rest and parser.upgrade_rest is None
                        and up.usable)
        self._conn.stream_done(self, clean=True)
        self.release(reusable)

    def release(self, reusable: bool = False) -> None:
        """End the exchange's accounts (once) and let go of the server connection."""
        if self.closed:
            return
        self.closed = True
        if self.state is not State.DONE:
            self.state = _ON_CLOSE[self.state]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        h2up = self._h2up
        if h2up is None and self.connecting and self.server is not None \
                and self.backend is not None and self.backend.h2c:
            self._conn.proxy.h2_pool.cancel(self.server.key, self)
        if h2up is not None:
            self._h2up = None
            if self.state is State.DONE:
                h2up.forget(self._up_sid)
            else:
                h2up.reset(self._up_sid)
        up = self.up
        if up is not None:
            self.up = None
            if self._up_paused and up.transport is not None and not up.closed:
                up.transport.resume_reading()
            up.detach()
            if reusable:
                self._conn.proxy.pool.put(up, self._conn.proxy.loop.time())
            else:
                up.close()
        server, srv, be, balancer = self.server, self._srv_c, self._be_c, self._balancer
        if server is not None and srv is not None and be is not None and balancer is not None:
            self._srv_c = self._be_c = None
            balancer.release(server)
            srv.close()
            be.close()
            srv.bytes_in += self.bytes_in
            be.bytes_in += self.bytes_in
            srv.bytes_out += self.bytes_out
            be.bytes_out += self.bytes_out
            if self.status and self.resp is not None:
                srv.response(self.status)
                be.response(self.status)
        if accesslog.access_log.isEnabledFor(logging.INFO):
            conn = self._conn
            backend, server = self.backend, self.server
            held = self._held  # Tw: time in the queue, when the backend has one
            tw = None if held is None else \
                int((conn.loop.time() - held.since) * 1000) if type(held) is Ticket \
                else int(self._tw * 1000)
            accesslog.log(accesslog.line(
                client_ip=conn.client_ip, client_port=conn.client_port,
                frontend=conn.proxy.frontend,
                backend=backend.name if backend is not None else accesslog.NOSRV,
                server=server.label if server is not None else accesslog.NOSRV,
                t0=self.t0, t_head=self.t0, t_conn=self.t_conn, t_resp=self.t_resp,
                now=conn.loop.time(), status=self.status, nbytes=self.bytes_out,
                termination=self.term, req=_log_head(self.req), tw=tw))
        if self._held is not None:
            self._free_slot()  # after the pool took `up`: the next in line gets it warm

    def _drop_up(self) -> None:
        h2up = self._h2up
        if h2up is not None:
            self._h2up = None
            h2up.reset(self._up_sid)
        up = self.up
        if up is not None:
            self.up = None
            up.detach()
            up.abort()

    def cancelled(self, failure: Failure) -> None:
        """The client reset the stream, or the connection is gone."""
        if self.closed:
            return
        if self.state is not State.DONE:
            self._conn.proxy.stats.fail(failure)
            self._note(failure)
        self._drop_up()
        self.release()


def _log_head(req: RequestHead) -> RequestHead:
    """The request as the access log shows it: `GET /path HTTP/2.0`."""
    return RequestHead(req.method, req.target, b"2.0", req.headers)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 client connection (TLS with ALPN h2, or h2c with prior knowledge)."""

    def __init__(self, proxy: Frontend) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.transport: asyncio.Transport | None = None
        limits = proxy.settings.limits
        # Header checks are h2rules' (a malformed request is a stream error there; the
        # engine's own checks would make each a connection error). The blocks we send are
        # built well-formed (h2rules.response_headers: names lower case, no
        # connection-specific field, one pseudo-header; values from a parsed HTTP/1.1
        # response or an h2c server's checked block; our own answers are literals), so
        # the engine's outbound checks and normalization (~10 % of a stream's
        # instructions, `python -m bench.h2 micro-ir`) would find nothing to do.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=False,
                                           normalize_inbound_headers=False,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE:
                limits.max_request_head + 32 * limits.max_headers,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.streams: dict[int, H2Stream] = {}
        self.blocked: dict[int, H2Stream] = {}  # streams waiting for the client's window
        self.client_ip = ""
        self.client_port = 0
        self.local_port = 0
        self.closed = False
        self.going_away = False
        self.cut = False  # a connection error was sent: nothing more is read or sent
        self.last_stream = 0
        self.resets = RESET_BUDGET
        self.tokens = float(CONTROL_BURST)
        self.t_tokens = 0.0
        self.paused = False  # the client's socket is full
        self._timer: asyncio.TimerHandle | None = None
        self._t_idle = 0.0
        self.ssl_client: tuple[bytes, bytes] | None = None  # (verify, DN) of a certificate
        # In `data_received`: what the streams have to send waits for its end, so that
        # one read makes one transport.write (one send syscall), however many streams
        # it carried (`flush`; `_write_out` when the order of bytes demands it now).
        self._reading = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        proxy = self.proxy
        proxy.connection_opened(self)
        fe = proxy.fe_counters
        fe.open()
        fe.h2_cur += 1
        fe.h2_tot += 1
        self.client_ip, self.client_port, self.local_port, self.ssl_client = \
            accepted(transport, proxy, self.client_ip, self.client_port)
        self.t_tokens = self._t_idle = self.loop.time()
        conn = self.h2
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - INITIAL_WINDOW)
        self.flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.proxy.fe_counters.bytes_in += len(data)
        if self.cut:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._protocol_error(e)
            return
        self._reading = True
        try:
            for event in events:
                self._event(event)
                if self.cut or self.closed:
                    return
        except Exception:
            log.exception("%s: internal error on an h2 connection from %s",
                          self.proxy.frontend, self.client_ip)
            self.proxy.stats.fail(Failure.INTERNAL)
            self.abort()
            return
        finally:
            self._reading = False
        self._write_out()

    def _protocol_error(self, e: h2.exceptions.ProtocolError) -> None:
        """A connection error (RFC 9113 §5.4.1): GOAWAY with its code, then close."""
        self.proxy.fe_counters.req_errors += 1
        self.proxy.fe_counters.h2_conn_errors += 1
        self.cut = True
        code = getattr(e, "error_code", None) or _PROTOCOL_ERROR
        if isinstance(e, h2.exceptions.DenialOfServiceError):
            code = _CALM
        if self.h2.state_machine.state is not ConnectionState.CLOSED:
            # (else the engine closed itself, and queued its own GOAWAY)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(error_code=code)
        self._write_out()
        self._linger()

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            self._request(ev.stream_id, ev.headers or [], ev.stream_ended is not None)
        elif isinstance(ev, h2.events.DataReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is None:
                self.ack(ev.stream_id, ev.flow_controlled_length)
                return
            if not ev.data and ev.stream_ended is None:
                self._control()  # an empty DATA frame is a control frame's worth of work
            stream.data(ev.data or b"", ev.flow_controlled_length)
        elif isinstance(ev, h2.events.TrailersReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.trailers_in(ev.headers or [])
        elif isinstance(ev, h2.events.StreamEnded):
            # (after the HEADERS, DATA or trailers that carried END_STREAM)
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.end()
        elif isinstance(ev, h2.events.StreamReset):
            stream = self.streams.pop(ev.stream_id, None)
            self.blocked.pop(ev.stream_id, None)
            self.proxy.fe_counters.h2_resets += 1
            if stream is not None:
                if not stream.closed and stream.state is not State.DONE:
                    self._glitch()
                stream.cancelled(Failure.CLIENT_ABORT)
        elif isinstance(ev, h2.events.WindowUpdated):
            self._control()
            if ev.stream_id == 0:
                for stream in list(self.blocked.values()):
                    self.send_out(stream)
            else:
                stream = self.blocked.get(ev.stream_id)
                if stream is not None:
                    self.send_out(stream)
        elif isinstance(ev, (h2.events.PingReceived, h2.events.RemoteSettingsChanged,
                             h2.events.PriorityUpdated)):
            self._control()
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                for stream in list(self.blocked.values()):
                    self.send_out(stream)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.close(graceful=False)

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                 ended: bool) -> None:
        self.last_stream = stream_id
        self._t_idle = 0.0
        if self.going_away:
            self.h2.reset_stream(stream_id, _REFUSED)  # after our GOAWAY
            return
        proxy = self.proxy
        proxy.fe_counters.h2_streams += 1
        try:
            req = h2rules.request_head(headers, ended, proxy.settings.limits.max_uri)
        except h2rules.Malformed:
            proxy.fe_counters.h2_strm_errors += 1
            proxy.fe_counters.req_errors += 1
            proxy.stats.fail(Failure.BAD_REQUEST)
            self.h2.reset_stream(stream_id, _PROTOCOL_ERROR)
            self._glitch()
            return
        stream = H2Stream(self, stream_id, req)
        self.streams[stream_id] = stream
        stream.start()

    # -- abuse -------------------------------------------------------------------------------

    def _glitch(self) -> None:
        """A stream opened for nothing (reset by the client, malformed, refused)."""
        self.resets -= 1
        if self.resets <= 0:
            self.calm()

    def _control(self) -> None:
        now = self.loop.time()
        tokens = min(CONTROL_BURST, self.tokens + (now - self.t_tokens) * CONTROL_RATE) - 1
        self.t_tokens = now
        self.tokens = tokens
        if tokens < 0:
            self.calm()

    def calm(self) -> None:
        """GOAWAY ENHANCE_YOUR_CALM: the client's frames cost too much for what they ask."""
        if self.closed or self.cut:
            return
        self.cut = True
        self.proxy.fe_counters.req_errors += 1
        self.proxy.fe_counters.h2_conn_errors += 1
        self.h2.close_connection(error_code=_CALM, last_stream_id=self.last_stream)
        self._write_out()
        self._linger()

    # -- the streams' sending ------------------------------------------------------------------

    def ack(self, stream_id: int, n: int) -> None:
        if n and not self.closed and not self.cut:
            # (a closed stream's bytes still reopen the connection's window)
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.acknowledge_received_data(n, stream_id)

    def send_headers(self, stream: H2Stream, block: list[tuple[bytes, bytes]],
                     end_stream: bool) -> None:
        if self.closed or self.cut or stream.stream_id not in self.streams:
            return
        self.h2.send_headers(stream.stream_id, block, end_stream=end_stream)
        if end_stream:
            self.flush()

    def send_out(self, stream: H2Stream) -> None:
        """Send what the client's windows allow of `stream`'s response."""
        if self.closed or self.cut:
            return
        sid = stream.stream_id
        if sid not in self.streams:
            return
        if self.paused and stream.waiting_out:
            # The client's socket is full: nothing more goes into its buffer until it
            # drains (`resume_writing`), whatever its windows allow.
            stream.stalled(self.loop.time())
            self.blocked[sid] = stream
            return
        conn = self.h2
        while True:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            data, end = stream.take_out(max(window, 0))
            trailers = stream.trailers if end else None
            if trailers is not None:
                if data:
                    conn.send_data(sid, data)
                conn.send_headers(sid, trailers, end_stream=True)
            elif data or end:
                conn.send_data(sid, data, end_stream=end)
            if end:
                self.blocked.pop(sid, None)
                stream.sent_end()
                break
            if not stream.waiting_out:
                self.blocked.pop(sid, None)
                break
            if window <= 0 or not data:
                self.blocked[sid] = stream
                break
        self._check_write()

    def reset(self, stream: H2Stream, code: h2.errors.ErrorCodes) -> None:
        sid = stream.stream_id
        if self.streams.pop(sid, None) is not None and not self.closed and not self.cut:
            self.blocked.pop(sid, None)
            self.h2.reset_stream(sid, code)
            self.flush()
        stream.release()
        self._maybe_done()

    def malformed(self, stream: H2Stream) -> None:
        """A request body at odds with its content-length (RFC 9113 §8.1.1)."""
        self.proxy.fe_counters.req_errors += 1
        self.proxy.fe_counters.h2_strm_errors += 1
        self.proxy.stats.fail(Failure.BAD_REQUEST)
        stream._note(Failure.BAD_REQUEST)
        stream._drop_up()
        self.reset(stream, _PROTOCOL_ERROR)

    def stream_done(self, stream: H2Stream, clean: bool) -> None:
        self.streams.pop(stream.stream_id, None)
        self.blocked.pop(stream.stream_id, None)
        if clean:
            if self.resets < RESET_BUDGET:
                self.resets += 1
            # A client's WINDOW_UPDATEs and PINGs come with the work it asks for: each
            # stream answered pays for a few of them (`CONTROL_PER_STREAM`).
            self.tokens = min(CONTROL_BURST, self.tokens + CONTROL_PER_STREAM)
        self.flush()  # (the server connection, detached now, will not ask for it)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.streams:
            self._t_idle = self.loop.time()
            if self.going_away:
                self._write_out()
                self._close_transport()

    def flush(self) -> None:
        if not self._reading:  # (else at the end of the read)
            self._write_out()

    def _write_out(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        data = self.h2.data_to_send()
        if data:
            self.proxy.fe_counters.bytes_out += len(data)
            t.write(data)
            self._check_write()

    def _check_write(self) -> None:
        t = self.transport
        if t is not None and t.get_write_buffer_size() > WRITE_LIMIT:
            # The client does not read what it asks for (a PING or SETTINGS flood with
            # the reading side shut): nothing more is worth sending it.
            self.abort()

    # -- flow of the socket ------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.paused = True
        for stream in self.streams.values():
            up = stream.up
            if up is not None and up.transport is not None:
                up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        for stream in list(self.blocked.values()):
            self.send_out(stream)
        self.flush()
        for stream in self.streams.values():
            up = stream.up
            if up is not None and up.transport is not None and not up.closed \
                    and not stream.holding:  # (else its own bound keeps it paused)
                up.transport.resume_reading()

    # -- timers: idle connection and stalled windows ------------------------------------------

    def _arm(self) -> None:
        t = self.proxy.settings.timeouts
        self._timer = self.loop.call_later(min(t.keep_alive, t.client) / 2 or 1.0,
                                           self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        t = self.proxy.settings.timeouts
        if not self.streams and self._t_idle and now - self._t_idle >= t.keep_alive:
            self.close()
            return
        for stream in list(self.blocked.values()):
            if stream._stall and now - stream._stall >= t.client:
                # The client keeps this stream's window shut: zero-window stall.
                self.proxy.stats.fail(Failure.CLIENT_TIMEOUT)
                stream._note(Failure.CLIENT_TIMEOUT)
                stream._drop_up()
                self.reset(stream, _CANCEL)
        if not self.closed:
            self._arm()

    # -- the HttpProxy's view ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """At shutdown every h2 connection is "idle": `close` is graceful (GOAWAY)."""
        return True

    def idle_check(self, now: float, interval: float) -> bool:
        return False  # our own timer watches idleness

    def close(self, graceful: bool = True) -> None:
        if self.closed:
            return
        if graceful and not self.going_away:
            self.going_away = True
            # A GOAWAY NO_ERROR written beside the engine: its own `close_connection`
            # would move it to CLOSED, where the streams under way could send nothing
            # more; new streams are refused (REFUSED_STREAM) by `_request` instead.
            self._write_out()
            t = self.transport
            if t is not None and not t.is_closing():
                t.write(GoAwayFrame(0, last_stream_id=self.last_stream, error_code=0)
                        .serialize())
            if self.streams:
                return  # closes when the last stream is done
        self._close_transport()

    def _linger(self) -> None:
        """After a connection error: our side is shut (FIN after the GOAWAY), and what
        the client still sends is read and dropped for a moment (`LINGER`), as nginx's
        lingering close: closing with its frames unread would send a TCP reset, which
        can destroy the GOAWAY in the client's receive buffer before it reads it."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if not t.can_write_eof():  # TLS: close_notify, then close
            t.close()
            return
        t.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(LINGER, t.close)

    def _close_transport(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            t.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fe = self.proxy.fe_counters
        fe.close()
        fe.h2_cur -= 1
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for stream in streams:
            stream.cancelled(Failure.CLIENT_ABORT)
        self.proxy.connection_gone(self)

