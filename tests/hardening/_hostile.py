"""Hostile and slow clients for the hardening tests (issue #12), and a harness that runs
pylb's data plane in a child process so its memory and file descriptors can be measured
and limited without touching the test process.

Clients are asyncio Protocols, not streams: a thousand of them cost little, and each
records when it connected, what it received and when pylb closed it.

Run as a script (`python -m tests.hardening._hostile serve ...`) it is the child: an
HttpProxy and a TcpProxy in front of the given backend ports, on loopback, printing its
ports as one JSON line and then obeying one-word commands on stdin (see `_serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

# -- slow clients -------------------------------------------------------------------------


class Drip(asyncio.Protocol):
    """Sends `payload` one byte every `interval` seconds (after an optional `prefix` sent
    at once), never finishing on its own; records what comes back and when it closes."""

    def __init__(self, payload: bytes, interval: float, prefix: bytes = b"") -> None:
        self.payload = payload
        self.interval = interval
        self.prefix = prefix
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.received = bytearray()
        self.t_start = time.monotonic()  # before connecting: nothing of pylb's starts sooner
        self.t_open = 0.0
        self.t_first = 0.0  # when the first dripped byte went out
        self.t_closed = 0.0
        self.closed = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.t_open = time.monotonic()
        if self.prefix:
            self.transport.write(self.prefix)
        self._drip()

    def _drip(self) -> None:
        t = self.transport
        if t is None or t.is_closing() or self.sent >= len(self.payload):
            return
        if not self.sent:
            self.t_first = time.monotonic()
        t.write(self.payload[self.sent:self.sent + 1])
        self.sent += 1
        self._timer = self.loop.call_later(self.interval, self._drip)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.t_closed = time.monotonic()
        if self._timer is not None:
            self._timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    def status(self) -> int | None:
        """The status of the first response received, if any."""
        if not self.received.startswith(b"HTTP/1.1 "):
            return None
        return int(self.received[9:12])

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_drips(port: int, n: int, payload: bytes, interval: float, *,
                     prefix: bytes = b"", host: str = "127.0.0.1",
                     batch: int = 100) -> list[Drip]:
    """`n` connections that drip `payload`; opened `batch` at a time (a bounded burst)."""
    loop = asyncio.get_running_loop()
    drips: list[Drip] = []
    for start in range(0, n, batch):
        t0 = time.monotonic()
        made = await asyncio.gather(*(
            loop.create_connection(lambda: Drip(payload, interval, prefix), host, port)
            for _ in range(min(batch, n - start))))
        for _, d in made:
            d.t_start = t0
            drips.append(d)
    return drips


def closed_after(drips: list[Drip]) -> list[float]:
    """Sorted seconds from just before each connect to its close: never less than the
    time pylb held the connection, however late either side's loop ran."""
    return sorted(d.t_closed - d.t_start for d in drips if not d.is_open)


async def wait_closed(drips: list[Drip], timeout: float) -> None:
    """Until every drip is closed, or `timeout` (then the caller's asserts say which)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(d.closed for d in drips)), timeout)


def slowloris_head(pad: int = 4096) -> bytes:
    """A request head that never ends within any sane http-request timeout when sent a
    byte at a time: a header line `pad` bytes long, no blank line."""
    return b"GET /app/slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * pad


# -- normal clients -----------------------------------------------------------------------


async def get_once(port: int, path: str, *, host: str = "127.0.0.1",
                   timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET on a new connection with `Connection: close`: (status, body)."""
    async def go() -> tuple[int, bytes]:
        r, w = await asyncio.open_connection(host, port)
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = await r.read()
        finally:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    return await asyncio.wait_for(go(), timeout)


@dataclass
class Tally:
    """What a well-behaved client saw during an attack."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)
    ok_during: int = 0  # answered right while `during()` held (see normal_traffic)

    @property
    def tried(self) -> int:
        return self.ok + len(self.failed)


async def normal_traffic(port: int, n: int, check: Callable[[int, bytes, int], bool], *,
                         keep_alive_every: int = 2, timeout: float = 10.0,
                         during: Callable[[], bool] = lambda: False) -> Tally:
    """`n` requests for `/app/n<i>`: every `keep_alive_every`-th pair goes over one
    keep-alive connection, the others each on a new connection (so accepting is tested
    too). `check(status, body, i)` says whether an answer is right; right answers that
    come while `during()` holds are counted apart."""
    from tests.proxy.http.client import RawClient, get

    tally = Tally()

    def count(ok: bool) -> None:
        if ok:
            tally.ok += 1
            tally.ok_during += during()
    i = 0
    while i < n:
        try:
            if keep_alive_every and i % keep_alive_every == 0 and i + 1 < n:
                c = await asyncio.wait_for(RawClient.connect(port), timeout)
                try:
                    for j in (i, i + 1):
                        await c.send(get(f"/app/n{j}"))
                        resp = await c.read_response(timeout=timeout)
                        if check(resp.status, resp.body, j):
                            count(True)
                        else:
                            tally.failed.append(f"{j}: {resp.status} {resp.body[:80]!r}")
                finally:
                    await c.close()
                i += 2
                continue
            status, body = await get_once(port, f"/app/n{i}", timeout=timeout)
            if check(status, body, i):
                count(True)
            else:
                tally.failed.append(f"{i}: {status} {body[:80]!r}")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            tally.failed.append(f"{i}: {e!r}")
        i += 1
    return tally


# -- slow readers -------------------------------------------------------------------------


class SlowReader:
    """A client whose socket has a small receive buffer and who reads `chunk` bytes every
    `interval` seconds: the far side's data piles up in pylb unless pylb stops reading it.
    With `http`, the response head is set apart and `body` counts what follows it."""

    def __init__(self, sock: socket.socket, chunk: int, interval: float,
                 http: bool) -> None:
        self.sock = sock
        self.chunk = chunk
        self.interval = interval
        self.got = 0
        self.head: bytes | None = None if http else b""
        self._start = bytearray()
        self._task: asyncio.Task[None] | None = None

    @property
    def body(self) -> int:
        return self.got - len(self.head) if self.head is not None else 0

    @classmethod
    async def connect(cls, port: int, request: bytes, *, chunk: int = 4096,
                      interval: float = 0.05, rcvbuf: int = 8192,
                      http: bool | None = None) -> SlowReader:
        """An HTTP client when `http` (by default: when there is a `request`)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if request:
                await loop.sock_sendall(sock, request)
        except BaseException:
            sock.close()
            raise
        return cls(sock, chunk, interval, http=bool(request) if http is None else http)

    def _got(self, data: bytes) -> None:
        self.got += len(data)
        if self.head is None:
            self._start += data
            end = self._start.find(b"\r\n\r\n")
            if end >= 0:
                self.head = bytes(self._start[:end + 4])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._crawl())

    async def _crawl(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, self.chunk)
            if not data:
                return
            self._got(data)
            await asyncio.sleep(self.interval)

    async def read_all(self, size: int, timeout: float) -> int:
        """Stop crawling and read fast until `size` body bytes, or EOF; the body count."""
        await self.stop()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while self.body < size and time.monotonic() < deadline:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 18),
                                          max(0.1, deadline - time.monotonic()))
            if not data:
                break
            self._got(data)
        return self.body

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def close(self) -> None:
        await self.stop()
        self.sock.close()


class Streamer(asyncio.Protocol):
    """One connection of `StreamingServer`: answers the first request (HTTP mode) or the
    connection itself (TCP mode) with `size` bytes, written only while the transport is
    not paused; counts what it managed to hand to the kernel."""

    def __init__(self, owner: StreamingServer) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.written = 0
        self.paused = False
        self.ever_paused = False
        self.started = False
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        self.owner.conns.append(self)
        if not self.owner.http:
            self._start(b"")

    def data_received(self, data: bytes) -> None:
        if self.started:
            return
        self._buf += data
        if b"\r\n\r\n" in self._buf:
            # One response per connection (never pooled, so one connection per reader).
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" \
                % self.owner.size
            self._start(head)

    def _start(self, head: bytes) -> None:
        self.started = True
        assert self.transport is not None
        if head:
            self.transport.write(head)
        self._pump()

    def _pump(self) -> None:
        t = self.transport
        block = self.owner.block
        while t is not None and not self.paused and not t.is_closing() \
                and self.written < self.owner.size:
            n = min(len(block), self.owner.size - self.written)
            t.write(block[:n] if n < len(block) else block)
            self.written += n
        if t is not None and self.written >= self.owner.size and not t.is_closing():
            t.close()

    def pause_writing(self) -> None:
        self.paused = True
        self.ever_paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _LoopbackServer:
    """A protocol server on 127.0.0.1:0 that keeps its connections, to abort them at the
    end; `conns` is filled by the protocols' connection_made."""

    def __init__(self) -> None:
        self.conns: list[Any] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _listen(self, factory: Callable[[], asyncio.Protocol]) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class StreamingServer(_LoopbackServer):
    """A backend that sends `size` bytes per connection (an HTTP response with
    Content-Length when `http`, else raw bytes at once) and only as fast as its peer
    reads: how much each connection has written shows whether pylb paused it."""

    def __init__(self, size: int, *, http: bool) -> None:
        super().__init__()
        self.size = size
        self.http = http
        self.block = b"z" * (64 * 1024)

    async def start(self) -> StreamingServer:
        await self._listen(lambda: Streamer(self))
        return self


class _Sink(asyncio.Protocol):
    def __init__(self, owner: StallingSink) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = -1
        self.got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner.conns.append(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.need < 0:
            self.buf += data
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            line = head.split(b"\r\n", 1)[0]
            stall = float(line.split(b"stall=")[1].split(b" ")[0].split(b"&")[0])
            self.need = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            data = rest
            self.transport.pause_reading()  # read nothing for `stall` seconds
            asyncio.get_running_loop().call_later(stall, self._resume)
        self.got += len(data)
        if self.got >= self.need:
            body = b"%d" % self.got
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class StallingSink(_LoopbackServer):
    """A backend that takes a request with a body (`...?stall=SECONDS`), reads nothing for
    SECONDS after its head, then reads the body at full speed and answers 200 with the
    count of body bytes it got."""

    async def start(self) -> StallingSink:
        await self._listen(lambda: _Sink(self))
        return self


# -- measuring a process ------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid`."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- `pylb run` as a subprocess ------------------------------------------------------------


@dataclass
class PylbRun:
    """`pylb run --source=file:... --workers=1` in front of an HTTP service `app` (routed
    at /app) and a TCP service `raw`; the controller's pid and every port."""

    proc: asyncio.subprocess.Process
    ports: dict[str, int]
    log: Any  # pathlib.Path of its stderr

    async def stats_json(self) -> dict[str, Any]:
        from tests.pylb.test_workers import http_get

        status, _, body = await http_get(self.ports["stats"], "/;json")
        assert status == 200, status
        return cast(dict[str, Any], json.loads(body))

    def pids(self) -> list[int]:
        """The controller and its children (the worker)."""
        out = [self.proc.pid]
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
        return out

    async def stop(self) -> str:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return str(self.log.read_text())


async def start_pylb_run(tmp_path: Any, http_backend: int, tcp_backend: int,
                         *flags: str) -> PylbRun:
    """Writes the manifests (pylb.demo's builders) and starts `pylb run` with one worker;
    returns once /app answers 200."""
    import yaml

    from pylb.demo import service_manifest, slice_manifest
    from tests.conftest import free_ports

    f = tmp_path / "cluster.yaml"
    f.write_text(yaml.safe_dump_all([
        service_manifest("app", 80, 8080),
        slice_manifest("app-1", "app", http_backend, ["127.0.0.1"]),
        service_manifest("raw", 9000, 9000),
        slice_manifest("raw-1", "raw", tcp_backend, ["127.0.0.1"])]))
    ports = dict(zip(("http", "stats", "health", "https", "tcp"), free_ports(5), strict=True))
    log = tmp_path / "pylb.log"
    with log.open("wb") as log_fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pylb.cli", "run", f"--source=file:{f}",
            "--bind=127.0.0.1", "--stats-bind=127.0.0.1", f"--http-port={ports['http']}",
            f"--https-port={ports['https']}", f"--stats-port={ports['stats']}",
            f"--health-port={ports['health']}", f"--tcp-services=raw:{ports['tcp']}",
            "--workers=1", "--checks=false", "--stats-refresh=1", *flags,
            stdout=asyncio.subprocess.DEVNULL, stderr=log_fh)
    run = PylbRun(proc, ports, log)
    try:
        await wait_routed_app(ports["http"])
    except AssertionError:
        await run.stop()
        raise AssertionError(log.read_text()[-3000:]) from None
    return run


async def wait_routed_app(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError, IndexError, ValueError):
            if (await get_once(port, "/app/ready", timeout=2))[0] == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("not routed in time")


# -- the child: pylb's data plane alone in a process --------------------------------------


class Child:
    """`python -m tests.hardening._hostile serve` as a subprocess: its ports, and a line
    protocol on stdin/stdout for commands. Its stderr goes to `log` (a file: a pipe
    nobody reads could fill and block it)."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any],
                 log: Any) -> None:
        self.proc = proc
        self.info = info
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_port(self) -> int:
        return int(self.info["http"])

    @property
    def tcp_port(self) -> int:
        return int(self.info["tcp"])

    @classmethod
    async def start(cls, log: Any, http_backend: int, tcp_backend: int,
                    *args: str) -> Child:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(log, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.hardening._hostile", "serve",
                f"--http-backend={http_backend}", f"--tcp-backend={tcp_backend}", *args,
                cwd=root, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            info = json.loads(line)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        return cls(proc, info, log)

    async def command(self, cmd: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise ConnectionError(f"child gone (rc={self.proc.returncode})")
        return cast(dict[str, Any], json.loads(line))

    async def stop(self) -> str:
        """Ends the child; returns its stderr."""
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await self.command("quit", timeout=15)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()


async def _serve(opts: argparse.Namespace) -> None:
    """The child. Commands (one per line on stdin, one JSON answer per line on stdout):
    `stats` — counters and connection counts; `fill N` — open /dev/null until only N
    descriptors are left under RLIMIT_NOFILE (see --headroom); `free` — close
    them; `quit`."""
    import resource

    from proxy.balance import Balancers
    from proxy.http import HttpProxy
    from proxy.listener import ConnectionLimit
    from proxy.tcp.proxy import DEFAULT_SPLICE_THRESHOLD, TcpProxy
    from pylb.config import Limits, Settings, Timeouts
    from pylb.counters import Stats
    from pylb.model import Backend, HttpRoute, RouteTable, Server, TcpFrontend

    settings = Settings(bind="127.0.0.1", timeouts=Timeouts(
        http_request=opts.http_request, client=opts.client, keep_alive=opts.keep_alive,
        connect=opts.connect, server=opts.server),
        limits=Limits(maxconn=opts.maxconn, retries=opts.retries))
    stats = Stats()
    balancers = Balancers(settings.limits)
    limit = ConnectionLimit(opts.maxconn)
    http = HttpProxy(settings, stats, balancers, limit=limit)
    tcp = TcpProxy(settings, stats, balancers, host="127.0.0.1", limit=limit,
                   splice_threshold=None if opts.no_splice else DEFAULT_SPLICE_THRESHOLD)
    hb = Backend("default/app:80", (Server("127.0.0.1", opts.http_backend, name="b0"),))
    tb = Backend("default/raw:9", (Server("127.0.0.1", opts.tcp_backend, name="t0"),))
    table = RouteTable(http=(HttpRoute("app", "/app", hb.name),),
                       tcp=(TcpFrontend("raw", 0, tb.name),), backends=(hb, tb))
    http.set_table(table)
    await tcp.set_table(table)
    _, http_port = await http.start("127.0.0.1", 0)
    tcp_port = next(iter(tcp.bound_ports().values()))[1]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if opts.headroom:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (len(os.listdir("/proc/self/fd")) + opts.headroom, hard))
    out = sys.stdout
    out.write(json.dumps({"http": http_port, "tcp": tcp_port, "pid": os.getpid()}) + "\n")
    out.flush()
    dummies: list[int] = []
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        cmd = line[0]
        answer: dict[str, Any] = {}
        if cmd == "stats":
            answer = {"http_conns": http.connections, "tcp_conns": tcp.connections,
                      "limit_current": limit.current, "limit_refusals": limit.refusals,
                      "overloads": http._listener.overloads if http._listener else 0,
                      **stats.snapshot()}
        elif cmd == "buffers":
            # What pylb itself holds for each client: its write buffer toward the client.
            hbufs = [c.transport.get_write_buffer_size() for c in http.conns
                     if c.transport is not None and not c.transport.is_closing()]
            tconns = [c for fe in tcp._frontends.values() for c in fe.conns]
            tbufs = [c.ct.get_write_buffer_size() for c in tconns
                     if c.ct is not None and not c.ct.is_closing()]
            answer = {"http_max": max(hbufs, default=0), "http_n": len(hbufs),
                      "tcp_max": max(tbufs, default=0), "tcp_n": len(tconns),
                      "tcp_spliced": sum(c.pump is not None for c in tconns)}
        elif cmd == "fill":
            keep = int(line[1])
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            for _ in range(soft):
                try:
                    dummies.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            for _ in range(keep):
                if dummies:
                    os.close(dummies.pop())
            answer = {"held": len(dummies)}
        elif cmd == "free":
            while dummies:
                os.close(dummies.pop())
            answer = {"held": 0}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    while dummies:
        os.close(dummies.pop())
    await http.shutdown(0.5)
    await tcp.shutdown(0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="tests.hardening._hostile")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--http-backend", type=int, required=True)
    s.add_argument("--tcp-backend", type=int, required=True)
    s.add_argument("--maxconn", type=int, default=20000)
    s.add_argument("--retries", type=int, default=3)
    s.add_argument("--no-splice", action="store_true", help="TCP: the copy path only")
    s.add_argument("--headroom", type=int, default=0,
                   help="once listening, RLIMIT_NOFILE = descriptors open + this")
    s.add_argument("--http-request", type=float, default=5.0)
    s.add_argument("--client", type=float, default=50.0)
    s.add_argument("--keep-alive", type=float, default=60.0)
    s.add_argument("--connect", type=float, default=5.0)
    s.add_argument("--server", type=float, default=50.0)
    opts = p.parse_args(argv)
    import uvloop
    uvloop.run(_serve(opts))


if __name__ == "__main__":
    main()
