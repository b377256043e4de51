"""The L4 TCP frontends: listeners, and one spliced client↔server pair per connection.

Theory of operation. Each TcpFrontend port gets a uvloop server whose Protocol is `_Conn`,
the client side of one proxied connection; `_Upstream` is its server side. Both are plain
callbacks, and no Task runs per connection: the connect is a `proxy.connect.Dial`
(uvloop's `create_connection` stepped from callbacks, one TimerHandle for the connect
timeout), and `dialed` retries a failed connect as haproxy does (proxy/retry.py: the
same server after a turn-around delay, another on the last retry). (A Task and
asyncio.timeout cost ~8 µs of user CPU per connection more.) What either side sends before
the pair is wired (a MySQL greeting, a ClientHello) is kept, bounded by the high
watermark, and passed on first. A TLS-passthrough frontend reads the ClientHello before it
connects, and picks the backend by its server name (`sni_backend`). A Gateway proxy's
connections (`_ChoiceConn`, proxy/tcp/gwl4.py) may then pick among weighted backends.

Data path (Protocol path). `data_received` on one side writes to the other transport.
Both transports get high and low write-buffer watermarks; `pause_writing` on one side
pauses reading on the other, `resume_writing` resumes it (Envoy's cross-wired
watermarks), so no more than `high` bytes plus one read chunk wait per direction.
EOF on one side is passed on as `write_eof` to the other (half-close); the pair closes
when both directions have ended. A reset (connection_lost with an error) aborts the other
side with SO_LINGER 0, so it sees a reset too.

Splice path. After `splice_threshold` bytes, once both write buffers are empty, the pair
moves to a `SplicePump` (see proxy/tcp/splice.py) and stays there until it ends. Why this
shape: uvloop accepts and connects in C, which a hand-made raw-socket path would redo in
Python for every connection, and uvloop refuses add_reader on an fd a transport owns; so
connections start as transports and only bulk ones move, on dup()ed fds, to splice (the
transports are then closed: a spliced connection holds 2 fds, as a copied one).
Measured here (bench/l4_tcp.py, 2 GiB, proxy CPU only, medians of three runs): splice
0.15 CPU-s/GiB, copy 0.30, haproxy 2.6 `mode tcp` 0.34; per connection, copy 98 µs,
splice from the first byte 140 µs, a bare uvloop proxy 65 µs, haproxy 52 µs. Hence the
threshold (DEFAULT_SPLICE_THRESHOLD): short connections never pay for splice, bulk ones
halve their CPU.

Timeouts. Connect: one TimerHandle per attempt (`proxy.connect.Dial`). Inactivity: no
timer is touched per chunk. Each side only bumps its byte count; one sweep per proxy
(`loop.call_later`, every quarter of the smallest timeout, at most 1 s) compares counts
with the last sweep, stamps activity, flushes byte deltas into the counters, and applies
`idle_verdict`.

Route changes. A listener whose frontend left the table is closed; its connections get
`grace_period` to finish, then are closed. A connection keeps the Balancer and Server it
was given at accept time, so a server removed from its backend keeps its open connections
and gets no new ones.

Overload. Out of fds, libuv's accept closes what it cannot take and the listener lives
on; a connect that fails for want of our own fds, memory or ports sheds that connection
without marking the server down (`Dial.local`, proxy.connect.LOCAL_ERRNOS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, cast

from proxy import flow
from proxy.balance import Balancer, Balancers, normalize_client_ip
from proxy.connect import Dial, ShortageLog
from proxy.listener import BACKLOG, ConnectionLimit, Listener, bind_socket
from proxy.queue import Ticket
from proxy.retry import Next, after_connect_failure
from proxy.tcp import proxyproto
from proxy.tcp.choice import WeightedChoice
from proxy.tcp.poller import Poller
from proxy.tcp.splice import HAVE_SPLICE, LINGER_RST, PipePool, SplicePump
from proxy.tls_sni import MAX_CLIENT_HELLO, NeedMore, parse_client_hello_sni
from pylb.config import Settings, Timeouts
from pylb.counters import Counters, Stats
from pylb.delta import Delta
from pylb.failures import Failure
from pylb.model import Affinity, Algorithm, ProxyProtocol, RouteTable, Server, TcpFrontend

log = logging.getLogger("pylb.tcp")

# Write-buffer watermarks per transport: one pair for L4 and L7, justified in proxy.flow.
HIGH_WATER = flow.HIGH_WATER
LOW_WATER = flow.LOW_WATER
_P_PEER = int(flow.Pause.PEER)
_P_CONNECTING = int(flow.Pause.CONNECTING)
# Splice only pays once a connection moves bulk data. Moving a connection to splice costs
# ~42 µs (dups, two pipes, epoll changes; bench medians: 140 vs 98 µs per connection) and
# saves ~0.14 µs per KiB (0.30 vs 0.15 CPU-s/GiB). Not knowing how much more a connection
# will move, switch once copying has cost what switching costs (the ski-rental rule, never
# worse than twice the best choice in hindsight): 210-390 KiB over three runs; 256 KiB.
DEFAULT_SPLICE_THRESHOLD = 256 * 1024
# Pipe capacity per direction on the splice path. Measured here (bench/l4_tcp.py, 2 GiB):
# 64 KiB (the default) 0.26 CPU-s/GiB, 256 KiB 0.17, 1 MiB 0.19. 256 KiB is also what the
# copy path may hold per direction (one uvloop read), so both paths bound memory alike.
PIPE_SIZE = 256 * 1024

_CONNECTING, _TUNNEL, _SPLICE, _CLOSED = range(4)


def idle_verdict(tunnel: bool, now: float, client_at: float, server_at: float,
                 t: Timeouts) -> Failure | None:
    """Whether a connection has been idle too long (haproxy's semantics), or None.

    Before the tunnel is up (SNI inspection; the connect has its own timeout), the client
    must keep talking within `t.client`. Once up, `t.tunnel` supersedes both: the pair
    closes after `tunnel` seconds without a byte in either direction. With `tunnel` 0,
    the client must send within `client` and the server within `server`. 0 disables.
    (SNI inspection also ends after `t.http_request`, as haproxy's `tcp-request
    inspect-delay`: the connection then goes to the default backend with what it has.
    That is the sweep's business, not a verdict.)
    """
    if not tunnel:
        if t.client > 0 and now - client_at >= t.client:
            return Failure.CLIENT_TIMEOUT
        return None
    if t.tunnel > 0:
        if now - max(client_at, server_at) >= t.tunnel:
            return Failure.CLIENT_TIMEOUT if client_at <= server_at else Failure.BACKEND_TIMEOUT
        return None
    if t.client > 0 and now - client_at >= t.client:
        return Failure.CLIENT_TIMEOUT
    if t.server > 0 and now - server_at >= t.server:
        return Failure.BACKEND_TIMEOUT
    return None


def sni_backend(frontend: TcpFrontend, host: str | None) -> str | None:
    """The backend for a TLS-passthrough connection naming `host`: an exact `sni` entry,
    else the `*.` wildcard of its parent domain (one label, as in certificates; for a
    Gateway listener, of any ancestor, the nearest first, as Gateway API hostnames), else
    the frontend's default backend; None when there is none (the connection is refused)."""
    if host is not None:
        host = host.lower().rstrip(".")
        for name, backend in frontend.sni:
            if name.lower() == host:
                return backend
        dot = host.find(".")
        while frontend.gateway and dot > 0:
            wildcard = "*" + host[dot:]
            for name, backend in frontend.sni:
                if name.lower() == wildcard:
                    return backend
            dot = host.find(".", dot + 1)
        if dot > 0:
            wildcard = "*" + host[dot:]
            for name, backend in frontend.sni:
                if name.lower() == wildcard:
                    return backend
    return frontend.backend or None


def sweep_interval(t: Timeouts) -> float:
    """A quarter of the smallest inactivity timeout (or inspect delay), within
    [10 ms, 1 s]."""
    ts = [x for x in (t.client, t.server, t.tunnel, t.http_request) if x > 0]
    if not ts:
        return 1.0
    return min(1.0, max(0.01, min(ts) / 4))


class _Frontend:
    """A listening port (a uvloop server, or a maxconn-aware `Listener`) and the
    connections accepted on it."""

    __slots__ = ("choices", "conns", "counters", "frontend", "listener", "server", "sockname")

    def __init__(self, frontend: TcpFrontend, counters: Counters) -> None:
        self.counters = counters
        self.server: asyncio.Server | None = None
        self.listener: Listener | None = None
        self.conns: set[_Conn] = set()
        self.sockname: tuple[str, int] = ("", 0)
        self.set(frontend)

    def set(self, frontend: TcpFrontend) -> None:
        """Serve `frontend` from the next connection on (its weighted choices: read by
        `_ChoiceConn`, the Protocol of a Gateway proxy's connections)."""
        self.frontend = frontend
        self.choices = {name: WeightedChoice(options) for name, options in frontend.weighted}

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.listener is not None:
            self.listener.close()


class _Upstream(asyncio.Protocol):
    """The server side of a connection: forwards to its `_Conn`. Between connection_made
    and the moment its Dial hands it over, what the server says (a MySQL greeting) is
    kept in `early`, and an EOF or loss is noted, for `_Conn._connected` to pass on."""

    __slots__ = ("conn", "early", "eof", "lost", "lost_exc", "transport")

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.early = b""
        self.eof = False
        self.lost = False
        self.lost_exc: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        c = self.conn
        if c.state is _TUNNEL:
            c.down += len(data)
            c.ct.write(data)
            if c.down + c.up >= c.splice_at:
                c.try_splice()
        elif c.state is _CONNECTING:
            self.early += data
            if len(self.early) >= HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.conn.state is _CONNECTING:
            self.eof = True
        else:
            self.conn.server_eof()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.conn.state is _CONNECTING:
            self.lost, self.lost_exc = True, exc
        else:
            self.conn.server_lost(exc)

    def pause_writing(self) -> None:
        c = self.conn
        c.c_paused = flow.pause(c.ct, c.c_paused, _P_PEER)

    def resume_writing(self) -> None:
        c = self.conn
        if c.state is _TUNNEL:
            c.c_paused = flow.resume(c.ct, c.c_paused, _P_PEER)
            if c.down + c.up >= c.splice_at:
                c.try_splice()


class _Conn(asyncio.Protocol):
    """The client side of a proxied connection, and the pair's state."""

    __slots__ = (
        "attempts",
        "backend",
        "bal",
        "bcounters",
        "born",
        "c_eof",
        "c_paused",
        "client_at",
        "client_ip",
        "ct",
        "dial",
        "dial_sc",
        "down",
        "exclude",
        "fcounters",
        "fe",
        "proxy",
        "pump",
        "retry_at",
        "s_eof",
        "sbuf",
        "scounters",
        "seen_down",
        "seen_up",
        "server",
        "server_at",
        "slot",
        "splice_at",
        "st",
        "state",
        "ticket",
        "up",
        "upstream",
    )

    def __init__(self, proxy: TcpProxy, fe: _Frontend) -> None:
        self.proxy = proxy
        self.fe = fe
        self.fcounters = fe.counters  # the frontend's row at accept time
        self.state = _CONNECTING
        self.ct: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.st: asyncio.Transport = None  # type: ignore[assignment]  # set once connected
        self.upstream: _Upstream | None = None
        self.pump: SplicePump | None = None
        self.dial: Dial | None = None
        self.dial_sc: Counters | None = None  # the counters of the server being dialled
        self.client_ip = ""  # only read when balancing needs it
        self.exclude: set[tuple[str, int]] | None = None  # servers that failed a connect
        self.attempts = 0  # failed connect attempts so far
        self.retry_at: asyncio.TimerHandle | None = None  # the next attempt, after a delay
        self.bal: Balancer | None = None
        self.backend = ""
        self.server: Server | None = None
        self.slot: Server | None = None  # a per-server slot held (proxy.queue)
        self.ticket: Ticket | None = None  # or a place in the queue for one
        self.scounters: Counters | None = None
        self.bcounters: Counters | None = None
        self.sbuf = b""  # the client's first bytes, until the server is connected
        self.up = 0  # bytes client → server
        self.down = 0  # bytes server → client
        self.seen_up = 0
        self.seen_down = 0
        self.born = 0.0
        self.client_at = 0.0
        self.server_at = 0.0
        self.c_eof = False
        self.c_paused = 0  # why the client is not read (flow.Pause bits)
        self.s_eof = False
        self.splice_at = proxy.splice_at

    # -- client transport callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.ct = transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        fe = self.fe
        fe.conns.add(self)
        self.fcounters.open()
        proxy.opened()
        self.client_at = self.born = proxy.loop.time()
        _tune(transport)
        if fe.frontend.sni:
            return  # read the ClientHello first
        # uvloop starts reading after connection_made whatever we say: the first bytes
        # are buffered in `sbuf` (up to HIGH_WATER) until the server is connected.
        self.connect(fe.frontend.backend)

    def data_received(self, data: bytes) -> None:
        if self.state is _TUNNEL:
            self.up += len(data)
            self.st.write(data)
            if self.up + self.down >= self.splice_at:
                self.try_splice()
        elif self.state is _CONNECTING:
            self.up += len(data)
            self.sbuf += data
            if not self.backend:
                self._inspect()
            elif len(self.sbuf) >= HIGH_WATER:
                self.c_paused = flow.pause(self.ct, self.c_paused, _P_CONNECTING)

    def eof_received(self) -> bool:
        self.c_eof = True
        if self.state is _TUNNEL:
            if self.st.can_write_eof():
                self.st.write_eof()
            if self.s_eof:
                self.close()
        elif self.state is _CONNECTING and not self.backend:
            self._inspect()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.state is _CLOSED or self.state is _SPLICE:
            return  # in _SPLICE: the transport was closed at the hand-over
        if exc is not None:
            self.abort(Failure.CLIENT_ABORT)
        else:
            self.close()

    def pause_writing(self) -> None:
        if self.st is not None:
            self.st.pause_reading()

    def resume_writing(self) -> None:
        if self.state is _TUNNEL:
            self.st.resume_reading()
            if self.up + self.down >= self.splice_at:
                self.try_splice()

    # -- SNI inspection -----------------------------------------------------------------

    def _inspect(self, deadline: bool = False) -> None:
        result = parse_client_hello_sni(self.sbuf)
        if isinstance(result, NeedMore) and not deadline and not self.c_eof and \
                len(self.sbuf) <= MAX_CLIENT_HELLO + 5:
            return
        host = None if isinstance(result, NeedMore) else result
        self.c_paused = flow.pause(self.ct, self.c_paused, _P_CONNECTING)
        name = sni_backend(self.fe.frontend, host)
        if name is None:
            self.proxy.stats.fail(Failure.NO_ROUTE)
            self.abort(None)
            return
        self.connect(name)

    # -- server side --------------------------------------------------------------------

    def connect(self, backend: str) -> None:
        proxy = self.proxy
        self.backend = backend
        self.bcounters = proxy.stats.backend(backend)
        bal = self.bal = proxy.balancers.get(backend)
        if bal is not None and (bal.backend.algorithm is Algorithm.SOURCE
                                or bal.backend.affinity is Affinity.CLIENT_IP
                                or bal.limiter is not None):
            # Two syscalls and a socket object: only when the choice depends on it.
            peer = self.ct.get_extra_info("peername")
            self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        if bal is not None and bal.limiter is not None \
                and bal.limiter.check(normalize_client_ip(self.client_ip)):
            # Over the client's rate of new connections: reset, as haproxy's
            # `tcp-request connection reject` (nothing was read, nothing is answered).
            self.fcounters.denied_conn += 1
            self.bcounters.denied_conn += 1
            proxy.stats.fail(Failure.RATE_LIMITED)
            self.abort(None)
            return
        server = bal.pick(self.client_ip) if bal is not None else None
        if bal is not None and bal.gate is not None:
            # The wait in the queue spends no connect retry (self.attempts).
            server = self._admit(bal, server, ())
            if server is None:
                return  # queued (queue_granted dials), or refused
        if server is None:
            self.bcounters.conn_errors += 1
            proxy.stats.fail(Failure.NO_SERVER)
            self.abort(None)
            return
        assert bal is not None
        self._dial(bal, server)

    def _admit(self, bal: Balancer, server: Server | None,
               exclude: set[tuple[str, int]] | tuple[()]) -> Server | None:
        """A gated backend (proxy.queue): the server to dial now, or None when this
        connection waits in the queue (or was refused: then it is closed). `exclude`:
        servers that may not take it now (a redispatch's failed one)."""
        assert bal.gate is not None
        got = bal.gate.admit(self, bal, server, self.client_ip, exclude)
        if type(got) is Ticket:
            self.ticket = got
            return None
        if type(got) is Failure:
            if got is Failure.NO_SERVER:
                self.bcounters.conn_errors += 1  # type: ignore[union-attr]
                self.proxy.stats.fail(got)
            else:
                self.queue_expired(got)
                return None
            self.abort(None)
            return None
        self.slot = cast(Server, got)
        return self.slot

    def queue_granted(self, server: Server) -> None:
        self.ticket = None
        self.slot = server
        bal = self.bal
        assert bal is not None
        self._dial(bal, server)

    def queue_expired(self, failure: Failure) -> None:
        self.ticket = None
        if self.bcounters is not None:
            self.bcounters.conn_errors += 1
        self.proxy.stats.fail(failure)
        self.abort(None)

    def _free_slot(self) -> None:
        bal = self.bal
        gate = bal.gate if bal is not None else None
        ticket, slot = self.ticket, self.slot
        self.ticket = self.slot = None
        if gate is not None and bal is not None:
            if ticket is not None:
                gate.cancel(ticket)
            if slot is not None:
                gate.release(slot, bal)

    def _dial(self, bal: Balancer, server: Server) -> None:
        bal.acquire(server)
        self.server = server
        proxy = self.proxy
        sc = self.dial_sc = proxy.stats.server(self.backend, server.label)
        sc.lbtot += 1
        up = _Upstream(self)
        # Stored before start: a connect that fails at once calls dialed inside it.
        self.dial = dial = Dial(proxy.loop, lambda: up, server.address, server.port,
                                self.dialed)
        dial.start(proxy.settings.timeouts.connect)

    def dialed(self, dial: Dial) -> None:
        """The end of one connect attempt: wire the pair, or redispatch, or give up."""
        self.dial = None
        failure = dial.failure
        if self.state is _CLOSED:
            if failure is None and dial.transport is not None:
                dial.transport.abort()
            return
        bal = self.bal
        server = self.server
        sc = self.dial_sc
        assert bal is not None and self.bcounters is not None
        assert server is not None and sc is not None
        if failure is None:
            bal.succeeded(server)
            self._connected(cast(_Upstream, dial.protocol), sc)
            return
        bal.release(server)
        self.server = None
        self.bcounters.conn_errors += 1
        self.proxy.stats.fail(failure)
        if dial.local:
            # Out of fds, memory or ports here: not the server's fault, and no other
            # server would fare better. Shed this connection; blame no one.
            self.proxy.shortage.note(self.proxy.loop, dial.error, self.proxy.connections)
            self.abort(None)
            return
        bal.failed(server)
        sc.conn_errors += 1
        self.attempts += 1
        proxy = self.proxy
        step = after_connect_failure(
            attempts=self.attempts, retries=proxy.settings.limits.retries,
            timed_out=failure is Failure.CONNECT_TIMEOUT,
            connect_timeout=proxy.settings.timeouts.connect,
            server_usable=bal.usable(server), others_usable=bal.others_usable(server),
            sticky=bal.sticky)
        nxt: Server | None = server  # a retry on the same server keeps its slot
        if step.next is Next.REDISPATCH:
            if self.exclude is None:
                self.exclude = set()
            self.exclude.add(server.key)
            if self.slot is not None:
                self._free_slot()  # the failed server's slot goes to the next in line
            # All others tried: any but this one again.
            nxt = bal.pick(self.client_ip, self.exclude) or \
                bal.pick(self.client_ip, (server.key,))
            if bal.gate is not None:
                # A gated backend: the retry takes a slot, or waits in the queue like any
                # connection (its dial when granted is this retry: it spent it), or is
                # refused (then closed).
                nxt = self._admit(bal, nxt, {server.key})
                if nxt is None:
                    return
        if step.next is Next.GIVE_UP or nxt is None:
            self.abort(None)
            return
        self.bcounters.retries += 1
        sc.retries += 1
        if nxt is not server:
            self.bcounters.redispatches += 1
        if step.delay > 0:  # haproxy's turn-around: the server may be restarting
            self.retry_at = proxy.loop.call_later(step.delay, self._redial, nxt)
        else:
            self._dial(bal, nxt)

    def _redial(self, server: Server) -> None:
        self.retry_at = None
        if self.state is _CONNECTING and self.bal is not None:
            self._dial(self.bal, server)

    def _connected(self, up: _Upstream, sc: Counters) -> None:
        assert up.transport is not None and self.bcounters is not None
        self.upstream = up
        self.st = st = up.transport
        self.scounters = sc
        sc.open()
        self.bcounters.open()
        _tune(st)
        self.state = _TUNNEL
        self.server_at = self.proxy.loop.time()
        bal = self.bal
        assert bal is not None
        # Resume both sides first: the writes below may pause them again (pause_writing
        # runs inside write), and that must be the last word.
        if not self.c_eof:
            self.c_paused = flow.resume(self.ct, self.c_paused, _P_CONNECTING)
        st.resume_reading()
        if bal.backend.proxy_protocol is not ProxyProtocol.NONE:
            src = self.ct.get_extra_info("peername")
            dst = self.ct.get_extra_info("sockname")
            enc = proxyproto.encode_v2 if bal.backend.proxy_protocol is ProxyProtocol.V2 \
                else proxyproto.encode_v1
            st.write(enc(_addr(src), _addr(dst)))
        if self.sbuf:
            st.write(self.sbuf)
            self.sbuf = b""
        if self.c_eof and st.can_write_eof():
            st.write_eof()
        if up.early:
            self.down += len(up.early)
            self.ct.write(up.early)
            up.early = b""
        if up.eof:
            self.server_eof()
        if up.lost:
            self.server_lost(up.lost_exc)
            return
        if self.up + self.down >= self.splice_at:
            self.try_splice()

    def server_eof(self) -> None:
        self.s_eof = True
        if self.state is _TUNNEL:
            if self.ct.can_write_eof():
                self.ct.write_eof()
            if self.c_eof:
                self.close()

    def server_lost(self, exc: BaseException | None) -> None:
        if self.state is not _TUNNEL:
            return
        if exc is not None:
            self.abort(Failure.BACKEND_RESET)
        else:
            self.close()

    # -- splice -------------------------------------------------------------------------

    def try_splice(self) -> None:
        if self.state is not _TUNNEL or self.c_eof or self.s_eof:
            return
        ct, st = self.ct, self.st
        if ct.get_write_buffer_size() or st.get_write_buffer_size():
            return  # retried on the next chunk or resume_writing
        cs = ct.get_extra_info("socket")
        ss = st.get_extra_info("socket")
        if cs is None or ss is None:
            self.splice_at = 1 << 62
            return
        ct.pause_reading()
        st.pause_reading()
        self.state = _SPLICE
        pump = SplicePump(self.proxy.poller, self.proxy.pipes, cs.fileno(), ss.fileno(),
                          self._pump_done)
        pump.up = self.up
        pump.down = self.down
        self.pump = pump
        pump.start()
        # The pump has its own fds (dups) now: closing the transports frees theirs and
        # their buffers (2 fds per spliced connection instead of 4). Their
        # connection_lost is ignored in _SPLICE; the pump reports the end.
        ct.close()
        st.close()

    def _pump_done(self, exc: BaseException | None, client_side: bool) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(Failure.CLIENT_ABORT if client_side else Failure.BACKEND_RESET)

    # -- ending -------------------------------------------------------------------------

    def close(self) -> None:
        """End cleanly: buffered bytes are still written, then FIN."""
        if self.state is _CLOSED:
            return
        self._end()
        self.ct.close()
        if self.st is not None:
            self.st.close()

    def abort(self, failure: Failure | None) -> None:
        """End with a reset on both sides (SO_LINGER 0)."""
        if self.state is _CLOSED:
            return
        if failure is not None:
            self.proxy.stats.fail(failure)
        if self.pump is not None:
            self.pump.linger_rst()  # the pump's fds are the sockets' last
        self._end()
        for t in (self.ct, self.st):
            if t is not None and not t.is_closing():
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                t.abort()

    def _end(self) -> None:
        pump = self.pump
        if pump is not None:
            self.up, self.down = pump.up, pump.down
            pump.stop()
        self.state = _CLOSED
        if self.dial is not None:
            self.dial.cancel()
        if self.retry_at is not None:
            self.retry_at.cancel()
            self.retry_at = None
        self.flush_counts()
        fe = self.fe
        self.fcounters.close()
        fe.conns.discard(self)
        self.proxy.closed()
        if self.scounters is not None:
            self.scounters.close()
        if self.bcounters is not None and self.st is not None:
            self.bcounters.close()
        if self.server is not None and self.bal is not None:
            self.bal.release(self.server)
            self.server = None
        if self.slot is not None or self.ticket is not None:
            self._free_slot()

    def flush_counts(self) -> None:
        pump = self.pump
        up, down = (pump.up, pump.down) if pump is not None and not pump.closed else (
            self.up, self.down)
        du, dd = up - self.seen_up, down - self.seen_down
        if du or dd:
            self.seen_up, self.seen_down = up, down
            fc = self.fcounters
            fc.bytes_in += du
            fc.bytes_out += dd
            for c in (self.bcounters, self.scounters):
                if c is not None:
                    c.bytes_in += du
                    c.bytes_out += dd


class _ChoiceConn(_Conn):
    """A Gateway listener's connection (TCPRoute, TLSRoute): its backend may be a weighted
    choice among Services' (proxy/tcp/choice.py), picked when it connects; "" (no route, or
    an unresolved backendRef's share) refuses it."""

    __slots__ = ()

    def connect(self, backend: str) -> None:
        choice = self.fe.choices.get(backend)
        if choice is not None:
            backend = choice.pick()
        if not backend:
            self.proxy.stats.fail(Failure.NO_ROUTE)
            self.abort(None)
            return
        _Conn.connect(self, backend)


def _tune(transport: asyncio.Transport) -> None:
    # uvloop sets TCP_NODELAY on every TCP transport already; asking for the socket to
    # set it again costs a socket object per side (~10 µs per connection).
    flow.set_limits(transport)


def _addr(a: Any) -> tuple[str, int] | None:
    if isinstance(a, tuple) and len(a) >= 2:
        return (str(a[0]), int(a[1]))
    return None


class TcpProxy:
    """All L4 frontends of one worker process."""

    def __init__(self, settings: Settings, stats: Stats, balancers: Balancers, *,
                 host: str = "0.0.0.0", reuse_port: bool = False,
                 splice_threshold: int | None = DEFAULT_SPLICE_THRESHOLD,
                 limit: ConnectionLimit | None = None, gateway: bool = False) -> None:
        """`splice_threshold`: bytes after which a connection moves to os.splice (0: at
        once; None: never; ignored where splice is unavailable).

        `limit`: the worker's `--maxconn` (shared with the other frontends). With it, the
        ports are served by `proxy.listener.Listener`, which stops accepting at the limit
        so that new connections wait in the kernel's backlog, as haproxy's do; each
        connection gives its slot back when it ends. Without it, by uvloop's own server,
        which accepts in C (~30 µs of CPU less per connection, bench/l4_tcp.py
        pylb-switch vs pylb-maxconn) and has no limit.

        `gateway`: the listeners of Gateway TLS/TCP routes (proxy/tcp/gwl4.py), whose
        connections (`_ChoiceConn`) may pick among weighted backends. The Protocol class
        is the proxy's, bound into the accept factory: Service frontends run `_Conn` and
        pay nothing per connection for the choice they never make (callgrind: the same
        instructions per accepted connection, within noise)."""
        self.settings = settings
        self.limit = limit
        self._conn: type[_Conn] = _ChoiceConn if gateway else _Conn
        self.stats = stats
        self.balancers = balancers
        self.host = host
        self.reuse_port = reuse_port
        self.splice_at = (1 << 62) if splice_threshold is None or not HAVE_SPLICE \
            else splice_threshold
        self.pipes = PipePool(PIPE_SIZE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: Poller | None = None
        self._frontends: dict[int, _Frontend] = {}
        self._draining: set[_Frontend] = set()
        self._nconns = 0
        self._sweep: asyncio.TimerHandle | None = None
        self._table = RouteTable()
        self._lock = asyncio.Lock()  # set_table calls do not interleave their awaits
        self._unbound: set[int] = set()  # ports that could not be bound (logged once)
        self.shortage = ShortageLog("tcp")  # connects failing for our own shortage

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def poller(self) -> Poller:
        """The splice pumps' epoll set (see proxy/tcp/poller.py), made on first use."""
        if self._poller is None:
            self._poller = Poller(self.loop)
        return self._poller

    @property
    def connections(self) -> int:
        return self._nconns

    def bound_ports(self) -> dict[int, tuple[str, int]]:
        """Frontend port → the (host, port) actually bound (differs when the port is 0)."""
        return {port: fe.sockname for port, fe in self._frontends.items()}

    async def set_table(self, table: RouteTable, delta: Delta | None = None) -> None:
        """Serve `table`: open listeners for new ports, stop those whose frontend left
        (their connections drain for `grace_period`), keep the rest. Alone, this also
        applies the table's backends to the shared Balancers (idempotent). With `delta`
        (pylb.delta: the change from the table served so far), the caller has applied the
        backends, and the listeners are looked at only when the TCP frontends changed or
        a port could not be bound before."""
        if delta is not None and delta.tcp is None and \
                len(self._frontends) == len(table.tcp) and not self._lock.locked():
            self._table = table
            return
        async with self._lock:
            await self._set_table(table, delta)

    async def set_frontends(self, frontends: tuple[TcpFrontend, ...]) -> None:
        """Serve these frontends, as `set_table` does, with the backends left as they are:
        for listeners over the balancers of another proxy's table (the Gateway listeners,
        proxy/tcp/gwl4.py)."""
        async with self._lock:
            await self._set_frontends(frontends)

    async def _set_table(self, table: RouteTable, delta: Delta | None) -> None:
        self._table = table
        if delta is None:
            self.balancers.update(table.backends)
        await self._set_frontends(table.tcp)

    async def _set_frontends(self, frontends: tuple[TcpFrontend, ...]) -> None:
        loop = self.loop
        wanted = {f.port: f for f in frontends}
        self._unbound &= wanted.keys()
        for port in [p for p in self._frontends if p not in wanted]:
            self._drain(self._frontends.pop(port), self.settings.grace_period)
        for port, f in wanted.items():
            fe = self._frontends.get(port)
            if fe is not None:
                if fe.frontend.name != f.name:
                    fe.counters = self.stats.frontend(f.name)
                if fe.frontend != f:
                    fe.set(f)
                continue
            fe = _Frontend(f, self.stats.frontend(f.name))
            try:
                if self.limit is not None:
                    sock = bind_socket(self.host, port, reuse_port=self.reuse_port)
                    fe.listener = Listener(sock, lambda fe=fe, conn=self._conn: conn(self, fe),  # type: ignore[misc]
                                           limit=self.limit, loop=loop)
                    fe.listener.start()
                    name = sock.getsockname()
                else:
                    fe.server = await loop.create_server(
                        lambda fe=fe, conn=self._conn: conn(self, fe), self.host, port,
                        reuse_address=True, reuse_port=self.reuse_port or None,
                        backlog=BACKLOG)
                    name = fe.server.sockets[0].getsockname()
            except OSError as e:
                if port not in self._unbound:  # retried with every table: logged once
                    log.error("tcp frontend %s: cannot listen on %s:%d: %s (retried on the "
                              "next table)", f.name, self.host, port, e)
                self._unbound.add(port)
                continue
            self._unbound.discard(port)
            fe.sockname = (str(name[0]), int(name[1]))
            self._frontends[port] = fe

    def _drain(self, fe: _Frontend, grace: float) -> None:
        fe.stop_accepting()
        if not fe.conns:
            return
        self._draining.add(fe)

        def deadline() -> None:
            self._draining.discard(fe)
            for c in list(fe.conns):
                c.close()
        self.loop.call_later(max(0.0, grace), deadline)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting everywhere, let open connections finish for up to `grace`
        seconds, then close what remains."""
        loop = self.loop
        fes = list(self._frontends.values()) + list(self._draining)
        self._frontends = {}
        for fe in fes:
            fe.stop_accepting()
        end = loop.time() + max(0.0, grace)
        while self._nconns and loop.time() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - loop.time())))
        for fe in fes:
            for c in list(fe.conns):
                c.close()
        for fe in fes:
            if fe.server is not None:
                await fe.server.wait_closed()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.pipes.close()
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def opened(self) -> None:
        """A connection (`_Conn`) has started: counted, and the inactivity sweep armed."""
        self._nconns += 1
        self._arm_sweep()

    def closed(self) -> None:
        """A connection has ended: uncounted, and its `--maxconn` slot given back."""
        self._nconns -= 1
        if self.limit is not None:
            self.limit.release()

    # -- inactivity sweep ---------------------------------------------------------------

    def _arm_sweep(self) -> None:
        if self._sweep is None:
            self._sweep = self.loop.call_later(sweep_interval(self.settings.timeouts),
                                               self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        now = self.loop.time()
        t = self.settings.timeouts
        expired: list[tuple[_Conn, Failure]] = []
        inspected: list[_Conn] = []
        fes = list(self._frontends.values()) + list(self._draining)
        for fe in fes:
            for c in fe.conns:
                if c.state is _CONNECTING and not c.backend and t.http_request > 0 and \
                        now - c.born >= t.http_request:
                    inspected.append(c)
                    continue
                pump = c.pump
                up, down = (pump.up, pump.down) if pump is not None else (c.up, c.down)
                if up != c.seen_up:
                    c.client_at = now
                if down != c.seen_down:
                    c.server_at = now
                c.flush_counts()
                verdict = idle_verdict(c.state is not _CONNECTING, now, c.client_at,
                                       c.server_at, t)
                if verdict is not None:
                    expired.append((c, verdict))
        for c, verdict in expired:
            self.stats.fail(verdict)
            c.close()
        for c in inspected:
            if c.state is _CONNECTING:
                c._inspect(deadline=True)
        if self._nconns:
            self._arm_sweep()


__all__ = ["DEFAULT_SPLICE_THRESHOLD", "TcpProxy", "idle_verdict", "sni_backend", "sweep_interval"]
