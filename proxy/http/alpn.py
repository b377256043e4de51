"""Which protocol a new client connection speaks: HTTP/1.1 (`server.ClientProtocol`) or
HTTP/2 (`h2server.H2Connection`).

On the TLS frontend the handshake has chosen it (ALPN, `proxy.tls.ALPN`: h2 preferred,
http/1.1 else; no ALPN is HTTP/1.1). On the plain port, with `--h2c`, a connection whose
first bytes are the HTTP/2 preface is h2c with prior knowledge (RFC 9113 §3.3); the
Upgrade: h2c dance of RFC 7540 is not offered (RFC 9113 deprecates it, as nginx and
haproxy do). The switch happens once, when the connection is made or on its first bytes:
afterwards the transport talks to the chosen Protocol directly, at no cost per byte.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

from proxy.http.frontend import Frontend
from proxy.http.h2server import PREFACE, H2Connection
from proxy.http.server import ClientProtocol


class AlpnSwitch(asyncio.Protocol):
    """TLS: the protocol ALPN agreed on."""

    __slots__ = ("peer", "proxy")

    def __init__(self, proxy: Frontend, peer: Any = None) -> None:
        self.proxy = proxy
        # The client's address as the listener's accept() gave it (Listener.peer), or
        # None: handed on, it saves the connection a getpeername() once the handshake
        # is done and, on uvloop, the PseudoSocket kept for it (as on the plain port).
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        proto: H2Connection | ClientProtocol = H2Connection(self.proxy) if chosen == "h2" \
            else ClientProtocol(self.proxy)
        peer = self.peer
        if peer:
            proto.client_ip = sys.intern(peer[0])
            proto.client_port = peer[1]
        transport.set_protocol(proto)
        proto.connection_made(transport)


class PrefaceSwitch(asyncio.Protocol):
    """Plain port with --h2c: HTTP/2 if the first bytes are its preface."""

    __slots__ = ("buf", "proxy", "timer", "transport")

    def __init__(self, proxy: Frontend) -> None:
        self.proxy = proxy
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.timer = self.proxy.loop.call_later(
            self.proxy.settings.timeouts.http_request, self.transport.close)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        n = min(len(buf), len(PREFACE))
        if buf[:n] == PREFACE[:n] and n < len(PREFACE):
            self.buf = buf  # a preface so far, not whole yet
            return
        proto: asyncio.Protocol = H2Connection(self.proxy) if buf[:n] == PREFACE \
            else ClientProtocol(self.proxy)
        if self.timer is not None:
            self.timer.cancel()
        t = self.transport
        assert t is not None
        t.set_protocol(proto)
        proto.connection_made(t)
        proto.data_received(buf)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.proxy.connection_gone(self)  # frees the --maxconn slot
