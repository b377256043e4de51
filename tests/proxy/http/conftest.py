"""Fixtures for the L7 router: parsers to parametrize over, backends, a running proxy."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proxy.balance import Balancers
from proxy.http import HttpProxy
from proxy.listener import ConnectionLimit
from pylb.config import HttpParser, Limits, Settings, Timeouts
from pylb.counters import Stats
from pylb.model import Affinity, Algorithm, Backend, HttpRoute, RouteTable, Server
from tests.proxy.http.backends import HttpBackend

PARSERS = [HttpParser.H11, HttpParser.HTTPTOOLS]


@pytest.fixture(params=PARSERS, ids=lambda p: p.value)
def parser_kind(request: pytest.FixtureRequest) -> HttpParser:
    return request.param  # type: ignore[no-any-return]


@dataclasses.dataclass
class Running:
    proxy: HttpProxy
    port: int
    stats: Stats
    balancers: Balancers
    settings: Settings
    backends: list[HttpBackend]

    def table(self, routes: list[HttpRoute], backends: list[Backend],
              https: list[HttpRoute] | None = None) -> RouteTable:
        t = RouteTable(http=tuple(routes), https=tuple(https or ()), backends=tuple(backends))
        self.proxy.set_table(t)
        return t


def servers_of(*bs: HttpBackend) -> tuple[Server, ...]:
    return tuple(Server("127.0.0.1", b.port, name=b.name) for b in bs)


def simple_table(bs: list[HttpBackend], *, algorithm: Algorithm = Algorithm.ROUNDROBIN,
                 affinity: Affinity = Affinity.NONE, prefix: str = "/app",
                 strip: bool = True, host: str | None = None) -> tuple[list[HttpRoute],
                                                                       list[Backend]]:
    backend = Backend("default/app:80", servers_of(*bs), algorithm=algorithm,
                      affinity=affinity)
    route = HttpRoute("app", prefix, backend.name, host=host, strip_prefix=strip)
    return [route], [backend]


StartProxy = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_proxy(parser_kind: HttpParser) -> AsyncIterator[StartProxy]:
    started: list[Running] = []
    backends: list[HttpBackend] = []

    async def start(n_backends: int = 2, *, timeouts: dict[str, float] | None = None,
                    limits: dict[str, Any] | None = None, tls: bool = False,
                    ssl_context: Any = None, table: bool = True,
                    **settings_kw: Any) -> Running:
        bs = [await HttpBackend(f"b{i}").start() for i in range(n_backends)]
        backends.extend(bs)
        settings = Settings(http_parser=parser_kind,
                            timeouts=Timeouts(**(timeouts or {})),
                            limits=Limits(**(limits or {})), **settings_kw)
        stats = Stats()
        balancers = Balancers(settings.limits, stats=stats)
        # as `pylb run` makes it: a Listener with --maxconn (proxy.listener; plain HTTP
        # connections on proxy.fdtransport), not the loop's create_server
        proxy = HttpProxy(settings, stats, balancers, tls=tls, ssl_context=ssl_context,
                          frontend="https" if tls else "http",
                          limit=ConnectionLimit(settings.limits.maxconn))
        _, port = await proxy.start("127.0.0.1", 0)
        running = Running(proxy, port, stats, balancers, settings, bs)
        started.append(running)
        if table:
            routes, bes = simple_table(bs)
            if tls:
                running.table([], bes, https=routes)
            else:
                running.table(routes, bes)
        return running

    yield start
    for r in started:
        await r.proxy.shutdown(0.5)
    for b in backends:
        await b.stop()
