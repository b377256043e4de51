"""What a client connection (server.ClientProtocol) uses of the frontend that accepted it:
a structural type, so that server.py need not import proxy.py (which imports server.py
to make its Protocol objects). `proxy.HttpProxy` is the one implementation; mypy checks
that it fits where `HttpProxy._protocol` hands itself to a ClientProtocol.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from proxy.balance import Balancers
from proxy.http.idle import IdleSweep
from proxy.http.pool import Pool
from proxy.http.routing import Router
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
    closing: bool  # shutting down: close connections after their exchange
    port: int  # the port it listens on, or 0 (not one port, or not started)
    gateway: Any  # a Gateway API listener's router (proxy.http.gwplane), or None

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def idle(self) -> IdleSweep: ...

    def connection_opened(self, conn: Any) -> None:
        """A client connection is open (`conn`: the ClientProtocol)."""

    def connection_gone(self, conn: Any) -> None:
        """It has closed; its --maxconn slot is free."""

    def connect(self, client: Any, server: Server) -> None:
        """Connect to `server` for `client` (a ClientProtocol), which hears of the
        outcome through its `connect_done`."""
