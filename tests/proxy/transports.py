"""Test helpers for proxy.fdtransport and proxy.tlstransport: a protocol that records
what its transport tells it, and a `direct` Listener (plain or TLS) that makes them."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from proxy.listener import ConnectionLimit, Listener, bind_socket


class Recorder(asyncio.Protocol):
    """Records what the transport tells it; `on_data` decides what to do with a read."""

    def __init__(self, limit: ConnectionLimit, on_data: Any = None,
                 keep_open_on_eof: bool = False) -> None:
        self.limit = limit
        self.on_data = on_data
        self.keep_open_on_eof = keep_open_on_eof
        self.transport: Any = None
        self.data = bytearray()
        self.reads: list[bytes] = []  # each data_received's bytes
        self.reads_before_start = 0  # reads delivered by the first, immediate read
        self.eof = 0  # eof_received calls
        self.lost: list[BaseException | None] = []
        self.pauses = 0
        self.resumes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.transport.started:
            self.reads_before_start += 1
        self.data += data
        self.reads.append(data)
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool | None:
        self.eof += 1
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.limit.release()


class Server:
    """A direct Listener on 127.0.0.1 whose connections get Recorders (made with `kw`);
    with `ssl_context`, TLS (proxy.tlstransport)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *,
                 handshake_timeout: float | None = None, **kw: Any) -> None:
        self.limit = ConnectionLimit(100)
        self.protocols: list[Recorder] = []
        self.kw = kw
        self.listener = Listener(bind_socket("127.0.0.1", 0), self._make, limit=self.limit,
                                 ssl_context=ssl_context,
                                 handshake_timeout=handshake_timeout, direct=True)
        self.port = self.listener.address[1]

    def _make(self) -> Recorder:
        p = Recorder(self.limit, **self.kw)
        self.protocols.append(p)
        return p

    def close(self) -> None:
        self.listener.close()
        for p in self.protocols:
            if p.transport is not None and not p.transport.is_closing():
                p.transport.abort()
