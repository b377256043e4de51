"""A plain-TCP transport of pylb's own for accepted HTTP connections: the descriptor read
and written with os.read and os.write, watched with the loop's add_reader/add_writer only
when a call would wait.

Why not uvloop's. `loop.connect_accepted_socket` gives each connection libuv's TCP handle
and uvloop's transport, and with them work done per connection whatever the connection
does: a coroutine stepped twice and its future, a Python-level WeakValueDictionary entry
(uvloop's registry of transports), getsockname() and getpeername() (uvloop's extra info,
read eagerly), ioctl(FIONBIO), an epoll registration made and removed, and three
callbacks scheduled (connection_made, the coroutine's second step, connection_lost).
For a client that sends one request and closes (`Connection: close`, most non-browser
clients) that was ~25k instructions of the ~125k a request cost (bench.instructions
newconn, session 7's note), and four syscalls.

What this transport does instead, as haproxy does (its "speculative I/O": strace of it
under the l7-newconn load shows no epoll_ctl for client connections at all):

- The listener (proxy.listener) makes the descriptor non-blocking (one ioctl), builds the
  protocol and this transport and calls connection_made for each connection of an
  accept batch, then reads each at once (`start`): under load the request is nearly
  always there already (a miss costs one failed read, and the descriptor is then watched
  as usual). Accepting the whole batch first keeps the requests' processing, and their
  writes to the servers, together: reading each connection as it was accepted spread
  those writes out, and the servers (nginx in bench/) were woken once per request
  rather than once per burst: +2.7 µs a request under the l7-newconn load, mostly in the
  kernel (`bench run`, back to back, two rounds: 50.1 against 47.3 µs). TCP_NODELAY is
  set on the listening socket, whose accepted connections inherit it on Linux, so no
  setsockopt per connection either.
- Reading is watched (`add_reader`) only from when the protocol wants more than the first
  read brought: the protocol may `pause_reading()` during its first `data_received`
  (proxy.http.server does while it answers a whole first request, until the frontend's
  next tick or the exchange's end), and nothing is registered until it resumes.
- A write goes straight to os.write; only what the kernel does not take is buffered and
  watched with `add_writer` (asyncio's selector transport does the same).
- `close()` with nothing left to send schedules `connection_lost` (never called from
  inside the protocol's own call), which closes the descriptor. The calls due in one
  loop turn are made by one loop callback (`LostCalls`, one per listener), not by one
  each: a `Connection: close` exchange ends in a close, and under load a turn ends
  several (bench.instructions newconn --concurrent 16: −1.3k instructions a request).

The cost moves to the keep-alive connection's later reads and writes: a Python frame each
(`_read_ready`, `write`) where uvloop's are C: +2.25k instructions a keep-alive request
(bench.instructions keepalive), against −15k a new connection.

The asyncio.Transport surface implemented is what pylb's HTTP/1.1 protocol uses (and what
asyncio documents): write, write_eof/can_write_eof, close, abort, is_closing,
pause_reading/resume_reading/is_reading, get_write_buffer_size, set/get_write_buffer
limits (proxy.flow's until set), get_extra_info ("peername", "sockname", "socket"),
set/get_protocol. TLS connections get its subclass, proxy.tlstransport.TlsTransport;
h2c's preface sniffing (proxy.http.h2server) keeps uvloop's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from asyncio.trsock import TransportSocket
from typing import Any, cast

from proxy import flow

log = logging.getLogger("pylb.transport")

# As much as uvloop reads at once (proxy.flow's bound on what a stalled peer makes us hold
# assumes it).
READ_SIZE = 256 * 1024

_read = os.read
_write = os.write
_writev = os.writev
# Empty and falsy like a list: the write buffer of a transport whose writes have all gone
# straight to the kernel (a tuple: an append to it would fail loudly, not be shared).
_NO_BUFFER = cast(list[bytes], ())
_HIGH_WATER = flow.HIGH_WATER
_LOW_WATER = flow.LOW_WATER


class LostCalls:
    """The connection_lost calls of transports closed since the loop last ran callbacks,
    made by one callback (not one each: a loop callback, its Handle and the bound method
    it holds cost ~2k instructions)."""

    __slots__ = ("_loop", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.due: list[FdTransport] = []

    def add(self, transport: FdTransport) -> None:
        """Call `transport._call_connection_lost(None)` soon (FdTransport.close does
        this inline: a call per connection)."""
        due = self.due
        if not due:
            self._loop.call_soon(self.run)
        due.append(transport)

    def run(self) -> None:
        due = self.due
        self.due = []
        for transport in due:
            try:
                transport._call_connection_lost(None)
            except Exception as exc:  # as the loop does for a callback's
                self._loop.call_exception_handler({
                    "message": "Exception in connection_lost", "exception": exc,
                    "transport": transport})
            except BaseException:  # (SystemExit...): the others' calls still come
                rest = due[due.index(transport) + 1:]
                if rest:
                    if not self.due:
                        self._loop.call_soon(self.run)
                    self.due[:0] = rest
                raise


class FdTransport(asyncio.Transport):
    """One accepted TCP connection (module docstring). Made by proxy.listener, which calls
    `start` after the protocol's connection_made."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_closing",
        "_eof",
        "_fd",
        "_high",
        "_loop",
        "_lost",
        "_lost_calls",
        "_low",
        "_paused",
        "_peer",
        "_protocol",
        "_sock",
        "_watched",
        "_writing",
        "_writing_paused",
        "started",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int,
                 protocol: asyncio.Protocol, peer: Any, lost_calls: LostCalls) -> None:
        """`fd`: a connected, non-blocking TCP socket's descriptor, the transport's from
        now on (it closes it); `peer`: its address as accept() returned it; `lost_calls`:
        the loop's (its listener's) batch of connection_lost calls."""
        self._loop = loop
        self._lost_calls = lost_calls
        self._fd = fd
        self._protocol: asyncio.Protocol | None = protocol
        self._peer = peer
        # what the kernel has not taken yet; a list of its own from the first write that
        # waits (most connections' never does)
        self._buffer: list[bytes] = _NO_BUFFER
        self._buffered = 0  # its size
        self._closing = False
        self._lost = False  # connection_lost is scheduled (or done)
        self._eof = False  # write_eof() called
        self._paused = False  # the protocol paused reading
        self._watched = False  # add_reader is in place
        self._writing = False  # add_writer is in place
        # proxy.flow's watermarks, which pylb's protocols set anyway (asyncio's default
        # pair is 64/16 KiB): proxy.http.server's need not call set_write_buffer_limits
        self._high = _HIGH_WATER
        self._low = _LOW_WATER
        self._writing_paused = False  # pause_writing() was called, resume_writing() not yet
        self.started = False  # `start` has returned
        self._sock: socket.socket | None = None  # made if asked for (get_extra_info)

    def start(self) -> None:
        """After connection_made: read what is there, then watch for more unless the
        protocol paused reading (or closed) meanwhile."""
        if not self._closing and not self._paused:  # (connection_made may have)
            self._read_ready()
        self.started = True
        if not self._paused and not self._closing and not self._watched:
            self._watched = True
            self._loop.add_reader(self._fd, self._read_ready)

    # -- reading -----------------------------------------------------------------------------

    def _read_ready(self) -> None:
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
        if data:
            protocol.data_received(data)
            return
        # The peer's FIN. Stop watching (the socket stays readable); the protocol says
        # whether the connection stays open to send what is left.
        self._unwatch()
        if not protocol.eof_received():
            self.close()

    def _unwatch(self) -> None:
        if self._watched:
            self._watched = False
            self._loop.remove_reader(self._fd)

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        # `_unwatch()`, inline (new connections pause in their first read, a call each);
        # not yet watched during that read: nothing to undo then
        if self._watched:
            self._watched = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if not self._watched:
            self._watched = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return  # (as asyncio's: a write after close is dropped)
        buffer = self._buffer
        if not buffer:
            try:
                n = _write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if n == len(data):
                return
            data = data[n:]
        self._keep(data)

    def _keep(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer what the kernel did not take (a write's slow path)."""
        if not self._buffer:
            self._writing = True
            self._loop.add_writer(self._fd, self._write_ready)
            if self._buffer is _NO_BUFFER:
                self._buffer = []
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        self._maybe_pause_protocol()

    def _write_ready(self) -> None:
        buffer = self._buffer
        try:
            n = _writev(self._fd, buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        self._buffered -= n
        while n:  # drop what was sent
            first = buffer[0]
            if len(first) <= n:
                n -= len(first)
                del buffer[0]
            else:
                buffer[0] = first[n:]
                n = 0
        self._maybe_resume_protocol()
        if buffer:
            return
        self._writing = False
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._schedule_lost(None)
        elif self._eof:
            self._shutdown_write()

    def _maybe_pause_protocol(self) -> None:
        if not self._writing_paused and self._buffered > self._high:
            self._writing_paused = True
            protocol = self._protocol
            if protocol is not None:
                try:
                    protocol.pause_writing()
                except Exception:
                    log.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and self._buffered <= self._low:
            self._writing_paused = False
            protocol = self._protocol
            if protocol is not None:
                try:
                    protocol.resume_writing()
                except Exception:
                    log.exception("protocol.resume_writing() failed")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._buffer:
            self._shutdown_write()

    def _socket(self) -> socket.socket:
        """A socket object on the descriptor, made when first needed (os has no
        shutdown() nor getsockname(); rare: half-closed tunnels, get_extra_info)."""
        if self._sock is None:
            self._sock = socket.socket(fileno=self._fd)
        return self._sock

    def _shutdown_write(self) -> None:
        with contextlib.suppress(OSError):  # the peer is gone: the next read or write says so
            self._socket().shutdown(socket.SHUT_WR)

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high = high
        self._low = low
        if self._buffered:
            self._maybe_pause_protocol()

    # -- closing -----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; connection_lost(None) once what is buffered is sent."""
        if self._closing:
            return
        self._closing = True
        # `_unwatch()` and `_schedule_lost(None)`, inline: every connection closes once
        if self._watched:
            self._watched = False
            self._loop.remove_reader(self._fd)
        if not self._buffer:  # (else once it is sent: _write_ready)
            self._lost = True
            # self._lost_calls.add(self), inline (every connection closes once)
            lost = self._lost_calls
            due = lost.due
            if not due:
                self._loop.call_soon(lost.run)
            due.append(self)

    def abort(self) -> None:
        """Close now, dropping what is buffered."""
        self._force_close(None)

    def _fatal(self, exc: OSError) -> None:
        if not isinstance(exc, ConnectionError):  # (resets and broken pipes are routine)
            log.debug("connection from %s: %r", self._peer, exc)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffered = 0
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._closing = True
        self._unwatch()
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: BaseException | None) -> None:
        if not self._lost:
            self._lost = True
            if exc is None:
                self._lost_calls.add(self)
            else:  # (a read or write error: rare, a callback of its own)
                self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        protocol = self._protocol
        self._protocol = None  # (breaks the cycle with the protocol's reference to us)
        try:
            if protocol is not None:
                protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            fd = self._fd
            if fd >= 0:
                self._fd = -1
                if self._sock is not None:
                    self._sock.detach()  # (else its finalizer would close `fd` again)
                os.close(fd)

    # -- the rest of asyncio.BaseTransport ----------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if self._fd < 0:
            return default
        if name == "sockname":
            return self._socket().getsockname()
        if name == "socket":  # as asyncio's: the socket, not to be closed by the caller
            return TransportSocket(self._socket())
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else "closing" if self._closing else "open"
        return f"<FdTransport fd={self._fd} {state} peer={self._peer!r}>"
