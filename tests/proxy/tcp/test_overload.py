"""The accept loop survives running out of file descriptors (trio's lesson): a worker at
its fd limit sheds new connections, and serves again the moment some close."""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.proxy.tcp.conftest import BACKEND, Harness, table

WORKER = textwrap.dedent("""
    import asyncio, resource, sys, uvloop
    from proxy.balance import Balancers
    from proxy.tcp import TcpProxy
    from pylb.config import Settings
    from pylb.counters import Stats
    from pylb.model import Backend, RouteTable, Server, TcpFrontend

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
        def data_received(self, d):
            self.t.write(d)

    async def main():
        loop = asyncio.get_running_loop()
        echo = await loop.create_server(Echo, "127.0.0.1", 0)
        s = Settings()
        p = TcpProxy(s, Stats(), Balancers(s.limits), host="127.0.0.1")
        await p.set_table(RouteTable(
            tcp=(TcpFrontend("f", 0, "b"),),
            backends=(Backend("b", (Server("127.0.0.1", echo.sockets[0].getsockname()[1]),)),)))
        print(p.bound_ports()[0][1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        print(sorted((f.name, n) for f, n in p.stats.failures.items()), flush=True)
        print(p.balancers.get("b").down, flush=True)
        await p.shutdown(0)
        echo.close()

    uvloop.run(main())
""")


async def roundtrip(port: int) -> bytes:
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        w.write(b"ping")
        return await asyncio.wait_for(r.readexactly(4), 10)
    finally:
        w.close()
        await w.wait_closed()


async def test_serves_again_after_fd_exhaustion() -> None:
    root = Path(__file__).resolve().parents[3]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, cwd=root, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdin is not None
    flood: list[socket.socket] = []
    report = b""
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert await roundtrip(port) == b"ping"
        for _ in range(3):
            for _ in range(100):  # far beyond 64 fds: two per proxied connection
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                flood.append(s)
            await asyncio.sleep(0.2)
            for s in flood:
                s.close()
            flood.clear()
            # Serving again within 2 s: the listener survived, and the backend was not
            # marked down (passive health would keep it out for 10 s) for our own EMFILE.
            for _ in range(40):
                try:
                    if await roundtrip(port) == b"ping":
                        break
                except (ConnectionError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("not serving after fd exhaustion")
    finally:
        for s in flood:
            s.close()
        proc.stdin.close()
        report = await asyncio.wait_for(proc.stdout.read(), 10)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert report.splitlines()[-1] == b"{}"  # no server marked down


class _ShortOfFds:
    """The running loop, except that the first `n` outgoing connects fail with EMFILE."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self._loop = loop
        self.n = n

    def __getattr__(self, name: str) -> object:
        return getattr(self._loop, name)

    async def create_connection(self, *args: object, **kw: object) -> object:
        if self.n > 0:
            self.n -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await self._loop.create_connection(*args, **kw)  # type: ignore[call-overload]


async def test_own_fd_exhaustion_blames_no_server(h: Harness) -> None:
    u = await h.upstream()
    p = h.proxy()
    await p.set_table(table(u.server_model))
    short = _ShortOfFds(asyncio.get_running_loop(), 5)
    p._loop = short  # type: ignore[assignment]
    for _ in range(5):  # more than passive_fall (3) in a row
        r, _w = await h.connect(p)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 10)
    bal = p.balancers.get(BACKEND)
    assert bal is not None and bal.down == {} and bal.fails == {}
    assert p.stats.server(BACKEND, u.server_model.label).conn_errors == 0
    assert p.stats.backend(BACKEND).conn_errors == 5
    assert p.stats.backend(BACKEND).redispatches == 0
    r, w = await h.connect(p)
    w.write(b"fine")
    assert await asyncio.wait_for(r.readexactly(4), 10) == b"fine"
