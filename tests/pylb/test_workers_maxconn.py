"""A per-server limit across worker processes: divided among them (proxy/queue.py), so the
server never sees more than the limit from the whole pylb, whichever worker the kernel
gives each connection to."""

from __future__ import annotations

import asyncio

import pytest

from pylb.config import Limits
from pylb.model import Backend, HttpRoute, RouteTable, Server
from pylb.workers import WorkerPool
from tests.proxy.http.client import RawClient, get
from tests.proxy.test_protection_e2e import SlowBackend
from tests.pylb.test_workers import settings, wait_until

pytestmark = pytest.mark.timeout(90)


async def test_per_server_limit_holds_across_two_workers() -> None:
    be = await SlowBackend(0.01).start()
    s = settings(workers=2, limits=Limits(queue_timeout=60.0))
    backend = Backend("default/slow:80", (Server("127.0.0.1", be.port, name="s1"),),
                      maxconn=2)
    pool = WorkerPool(s)
    await pool.start()
    clients: list[RawClient] = []
    try:
        pool.apply(RouteTable(http=(HttpRoute("slow", "/slow", backend.name),),
                              backends=(backend,)))

        async def routed() -> bool:
            c = await RawClient.connect(s.http_port)
            try:
                await c.send(get("/slow/?id=-1"))
                return (await c.read_response()).status == 200
            finally:
                await c.close()

        for _ in range(200):
            if await routed():
                break
            await asyncio.sleep(0.05)
        be.delay, be.max_inflight = 0.3, 0
        for i in range(30):  # fresh connections: the kernel spreads them over both
            clients.append(await RawClient.connect(s.http_port))
            await clients[-1].send(get(f"/slow/?id={i}"))
        got = await asyncio.gather(*(c.read_response(timeout=60) for c in clients))
        assert [r.status for r in got] == [200] * 30
        assert be.max_inflight <= 2  # one slot per worker: the limit, divided
        # Both workers took some (else the division is not what this shows).
        await wait_until(lambda: all(
            w.snapshot.get("backends", {}).get(backend.name, {}).get("lbtot", 0) > 0
            for w in pool._workers))
    finally:
        for c in clients:
            await c.close()
        await pool.shutdown(1.0)
        await be.stop()
