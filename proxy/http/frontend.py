"""What a client connection (server.ClientProtocol) uses of the frontend that accepted it:
a structural type, so that server.py need not import proxy.py (which imports server.py
to make its Protocol objects). `proxy.HttpProxy` is the one implementation; mypy checks
that it fits where `HttpProxy._protocol` hands itself to a ClientProtocol.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Protocol

from proxy import flow
from proxy.balance import Balancers
from proxy.http import headers as hdr
from proxy.http.h2upstream import H2Pool
from proxy.http.idle import IdleSweep, LateTimers
from proxy.http.pool import Pool
from proxy.http.routing import Router
from proxy.listener import ConnectionLimit
from pylb.config import HttpParser, Settings
from pylb.counters import Counters, Stats
from pylb.model import RouteTable, Server


class Frontend(Protocol):
    settings: Settings
    stats: Stats
    balancers: Balancers
    frontend: str  # its name in the stats and the access log
    tls: bool
    hsts: bytes | None  # a Strict-Transport-Security value to add to responses
    proto: bytes  # X-Forwarded-Proto
    fe_counters: Counters
    parser_kind: HttpParser
    error_page: bytes | None
    table: RouteTable
    router: Router
    generation: int  # `table`s served so far: a route decision holds while it is unchanged
    routed: dict[Any, Any]  # route decisions by head (server.ClientProtocol.on_head)
    closing: bool  # shutting down: close connections after their exchange
    port: int  # the port it listens on, or 0 (not one port, or not started)
    gateway: Any  # a Gateway API listener's router (proxy.http.gwplane), or None
    conns: dict[Any, None]  # the open client connections (what `connection_opened` adds)
    limit: ConnectionLimit | None  # --maxconn, shared by the worker's listeners
    gone: asyncio.Event | None  # set when `conns` empties, while shutting down

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def idle(self) -> IdleSweep: ...

    @property
    def late(self) -> LateTimers: ...

    @property
    def h2_pool(self) -> H2Pool: ...

    def connection_opened(self, conn: Any) -> None:
        """A client connection is open (`conn`: the ClientProtocol)."""

    def connection_gone(self, conn: Any) -> None:
        """It has closed; its --maxconn slot is free."""

    def connect(self, client: Any, server: Server) -> None:
        """Connect to `server` for `client` (a ClientProtocol), which hears of the
        outcome through its `connect_done`."""


def accepted(transport: asyncio.Transport, fe: Frontend, client_ip: str = "",
             client_port: int = 0) -> tuple[str, int, int, tuple[bytes, bytes] | None]:
    """What a new client connection (HTTP/1.1 or HTTP/2) learns of itself once: the
    client's address and port (`client_ip`/`client_port` when the listener's accept()
    gave them already; else from the transport, "" and 0 when it has none; the address
    string is interned: many connections come from one address, behind a NAT or a load
    balancer, and then share it), the frontend's own
    port (X-Forwarded-Port), and on a TLS frontend the verified client certificate's
    (verify, DN) for X-SSL-Client-*; it also sets the transport's watermarks
    (proxy.flow). TCP_NODELAY: uvloop and asyncio set it on TCP transports already."""
    local = fe.port
    if not local:
        sockname = transport.get_extra_info("sockname")
        local = sockname[1] if sockname else 0
    flow.set_limits(transport)
    ssl_client = None
    if fe.tls:
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        if cert:
            ssl_client = (b"SUCCESS", hdr.ssl_client_dn(cert))
    if client_ip:
        return client_ip, client_port, local, ssl_client
    peer = transport.get_extra_info("peername")
    if peer:
        return sys.intern(peer[0]), peer[1], local, ssl_client
    return "", 0, local, ssl_client
