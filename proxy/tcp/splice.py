"""Zero-copy forwarding between two sockets with os.splice (Linux).

Theory of operation. A connection starts on the asyncio Protocol path (uvloop transports,
which accept and connect in C). Once it has moved `splice_threshold` bytes, and both
transports' write buffers are empty (so no byte is overtaken), the connection pauses
reading on both transports and hands the sockets to a `SplicePump`. uvloop does not let
`add_reader` watch an fd that a live transport owns, so the pump works on `os.dup()`s of
the two fds: the same kernel socket, a different fd number. The transports are then
closed: their fds go (uvloop's close is a plain close(2), no shutdown, and the sockets
live on in the dups), and the pump alone owns the connection until it ends.

Each direction (client→server, server→client) borrows a pipe from a `PipePool` for as
long as bytes sit in it:

    readable(src) → take a pipe → splice(src → pipe) → splice(pipe → dst) → pipe back
                                  └ dst would block: keep the pipe, stop reading src,
                                    wait for writable(dst), drain, then give it back

At most one pipe's worth of bytes (the pipe's capacity) sits in the kernel per direction,
and nothing in Python: memory per connection is bounded whatever the speeds. A pipe is
held only while its bytes wait for a slow reader, so a spliced connection costs its two
sockets' fds, as on the copy path (it held 8 when the transports kept theirs and each
direction its pipe; bench/memory.py measures it). Out of fds for a pipe, a direction
waits `PIPE_RETRY` seconds and tries again, as the accept loop does. EOF on src is
forwarded as shutdown(SHUT_WR) on dst once the pipe is drained (half-close both ways); a
reset or error on either side aborts both, the other with SO_LINGER 0 so it sees a reset
too. The pump reports bytes and its end through plain attributes and one callback, so the
connection's owner counts and times it exactly as on the Protocol path. Readiness comes
from the pumps' own level-triggered epoll set (proxy/tcp/poller.py), not from
`loop.add_reader`: uvloop stops watching an fd for good at its first EPOLLERR, and a
reset that arrives with the peer's last bytes was then never seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable

from proxy.tcp.poller import Poller

HAVE_SPLICE = hasattr(os, "splice")
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = 1031
PIPE_RETRY = 0.05
_NO_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
LINGER_RST = struct.pack("ii", 1, 0)


class PipePool:
    """Reusable non-blocking pipes. A pipe goes back to the pool only when empty."""

    __slots__ = ("_free", "capacity", "max_free")

    def __init__(self, capacity: int = 64 * 1024, max_free: int = 256) -> None:
        self._free: list[tuple[int, int]] = []
        self.capacity = capacity
        self.max_free = max_free

    def get(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.capacity != 64 * 1024:
            # Refused above /proc/sys/fs/pipe-max-size, or once a non-root user's pipes
            # pass fs/pipe-user-pages-soft (64 MiB: ~128 spliced connections at 256 KiB);
            # the pipe then keeps a smaller size. Only speed suffers: every splice moves
            # what fits and the pump counts what moved.
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, _F_SETPIPE_SZ, self.capacity)
        return r, w

    def put(self, pipe: tuple[int, int], empty: bool) -> None:
        if empty and len(self._free) < self.max_free:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        while self._free:
            r, w = self._free.pop()
            os.close(r)
            os.close(w)

    def __len__(self) -> int:
        return len(self._free)


class _Direction:
    __slots__ = ("dst", "dst_sock", "eof", "pending", "pipe", "reading", "retry", "src",
                 "writing")

    def __init__(self, src: int, dst: int, dst_sock: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.dst_sock = dst_sock
        self.pipe: tuple[int, int] | None = None  # borrowed while bytes are in it
        self.retry: asyncio.TimerHandle | None = None  # no fds for a pipe: try later
        self.pending = 0  # bytes in the pipe, not yet written to dst
        self.eof = False  # src sent FIN
        self.reading = False
        self.writing = False


class SplicePump:
    """Forward both directions between two connected sockets (given as fds the pump may
    own: it dups them). `up` counts client→server bytes, `down` server→client. `on_done`
    is called once: with (None, False) when both directions finished cleanly, or with the
    error that ended the connection and whether it came from the client's socket (both
    sides have then been reset)."""

    __slots__ = ("_a", "_b", "_c", "_loop", "_on_done", "_pool", "_s", "closed", "down",
                 "up")

    def __init__(self, poller: Poller, pool: PipePool, client_fd: int,
                 server_fd: int,
                 on_done: Callable[[BaseException | None, bool], None]) -> None:
        self._loop = poller  # readiness from the pumps' own epoll set (proxy/tcp/poller.py)
        self._pool = pool
        self._on_done = on_done
        self._c = socket.socket(fileno=os.dup(client_fd))
        self._s = socket.socket(fileno=os.dup(server_fd))
        c, s = self._c.fileno(), self._s.fileno()
        self._a = _Direction(c, s, self._s)
        self._b = _Direction(s, c, self._c)
        self.up = 0
        self.down = 0
        self.closed = False

    def start(self) -> None:
        for d in (self._a, self._b):
            self._loop.add_reader(d.src, self._readable, d)
            d.reading = True

    def _readable(self, d: _Direction) -> None:
        pipe = d.pipe
        if pipe is None:
            try:
                pipe = d.pipe = self._pool.get()
            except OSError as e:
                if e.errno not in _NO_FDS:
                    self._fail(e, d is self._a)
                    return
                self._loop.remove_reader(d.src)
                d.reading = False
                d.retry = self._loop.loop.call_later(PIPE_RETRY, self._retry, d)
                return
        try:
            n = os.splice(d.src, pipe[1], self._pool.capacity, flags=_FLAGS)
        except BlockingIOError:
            n = -1
        except OSError as e:
            self._fail(e, d is self._a)
            return
        if n <= 0 and d.pending == 0:
            self._pool.put(pipe, True)
            d.pipe = None
        if n < 0:
            return
        if n == 0:
            d.eof = True
            self._loop.remove_reader(d.src)
            d.reading = False
            if d.pending == 0:
                self._forward_eof(d)
            return
        d.pending += n
        if d is self._a:
            self.up += n
        else:
            self.down += n
        self._drain(d)

    def _retry(self, d: _Direction) -> None:
        d.retry = None
        if not self.closed and not d.reading:
            self._loop.add_reader(d.src, self._readable, d)
            d.reading = True

    def _drain(self, d: _Direction) -> None:
        pipe = d.pipe
        while d.pending:
            assert pipe is not None
            try:
                m = os.splice(pipe[0], d.dst, d.pending, flags=_FLAGS)
            except BlockingIOError:
                if d.reading:
                    self._loop.remove_reader(d.src)
                    d.reading = False
                if not d.writing:
                    self._loop.add_writer(d.dst, self._drain, d)
                    d.writing = True
                return
            except OSError as e:
                self._fail(e, d is self._b)
                return
            d.pending -= m
        if pipe is not None:
            self._pool.put(pipe, True)
            d.pipe = None
        if d.writing:
            self._loop.remove_writer(d.dst)
            d.writing = False
        if d.eof:
            self._forward_eof(d)
        elif not d.reading and not self.closed:
            self._loop.add_reader(d.src, self._readable, d)
            d.reading = True

    def _forward_eof(self, d: _Direction) -> None:
        try:
            d.dst_sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                self._fail(e, d is self._b)
                return
        if self._a.eof and self._b.eof and not self._a.pending and not self._b.pending:
            self._finish(None, False)

    def _fail(self, exc: BaseException, client_side: bool) -> None:
        self.linger_rst()
        self._finish(exc, client_side)

    def linger_rst(self) -> None:
        """Make the coming close reset both connections (SO_LINGER 0), as an abort."""
        if self.closed:
            return
        for sock in (self._c, self._s):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)

    def _finish(self, exc: BaseException | None, client_side: bool) -> None:
        if self.closed:
            return
        self.stop()
        self._on_done(exc, client_side)

    def stop(self) -> None:
        """Unregister and release the pipes and the dup'd fds (which the transports,
        closed at the hand-over, no longer share: this closes the sockets)."""
        if self.closed:
            return
        self.closed = True
        loop = self._loop
        for d in (self._a, self._b):
            if d.reading:
                loop.remove_reader(d.src)
                d.reading = False
            if d.writing:
                loop.remove_writer(d.dst)
                d.writing = False
            if d.retry is not None:
                d.retry.cancel()
                d.retry = None
            if d.pipe is not None:
                self._pool.put(d.pipe, d.pending == 0)
                d.pipe = None
            d.pending = 0
        self._c.close()
        self._s.close()
