"""HttpProxy: one L7 frontend (the plain :80 one, or the TLS :443 one) of one worker.

It owns the listening server, the current route table (swapped atomically by
`set_table`), the pool of idle backend connections, and the set of open client
connections; the per-connection work is `server.ClientProtocol`'s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
from collections.abc import Callable, Collection
from typing import Any, cast

from proxy.balance import Balancers, Key
from proxy.connect import Dial, ShortageLog
from proxy.http.alpn import AlpnSwitch, PrefaceSwitch
from proxy.http.h2server import H2Connection
from proxy.http.h2upstream import H2Pool
from proxy.http.idle import IdleSweep, LateTimers
from proxy.http.parser import resolve
from proxy.http.pool import Pool
from proxy.http.routing import Router
from proxy.http.server import ClientProtocol
from proxy.http.upstream import UpstreamProtocol
from proxy.listener import ConnectionLimit, Listener, bind_socket, delay_first_acks
from pylb.config import Settings
from pylb.counters import Stats
from pylb.delta import Delta
from pylb.failures import Failure
from pylb.model import RouteTable, Server

log = logging.getLogger("pylb.http")


class HttpProxy:
    def __init__(self, settings: Settings, stats: Stats, balancers: Balancers, *,
                 frontend: str = "http", tls: bool = False,
                 ssl_context: ssl.SSLContext | None = None,
                 limit: ConnectionLimit | None = None) -> None:
        """Made in the running loop, which serves its connections (`loop`). `limit`: the
        worker's `--maxconn`, shared with its other frontends; with it the port is served
        by `proxy.listener.Listener`, which stops accepting at the limit (new connections
        wait in the kernel's backlog) and survives EMFILE."""
        self.settings = settings
        self.error_page = settings.error_page_body  # reread on SIGHUP (DataPlane.reload)
        self.limit = limit
        self._listener: Listener | None = None
        self.stats = stats
        self.balancers = balancers
        self.frontend = frontend
        self.tls = tls
        self.ssl_context = ssl_context
        self.parser_kind = resolve(settings.http_parser)
        self.hsts: bytes | None = settings.tls.hsts.encode() if tls and settings.tls.hsts \
            else None
        self.fe_counters = stats.frontend(frontend)
        self.proto = b"https" if tls else b"http"  # X-Forwarded-Proto
        self.table = RouteTable()
        self.router = Router(())
        # `set_table`s so far: a route decision holds while it is unchanged; the
        # decisions by head, for the next connections (ClientProtocol.on_head)
        self.generation = 0
        self.routed: dict[Any, Any] = {}
        self.gateway: Any = None  # a Gateway listener's proxy.http.gwplane.GatewayDispatch
        # The open client connections, as a dict's keys rather than a set: a set grows
        # fourfold once 60 % full, so 5,000 of them take 512 KiB in a set and 145 KiB in
        # a dict (75 bytes per connection fewer, at bench/memory.py's 5,000 per worker).
        self.conns: dict[ClientProtocol | H2Connection, None] = {}
        self.closing = False
        # The port clients connect to (X-Forwarded-Port), once started on one port: a
        # getsockname per connection fewer (0: each connection asks its socket).
        self.port = 0
        # The last client address handed to a connection, interned: connections from
        # one address share its string (many come from one, behind a NAT or a load
        # balancer). A compare with it costs less than sys.intern (~0.5k instructions a
        # connection: a hash and a lookup of the new string).
        self._peer_ip = ""
        # What every new client connection reads (ClientProtocol's __init__ and first
        # `_arm`): plain attributes, made here in the running loop. (A cached_property's
        # value is read through its descriptor, which CPython 3.11 does not specialize:
        # ~250 instructions a read more, four reads a connection.)
        loop = self.loop = asyncio.get_running_loop()
        limits, timeouts = settings.limits, settings.timeouts
        self.pool = Pool(loop, limits.pool_per_server, timeouts.backend_idle)
        self.pool.retain(balancers.live_keys)  # pool only the table's servers
        self.idle = IdleSweep(loop, self.conns, timeouts.keep_alive)  # idle keep-alive
        self.late = LateTimers(loop)  # the first timers of new client connections
        self._h2_pool: H2Pool | None = None
        self._server: asyncio.Server | None = None
        self._connects: set[Dial] = set()  # connects under way
        # set when the last connection has gone, while shutdown waits for that
        self.gone: asyncio.Event | None = None
        self.shortage = ShortageLog(frontend)  # connects failing for our own shortage

    @property
    def h2_pool(self) -> H2Pool:
        """The h2c connections to servers of h2c (gRPC) backends."""
        if self._h2_pool is None:
            limits, timeouts = self.settings.limits, self.settings.timeouts
            self._h2_pool = H2Pool(self.loop, timeouts.connect, timeouts.backend_idle,
                                   limits.pool_per_server)
        return self._h2_pool

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self.conns)

    def set_table(self, table: RouteTable, delta: Delta | None = None,
                  left: Collection[Key] = ()) -> None:
        """Serve `table` from now on: new requests use it at once; exchanges under way
        keep their server. Idle pooled connections to servers that left are closed.

        Alone, this brings the shared balancers up to date too. With `delta` (the change
        from the table served so far, pylb.delta), the caller has applied it to the
        balancers already, and `left` names the server addresses no backend lists any
        more: the router is rebuilt only when this frontend's routes changed, and the pool
        looks only at what left."""
        if delta is None:
            left = self.balancers.update(table.backends)
            routes_changed = True
        else:
            routes_changed = (delta.https if self.tls else delta.http) is not None
        if routes_changed:
            self.router = Router(table.https if self.tls else table.http)
        self.table = table
        self.generation += 1
        self.routed = {}
        if left:
            self.pool.retain(self.balancers.live_keys)
        if self._h2_pool is not None and left:
            self._h2_pool.retain(self.balancers.live_keys)

    async def start(self, host: str, port: int, *, reuse_port: bool = False,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        loop = self.loop
        if self.limit is not None:
            if sock is None:
                sock = bind_socket(host, port, reuse_port=reuse_port)
            else:
                sock.setblocking(False)
            delay_first_acks(sock)
            self._listener = Listener(sock, self._factory(), limit=self.limit,
                                      ssl_context=self.ssl_context,
                                      handshake_timeout=self._handshake_timeout, loop=loop,
                                      direct=self.ssl_context is not None or not self.settings.h2c)
            self._listener.start()
            addr = sock.getsockname()
            self.port = addr[1]
            return addr[0], addr[1]
        if sock is not None:
            server = await loop.create_server(self._factory(), sock=sock,
                                              ssl=self.ssl_context, backlog=1024,
                                              ssl_handshake_timeout=self._handshake_timeout)
        else:
            server = await loop.create_server(self._factory(), host, port,
                                              ssl=self.ssl_context, reuse_port=reuse_port,
                                              reuse_address=True, backlog=1024,
                                              ssl_handshake_timeout=self._handshake_timeout)
        self._server = server
        for s in server.sockets:
            delay_first_acks(s)
        addr = server.sockets[0].getsockname()
        ports = {s.getsockname()[1] for s in server.sockets}
        self.port = addr[1] if len(ports) == 1 else 0
        return addr[0], addr[1]

    @property
    def _handshake_timeout(self) -> float | None:
        """A TLS handshake is bounded by `timeout client`, as in haproxy 2.6 (its
        `timeout client-hs`, 2.8, defaults to it too)."""
        return self.settings.timeouts.client if self.ssl_context is not None else None

    def _factory(self) -> Callable[[], asyncio.Protocol]:
        """What makes each new connection's protocol, chosen once (not per connection):
        TLS: ALPN chooses HTTP/2 or HTTP/1.1 (proxy.http.alpn); plain: h2c with prior
        knowledge only with --h2c, else HTTP/1.1 with no sniffing at all."""
        if self.ssl_context is not None:
            return self._alpn_protocol
        if self.settings.h2c:
            return self._preface_protocol
        return self._protocol

    def _alpn_protocol(self) -> asyncio.Protocol:
        return AlpnSwitch(self, self._listener.peer if self._listener is not None else None)

    def _preface_protocol(self) -> asyncio.Protocol:
        return PrefaceSwitch(self)

    def _protocol(self) -> asyncio.Protocol:
        """An HTTP/1.1 connection's."""
        listener = self._listener
        peer = listener.peer if listener is not None else None
        if peer:  # the address accept() gave (frontend.accepted)
            ip = peer[0]
            if ip != self._peer_ip:  # (the same as the last connection's: most often)
                self._peer_ip = sys.intern(ip)
            return ClientProtocol(self, self._peer_ip, peer[1])
        return ClientProtocol(self)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; close idle client connections now; let exchanges and tunnels
        under way finish for up to `grace` seconds, then cut what is left."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.conns):
            if conn.idle:
                conn.close()
        if self.conns:
            self.gone = asyncio.Event()
            try:
                await asyncio.wait_for(self.gone.wait(), grace)
            except TimeoutError:
                log.warning("%s: %d connections cut at the end of the grace period",
                            self.frontend, len(self.conns))
        for conn in list(self.conns):
            conn.abort()
        for dial in list(self._connects):
            dial.cancel()
        # Each cancelled connect ends (CLIENT_ABORT) within a turn or two of the loop; let
        # them end before the pool closes, so no late one hands it a connection.
        for _ in range(100):
            if not self._connects:
                break
            await asyncio.sleep(0)
        self.pool.close_all()
        if self._h2_pool is not None:
            self._h2_pool.close_all()
        self.idle.cancel()
        self.late.close()
        if self._server is not None:
            await self._server.wait_closed()
        # Let the transports' close callbacks run, so nothing is left for the loop's end.
        for _ in range(3):
            await asyncio.sleep(0)

    def connection_opened(self, conn: ClientProtocol | H2Connection) -> None:
        self.conns[conn] = None

    def connection_gone(self, conn: ClientProtocol | H2Connection | PrefaceSwitch) -> None:
        self.conns.pop(conn, None)  # type: ignore[arg-type]  # (a PrefaceSwitch never is)
        if self.limit is not None:
            self.limit.release()
        if self.gone is not None and not self.conns:  # (ClientProtocol.connection_lost
            self.gone.set()  # repeats these lines inline)

    # -- connecting to servers --------------------------------------------------------------

    def connect(self, client: ClientProtocol, server: Server) -> None:
        """Connect to `server` for `client`, which hears of it in `connect_done`."""
        key = server.key
        kind = self.parser_kind
        dial = Dial(self.loop, lambda: UpstreamProtocol(key, kind), server.address,
                    server.port, lambda d: self._dialed(d, client, server))
        self._connects.add(dial)  # before start: a connect that fails at once ends in it
        dial.start(self.settings.timeouts.connect)

    def _dialed(self, dial: Dial, client: ClientProtocol, server: Server) -> None:
        self._connects.discard(dial)
        failure = dial.failure
        if failure is None:
            up = cast(UpstreamProtocol, dial.protocol)
            if self.closing and client.closed:
                up.close()
                return
            client.connect_done(server, up, None)
        elif failure is not Failure.CLIENT_ABORT:  # CLIENT_ABORT: cut at shutdown
            if dial.local:
                self.shortage.note(self.loop, dial.error, len(self.conns))
            client.connect_done(server, None, failure, local=dial.local)
