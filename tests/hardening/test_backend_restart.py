"""A backend that goes away for a moment and comes back on the same port, under a client
that connects every 100 ms (issue #22, item 3): with haproxy's retries (the same server,
a turn-around of 1 s between attempts, proxy/retry.py) a restart shorter than the
retries cost the clients a short wait, not errors. Through the L4 splicer and the L7
router. The side-by-side count with haproxy is bench/faults.py's (timing on a shared
machine is no test's business); here, the behaviour: zero failures when the retries
cover the outage (at most one, for a probe caught in the listener's backlog at the very
instant it closes), many without retries.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.balance import Balancers
from proxy.tcp import TcpProxy
from pylb.config import Limits, Settings, Timeouts
from pylb.counters import Stats
from pylb.model import Backend, HttpRoute, RouteTable, Server, TcpFrontend
from tests.hardening._restartable import Restartable
from tests.proxy.http.conftest import (  # noqa: F401  (fixtures)
    StartProxy,
    parser_kind,
    start_proxy,
)

OUTAGE = 1.5  # seconds the backend is away: under the 3 s that 3 retries wait
PROBES = 40  # one every 100 ms: 4 s, the outage from 0.5 s to 2.0 s
PROBE_TIMEOUT = 15.0
async def _probe_l4(port: int) -> bool:
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        w.write(b"ping")
        return await asyncio.wait_for(r.readexactly(4), PROBE_TIMEOUT) == b"ping"
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False
    finally:
        w.close()


async def _probe_l7(port: int) -> bool:
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        w.write(b"GET /app/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(r.read(), PROBE_TIMEOUT)
        return got.startswith(b"HTTP/1.1 200 ")
    except (OSError, TimeoutError):
        return False
    finally:
        w.close()


async def _run(backend: Restartable, probe_port: int, l7: bool) -> int:
    """Probe every 100 ms through the proxy while the backend restarts; the failures."""
    outage = asyncio.ensure_future(backend.outage(0.5, OUTAGE))
    probes = []
    for _ in range(PROBES):
        probes.append(asyncio.ensure_future(
            _probe_l7(probe_port) if l7 else _probe_l4(probe_port)))
        await asyncio.sleep(0.1)
    results = await asyncio.gather(*probes)
    await outage
    return results.count(False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("retries", [3, 0])
async def test_l4_restart_costs_a_wait_not_errors(retries: int) -> None:
    backend = Restartable()
    await backend.start()
    # Default ejection (3 failed connects): the panic threshold keeps the only server.
    settings = Settings(limits=Limits(retries=retries), timeouts=Timeouts(connect=5.0))
    p = TcpProxy(settings, Stats(), Balancers(settings.limits), host="127.0.0.1",
                 splice_threshold=None)
    try:
        await p.set_table(RouteTable(
            tcp=(TcpFrontend("db", 0, "default/db:5432"),),
            backends=(Backend("default/db:5432", (Server("127.0.0.1", backend.port),)),)))
        failures = await _run(backend, p.bound_ports()[0][1], l7=False)
    finally:
        await p.shutdown(0)
        backend.stop()
    if retries:
        assert failures <= 1
    else:
        assert failures >= 5  # the probes of the outage, refused at once


@pytest.mark.timeout(60)
@pytest.mark.parametrize("retries", [3, 0])
async def test_l7_restart_costs_a_wait_not_errors(start_proxy: StartProxy,  # noqa: F811
                                                  retries: int) -> None:
    backend = Restartable()
    await backend.start()
    r = await start_proxy(0, table=False, limits={"retries": retries},
                          timeouts={"connect": 5.0})
    try:
        b = Backend("default/web:80", (Server("127.0.0.1", backend.port),))
        r.table([HttpRoute("web", "/app", b.name)], [b])
        failures = await _run(backend, r.port, l7=True)
    finally:
        backend.stop()
    if retries:
        assert failures <= 1
    else:
        assert failures >= 5
