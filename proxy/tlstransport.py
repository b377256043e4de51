"""TLS over proxy.fdtransport: the handshake, then records decrypted and encrypted between
the descriptor and the protocol, with no event-loop TLS layer in between.

Why not uvloop's. `connect_accepted_socket(ssl=...)` puts uvloop's SSLProtocol between
its TCP transport and ours: per read it fills a 256 KiB buffer, feeds OpenSSL's memory BIO,
and reads until OpenSSL says "want read" (an exception: SSLWantReadError, made and caught
every time); per write it queues the data in a backlog, drains the backlog into OpenSSL,
and copies the records out to the TCP transport, with flow-control bookkeeping on both
layers (~4k instructions a write besides OpenSSL's own work, bench.instructions
tls-keepalive; 16-exchange-round5.md). On a TLS keep-alive request that layer cost more
than OpenSSL's encryption itself. A new connection paid for uvloop's TCP transport and
hand-over too (proxy.fdtransport says what those are).

What this transport does: the same two memory BIOs and `ssl.SSLObject` as asyncio's and
uvloop's TLS layers (so SNI callbacks, ALPN, client certificates and session resumption
are the ssl module's, unchanged), driven from proxy.fdtransport's descriptor I/O:

- Handshake. The listener makes one per accepted connection and calls `start`, which
  reads the ClientHello at once (it is nearly always there already: the speculative read
  of proxy.fdtransport) and answers it; the descriptor is watched only if the client's
  next flight is not there yet. The listener's `ready` callback makes the protocol once
  the handshake is done (ALPN has chosen it: proxy.http.alpn). A handshake that fails gets
  OpenSSL's alert sent, then the connection is closed and `failed` called (the listener
  gives back its --maxconn slot); one not done within the handshake timeout is cut the
  same way (haproxy's `timeout client-hs`; pylb's is `timeout client`, proxy.http.proxy).
- Reading. One os.read, into the incoming BIO, then records read out of OpenSSL (a record
  is at most 16 KiB of plaintext, and SSL_read returns at most one) and handed to the
  protocol, while whole records are left (`MemoryBIO.pending`: no exception in the
  common case; a partial record ends the loop with one). A protocol that pauses reading
  leaves what is left in the BIO; it is read on `resume_reading`, on the next loop turn.
- Writing. `write` encrypts at once (OpenSSL writes into the unbounded outgoing BIO, so it
  never waits) and passes the records to proxy.fdtransport's write: straight to the
  kernel, buffered only when the kernel does not take them. Watermarks count encrypted
  bytes not yet sent.
- End. The peer's close_notify is a read shutdown, as in haproxy (and TCP's FIN, as on the
  plain transport): `eof_received`; a protocol that returns True (a whole request was
  read: its answer still goes out) keeps writing. uvloop's layer instead dropped what was
  written after it. `close()` sends our close_notify after what is queued and closes
  without waiting for the peer's (as haproxy and nginx do); `abort()` sends none.
  `write_eof` is not supported (TLS 1.2 has no half-close), as with asyncio's.

The asyncio.Transport surface is proxy.fdtransport's, plus get_extra_info "ssl_object",
"sslcontext", "peercert", "cipher" and "compression", as asyncio's TLS transports give.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from proxy.fdtransport import READ_SIZE, FdTransport, LostCalls

log = logging.getLogger("pylb.transport")

# SSL_read returns the plaintext of one record at most: 2^14 bytes (RFC 8446 §5.1).
RECORD_MAX = 16384

_read = os.read
_write = os.write
_WantRead = ssl.SSLWantReadError
_ZeroReturn = ssl.SSLZeroReturnError
_SSLError = ssl.SSLError
_fd_write = FdTransport.write


class TlsTransport(FdTransport):
    """One accepted TLS connection (module docstring). Made by proxy.listener, which calls
    `start`; `ready(transport)` once the handshake is done (it gives the transport its
    protocol), `failed(None, exc)` if it is not."""

    __slots__ = (
        "_handshaking",
        "_in_write",
        "_incoming",
        "_on_failed",
        "_on_ready",
        "_out_read",
        "_outgoing",
        "_ssl_read",
        "_ssl_write",
        "_sslobj",
        "_timeout",
        "_timer",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, peer: Any,
                 lost_calls: LostCalls, context: ssl.SSLContext, timeout: float | None,
                 ready: Callable[[TlsTransport], None],
                 failed: Callable[[object, BaseException | None], None]) -> None:
        # (no protocol until the handshake is done: `ready` sets it)
        super().__init__(loop, fd, None, peer, lost_calls)  # type: ignore[arg-type]
        self._incoming = incoming = ssl.MemoryBIO()
        self._outgoing = outgoing = ssl.MemoryBIO()
        self._sslobj = sslobj = context.wrap_bio(incoming, outgoing, server_side=True)
        # The C object's methods, taken once: per record, no ssl.py frame nor lookup
        c = sslobj._sslobj  # type: ignore[attr-defined]
        self._ssl_read = c.read
        self._ssl_write = c.write
        self._in_write = incoming.write
        self._out_read = outgoing.read
        self._handshaking = True
        self._timeout = timeout if timeout is not None else 60.0  # (asyncio's default)
        self._timer: asyncio.TimerHandle | None = None
        self._on_ready = ready
        self._on_failed: Callable[[object, BaseException | None], None] | None = failed

    # -- the handshake ----------------------------------------------------------------------

    def start(self) -> None:
        """Read the ClientHello if it is there, answer it; watch for the rest."""
        self._shake()
        self.started = True
        if self._handshaking and not self._closing:
            self._timer = self._loop.call_later(self._timeout, self._timed_out)

    def _shake(self) -> None:
        """The descriptor is readable during the handshake."""
        try:
            data = _read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            self._watch_handshake()
            return
        except OSError as exc:
            self._handshake_failed(exc, alert=False)
            return
        if not data:
            self._handshake_failed(ConnectionResetError("closed during the TLS handshake"),
                                   alert=False)
            return
        self._in_write(data)
        try:
            self._sslobj.do_handshake()
        except _WantRead:
            self._flush()
            self._watch_handshake()
            return
        except (OSError, ValueError) as exc:  # SSLError; SSLCertVerificationError
            self._handshake_failed(exc, alert=True)
            return
        self._handshaking = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush()  # the server's last flight, TLS 1.3 session tickets
        self._on_failed = None
        ready = self._on_ready
        try:
            ready(self)
        except Exception:
            log.exception("connection from %s: internal error", self._peer)
            self.abort()
            return
        if self._protocol is None or self._closing:
            return
        if not self._paused:
            # the request often came with the client's Finished
            if self._incoming.pending:
                self._decrypt()
            if not self._paused and not self._closing:
                self._watched = True
                self._loop.add_reader(self._fd, self._read_ready)  # (replaces _shake)
                return
        self._unwatch_handshake()

    def _watch_handshake(self) -> None:
        if not self._watched:
            self._watched = True
            self._loop.add_reader(self._fd, self._shake)

    def _unwatch_handshake(self) -> None:
        if self._watched:
            self._watched = False
            self._loop.remove_reader(self._fd)

    def _timed_out(self) -> None:
        self._timer = None
        if self._handshaking:
            self._handshake_failed(TimeoutError("TLS handshake timed out"), alert=False)

    def _handshake_failed(self, exc: BaseException, *, alert: bool) -> None:
        if self._closing:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unwatch_handshake()
        if alert:
            self._flush()  # OpenSSL's alert says why (unknown CA, no shared cipher...)
        failed = self._on_failed
        self._on_failed = None
        FdTransport.close(self)
        if failed is not None:
            failed(None, exc)

    # -- reading -----------------------------------------------------------------------------

    def _read_ready(self) -> None:
        # The read and its errors as FdTransport._read_ready's, repeated: a helper shared
        # by both would be a Python call per read on each
        try:
            data = _read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        protocol = self._protocol
        if protocol is None:  # (lost already: a read due in the same loop turn)
            return
        if not data:
            # TCP's FIN without a close_notify: a truncated record, if any, is dropped
            self._read_shutdown()
            return
        self._in_write(data)
        if self._paused:
            return  # (read on resume_reading)
        # One record, the common case, inline; `_decrypt` for the rest. Asking for a
        # whole record's plaintext leaves none of it inside OpenSSL: asking for what the
        # BIO holds would not (part of a record may have been taken from the BIO by an
        # earlier read, and the rest of its plaintext would wait in OpenSSL).
        try:
            chunk = self._ssl_read(RECORD_MAX)
        except _WantRead:
            chunk = None  # a partial record: the rest comes with the next read
        except _ZeroReturn:
            chunk = b""
        except _SSLError as exc:
            self._fatal(exc)
            return
        if chunk:
            protocol.data_received(chunk)
            if self._incoming.pending:
                self._decrypt()
        elif chunk is not None:
            self._read_shutdown()  # the peer's close_notify
            return
        if self._outgoing.pending:  # a post-handshake message's answer (KeyUpdate)
            self._flush()

    def _decrypt(self) -> None:
        """Hand the protocol the whole records the incoming BIO holds, while it reads."""
        while not self._paused and not self._closing \
                and (self._incoming.pending or self._sslobj.pending()):
            protocol = self._protocol
            if protocol is None:
                return
            try:
                chunk = self._ssl_read(RECORD_MAX)
            except _WantRead:
                break
            except _ZeroReturn:
                chunk = b""
            except _SSLError as exc:
                self._fatal(exc)
                return
            if not chunk:
                self._read_shutdown()
                return
            protocol.data_received(chunk)
        if self._outgoing.pending:
            self._flush()

    def _read_shutdown(self) -> None:
        """The peer will send no more: close_notify or FIN (module docstring)."""
        self._unwatch()
        protocol = self._protocol
        if protocol is not None and not self._closing and not protocol.eof_received():
            self.close()

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        FdTransport.resume_reading(self)
        # what `_decrypt` would read (next turn: not from inside the protocol's call)
        if self._incoming.pending or self._sslobj.pending():
            self._loop.call_soon(self._decrypt)

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return  # (as asyncio's: a write after close is dropped)
        try:
            self._ssl_write(data)
        except _SSLError as exc:
            self._fatal(exc)
            return
        records = self._out_read()
        # FdTransport.write's fast path, inline (a frame a response less); its rest there
        if not self._buffer:
            try:
                n = _write(self._fd, records)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if n == len(records):
                return
            records = records[n:]
        self._keep(records)

    def _flush(self) -> None:
        """Send what OpenSSL wrote without a write of ours (handshake, alerts, tickets)."""
        out = self._out_read()
        if out:
            _fd_write(self, out)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections have no half-close")

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Our close_notify after what is queued, then close (module docstring)."""
        if self._closing:
            return
        if self._handshaking:  # (no protocol yet: a shutdown's)
            self._handshake_failed(ConnectionAbortedError("closed during the TLS handshake"),
                                   alert=False)
            return
        if not self._lost:
            # SSL_shutdown: our close_notify into the outgoing BIO. It raises "want read"
            # (the peer's close_notify, which is not waited for).
            with contextlib.suppress(_SSLError, ValueError):
                self._sslobj.unwrap()
            self._flush()
        FdTransport.close(self)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        failed = self._on_failed  # (an error during the handshake)
        self._on_failed = None
        FdTransport._force_close(self, exc)
        if failed is not None:
            failed(None, exc or ConnectionAbortedError("aborted during the TLS handshake"))

    # -- the rest of asyncio.BaseTransport ----------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "sslcontext":
            return self._sslobj.context
        if name == "peercert":
            return None if self._handshaking else self._sslobj.getpeercert()
        if name == "cipher":
            return None if self._handshaking else self._sslobj.cipher()
        if name == "compression":
            return None if self._handshaking else self._sslobj.compression()
        return FdTransport.get_extra_info(self, name, default)

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else "closing" if self._closing \
            else "handshaking" if self._handshaking else "open"
        return f"<TlsTransport fd={self._fd} {state} peer={self._peer!r}>"
