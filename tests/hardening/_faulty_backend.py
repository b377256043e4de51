"""A misbehaving HTTP backend for the backend-fault tests (issue #12), and two loopback
tricks for servers that cannot be reached.

`FaultyBackend` is an asyncio Protocol server on 127.0.0.1:0 that reads HTTP/1.1
requests (head, then a Content-Length body) and answers each according to its `fault`:
from a clean keep-alive 200 (`Fault.NONE`) to resets, truncations, garbage, silence and
slow drips. `rate` is the share of requests (or, for the keep-alive faults, of reused
connections) that misbehave, drawn from a seeded `random.Random`, so a run is repeatable.
It counts what it did (`requests`, `answered`, `faults`, `connections`), which the tests
compare with what the clients saw and what the proxy counted.

`BlackHole` is a port whose SYNs are dropped: a listening socket with backlog 0 that is
never accepted from, its one-entry accept queue pre-filled, so the kernel drops every
further SYN and a connect hangs until the connector's own timeout (verified on Linux:
`listen(0)` admits exactly one pending connection). `refused_port` is a port bound but
not listening: a connect is answered with a RST (ECONNREFUSED) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import select
import socket
import struct
import time

LINGER_RST = struct.pack("ii", 1, 0)
MAX_REQUEST_HEAD = 64 * 1024


class Fault(enum.Enum):
    NONE = "none"  # a clean keep-alive 200
    RESET_BEFORE = "reset-before"  # request read, then RST before any response byte
    RESET_IN_HEAD = "reset-in-head"  # `after` bytes of the head, then RST
    RESET_IN_BODY = "reset-in-body"  # the head and `after` body bytes, then RST
    CLOSE_IN_BODY = "close-in-body"  # Content-Length promised, half sent, then FIN
    SILENT = "silent"  # request read, never answered (the connection stays open)
    GARBAGE = "garbage"  # random bytes instead of a response (the connection stays open)
    HTTP09 = "http09"  # a bare body with no status line, then FIN (HTTP/0.9)
    BAD_STATUS = "bad-status"  # "HTTP/1.1 2OO OK"
    BAD_CHUNK = "bad-chunk"  # a chunked head, a chunk, then a size that is not hex
    BAD_CHUNK_LATE = "bad-chunk-late"  # the same, the bad size `settle` seconds later
    BIG_HEAD = "big-head"  # a response head of 200 KiB
    KA_CLOSE_AFTER = "ka-close-after"  # a keep-alive 200, then FIN right after it
    KA_RACE_FIN = "ka-race-fin"  # on a reused connection: FIN as the next request comes
    KA_RACE_RST = "ka-race-rst"  # on a reused connection: RST as the next request comes
    SLOW_HEAD = "slow-head"  # the head one byte per `drip` seconds
    SLOW_BODY = "slow-body"  # the whole head, then the body one byte per `drip` seconds


# The faults that only apply to a reused keep-alive connection (its second request on).
_KEEPALIVE_RACES = frozenset({Fault.KA_RACE_FIN, Fault.KA_RACE_RST})


def _rst(transport: asyncio.Transport) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    transport.abort()


class _Conn(asyncio.Protocol):
    def __init__(self, backend: FaultyBackend) -> None:
        self.b = backend
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.served = 0  # requests answered on this connection
        self.busy = False  # a misbehaving answer is under way; ignore further bytes
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.b.connections += 1
        self.b.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.b.conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.busy:
            return
        self.buf += data
        while not self.busy and self.transport is not None \
                and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_REQUEST_HEAD:
                    _rst(self.transport)
                return
            head = self.buf[:end + 4]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return  # the body is still coming
            self.buf = self.buf[end + 4 + length:]
            self.b.requests += 1
            self.b.heads.append(head)
            self._answer(head)

    def _answer(self, head: bytes) -> None:
        b = self.b
        t = self.transport
        assert t is not None
        fault = b.fault
        misbehave = fault is not Fault.NONE and b.faults < b.limit and (
            fault not in _KEEPALIVE_RACES or self.served > 0) and b.rng.random() < b.rate
        if not misbehave:
            self._ok(t)
            return
        b.faults += 1
        b.faults_fresh += self.served == 0
        self.busy = True
        body = b.body()
        resp_head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n\r\n" % (
            len(body), b.name.encode())
        if fault in (Fault.RESET_BEFORE, Fault.KA_RACE_RST):
            _rst(t)
        elif fault is Fault.KA_RACE_FIN:
            t.close()
        elif fault is Fault.RESET_IN_HEAD:
            t.write(resp_head[:min(b.after, len(resp_head) - 1)])
            self._later(b.settle, lambda: _rst(t))
        elif fault is Fault.RESET_IN_BODY:
            t.write(resp_head + body[:min(b.after, len(body) - 1)])
            self._later(b.settle, lambda: _rst(t))
        elif fault is Fault.CLOSE_IN_BODY:
            t.write(resp_head + body[:len(body) // 2])
            t.close()
        elif fault is Fault.SILENT:
            pass
        elif fault is Fault.GARBAGE:
            # Never a valid start of a response: the first byte is not "H".
            t.write(b"\x00" + b.rng.randbytes(511))
        elif fault is Fault.HTTP09:
            t.write(body)
            t.close()
        elif fault is Fault.BAD_STATUS:
            t.write(b"HTTP/1.1 2OO OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif fault is Fault.BAD_CHUNK:
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\nzz\r\n" + body + b"\r\n0\r\n\r\n")
        elif fault is Fault.BAD_CHUNK_LATE:
            # The head and a good chunk first, so they are on their way to the client
            # when the bad chunk comes `settle` seconds later.
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            self._later(b.settle, lambda: t.write(b"zz\r\n" + body + b"\r\n0\r\n\r\n"))
        elif fault is Fault.BIG_HEAD:
            t.write(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: %s\r\n" % (b"f" * 1000,) * 200
                    + b"Content-Length: 0\r\n\r\n")
        elif fault is Fault.KA_CLOSE_AFTER:
            self.busy = False
            self._ok(t)
            t.close()
        elif fault is Fault.SLOW_HEAD:
            self._drip(resp_head + body)
        elif fault is Fault.SLOW_BODY:
            t.write(resp_head)
            self._drip(body)

    def _ok(self, t: asyncio.Transport) -> None:
        b = self.b
        body = b.body()
        t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n\r\n%s" % (
            len(body), b.name.encode(), body))
        self.served += 1
        b.answered += 1

    def _later(self, delay: float, fn: object) -> None:
        assert callable(fn)
        if delay <= 0:
            fn()
            return
        self.timer = self.b.loop.call_later(delay, fn)

    def _drip(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing() or not data:
            return
        t.write(data[:1])
        self.timer = self.b.loop.call_later(self.b.drip, self._drip, data[1:])


class FaultyBackend:
    """A misbehaving HTTP/1.1 server on `host`:0 (see the module docstring)."""

    def __init__(self, fault: Fault = Fault.NONE, *, name: str = "faulty", rate: float = 1.0,
                 after: int = 20, drip: float = 0.5, body_size: int = 200,
                 settle: float = 0.02, seed: int = 12, limit: int = 1 << 62,
                 host: str = "127.0.0.1") -> None:
        """`after`: bytes sent before a RESET_IN_*; `settle`: seconds between those bytes
        and the RST (0: at once; a little lets the peer read the bytes before the reset
        arrives, which makes the fault deterministic); `drip`: seconds per byte of a
        SLOW_*; `body_size`: bytes of a 200's body; `limit`: misbehave at most this many
        times, then answer well."""
        self.fault = fault
        self.name = name
        self.rate = rate
        self.limit = limit
        self.after = after
        self.drip = drip
        self.body_size = body_size
        self.settle = settle
        self.rng = random.Random(seed)
        self.host = host
        self.port = 0
        self.connections = 0
        self.requests = 0  # whole requests read
        self.answered = 0  # clean 200s sent
        self.faults = 0  # requests answered by misbehaving
        self.faults_fresh = 0  # of which on a connection's first request
        self.heads: list[bytes] = []
        self.conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def body(self) -> bytes:
        tag = self.name.encode() + b" "
        return (tag * (self.body_size // len(tag) + 1))[:self.body_size]

    async def start(self) -> FaultyBackend:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Conn(self), self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
            if c.timer is not None:
                c.timer.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        for _ in range(3):
            await asyncio.sleep(0)


class BlackHole:
    """A loopback port whose connects hang: SYNs are dropped (see the module docstring).
    `start` checks that the trick works on this kernel, and raises if it does not."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._listener: socket.socket | None = None
        self._filler: socket.socket | None = None

    def start(self, check: float = 0.2) -> BlackHole:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind((self.host, 0))
        lsock.listen(0)
        self._listener = lsock
        self.port = lsock.getsockname()[1]
        filler = socket.create_connection((self.host, self.port), timeout=5)
        self._filler = filler
        # The proof: one more connect does not complete within `check` seconds.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect_ex((self.host, self.port))
            deadline = time.monotonic() + check
            while time.monotonic() < deadline:
                _, w, _ = select.select([], [probe], [], deadline - time.monotonic())
                if w:
                    self.stop()
                    raise RuntimeError("backlog-0 black hole does not hold on this kernel")
        finally:
            probe.close()
        return self

    def stop(self) -> None:
        for s in (self._filler, self._listener):
            if s is not None:
                s.close()
        self._filler = self._listener = None


class RefusedPort:
    """A loopback port bound but not listening: connects are refused (RST) at once."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self.host = host
        self.port: int = self._sock.getsockname()[1]

    def stop(self) -> None:
        self._sock.close()
