"""Accepting connections: a listener that pauses at `--maxconn` and survives running out
of file descriptors.

Theory of operation. asyncio's `create_server` accepts for as long as the socket is
readable and offers no way to stop for a while, so pylb accepts itself: the listening
socket is non-blocking and registered with `loop.add_reader`; each readiness callback
accepts up to `ACCEPT_BATCH` connections and hands each to
`loop.connect_accepted_socket` with the frontend's protocol factory (and TLS context),
stepping that coroutine from callbacks rather than paying for a Task per connection.
A `direct` listener (HTTP, plain or TLS) skips connect_accepted_socket: each connection
gets proxy.fdtransport's transport (TLS: proxy.tlstransport's) and is read at once (those
modules' docstrings say why); a TLS connection's protocol is made once its handshake is
done (`_tls_ready`).

- On uvloop no socket.socket is made for an accepted connection: connect_accepted_socket
  reads only `family`, `type` and `fileno()` of what it is given, and at the transport's
  end calls its `close()` (libuv has closed the descriptor by then). `_HandOver` is that
  object and steps the coroutine too (as proxy.connect.Steps does), so a connection costs
  one small object instead of a socket object (made, then detached: ~3k instructions)
  and a Steps. The descriptor is libuv's once uvloop has asked for it (`fileno()`, just
  before it opens its TCP handle on it); should the hand-over fail before, `_HandOver`
  closes it. (If libuv's uv_tcp_open itself failed, which it does only for a descriptor
  it already watches, that one descriptor would stay open.) Other loops get a
  socket.socket and proxy.connect.Steps.

- `ConnectionLimit` is shared by all listeners of a worker. At `maxconn` open connections
  every listener removes its reader: new connections wait in the kernel's backlog (as
  haproxy's do) instead of being accepted and dropped. The protocol calls `release()` when
  its connection ends; below the limit the readers come back.
- EMFILE, ENFILE, ENOBUFS and ENOMEM mean "overloaded", not "broken" (trio's
  `_highlevel_serve_listeners` draws the same line): the listener logs (at most once per
  `WARN_EVERY` seconds), stops accepting for `OVERLOAD_PAUSE` seconds, and tries again, so
  it recovers the moment descriptors are freed. Other accept errors (ECONNABORTED, EPERM
  from a firewall) drop that one connection and go on.
- How many to accept: on Linux a TCP listener's `TCP_INFO` reports its accept queue's
  length (`tcpi_unacked`; what uWSGI's listen-queue figure reads), so a callback accepts
  exactly what is queued (at most `ACCEPT_BATCH`) and never ends on the accept that fails
  with EAGAIN: that failed call and its OSError (with its message) cost ~5k instructions,
  the reading of the queue's length ~1k (callgrind, bench.instructions newconn). Where
  the queue's length is unknown (AF_UNIX, another OS) it accepts until EAGAIN. The
  listening socket is level-triggered: what arrives meanwhile brings the callback back.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import socket
import ssl
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

from proxy.connect import Steps
from proxy.fdtransport import FdTransport, LostCalls
from proxy.tlstransport import TlsTransport

log = logging.getLogger("pylb.listener")

ACCEPT_BATCH = 64  # connections per readiness callback; bounds one callback's latency
OVERLOAD_PAUSE = 0.1  # seconds without accepting after EMFILE & co.
WARN_EVERY = 10.0
BACKLOG = 4096  # haproxy's default backlog is maxconn; the kernel caps at somaxconn
OVERLOAD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Linux's struct tcp_info up to tcpi_unacked, which on a listening socket is the number of
# connections waiting in its accept queue (sk_ack_backlog; tcp_get_info in tcp.c).
_TCP_INFO: int = getattr(socket, "TCP_INFO", 0)  # 0: not on this OS
_QUEUED_LEN = 28
_queued = struct.Struct("=24xI").unpack
# ioctl(FIONBIO) with a writable buffer: fcntl.ioctl tries a writable one first, and a
# bytes argument would cost it a formatted error message (~2.7k instructions) each call.
_ioctl = fcntl.ioctl
_FIONBIO = termios.FIONBIO
_NONBLOCKING = bytearray(struct.pack("i", 1))


class ConnectionLimit:
    """Open connections of one worker, against `--maxconn`."""

    __slots__ = ("current", "limit", "listeners", "refusals")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0
        self.refusals = 0  # times accepting paused because the limit was reached
        self.listeners: list[Listener] = []

    @property
    def full(self) -> bool:
        return self.current >= self.limit

    # A direct listener (`_accept_direct`) and proxy.http.server's connection_lost do
    # acquire's and release's first two lines inline (a call per connection each), and
    # call `reached` and `freed` on the edges.

    def acquire(self) -> None:
        self.current += 1
        if self.current == self.limit:
            self.reached()

    def reached(self) -> None:
        """`current` has just reached the limit: the listeners pause."""
        self.refusals += 1
        for lst in self.listeners:
            lst.pause()

    def release(self) -> None:
        self.current -= 1
        if self.current == self.limit - 1:
            self.freed()

    def freed(self) -> None:
        """`current` has just fallen below the limit: the listeners resume."""
        for lst in self.listeners:
            lst.resume()


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket; `host` may be IPv4 or IPv6 (dual-stack off, as
    with create_server)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # 0: not on this OS


def delay_first_acks(sock: socket.socket) -> None:
    """On a listening socket where the client speaks first and the proxy answers (HTTP,
    TLS): the connections it accepts start in delayed-ACK mode, so the kernel sends no
    bare ACK for a request or a ClientHello but lets the answer carry it, one TCP segment
    less per new connection (haproxy does this for its HTTP frontends: TCP_QUICKACK 0 on
    the listener, which Linux's accepted sockets inherit). A request that is not answered
    within the delayed-ACK timeout (40 ms at first) is acknowledged then, as usual;
    bulk uploads are acknowledged every second segment regardless. Not for TCP services,
    where the server may speak first. A no-op where the option does not exist."""
    if _TCP_QUICKACK and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 0)


class _Accepted4(socket.socket):
    """An accepted connection, made straight from its descriptor. `family` and `type` are
    plain class attributes: socket.socket's properties convert them to enums on each
    read, which socket.accept() and uvloop's connect_accepted_socket do five times per
    connection (a third of the Python work of accepting one)."""

    __slots__ = ()
    family = socket.AF_INET
    type = socket.SOCK_STREAM


class _Accepted6(socket.socket):
    __slots__ = ()
    family = socket.AF_INET6
    type = socket.SOCK_STREAM


class _HandOver:
    """An accepted IPv4 connection on its way to its protocol, on uvloop (module
    docstring): what connect_accepted_socket takes for a socket, and the stepper of that
    coroutine. No `__init__` (a Python call per connection, ~0.7k instructions): the
    listener sets `fd` and `listener`, then `coro` before the first `step`."""

    __slots__ = ("coro", "fd", "listener")
    family = socket.AF_INET
    type = socket.SOCK_STREAM
    fd: int
    listener: Listener | None
    coro: Any

    def fileno(self) -> int:
        """uvloop asks just before it opens its TCP handle on the descriptor: libuv's
        from now on."""
        fd = self.fd
        self.fd = -1
        return fd

    def close(self) -> None:
        """uvloop's, when the transport has closed (and libuv the descriptor)."""

    def step(self, _fut: object = None) -> None:
        try:
            yielded = self.coro.send(None)
        except StopIteration:
            # The protocol has the connection and will release its slot. uvloop keeps
            # this object for the connection's life (its file object): it holds nothing
            # more from now on (the finished coroutine, the listener).
            self.coro = self.listener = None
            return
        except (Exception, asyncio.CancelledError) as e:
            if self.fd >= 0:  # never handed to libuv
                os.close(self.fd)
                self.fd = -1
            listener = self.listener
            self.coro = self.listener = None
            assert listener is not None
            listener._handed_over(None, e)
            return
        if yielded is None:  # a bare yield: step again on the next turn
            assert self.listener is not None
            self.listener.loop.call_soon(self.step)
        else:
            yielded.add_done_callback(self.step)


class _HandOver6(_HandOver):
    __slots__ = ()
    family = socket.AF_INET6


class Listener:
    """One listening socket feeding a protocol factory."""

    def __init__(self, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol], *,
                 limit: ConnectionLimit | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 handshake_timeout: float | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 direct: bool = False) -> None:
        """`handshake_timeout`: seconds a TLS client has to finish its handshake (the
        connection holds a slot meanwhile); None: the loop's default (60 s). `direct`:
        connections get proxy.fdtransport's transport (with `ssl_context`,
        proxy.tlstransport's), not the loop's (module docstring); ignored for AF_UNIX."""
        self.sock = sock
        self._family = sock.family
        self._accepted: type[socket.socket] | None = {
            socket.AF_INET: _Accepted4, socket.AF_INET6: _Accepted6}.get(sock.family)
        # the accept queue's length can be read (module docstring); False after a failure
        self._counted = _TCP_INFO != 0 and self._accepted is not None
        self.limit = limit
        self.loop = loop or asyncio.get_running_loop()
        # uvloop: an accepted connection needs no socket object (module docstring)
        self._handover: type[_HandOver] | None = {
            socket.AF_INET: _HandOver, socket.AF_INET6: _HandOver6}.get(sock.family) \
            if type(self.loop).__module__.startswith("uvloop") else None
        self.accepting = False
        self.closed = False
        self.overloads = 0
        self._last_warn = 0.0
        self._resume_handle: asyncio.TimerHandle | None = None
        # The peer address of the connection being handed over, as accept() returned it:
        # the protocol factory may read it (both uvloop's and asyncio's
        # connect_accepted_socket call the factory before their first await, i.e. within
        # the first step, in `_on_readable`), which saves a getpeername() and, on uvloop,
        # the PseudoSocket the transport would make for it and keep for the connection's
        # life (72 bytes).
        self.peer: Any = None
        # connect_accepted_socket with the factory (and TLS), to be given a connection
        self._connect: Callable[[Any], Any] = functools.partial(
            self.loop.connect_accepted_socket, protocol_factory) if ssl_context is None \
            else functools.partial(self.loop.connect_accepted_socket, protocol_factory,
                                   ssl=ssl_context, ssl_handshake_timeout=handshake_timeout)
        if limit is not None:
            limit.listeners.append(self)
        self._factory = protocol_factory
        self._direct = direct and self._accepted is not None
        # TLS on a direct listener: proxy.tlstransport's handshake, then its transport
        self._tls = ssl_context if self._direct else None
        self._handshake_timeout = handshake_timeout
        if self._direct:  # inherited by the connections it accepts (Linux)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lost_calls = LostCalls(self.loop)

    @property
    def address(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return (name[0], name[1])

    def start(self) -> None:
        if not self.closed and (self.limit is None or not self.limit.full):
            self.resume()

    def pause(self) -> None:
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False

    def resume(self) -> None:
        if not self.accepting and not self.closed and self._resume_handle is None:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self.accepting = True

    def close(self) -> None:
        """Stop accepting and close the socket; connections already accepted go on."""
        if self.closed:
            return
        self.pause()
        self.closed = True
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if self.limit is not None and self in self.limit.listeners:
            self.limit.listeners.remove(self)
        self.sock.close()

    def _on_readable(self) -> None:
        sock = self.sock
        batch = ACCEPT_BATCH
        if self._counted:
            try:
                batch = _queued(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _QUEUED_LEN))[0]
            except (OSError, struct.error):
                self._counted = False  # not a listener whose queue Linux reports
                batch = ACCEPT_BATCH
            else:
                # 0: readable all the same; one try (it ends at EAGAIN if nothing is there)
                batch = 1 if batch <= 0 else min(batch, ACCEPT_BATCH)
        if self._direct:
            self._accept_direct(batch)
            return
        limit = self.limit
        accepted = self._accepted
        handover = self._handover
        family = self._family
        for _ in range(batch):
            try:
                if handover is not None:
                    fd, _addr = sock._accept()  # type: ignore[attr-defined]
                    conn: Any = handover()
                    conn.fd = fd
                    conn.listener = self
                elif accepted is not None:
                    # socket.accept() without its enum conversions. No setblocking:
                    # libuv makes the descriptor non-blocking when it takes it over.
                    fd, _addr = sock._accept()  # type: ignore[attr-defined]
                    conn = accepted(family, socket.SOCK_STREAM, 0, fd)
                else:  # AF_UNIX
                    conn, _addr = sock.accept()
                    conn.setblocking(False)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in OVERLOAD_ERRNOS:
                    self._overloaded(e)
                    return
                # ECONNABORTED, EPROTO, EPERM...: that one connection is gone; go on.
                continue
            if limit is not None:
                limit.acquire()
            self.peer = _addr
            # the hand-over, stepped from callbacks (module docstring)
            if handover is not None:
                conn.coro = self._connect(conn)
                conn.step()
            else:
                Steps(self.loop, self._connect(conn), self._handed_over)
            if not self.accepting:  # the limit paused us
                return

    def _accept_direct(self, batch: int) -> None:
        """`_on_readable` for a `direct` listener: each connection gets its protocol and
        a proxy.fdtransport.FdTransport, then (all accepted first) its first read (module
        docstring)."""
        limit = self.limit
        sock = self.sock
        loop = self.loop
        factory = self._factory
        tls = self._tls
        accepted: list[FdTransport] = []
        for _ in range(batch):
            try:
                fd, addr = sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in OVERLOAD_ERRNOS:
                    self._overloaded(e)
                    break
                continue  # ECONNABORTED, EPROTO, EPERM...: that one connection is gone
            try:
                _ioctl(fd, _FIONBIO, _NONBLOCKING)
            except OSError:  # (not seen on a socket just accepted; never leak it)
                os.close(fd)
                continue
            if limit is not None:  # limit.acquire(), inline (a call per connection)
                n = limit.current = limit.current + 1
                if n == limit.limit:
                    limit.reached()
            if tls is not None:  # the protocol once the handshake is done: `_tls_ready`
                accepted.append(TlsTransport(loop, fd, addr, self._lost_calls, tls,
                                             self._handshake_timeout, self._tls_ready,
                                             self._handed_over))
                if not self.accepting:
                    break
                continue
            self.peer = addr
            try:
                protocol: Any = factory()
            except Exception as e:
                os.close(fd)
                self._handed_over(None, e)
                continue
            transport = FdTransport(loop, fd, protocol, addr, self._lost_calls)
            try:
                protocol.connection_made(transport)
            except Exception:
                log.exception("connection from %s: internal error", addr)
                transport.abort()
                continue
            accepted.append(transport)
            if not self.accepting:  # the limit paused us
                break
        for transport in accepted:
            try:
                transport.start()
            except Exception:
                log.exception("connection from %s: internal error",
                              transport.get_extra_info("peername"))
                transport.abort()

    def _tls_ready(self, transport: TlsTransport) -> None:
        """A direct TLS connection's handshake is done: its protocol (ALPN's choice)."""
        self.peer = peer = transport.get_extra_info("peername")
        try:
            protocol: Any = self._factory()
        except Exception as e:
            transport.abort()
            self._handed_over(None, e)
            return
        transport.set_protocol(protocol)
        try:
            protocol.connection_made(transport)
        except Exception:
            log.exception("connection from %s: internal error", peer)
            transport.abort()

    def _handed_over(self, _result: object, exc: BaseException | None) -> None:
        if exc is None:
            return  # the protocol has the connection and will release its slot
        # The TLS handshake failed or the peer vanished before the transport was made (or
        # the hand-over was cancelled): the protocol never saw the connection, so its slot
        # is given back here.
        if self.limit is not None:
            self.limit.release()
        log.debug("connection dropped before it started: %r", exc)


    def _overloaded(self, e: OSError) -> None:
        self.overloads += 1
        now = time.monotonic()
        if now - self._last_warn >= WARN_EVERY:
            self._last_warn = now
            log.warning("accept on %s: %s; pausing %.1fs (overloads so far: %d)",
                        self.address, e.strerror, OVERLOAD_PAUSE, self.overloads)
        self.pause()
        self._resume_handle = self.loop.call_later(OVERLOAD_PAUSE, self._after_overload)

    def _after_overload(self) -> None:
        self._resume_handle = None
        if self.limit is None or not self.limit.full:
            self.resume()
