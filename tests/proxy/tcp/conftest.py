"""Fixtures for the TCP splicer tests: test backends on loopback and a proxy factory that
runs every end-to-end test on both data paths (os.splice from the first byte, and the
Protocol copy path only)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from proxy.balance import Balancers
from proxy.listener import ConnectionLimit
from proxy.tcp import TcpProxy
from proxy.tcp.splice import HAVE_SPLICE
from pylb.config import Settings, Timeouts
from pylb.counters import Stats
from pylb.model import Backend, ProxyProtocol, RouteTable, Server, TcpFrontend

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
BACKEND = "default/svc:3306"


class Upstream:
    """A test backend server on 127.0.0.1 running `handler` per connection."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def _run(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(w)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(task)
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._run, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        for t in list(self.tasks):
            t.cancel()
        await self.server.wait_closed()

    @property
    def server_model(self) -> Server:
        return Server(self.host, self.port)


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    if w.can_write_eof():
        w.write_eof()


def table(*servers: Server, port: int = 0, proxy_protocol: ProxyProtocol = ProxyProtocol.NONE,
          sni: tuple[tuple[str, str], ...] = (), extra: tuple[Backend, ...] = (),
          backend: str = BACKEND) -> RouteTable:
    return RouteTable(
        tcp=(TcpFrontend("svc", port, backend, sni=sni),),
        backends=(Backend(BACKEND, tuple(servers), proxy_protocol=proxy_protocol), *extra))


class Harness:
    def __init__(self, splice: int | None, listener: bool = False) -> None:
        self.splice = splice
        self.listener = listener
        self.limits: list[ConnectionLimit] = []
        self.upstreams: list[Upstream] = []
        self.proxies: list[TcpProxy] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def upstream(self, handler: Handler = echo, host: str = "127.0.0.1") -> Upstream:
        u = await Upstream(handler, host).start()
        self.upstreams.append(u)
        return u

    def proxy(self, settings: Settings | None = None, host: str = "127.0.0.1",
              reuse_port: bool = False, limit: ConnectionLimit | None = None,
              **timeouts: float) -> TcpProxy:
        s = settings or Settings()
        if timeouts:
            s = replace(s, timeouts=replace(s.timeouts, **timeouts))
        if limit is None and self.listener:
            limit = ConnectionLimit(10_000)
            self.limits.append(limit)
        p = TcpProxy(s, Stats(), Balancers(s.limits), host=host, reuse_port=reuse_port,
                     splice_threshold=self.splice, limit=limit)
        self.proxies.append(p)
        return p

    async def connect(self, proxy: TcpProxy, port: int = 0) -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter]:
        host, p = proxy.bound_ports()[port]
        r, w = await asyncio.open_connection(host, p)
        self.writers.append(w)
        return r, w

    async def close(self) -> None:
        for w in self.writers:
            w.transport.abort()
        for p in self.proxies:
            await p.shutdown(0)
        # Every connection gave its maxconn slot back, however it ended.
        assert [lim.current for lim in self.limits] == [0] * len(self.limits)
        for u in self.upstreams:
            await u.stop()


# (splice threshold, accept with proxy.listener): splice from the first byte; switch to
# splice mid-stream, behind the maxconn-aware Listener; never splice.
PATHS = {"splice": (0, False), "switch-listener": (100_000, True), "copy": (None, False)} \
    if HAVE_SPLICE else {"copy": (None, False), "copy-listener": (None, True)}


@pytest.fixture(params=list(PATHS.values()), ids=list(PATHS))
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = Harness(*request.param)
    try:
        yield harness
    finally:
        await harness.close()


__all__ = ["BACKEND", "Handler", "Harness", "Timeouts", "Upstream", "echo", "table"]
