"""The client side of the L7 router: one asyncio Protocol per client connection.

Theory of operation. `ClientProtocol` feeds the client's bytes to a request parser whose
callbacks (`on_head`, `on_body`, `on_end`) drive one exchange at a time (a connection
that holds no parser, new or idle, makes none for a read the parser has taken whole
before: `parser.known_request` gives its head, and the callbacks are called here, as a
fresh parser would call them); nothing here awaits, and no Task is made per request —
only a new backend connection is made in a Task, since `create_connection` is a
coroutine. On a head: route it (pure functions in `routing`), answer locally when there
is nothing to forward to (no route, redirect, no server), else take the backend
connection this client connection kept, or a pooled one (or connect one) and write the
rewritten head, then the body as it comes. The backend's `UpstreamProtocol` feeds the
response to a response parser whose callbacks are this object's `on_response…` methods;
their output is gathered in `_wbuf` and written once per read (`flush`), so a small
response goes out in one write. An exchange ends when the request has been read whole
and the response sent whole; then the connection waits for the next request
(keep-alive) or closes.

Backend connections between a client's requests. After a clean exchange (the response
framed and whole, keep-alive on both sides) the backend connection goes to the pool
(`proxy.http.pool`), except from a client connection's second exchange on, when it is
kept for that client's next request (`_kept`): most such clients send it at once (a
pooled connection would be put in the pool and taken out again, ~2.8k instructions a
request: bench.instructions keepalive, 59.3k against 56.6k). The next request uses it if
it goes to the same server (the balancer still chooses: nothing is pinned) and it is
still open and fresh (`timeout` of the pool); otherwise, and when the client has been
idle a whole sweep interval (`idle_check`, at most 1 s by default), or closes, it goes
to the pool, which closes it if it is full or the server has left the table. So a kept
connection is one the client holds, as it holds one while its request is under way:
the pool's `pool_per_server` bounds the idle connections nobody holds, and a server that
leaves the table sees its kept connections closed by the next request of their client
or within two sweep intervals. Not kept: after a first exchange (many clients make no
second: browsers' spare connections), nor on a backend whose servers have slots
(`--maxconn` per server: the next in line takes the connection warm). haproxy 2.0-2.1
kept a session's server connection with the session the same way; 2.2 on keep only
private ones there.

A request whose head is the very object of an earlier exchange on the connection, or on
an earlier connection from the same client (the parser gives the same head for the same
bytes: parser._READS), takes that exchange's route decision and rewritten head
(`_routed`, HttpProxy.routed) while the table and the balancers are unchanged.

Where the exchange is — request being read, waiting for the response, response under
way, tunnel, closing — is one `State` (`_state`), moved only through the table of
`proxy.http.exchange`, which also decides keep-alive after a response (`keep_alive`).
The methods below carry those decisions out.

Pipelined requests: while an exchange is under way with its request fully read, further
parser events wait in `_queue` (the client's reading is paused meanwhile, so the queue is
at most one read's worth) and are replayed when the exchange ends; so does a parse error
of a later request, answered with its 400 only after the responses before it.

Flow control is cross-wired with high/low watermarks (`proxy.flow`, shared with L4):
the backend's write buffer full → stop reading the client; the client's write buffer
full → stop reading the backend. Reading the client is paused for several independent
reasons (`flow.Pause`, a bit each in `_paused`), and resumed only when none is left.

Timers: one `TimerHandle` per connection, armed for the phase's timeout (`_T_*`); a new
connection's first one is made only if it is still needed at the frontend's next tick
(`proxy.http.idle.LateTimers`), which most `Connection: close` exchanges never see. The
inactivity kinds (client, server, tunnel) are not re-armed on every read: activity only
stamps the time, and a timer that fires early re-arms itself for what is left.
While the client does not read a response fast enough (its write buffer above the high
watermark, so the backend is not read), the wait is the client's, as in haproxy: the
server timer gives way to `timeout client` until the client reads again, and the server
is not blamed. A connection closed with bytes still unsent lingers no longer than
`timeout client` either. The mirror case: while the server does not take a request body
fast enough (the client is not read meanwhile), the wait is the server's, under `timeout
server`, and the client is not blamed. In each case the progress of the side waited for
is seen when the timer fires: a write buffer that shrank since the last look counts as
activity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from proxy import admission, flow
from proxy.balance import Balancer, cookie_value
from proxy.fdtransport import FdTransport
from proxy.http import accesslog
from proxy.http import headers as hdr
from proxy.http.errors import error_response, redirect_response
from proxy.http.exchange import (
    ON,
    REQUEST_WHOLE,
    RESPONSE_WHOLE,
    Event,
    State,
    may_resend,
    termination,
)
from proxy.http.exchange import keep_alive as keep_alive_after
from proxy.http.frontend import Frontend, accepted
from proxy.http.idle import LateTimers
from proxy.http.parser import (
    AFTER_CLOSE,
    Headers,
    ParseError,
    RequestHead,
    RequestParser,
    ResponseHead,
    known_request,
    request_parser,
)
from proxy.http.routing import slash_redirect, split_target
from proxy.http.upstream import UpstreamProtocol
from proxy.queue import Ticket
from proxy.retry import Next, after_connect_failure
from pylb.counters import HRSP_SLOT, Counters, open_rows
from pylb.failures import Failure
from pylb.model import Affinity, Backend, Server

log = logging.getLogger("pylb.http")

# Timer kinds. Only the inactivity kinds (> _T_REQUEST) are stretched by activity.
_T_NONE, _T_KEEPALIVE, _T_REQUEST, _T_CLIENT, _T_SERVER, _T_TUNNEL = range(6)
# Reasons to pause reading the client, as ints (an IntFlag's operators are Python calls).
_P_QUEUE = int(flow.Pause.QUEUE)
_P_UPSTREAM = int(flow.Pause.PEER)
_P_PENDING = int(flow.Pause.PENDING)
_P_UPGRADE = int(flow.Pause.UPGRADE)
_P_ANSWER = int(flow.Pause.ANSWER)
_HIGH_WATER = flow.HIGH_WATER
_access_log_enabled = accesslog.access_log.isEnabledFor  # asked per exchange
# The access logger's own answers by level (CPython's Logger._cache: filled by
# isEnabledFor, cleared in place by setLevel, logging.disable and the like). A False there
# is isEnabledFor's False (a disabled logger's is False too): one C call per exchange with
# the log off, instead of a Python call. Without the dict ({}), isEnabledFor is asked.
_access_log_known: dict[int, bool] = getattr(accesslog.access_log, "_cache", {})
_INFO = logging.INFO
_REPLAY_MAX = 64 * 1024  # body bytes kept to replay on a retry (else no retry)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_COOKIE = Affinity.COOKIE  # an Enum member's lookup costs ten times a global's (3.11)
# The exchange's states as globals, for the same reason; `_ON_X[state]` is the state after
# event X, straight from the table (an illegal step raises KeyError: an internal error,
# never silent).
_IDLE, _REQUEST, _WAITING, _RESPONSE, _EARLY, _DRAIN, _DONE, _TUNNEL, _CLOSED = State
_ON_HEAD = ON[Event.HEAD]
_ON_REQUEST_END = ON[Event.REQUEST_END]
_ON_RESPONSE_HEAD = ON[Event.RESPONSE_HEAD]
_ON_RESPONSE_END = ON[Event.RESPONSE_END]
_ON_ANSWER = ON[Event.ANSWER]
_ON_RETRACT = ON[Event.RETRACT]
_ON_SWITCH = ON[Event.SWITCH]
_REQ_WHOLE = REQUEST_WHOLE
_FRAME_NONE = hdr.FRAME_NONE
_FRAME_LENGTH = hdr.FRAME_LENGTH
_FRAME_CLOSE = hdr.FRAME_CLOSE
_FRAME_CHUNKED = hdr.FRAME_CHUNKED
_RESP_WHOLE = RESPONSE_WHOLE
# What an idle connection holds in place of its write buffer `_wbuf` once slimmed down
# (after its first exchange when its parser went too, or by the sweep: `idle_check`)
# until its next bytes (`_wake`). Empty and falsy like a list, so `flush` passes it by;
# a tuple, so that a write that came first by mistake fails loudly (an internal error,
# this connection only) instead of filling a buffer all idle connections share.
_SLIM = cast(list[bytes], ())
# The other three buffers (`_ubuf`, `_pending`, `_replay`) are made only when something
# is put in them: empty, they are this same shared tuple, and a non-empty one is always
# a list of its own (`if buf: buf.append(x) else: self.buf = [x]`). A GET on a pooled
# connection then makes no list for them at all.
_EMPTY = _SLIM


# A route decision kept for the head it was made for (`ClientProtocol.on_head`): the head,
# HttpProxy.generation and Balancers.changes when it was made, the backend and its
# balancer, the head rewritten for the backend, and what else that depends on: the
# client's address, the port it came to, its TLS client certificate's fields. Kept by the
# connection (`_routed`) and by the frontend (HttpProxy.routed, by head: emptied with
# each table, and when it holds this many: heads are few, parser._READS holds 128).
_Routed = tuple[RequestHead, int, int, Backend, Balancer, bytes, str, int,
                "tuple[bytes, bytes] | None"]
_ROUTED_MAX = 256


class ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_again",
        "_attempts",
        "_backend",
        "_balancer",
        "_be_c",
        "_body_timer",
        "_bytes_out_req",
        "_chunked_out",
        "_close_after",
        "_connecting",
        "_cookie",
        "_exclude",
        "_fe",
        "_feeding",
        "_held",
        "_keep",
        "_kept",
        "_late_at",
        "_loop",
        "_out_head",
        "_paused",
        "_pending",
        "_pending_size",
        "_proxy",
        "_queue",
        "_replay",
        "_replay_size",
        "_req",
        "_resp",
        "_resp_bytes",
        "_routed",
        "_server",
        "_srv_c",
        "_ssl_client",
        "_state",
        "_state_closed",
        "_status",
        "_t0",
        "_t_conn",
        "_t_head",
        "_t_resp",
        "_term",
        "_timer",
        "_tkind",
        "_tlen",
        "_tstamp",
        "_tunnel_eofs",
        "_tw",
        "_ubuf",
        "_unsent",
        "_up",
        "_up_paused",
        "_wbuf",
        "_wsize",
        "client_ip",
        "client_port",
        "closed",
        "local_port",
        "parser",
        "response_edit",
        "transport",
    )

    def __init__(self, proxy: Frontend, client_ip: str = "", client_port: int = 0) -> None:
        """`client_ip`, `client_port`: the client's address, when the listener's accept()
        gave it (HttpProxy._protocol); else `connection_made` asks the transport."""
        # What `connection_made` sets in any case (asyncio calls it first, before any
        # other method) is not set here as well, a store per field and connection
        # fewer: `transport`, `local_port`, `_t0` and the first phase's timer fields
        # (`_timer`, `_tkind`, `_tlen`, `_tstamp`).
        self._proxy = proxy
        self._loop = proxy.loop
        self._fe: Counters = proxy.fe_counters
        # made on the first bytes, dropped while idle between requests (proxy.http.idle)
        self.parser: RequestParser | None = None
        self.client_ip = client_ip
        self.client_port = client_port
        self.closed = False
        # set per request by a Gateway listener (proxy.http.gwfilters), else always None
        self.response_edit: Callable[[Headers], Headers] | None = None
        self._state = _IDLE  # the exchange's (proxy.http.exchange)
        self._state_closed = _IDLE  # the state the connection was closed in
        self._tunnel_eofs = 0
        self._ssl_client: tuple[bytes, bytes] | None = None
        self._paused = 0
        self._queue: deque[tuple[int, Any]] | None = None
        self._wbuf: list[bytes] = []
        self._wsize = 0  # the waited-for side's write buffer when last looked at
        self._ubuf: list[bytes] = _EMPTY
        self._close_after = False  # close after this exchange (an input to keep_alive)
        self._again = False  # an exchange has ended on this connection
        self._feeding = False  # inside parser.feed: writes to the backend wait for its end
        self._body_timer: asyncio.TimerHandle | None = None  # --timeout-request-body
        # A per-server slot held (proxy.queue), or a place in the queue for one: set only
        # on a backend with a limit, and cleared by `_free_slot` when the exchange ends
        # (not by `_reset`, which runs per request). One field: one test per request.
        self._held: Server | Ticket | None = None
        self._tw = 0.0  # seconds the held slot was waited for (the access log's Tw)
        self._routed: _Routed | None = None  # (see `on_head`; kept across exchanges)
        # The backend connection of this connection's last exchange, kept for its next
        # request while the client is busy (`_end_exchange`; module docstring), or None
        self._kept: UpstreamProtocol | None = None
        # The server's and backend's counter rows while an exchange holds them: set by
        # `_attach`, back to None by `_release_server`, which every exchange's end calls
        # (not `_reset`'s, a store each per request fewer).
        self._srv_c: Counters | None = None
        self._be_c: Counters | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget the exchange that ended. Not here (a store each per request fewer):
        fields that each exchange sets before anything reads them. `_out_head` (the head
        for the server: `on_head` sets it before `_dispatch`, the only way to `_attach`,
        its reader); `_chunked_out` (the response's framing: `on_response` sets it, and
        only after it do its body and end come); `_keep` (keep-alive after this
        response, read by `_finish` only in `_DONE`, which every way into sets it first:
        `on_response` before `_RESPONSE`, `_local_done` and `_respond_error` with their
        `ANSWER`, `on_response_end` on the way to `_DRAIN`)."""
        self._req: RequestHead | None = None
        self._resp: ResponseHead | None = None
        self._backend: Backend | None = None
        self._balancer: Balancer | None = None
        self._server: Server | None = None
        self._up: UpstreamProtocol | None = None
        self._up_paused = False
        self._connecting = False
        self._cookie: bytes | None = None
        # servers that failed this request; made on the first failure (an empty set is
        # 216 bytes of the ~4 KiB an idle keep-alive connection costs: bench/memory.py)
        self._exclude: set[tuple[str, int]] | None = None
        self._attempts = 0
        self._pending: list[bytes] = _EMPTY
        self._pending_size = 0
        self._replay: list[bytes] | None = _EMPTY
        self._replay_size = 0
        # where the response's head is in `_wbuf` while none of it has been written, else -1
        self._unsent = -1
        self._status = 0
        self._term = "--"  # haproxy's termination state, for the access log
        self._resp_bytes = 0
        self._bytes_out_req = 0
        self._t0 = 0.0
        self._t_head = 0.0
        self._t_conn = 0.0
        self._t_resp = 0.0

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it (no
        # typing.cast: a call per connection).
        self.transport: asyncio.Transport | None = transport  # type: ignore[assignment]
        proxy = self._proxy
        proxy.conns[self] = None  # proxy.connection_opened(self), inline (a call per connection)
        open_rows(self._fe, None, time.time())  # self._fe.open(): one call (~0.5k) fewer
        local = proxy.port
        if self.client_ip and local and not proxy.tls:
            # all that frontend.accepted() would learn: the listener's accept() gave the
            # client's address, and the frontend knows its port (a call per connection);
            # an FdTransport's watermarks are proxy.flow's from the start (a call fewer)
            if type(transport) is not FdTransport:
                transport.set_write_buffer_limits(flow.HIGH_WATER, flow.LOW_WATER)  # type: ignore[attr-defined]
            self.local_port = local
        else:
            self.client_ip, self.client_port, self.local_port, self._ssl_client = \
                accepted(transport, proxy, self.client_ip, self.client_port)  # type: ignore[arg-type]
        # The first phase, `timeout http-request`: what `_arm` does for a connection
        # that has no timer yet, inline (a call per connection). Its TimerHandle comes at
        # the frontend's next tick if the phase lasts till then (proxy.http.idle).
        now = self._t0 = self._tstamp = self._loop.time()
        seconds = self._tlen = proxy.settings.timeouts.http_request
        self._tkind = _T_REQUEST
        late = proxy.late
        # the phase's TimerHandle, or until the frontend's next tick its LateTimers (and
        # our place on its list: `_late_at`, while `_timer` is it), or None
        at = self._late_at = late.defer(self, now, now + seconds)
        self._timer: asyncio.TimerHandle | LateTimers | None = late if at >= 0 \
            else self._loop.call_at(now + seconds, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._fe.cur_conns -= 1  # Counters.close(), inline (a call per connection)
        timer = self._timer
        if timer is not None:
            self._timer = None
            late = self._proxy.late
            if timer is late:  # off its list (proxy.http.idle: freed now, not at its tick)
                late.conns[self._late_at] = None
            else:
                timer.cancel()
        if self._req is not None:
            state = self._state
            if state not in _RESP_WHOLE and state is not _CLOSED:  # (else we cut it)
                self._proxy.stats.fail(Failure.CLIENT_ABORT)
                self._ended(Failure.CLIENT_ABORT)
            self._drop_upstream()
            self._end_exchange(False)
        if self._kept is not None:
            self._let_go(self._kept)
        # The parser and this connection refer to each other (and httptools' parser to
        # its owner's bound methods): without the drop, every connection closed with its
        # parser (each `Connection: close` one) would be cyclic garbage — the protocol,
        # its transport and parsers, ~11 objects — left for the cyclic GC, whose gen-0
        # runs walked them at ~11k instructions per connection. Not from inside
        # parser.feed (a transport that reports its loss at once): the parser goes on.
        parser = self.parser
        if parser is not None and not self._feeding:
            self.parser = None
            if parser is not AFTER_CLOSE:  # (every `Connection: close` one's: holds nothing)
                parser.drop()
        state = self._state  # self._closing(), inline
        if state is not _CLOSED:
            self._state_closed = state
            self._state = _CLOSED
        # proxy.connection_gone(self), inline (a call per connection)
        proxy = self._proxy
        conns = proxy.conns
        conns.pop(self, None)
        limit = proxy.limit
        if limit is not None:  # limit.release(), inline
            n = limit.current = limit.current - 1
            if n == limit.limit - 1:
                limit.freed()
        if proxy.gone is not None and not conns:
            proxy.gone.set()

    def _closing(self) -> None:
        state = self._state
        if state is not _CLOSED:
            self._state_closed = state
            self._state = _CLOSED

    @property
    def tunnel(self) -> bool:
        return self._state is _TUNNEL

    @property
    def request_whole(self) -> bool:
        """The current exchange's request has been read to its end (or the connection
        was closed after it had been)."""
        state = self._state
        return (self._state_closed if state is _CLOSED else state) in _REQ_WHOLE

    def close(self) -> None:
        state = self._state  # self._closing(), inline (a call per connection)
        if state is not _CLOSED:
            self._state_closed = state
            self._state = _CLOSED
        t = self.transport
        if t is not None and not t.is_closing():
            self.flush()
            t.close()
            if t.get_write_buffer_size():  # the client has yet to read them: not forever
                self._client_wait(t)

    def abort(self) -> None:
        self._closing()
        t = self.transport
        if t is not None:
            t.abort()

    @property
    def idle(self) -> bool:
        return self._req is None and self._queue is None

    def pause_reading(self, why: int) -> None:
        self._paused = flow.pause(self.transport, self._paused, why)
        if why == _P_UPSTREAM and self._tkind == _T_CLIENT \
                and (self._state is _REQUEST or self._state is _EARLY):
            # The body waits for the server to take it, not for the client.
            up = self._up
            self._wsize = up.transport.get_write_buffer_size() \
                if up is not None and up.transport is not None else 0
            self._arm(_T_SERVER, self._proxy.settings.timeouts.server)

    def resume_reading(self, why: int) -> None:
        if self._paused & why:
            self._paused = flow.resume(self.transport, self._paused, why)
            if why & _P_UPSTREAM and self._tkind == _T_SERVER \
                    and self._state is _REQUEST:
                self._arm(_T_CLIENT, self._proxy.settings.timeouts.client)

    def pause_writing(self) -> None:
        up = self._up
        if up is not None and up.transport is not None and not self._up_paused:
            self._up_paused = True
            up.transport.pause_reading()
        if self._tkind == _T_SERVER and self.transport is not None:
            self._client_wait(self.transport)  # the server waits for us, we for the client

    def resume_writing(self) -> None:
        up = self._up
        if self._up_paused:
            self._up_paused = False
            if up is not None and up.transport is not None and not up.closed:
                up.transport.resume_reading()
        if self._tkind == _T_CLIENT and self._state in _REQ_WHOLE \
                and self._state is not _TUNNEL:
            self._arm(_T_SERVER, self._proxy.settings.timeouts.server)

    # -- timers ---------------------------------------------------------------------------

    def _arm(self, kind: int, seconds: float, now: float | None = None) -> None:
        """Time the phase `kind` out after `seconds` (`now`: the loop's time, if the
        caller has just read it)."""
        if now is None:
            now = self._loop.time()
        self._tkind = kind
        self._tlen = seconds
        self._tstamp = now
        timer = self._timer
        if timer is not None:
            if timer.when() <= now + seconds:
                return  # fires first; then re-arms itself for what is left
            timer.cancel()
        else:
            late = self._proxy.late
            at = late.defer(self, now, now + seconds)
            if at >= 0:
                self._timer = late  # made at its tick, if still needed (proxy.http.idle)
                self._late_at = at
                return
        self._timer = self._loop.call_at(now + seconds, self._on_timer)

    def timer_due(self, late: LateTimers) -> None:
        """The frontend's tick (proxy.http.idle.LateTimers): the phase under way gets its
        TimerHandle, due when its timeout is."""
        if self._timer is late:
            self._timer = None
            if self._tkind > _T_KEEPALIVE and not self.closed:
                self._timer = self._loop.call_at(self._tstamp + self._tlen, self._on_timer)
        if self._paused & _P_ANSWER:  # answered for long enough unwatched: watch again
            self.resume_reading(_P_ANSWER)

    def _first_idle(self) -> None:
        """The first exchange has ended; between requests the frontend's sweep watches the
        connection (`_finish` stamps the time). After the first exchange the timer goes at
        once: many connections stay idle after one request (browsers keep spares), and
        10,000 of them would hold 10,000 timers until the sweep. After later ones it is
        kept (a busy connection would make one per request, ~8k instructions), to be
        dropped by the sweep or when it fires (not re-armed). If the first request's
        parser went already (data_received), the empty write buffer goes too: the
        connection holds nothing of the exchange's now, and its next bytes make both
        again (`_wake`), once per connection."""
        self._again = True
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        if self.parser is None and self._queue is None and not self._wbuf:
            self._wbuf = _SLIM

    def idle_check(self, now: float, interval: float) -> bool:
        """The sweep's visit (proxy.http.idle): True while idle between requests."""
        if self._tkind != _T_KEEPALIVE or self.closed:
            return False
        idle = now - self._tstamp
        if idle >= self._tlen:
            self._tkind = _T_NONE
            self.close()
            return False
        if idle >= interval:
            # Idle a whole interval: slim down. The parser (~0.9 KiB, llhttp) is made
            # again by the next request's first bytes (`_wake`); the exchange's last
            # timer (~0.6 KiB) would only fire to find nothing to do; the empty write
            # buffer (56 bytes) gives way to `_SLIM` until then.
            parser = self.parser
            if parser is not None:
                parser.drop()
                self.parser = None
            timer = self._timer
            if timer is not None:
                timer.cancel()
                self._timer = None
            self._wbuf = _SLIM
            if self._kept is not None:  # a client idle this long lets its server's go
                self._let_go(self._kept)
        return True

    def _wake(self) -> None:
        """The first bytes after the connection was slimmed down (`_first_idle`,
        `idle_check`)."""
        self._wbuf = []

    def _disarm(self) -> None:
        self._tkind = _T_NONE

    def _client_wait(self, t: asyncio.Transport) -> None:
        """From now on we wait for the client to read what is written: `timeout client`."""
        self._wsize = t.get_write_buffer_size()
        self._arm(_T_CLIENT, self._proxy.settings.timeouts.client)

    def _extend(self, now: float) -> None:
        """The phase's full timeout again, from `now`."""
        self._tstamp = now
        self._timer = self._loop.call_at(now + self._tlen, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._tkind
        if kind <= _T_KEEPALIVE or self.closed:  # _T_NONE or _T_KEEPALIVE
            return  # (idle between requests: the sweep's, proxy.http.idle)
        now = self._loop.time()
        deadline = self._tstamp + self._tlen
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        # The side waited for: the client reading a response, or the server taking a
        # request body (the client is not read meanwhile).
        if kind == _T_CLIENT:
            waited = self.transport
        elif kind == _T_SERVER and self._paused & _P_UPSTREAM and self._up is not None:
            waited = self._up.transport
        else:
            waited = None
        if waited is not None:
            size = waited.get_write_buffer_size()
            if 0 < size < self._wsize:  # it took some since the last look
                self._wsize = size
                self._extend(now)
                return
        if kind == _T_SERVER and (self._connecting or type(self._held) is Ticket):
            # Still connecting, or queued for a server slot: the connect timeout (each
            # attempt) or the queue timeout bounds that, and the server's time starts
            # when it has the request (`_attach` re-arms).
            self._extend(now)
            return
        self._tkind = _T_NONE
        if kind == _T_KEEPALIVE:
            self.close()
        elif kind == _T_REQUEST:
            self._proxy.stats.fail(Failure.REQUEST_TIMEOUT)
            self._ended(Failure.REQUEST_TIMEOUT)
            self._fe.req_errors += 1
            self._local_error(Failure.REQUEST_TIMEOUT)
        elif kind == _T_CLIENT:
            self._proxy.stats.fail(Failure.CLIENT_TIMEOUT)
            self._ended(Failure.CLIENT_TIMEOUT)
            if self._resp is None and self._req is not None:
                self._fe.req_errors += 1
                self._close_after = True
                self._drop_upstream()
                self._respond_error(Failure.CLIENT_TIMEOUT)
            else:
                self._abort_all()
        elif kind == _T_SERVER:
            self._backend_timeout()
        elif kind == _T_TUNNEL:
            self._abort_all()

    # -- reading the client ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._fe.bytes_in += len(data)
        if self._state is _TUNNEL:
            self._tstamp = self._loop.time()
            up = self._up
            if up is not None and up.transport is not None:
                up.transport.write(data)
            return
        kind = self._tkind
        if kind > _T_REQUEST:
            self._tstamp = self._loop.time()
        elif kind == _T_KEEPALIVE:
            # The request's phase begins: `_arm(_T_REQUEST, …)`, but the timer is seen to
            # (the `_arm` below) only if the read does not bring the whole head; else
            # the head's own phase (`on_head`) arms it: one `_arm` a request fewer. The
            # time is read then too: a head in this read is the request's start as well.
            self._tkind = _T_REQUEST
        parser = self.parser
        head = None
        if parser is None:
            if self._wbuf is _SLIM:
                self._wake()
            proxy = self._proxy
            # A read that a fresh parser has taken whole before needs none made
            # (parser.known_request): ~5k instructions, most new connections' first read.
            head = known_request(proxy.parser_kind, data, proxy.settings.limits)
            if head is None:
                parser = self.parser = request_parser(proxy.parser_kind, self,
                                                      proxy.settings.limits)
            elif not head.keep_alive:
                self.parser = AFTER_CLOSE  # what the fresh parser would be left as
        self._feeding = True
        try:
            if head is not None:  # what the fresh parser would call back
                self.on_head(head)
                self.on_end()
            elif parser is not None:
                parser.feed(data)
        except ParseError as e:
            self._feeding = False
            if self._ubuf:
                self._uflush()  # the end of the request before the bad one
            self._bad_request(e.failure)
            return
        except Exception:
            self._feeding = False
            # A bug of ours, not the client's: this connection ends, the worker goes on.
            log.exception("%s: internal error on a connection from %s", self._proxy.frontend,
                          self.client_ip)
            self._proxy.stats.fail(Failure.INTERNAL)
            self._ended(Failure.INTERNAL)
            self._drop_upstream()
            self.abort()
            return
        self._feeding = False
        if self._tkind == _T_REQUEST and kind == _T_KEEPALIVE:  # no whole head in this read
            now = self._t0 = self._loop.time()
            self._arm(_T_REQUEST, self._proxy.settings.timeouts.http_request, now)
        if parser is not None and not self._again and self._queue is None \
                and self._state in _REQ_WHOLE and parser.at_rest():
            # The first request is whole and the read ended with it. Many connections
            # make no second request (browsers keep spares): the parser (~1 KiB) goes
            # now rather than at the idle sweep; a second request makes a new one, once
            # per connection (later requests keep theirs).
            parser.drop()
            self.parser = None
        if not self._again and not self._paused and self._state in _REQ_WHOLE:
            t = self.transport
            if type(t) is FdTransport and not t.started and self._timer is self._proxy.late:
                # The first read brought the whole request: the client is not read again
                # until it is answered, or until the frontend's tick (LateTimers: this
                # connection is on its list), so a `Connection: close` exchange never
                # registers the client with epoll (proxy.fdtransport). (`pause_reading`,
                # inline: no other reason holds, and this one needs no timer change.)
                self._paused = _P_ANSWER
                t.pause_reading()
        if self._ubuf:
            self._uflush()

    def eof_received(self) -> bool | None:
        if self._state is _TUNNEL:
            up = self._up
            if up is not None and up.transport is not None and up.transport.can_write_eof() \
                    and not up.transport.is_closing():
                up.transport.write_eof()
                return self._tunnel_eof(1)
            return None
        if self._req is None:
            return None
        self._close_after = True
        if self._state in _REQ_WHOLE:
            return True  # half-closed after a whole request: still send the response
        return None  # a truncated request: close (the response, if any, is lost)

    def _bad_request(self, failure: Failure) -> None:
        self._proxy.stats.fail(failure)
        if self._req is None or self._state not in _REQ_WHOLE:
            self._ended(failure)  # (else it is the next request's, answered later)
        self._fe.req_errors += 1
        state = self._state
        if state is _CLOSED:
            if self._resp is not None:
                self.abort()
            return
        if self._req is not None and state in _REQ_WHOLE:
            # A bad next request while the previous one is answered: that answer goes
            # out first, then the 400 (the parser is dead; reading stops meanwhile).
            self._parse_failed(failure)
            return
        if self._resp is not None:
            self.abort()  # the body of the request being answered is malformed
            return
        self._drop_upstream()
        self._local_error(failure)

    def _parse_failed(self, failure: Failure) -> None:
        if self._state is _CLOSED:
            return
        if self._queue is not None or self._req is not None:
            self._enqueue(3, failure)
            return
        self._local_error(failure)

    # The parser's callbacks (`on_head` starts the exchange, below). Events of a request
    # that must wait are queued.

    def on_body(self, data: bytes) -> None:
        state = self._state
        if state is _CLOSED:
            return
        if self._queue is not None or state in _REQ_WHOLE:
            self._enqueue(1, data)
            return
        if state is _DRAIN:
            return
        req = self._req
        parts = (b"%x\r\n" % len(data), data, b"\r\n") if req is not None and req.chunked \
            else (data,)
        if self._up is not None:
            buf = self._ubuf
            if buf:
                buf.extend(parts)
            else:
                self._ubuf = list(parts)
        else:
            buf = self._pending
            if buf:
                buf.extend(parts)
            else:
                self._pending = list(parts)
            self._pending_size += len(data)
            if self._pending_size > _HIGH_WATER:
                self.pause_reading(_P_PENDING)
        replay = self._replay
        if replay is not None:
            self._replay_size += len(data)
            if self._replay_size > _REPLAY_MAX:
                self._replay = None
            elif replay:
                replay.extend(parts)
            else:
                self._replay = list(parts)

    def on_end(self) -> None:
        state = self._state
        if state is _CLOSED:
            return
        if self._queue is not None or (state is not _REQUEST  # (the request read: most)
                                       and (state in _REQ_WHOLE or state is _IDLE)):
            self._enqueue(2, None)
            return
        self._state = _ON_REQUEST_END[state]
        req = self._req
        assert req is not None
        if req.chunked and state is not _DRAIN:
            if self._up is not None:
                self._ubuf = [*self._ubuf, _LAST_CHUNK]
            else:
                self._pending = [*self._pending, _LAST_CHUNK]
            if self._replay is not None:
                self._replay = [*self._replay, _LAST_CHUNK]
        if req.upgrade:
            self.pause_reading(_P_UPGRADE)
        if state is _DRAIN:  # now _DONE
            self._finish()
        elif self._tkind != _T_SERVER:
            self._arm(_T_SERVER, self._proxy.settings.timeouts.server)

    def _enqueue(self, kind: int, item: Any) -> None:
        q = self._queue
        if q is None:
            q = self._queue = deque()
            self.pause_reading(_P_QUEUE)
        q.append((kind, item))

    def _replay_queue(self) -> None:
        q = self._queue
        self._queue = None
        while q:
            kind, item = q.popleft()
            if kind == 0:
                self.on_head(item)
            elif kind == 1:
                self.on_body(item)
            elif kind == 2:
                self.on_end()
            else:
                self._parse_failed(item)
            if self._queue is not None:
                self._queue.extend(q)
                break
        else:
            self.resume_reading(_P_QUEUE)
        if self._ubuf:
            self._uflush()

    # -- an exchange ---------------------------------------------------------------------

    def on_head(self, head: RequestHead) -> None:
        """The parser's first callback of a request: its head starts an exchange, unless
        one is under way (it waits in the queue then) or the connection is closing."""
        if self._state is _CLOSED:
            return
        if self._queue is not None or self._req is not None:
            self._enqueue(0, head)
            return
        proxy = self._proxy
        self._req = head
        self._state = _ON_HEAD[self._state]
        now = self._t_head = self._loop.time()
        if not self._t0:  # (0.0 since the last exchange: the head came whole in one read,
            self._t0 = now  # or waited in the queue: it starts now)
        self._fe.req_total += 1
        timeouts = proxy.settings.timeouts
        if head.chunked or head.content_length:  # head.has_body
            kind = _T_CLIENT
            seconds = timeouts.client
            body_timeout = timeouts.http_body
            if body_timeout is not None:
                self._body_timer = self._loop.call_at(now + body_timeout, self._body_late)
        else:
            kind = _T_SERVER
            seconds = timeouts.server
        # self._arm(kind, seconds, now), inline for its common case (a call per request):
        # a keep-alive connection's timer is due no later than the new deadline, so it
        # stays (it re-arms itself for what is left when it fires); else `_arm` sees to it
        self._tkind = kind
        self._tlen = seconds
        self._tstamp = now
        timer = self._timer
        if timer is None or timer.when() > now + seconds:
            self._arm(kind, seconds, now)
        gateway = proxy.gateway
        routed = self._routed
        if routed is None or routed[0] is not head:
            # Another connection's, from the same client address, to the same port,
            # without a TLS client certificate or with the same (a client that makes a
            # connection per request)
            routed = proxy.routed.get(head) if head.remembered else None
            if routed is not None:
                if routed[6] != self.client_ip or routed[7] != self.local_port \
                        or routed[8] != self._ssl_client:
                    routed = None
                else:
                    self._routed = routed  # this connection's now
        backend: Backend | None
        balancer: Balancer | None
        if routed is not None and gateway is None and routed[1] == proxy.generation \
                and routed[2] == proxy.balancers.changes:
            # The very head of an earlier exchange (parser._READS gives the same object
            # for the same bytes), under the same table and balancers, on this connection
            # or from the same client: routing, the redirects' checks and the head's
            # rewriting would decide as they did then (pure functions of those and of the
            # client's address, the port and the TLS client). The rate limit and all
            # that follows run for every request.
            backend = routed[3]
            balancer = routed[4]
            out: bytes | None = routed[5]
        else:
            authority, path, query = split_target(head.target)
            host = authority or head.host
            if gateway is not None:  # a Gateway API listener (proxy.http.gwplane)
                found = gateway.route(self, head, host, path, query)
                if found is None:
                    return  # answered there: 404, 500 or a redirect
                # the head to forward: with the route's request filters applied
                route, target, head = found
                self._req = head
            else:
                found = proxy.router.route(host, path, query)
                if found is None:
                    self._local(proxy.settings.default_return_code, proxy.error_page,
                                Failure.NO_ROUTE)
                    return
                route, target = found
            if route.ssl_redirect and not proxy.tls:
                self._redirect(b"https://%s%s" % (host, path + query))
                return
            if route.redirect is not None:  # the router made the location the target
                self._redirect(target, route.redirect_code)
                return
            if route.slash_redirect:
                location = slash_redirect(route, path, query)
                if location is not None:
                    self._redirect(location)
                    return
            backend = proxy.table.get_backend(route.backend)
            balancer = proxy.balancers.get(route.backend)
            if backend is None or balancer is None:
                self._local(503, None, Failure.NO_SERVER)
                return
            out = None
        self._backend = backend
        self._balancer = balancer
        if balancer.limiter is not None:
            wait = admission.rate_limited(balancer.limiter, self.client_ip, self._fe,
                                          proxy.stats, backend.name)
            if wait:
                self._local(429, None, Failure.RATE_LIMITED, b"retry-after: %d\r\n" % wait)
                return
        if out is None:
            cookie_name = None
            if backend.affinity is _COOKIE:
                cookie_name = backend.cookie_name.encode()
                self._cookie = hdr.find_cookie(head.headers, cookie_name)
            out = hdr.request_head(
                head, target, client_ip=self.client_ip,
                proto=proxy.proto, port=self.local_port, chunked=head.chunked,
                affinity_cookie=cookie_name, ssl_client=self._ssl_client)
            if head.remembered and cookie_name is None and gateway is None:
                # A head that comes again (`_routed`, HttpProxy.routed); not with cookie
                # affinity, whose rewritten head depends on the request's cookie.
                routed = self._routed = (
                    head, proxy.generation, proxy.balancers.changes, backend, balancer,
                    out, self.client_ip, self.local_port, self._ssl_client)
                memo = proxy.routed
                if len(memo) >= _ROUTED_MAX:
                    memo.clear()
                memo[head] = routed
        self._out_head = out
        if not head.idempotent:
            self._replay = None
        self._dispatch(backend, balancer, None)

    def _dispatch(self, backend: Backend, balancer: Balancer, last: Failure | None) -> None:
        """Choose a server of `backend` (`self._backend`, with `balancer`) and send the
        request to it (again, after the failure `last`)."""
        proxy = self._proxy
        cookie = self._cookie.decode("latin-1") if self._cookie else None
        if self._held is not None:
            self._free_slot()  # a retry: the failed attempt's slot goes back first
        server = balancer.pick(self.client_ip, self._exclude or (), cookie)
        if balancer.gate is not None:
            got = admission.admit(self, balancer, server, self.client_ip,
                                  self._exclude or (), proxy.stats, backend.name)
            if type(got) is Ticket:
                self._held = got  # queue_granted or queue_expired comes later
                return
            if type(got) is Failure:
                self._fail(got)
                return
            server = cast("Server | None", got)
            if server is not None:
                self._held = server
                self._tw = 0.0
        if server is None:
            if last is None:
                proxy.stats.fail(Failure.NO_SERVER)
            elif last.column == "econ":
                proxy.stats.backend(backend.name).conn_errors += 1
            else:  # a retry after a reset found no server: that reset is the answer
                proxy.stats.fail(last)
                proxy.stats.backend(backend.name).resp_errors += 1
            self._fail(last or Failure.NO_SERVER)
            return
        self._server = server
        # A retry goes on a new connection: another idle one may have been closed by the
        # server just as this one was, and a new one cannot lose the keep-alive race.
        # (only a first attempt takes a kept or pooled connection: `on_head` is still
        # under way, and has just read the time and armed the server's timer: neither
        # again here)
        up = self._kept
        if up is not None:  # (a first attempt's: `_let_go`, the pool's `take`, inline)
            self._kept = None
            up.pool = None
            t = up.transport
            if up.key != server.key or up.closed or up.eof or t is None or t.is_closing() \
                    or up.idle_since <= self._t_head - proxy.pool.idle_timeout:
                self._let_go(up)  # not for this server, or no longer usable
                up = None
        if up is None and not self._attempts:
            up = proxy.pool.take(server.key, self._t_head)
        if up is not None:
            self._attach(up, server, balancer, False)
            return
        self._connecting = True
        self._t_conn = 0.0
        proxy.connect(self, server)

    # -- the queue (proxy.queue calls these) ---------------------------------------------

    def queue_granted(self, server: Server) -> None:
        """`_dispatch`'s end, for a request that waited (kept inline there: a call per
        request costs the no-limit path ~200 instructions, bench/instructions.py)."""
        ticket = self._held
        self._tw = self._loop.time() - ticket.since if type(ticket) is Ticket else 0.0
        self._held = self._server = server
        if self._kept is not None:  # (kept from an exchange on a backend without slots)
            self._let_go(self._kept)
        up = self._proxy.pool.take(server.key, self._loop.time()) if not self._attempts \
            else None
        if up is not None:
            balancer = self._balancer
            assert balancer is not None
            self._attach(up, server, balancer)
            return
        self._connecting = True
        self._t_conn = 0.0
        self._proxy.connect(self, server)

    def queue_expired(self, failure: Failure) -> None:
        # `_held` keeps the (spent) ticket till the exchange ends: the log's Tw reads it,
        # and `_free_slot`'s cancel of it is a no-op.
        if self._backend is not None:
            admission.refused(self._proxy.stats, self._backend.name, failure)
        else:
            self._proxy.stats.fail(failure)
        self._fail(failure)

    def _free_slot(self) -> None:
        held = self._held
        self._held = None
        admission.free(self._balancer, held)

    def _body_late(self) -> None:
        """--timeout-request-body: the body is not whole in time (a slow POST). 408, and
        its server slot and connection are freed."""
        self._body_timer = None
        if self.closed or self._req is None or self._state in _REQ_WHOLE:
            return
        self._proxy.stats.fail(Failure.BODY_TIMEOUT)
        self._fe.req_errors += 1
        if self._resp is None:
            self._drop_upstream()
            self._close_after = True
            self._respond_error(Failure.BODY_TIMEOUT)
        else:
            self._abort_all()

    def connect_done(self, server: Server, up: UpstreamProtocol | None,
                     failure: Failure | None, local: bool = False) -> None:
        """The Task that connected to `server` is done (`up`, or why not; `local`: it
        failed for want of this process's own descriptors, memory or ports)."""
        if up is not None and (self.closed or self._server is not server
                               or not self._connecting):
            # nobody waits for it any more; keep it warm
            self._proxy.pool.put(up, self._loop.time())
            return
        if self.closed or not self._connecting:
            return
        self._connecting = False
        balancer = self._balancer
        assert balancer is not None and self._backend is not None
        if up is None:
            assert failure is not None
            if local:
                # Not the server's fault, and no other server would fare better: no
                # passive mark-down, no retry; this request is answered at once.
                self._proxy.stats.fail(failure)
                self._proxy.stats.backend(self._backend.name).conn_errors += 1
                self._server = None
                self._fail(failure)
                return
            self._upstream_attempt_failed(server, failure, passive=True)
            return
        balancer.succeeded(server)
        self._attach(up, server, balancer)

    def _upstream_attempt_failed(self, server: Server, failure: Failure,
                                 passive: bool) -> None:
        proxy = self._proxy
        backend = self._backend
        balancer = self._balancer
        assert backend is not None and balancer is not None
        proxy.stats.fail(failure)
        srv = proxy.stats.server(backend.name, server.label)
        if passive:
            balancer.failed(server)
            srv.conn_errors += 1
        self._attempts += 1
        step = after_connect_failure(
            attempts=self._attempts, retries=proxy.settings.limits.retries,
            timed_out=failure is Failure.CONNECT_TIMEOUT,
            connect_timeout=proxy.settings.timeouts.connect,
            server_usable=balancer.usable(server),
            others_usable=balancer.others_usable(server), sticky=balancer.sticky)
        if step.next is Next.REDISPATCH:
            srv.retries += 1
            proxy.stats.backend(backend.name).retries += 1
            exclude = self._exclude
            if exclude is None:
                exclude = self._exclude = set()
            if len(exclude) + 1 >= len(balancer.candidates):
                exclude.clear()  # all others tried: any but this one again
            exclude.add(server.key)
            proxy.stats.backend(backend.name).redispatches += 1
            srv.redispatches += 1
            self._server = None
            self._dispatch(backend, balancer, failure)
            return
        if step.next is Next.SAME:  # haproxy's turn-around: the server may be restarting
            srv.retries += 1
            proxy.stats.backend(backend.name).retries += 1
            self._connecting = True  # the same server, as far as connect_done cares
            self._loop.call_later(step.delay, self._redial, server)
            return
        proxy.stats.backend(backend.name).conn_errors += 1
        self._server = None
        self._fail(failure)

    def _redial(self, server: Server) -> None:
        if not self.closed and self._connecting and self._server is server:
            self._t_conn = 0.0
            self._proxy.connect(self, server)

    def _attach(self, up: UpstreamProtocol, server: Server, balancer: Balancer,
                rearm: bool = True) -> None:
        """Send the request on `up`, a connection to `server` (`self._server`, chosen by
        `balancer`); `rearm` False: a pooled connection `_dispatch` took for the head
        `on_head` is routing, whose time it read and whose timer it armed."""
        proxy = self._proxy
        backend = self._backend
        req = self._req
        assert backend is not None and req is not None
        self._up = up
        if rearm:
            now = self._t_conn = self._loop.time()
            if self._tkind == _T_SERVER:
                # The server's time starts now: connecting (and redispatching after
                # connect timeouts) is bounded by the connect timeout, as in haproxy.
                self._arm(_T_SERVER, proxy.settings.timeouts.server, now)
        else:  # a pooled connection for the head read this turn (`_dispatch`)
            self._t_conn = self._t_head
        active = balancer.active  # balancer.acquire(server), inline
        key = server.key
        active[key] = active.get(key, 0) + 1
        # The server's and the backend's counter rows: those of this connection's last
        # exchange if it was for the same server of the same backend and no row has been
        # dropped since (`up.rows`); else stats.server() and stats.backend(), inline but
        # for a row's first use (a call each otherwise)
        name = backend.name
        stats = proxy.stats
        rows = up.rows
        if rows is not None and rows[0] is server and rows[1] is name \
                and rows[2] == stats.drops:
            srv = rows[3]
            be = rows[4]
        else:
            label = server._label  # server.label, inline (a property call per request)
            if label is None:  # (not made yet: the property makes it)
                label = server.label
            srv = stats.servers.get((name, label)) or stats.server(name, label)
            be = stats.backends.get(name) or stats.backend(name)
            up.rows = (server, name, stats.drops, srv, be)
        self._srv_c = srv
        self._be_c = be
        open_rows(srv, be, time.time())  # srv.open(now), be.open(now): one call
        srv.lbtot += 1
        be.lbtot += 1
        up.begin(self, req.method, req.upgrade)
        if self._pending or self._ubuf:
            self._ubuf = [self._out_head, *self._pending, *self._ubuf]
            self._pending = _EMPTY
            if not self._feeding:  # else data_received writes head and body in one go
                self._uflush()
            self._pending_size = 0
            if self._paused & _P_PENDING:  # (only a body kept meanwhile pauses the client)
                self.resume_reading(_P_PENDING)
        elif req.chunked or req.content_length:  # req.has_body, inline
            self._ubuf = [self._out_head]
            if not self._feeding:
                self._uflush()
        else:
            # No body to go with the head: it goes now (`_uflush` of [head], inline,
            # without the list: a GET's path)
            t = up.transport
            if t is not None and not up.closed:
                out = self._out_head
                self._bytes_out_req += len(out)
                t.write(out)

    def _uflush(self) -> None:
        up = self._up
        data = b"".join(self._ubuf) if len(self._ubuf) != 1 else self._ubuf[0]
        self._ubuf = _EMPTY
        if up is None or up.transport is None or up.closed:
            return
        self._bytes_out_req += len(data)
        up.transport.write(data)

    def _drop_upstream(self) -> None:
        up = self._up
        if up is not None:
            self._resp_bytes += up.got_bytes
            up.detach()
            up.abort()
            self._up = None
        self._connecting = False

    # -- the response (callbacks of the response parser, via UpstreamProtocol) ----------

    def upstream_read(self) -> None:
        """A read of the server's connection ended with the exchange still under way: the
        server was active (the connection counts what it sent: `got_bytes`, added to
        `_resp_bytes` when the exchange lets go of it), and what the read made goes out."""
        if self._tkind > _T_REQUEST:
            self._tstamp = self._loop.time()
        self.flush()

    def on_interim(self, head: ResponseHead) -> None:
        req = self._req
        if head.status == 100 and req is not None and req.expect_continue \
                and self._resp is None:
            self._wbuf.append(_CONTINUE)

    def on_response(self, head: ResponseHead) -> None:
        proxy = self._proxy
        req = self._req
        backend = self._backend
        assert req is not None and backend is not None
        self._resp = head
        state = self._state = _ON_RESPONSE_HEAD[self._state]
        status = self._status = head.status
        self._t_resp = self._loop.time()
        version = req.version
        # hdr.response_framing(head, version), inline (a call per response)
        if head.no_body or status == 101:
            framing = _FRAME_NONE
        elif head.content_length is not None:
            framing = _FRAME_LENGTH
        else:
            framing = _FRAME_CHUNKED if version == b"1.1" else _FRAME_CLOSE
        # exchange.keep_alive(client_keep_alive=, request_whole=, close_delimited=,
        # upgrade=, must_close=, stopping=), inline (a call with keywords per response)
        keep = self._keep = (req.keep_alive and state is _RESPONSE
                             and framing != _FRAME_CLOSE and not req.upgrade
                             and status != 101 and not self._close_after
                             and not proxy.closing)
        set_cookie = None
        if backend.affinity is _COOKIE:
            assert self._server is not None
            value = cookie_value(self._server).encode()
            if self._cookie != value:
                set_cookie = b"%s=%s; path=/" % (backend.cookie_name.encode(), value)
        self._chunked_out = framing == _FRAME_CHUNKED
        self._fe.hrsp[HRSP_SLOT[status]] += 1  # self._fe.response(status), inline
        self._unsent = len(self._wbuf)  # (`flush` sets -1)
        hsts = proxy.hsts
        if set_cookie is None and self.response_edit is None:
            # The head the parser hands out again for the same bytes (parser.
            # _RESPONSE_HEADS) is rewritten once, not per response: response_head's
            # output depends on nothing else here (framing: on the head and `version`).
            sent = head.sent
            if sent is not None and sent[1] is keep and sent[2] is hsts \
                    and sent[0] == version:  # (keep: a bool; hsts: the frontend's own)
                out = sent[3]
            else:
                out = hdr.response_head(head, framing, keep_alive=keep,
                                        client_version=version, hsts=hsts)
                head.sent = (version, keep, hsts, out)
            self._wbuf.append(out)
            return
        if self.response_edit is not None:  # a Gateway route's (proxy.http.gwfilters)
            # on a copy: the parser may hand this head out again (parser._RESPONSE_HEADS)
            head = self._resp = head.edited(self.response_edit(head.headers))
        self._wbuf.append(hdr.response_head(
            head, framing, keep_alive=keep, client_version=version,
            set_cookie=set_cookie, hsts=hsts))

    def on_response_body(self, data: bytes) -> None:
        if self._chunked_out:
            self._wbuf.extend((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._wbuf.append(data)

    def on_response_end(self) -> None:
        if self._chunked_out:
            self._wbuf.append(b"0\r\n\r\n")
        state = self._state = _ON_RESPONSE_END[self._state]
        if state is _DRAIN:
            # The server answered before the request was whole: stop forwarding it, and
            # since the rest of its body is still coming, close after this response.
            self._close_after = True
            self._keep = False
        self._finish()

    def flush(self) -> None:
        wbuf = self._wbuf
        if not wbuf:
            return
        data = b"".join(wbuf) if len(wbuf) != 1 else wbuf[0]
        wbuf.clear()
        self._unsent = -1
        t = self.transport
        if t is not None and not t.is_closing():
            self._fe.bytes_out += len(data)
            t.write(data)

    def upstream_failed(self, up: UpstreamProtocol, failure: Failure) -> None:
        """The response was malformed (or the backend closed mid-response)."""
        if up is not self._up:
            up.abort()
            return
        self._proxy.stats.fail(failure)
        self._ended(failure)
        self._count_resp_error()
        self._drop_upstream()
        unsent = self._unsent
        if self._resp is not None and unsent >= 0:
            # Nothing of this response has left yet (it came whole in the read that
            # failed, e.g. a bad chunk): the client gets a clean 502 in its place, as
            # from haproxy, instead of a cut response.
            del self._wbuf[unsent:]
            self._fe.hrsp[HRSP_SLOT[self._status]] -= 1  # counted by on_response
            self._resp = None
            self._state = _ON_RETRACT[self._state]
        if self._resp is None:
            self._close_after = True
            self._respond_error(failure)
        else:
            self.flush()
            self.abort()

    def upstream_lost(self, up: UpstreamProtocol) -> None:
        if up is not self._up:
            return
        state = self._state
        if state is _TUNNEL:
            self.close()
            return
        if state in _RESP_WHOLE:
            return
        req = self._req
        if req is not None and may_resend(
                idempotent=req.idempotent, body_kept=self._replay is not None,
                response_started=self._resp is not None or up.got_bytes > 0,
                reused_connection=up.uses > 1, attempts=self._attempts,
                retries=self._proxy.settings.limits.retries):
            # A pooled connection the server had closed: send again on another one.
            self._resp_bytes += up.got_bytes
            up.detach()
            self._up = None
            self._release_server()
            self._server = None
            self._pending = list(self._replay or ())
            self._pending_size = self._replay_size
            self._attempts += 1
            backend = self._backend
            balancer = self._balancer
            assert backend is not None and balancer is not None
            self._proxy.stats.backend(backend.name).retries += 1
            self._dispatch(backend, balancer, Failure.BACKEND_RESET)
            return
        self.upstream_failed(up, Failure.BACKEND_RESET)

    def _count_resp_error(self) -> None:
        if self._backend is not None:
            self._proxy.stats.backend(self._backend.name).resp_errors += 1
            if self._server is not None:
                self._proxy.stats.server(self._backend.name,
                                         self._server.label).resp_errors += 1

    def _backend_timeout(self) -> None:
        self._proxy.stats.fail(Failure.BACKEND_TIMEOUT)
        self._ended(Failure.BACKEND_TIMEOUT)
        self._count_resp_error()
        self._drop_upstream()
        if self._resp is None:
            if self._state not in _REQ_WHOLE:
                self._close_after = True
            self._respond_error(Failure.BACKEND_TIMEOUT)
        else:
            self.flush()
            self._abort_all()

    def _abort_all(self) -> None:
        self._drop_upstream()
        self.flush()
        self.abort()

    # -- tunnel --------------------------------------------------------------------------

    def start_tunnel(self, upstream_rest: bytes) -> None:
        """The backend said 101 (its head is in `_wbuf`): from now on, bytes both ways."""
        up = self._up
        assert up is not None and up.transport is not None
        self._state = _ON_SWITCH[self._state]
        if upstream_rest:
            self._wbuf.append(upstream_rest)
        assert self.parser is not None
        client_rest = self.parser.upgrade_rest
        if client_rest:
            up.transport.write(client_rest)
        self._arm(_T_TUNNEL, self._proxy.settings.timeouts.tunnel)
        self.resume_reading(_P_UPGRADE)

    def tunnel_from_upstream(self, data: bytes) -> None:
        self._tstamp = self._loop.time()
        t = self.transport
        if t is not None and not t.is_closing():
            self._fe.bytes_out += len(data)
            t.write(data)

    def tunnel_upstream_eof(self) -> bool | None:
        t = self.transport
        if t is not None and t.can_write_eof() and not t.is_closing():
            t.write_eof()
            return self._tunnel_eof(2)
        self.close()
        return None

    def _tunnel_eof(self, side: int) -> bool | None:
        """Half-closes pass through; once both sides have closed, the tunnel is done."""
        self._tunnel_eofs |= side
        if self._tunnel_eofs == 3:
            self._drop_upstream()
            self.close()
            return None
        return True

    # -- answering ----------------------------------------------------------------------

    def _local(self, status: int, body: bytes | None, failure: Failure,
               extra: bytes = b"") -> None:
        """Answer the current request ourselves (`extra`: header lines)."""
        proxy = self._proxy
        proxy.stats.fail(failure)
        self._ended(failure)
        req = self._req
        assert req is not None
        close = not self._local_keep_alive(req)
        self._status = status
        self._fe.response(status)
        self._wbuf.append(error_response(status, body, close=close, extra=extra,
                                         head_only=req.method == b"HEAD"))
        self._local_done(close)

    def _redirect(self, location: bytes, status: int = 301) -> None:
        req = self._req
        assert req is not None
        close = not self._local_keep_alive(req)
        self._status = status
        self._fe.response(status)
        self._wbuf.append(redirect_response(location, close=close, status=status))
        self._local_done(close)

    def _local_keep_alive(self, req: RequestHead) -> bool:
        """Keep-alive after our own answer to the request just read (its head only: a
        body would have to be read and dropped first, so one closes the connection)."""
        return keep_alive_after(
            client_keep_alive=req.keep_alive, request_whole=not req.has_body,
            close_delimited=False, upgrade=req.upgrade, must_close=self._close_after,
            stopping=self._proxy.closing)

    def _local_done(self, close: bool) -> None:
        state = self._state = _ON_ANSWER[self._state]
        self._keep = not close
        if close:
            self._close_after = True
            self._finish()
        elif state is _DONE:
            self._finish()
        # else: on_end comes from the parser right after this head; it finishes then

    def _respond_error(self, failure: Failure) -> None:
        """Answer the current exchange with `failure`'s status (nothing sent yet)."""
        req = self._req
        status = failure.status
        self._status = status
        self._fe.response(status)
        keep = keep_alive_after(
            client_keep_alive=req is not None and req.keep_alive,
            request_whole=self._state in _REQ_WHOLE, close_delimited=False, upgrade=False,
            must_close=self._close_after, stopping=False)
        self._wbuf.append(error_response(status, close=not keep,
                                         head_only=req is not None and req.method == b"HEAD"))
        self._state = _ON_ANSWER[self._state]
        self._keep = keep
        if not keep:
            self._close_after = True
        self._finish()

    def _local_error(self, failure: Failure) -> None:
        """Answer outside any routed exchange (a malformed request, a slow head), and
        close."""
        self._ended(failure)
        self._status = failure.status
        self._fe.response(failure.status)
        req = self._req  # a HEAD whose body (chunked) was malformed: no body either
        self._wbuf.append(error_response(failure.status, close=True,
                                         head_only=req is not None and req.method == b"HEAD"))
        self._close_after = True
        self._end_exchange(False)
        self._disarm()
        self.close()

    def _fail(self, failure: Failure) -> None:
        self._ended(failure)
        self._connecting = False
        self._respond_error(failure)

    def _ended(self, failure: Failure) -> None:
        """`failure` ends this exchange: note haproxy's termination state for the log
        (the first failure only: what follows is its consequence)."""
        if self._term == "--":
            state = self._state
            self._term = termination(
                failure, self._state_closed if state is _CLOSED else state,
                self._connecting)

    # -- the end of an exchange ----------------------------------------------------------

    def _finish(self) -> None:
        """The response is complete (or given up). The exchange ends now if the request
        was read whole; else (close_after) the connection closes."""
        up = self._up
        done = self._state is _DONE  # else _DRAIN (closing) or _CLOSED
        reusable = False
        if up is not None:
            # (whether `up` is still usable, pool.put asks: it closes it if not)
            parser = up.parser
            resp = self._resp
            reusable = (done and resp is not None and resp.keep_alive and parser is not None
                        and not parser.rest and parser.upgrade_rest is None)
        keep = done and self._keep and not self._close_after
        now = self._loop.time()  # (the pool's idle stamp for `up`, and ours)
        self._end_exchange(reusable, now, not keep)
        if not keep:
            self.close()
            return
        self._state = _IDLE  # _ON_NEXT[_DONE]: no lookup for a constant
        self.flush()
        if not self._again:
            self._first_idle()
        # idle between requests: the frontend's sweep watches it (proxy.http.idle)
        self._tkind = _T_KEEPALIVE
        proxy = self._proxy
        self._tlen = proxy.settings.timeouts.keep_alive
        self._tstamp = now
        sweep = proxy.idle
        if not sweep.armed:
            sweep.watch()
        if proxy.closing:
            self.close()
            return
        if self._paused:  # (resume_reading sees which; see _end_exchange)
            self.resume_reading(_P_UPGRADE | _P_PENDING | _P_ANSWER)
        if self._queue is not None:
            self._replay_queue()

    def _release_server(self) -> None:
        """Undo `_attach`'s accounting (once)."""
        server = self._server
        srv = self._srv_c
        be = self._be_c
        if server is None or srv is None or be is None:
            return
        self._srv_c = self._be_c = None
        balancer = self._balancer
        assert balancer is not None
        active = balancer.active  # balancer.release(server), inline (a call per request)
        key = server.key
        n = active.pop(key, 0) - 1  # (one lookup for the common last one, not two)
        if n > 0:
            active[key] = n
        sent = self._bytes_out_req
        got = self._resp_bytes
        srv.cur_conns -= 1  # Counters.close(), inline
        srv.bytes_in += sent
        srv.bytes_out += got
        be.cur_conns -= 1
        be.bytes_in += sent
        be.bytes_out += got
        status = self._status
        if status and self._resp is not None:
            i = HRSP_SLOT[status]  # Counters.response(), inline
            srv.hrsp[i] += 1
            be.hrsp[i] += 1

    def _let_go(self, up: UpstreamProtocol) -> None:
        """`up`, the connection kept from the last exchange, goes to the pool (closed if
        the pool does not want it; at shutdown, closed)."""
        if self._kept is up:
            self._kept = None
        up.pool = None
        if self._proxy.closing:
            up.close()
        else:
            self._proxy.pool.put(up, up.idle_since)  # (idle since the exchange's end)

    def remove(self, conn: UpstreamProtocol) -> None:
        """The kept connection `conn` has closed (as pool.Pool's `remove`: upstream.Holder)."""
        if self._kept is conn:
            self._kept = None
        conn.leave_pool()

    def _end_exchange(self, reusable: bool, now: float = 0.0, last: bool = False) -> None:
        """The exchange is over (`reusable`: its backend connection may be pooled, idle
        since `now`, the loop's time): undo its accounting, log it, forget it (`last`: the
        connection is closed next, `_finish`)."""
        up = self._up
        if self._up_paused:
            self._up_paused = False  # a pooled connection must be read (to see it close)
            if up is not None and up.transport is not None and not up.closed:
                up.transport.resume_reading()
        # (resume_reading sees which reasons are set: an int's `&` is a generic BINARY_OP
        # in CPython 3.11, ~120 instructions, and `_paused` is 0 but while paused)
        if self._paused:
            self.resume_reading(_P_UPSTREAM)
        if up is not None:
            self._resp_bytes += up.got_bytes  # (what the server sent in this exchange)
            if self._state is not _TUNNEL:
                up.owner = None  # up.detach(), inline (a call per request)
                if not reusable:
                    up.close()
                elif self._again and not last and self._held is None:
                    # Kept for this connection's next request (module docstring): not
                    # after a first exchange (many clients make no second), nor with a
                    # server slot held (the next in line takes the connection warm)
                    self._kept = up
                    up.pool = self
                    up.idle_since = now
                else:
                    self._proxy.pool.put(up, now)
            else:
                up.detach()
                up.close()
        self._release_server()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if _access_log_known.get(_INFO) is not False and _access_log_enabled(_INFO):
            self._log()
        if self._held is not None:
            self._free_slot()  # after the pool took `up`: the next in line gets it warm
        if last:
            # No exchange follows, so no clean slate is needed (`_reset`: ~90 bytecodes,
            # ~2k instructions a `Connection: close` exchange), only that nothing still
            # looked at before `connection_lost` sees this one as under way: not its head
            # (connection_lost, `idle`, the timers), nor its backend connection (pooled
            # or closed by now) or a connect, nor its phase's timeout (`close` arms
            # `timeout client` if the client has yet to read the response).
            self._req = None
            self._up = None
            self._connecting = False
            self._tkind = _T_NONE
        else:
            self._reset()

    def _log(self) -> None:
        backend, server = self._backend, self._server
        held = self._held  # Tw: time in the queue (haproxy's), when there is one
        tw = None if held is None else int((self._loop.time() - held.since) * 1000) \
            if type(held) is Ticket else int(self._tw * 1000)
        accesslog.log(accesslog.line(
            client_ip=self.client_ip, client_port=self.client_port,
            frontend=self._proxy.frontend,
            backend=backend.name if backend is not None else accesslog.NOSRV,
            server=server.label if server is not None else accesslog.NOSRV,
            t0=self._t0, t_head=self._t_head, t_conn=self._t_conn, t_resp=self._t_resp,
            now=self._loop.time(), status=self._status, nbytes=self._resp_bytes,
            termination=self._term, req=self._req, tw=tw))
