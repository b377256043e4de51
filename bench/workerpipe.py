"""Controller → worker messages at cluster scale: sizes, DataPlane.apply time for a
one-backend change, and send+apply through real worker processes.

    python -m bench.workerpipe [--services 10000] [--changes 10] [--workers 2]

Tables have `--services` backends of 10 servers each, at addresses in 127.0.0.0/8 that do
not listen (nothing probes them: no checks run here), plus a `probe` backend on one of two
real loopback servers. A change moves `probe` from one to the other; the figure is the
time from `WorkerPool.apply` to the first request answered by the new server (by every
worker: 4 fresh connections in a row).

Measured 2026-12-07 on the shared 2-core machine (load average ~5: absolute times are
noisy, before and after were run back to back), issue #24 part 3:

| | before (multiprocessing Connection.send) | after (framed stream, deltas) |
|---|---|---|
| whole-table message, 1,000 / 10,000 services | 725 KB / 7.45 MB (pickle) | 450 KB / 4.70 MB |
| one-backend change message | the whole table | a 227-byte Delta |
| DataPlane.apply, one-backend change, 10k services | 66-84 ms | 7.8-8.8 ms [1], 0.4-0.6 ms [2] |
| DataPlane.apply, first table, 10k services | 512-756 ms | 385-448 ms |
| 2 workers, 1,000 services: first traffic | never (EAGAIN, cut message, restart loop) | 0.24 s |
| 2 workers, 1,000 services: change → traffic | – | p50 9.3 ms, max 12.7 ms (20 changes) |
| 2 workers, 10,000 services: first traffic | never | 1.97 s |
| 2 workers, 10,000 services: change → traffic | – | p50 17.1 ms, max 25.0 ms (20 changes) |

[1] in process (`--workers 1`): the plane works out the delta itself (`diff`).
[2] in a worker: the delta comes with the table; includes `apply_delta`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pickle
import statistics
import time
from typing import Any

from pylb.config import Settings
from pylb.demo import start_name_server
from pylb.model import Backend, HttpRoute, RouteTable, Server


def big_table(services: int, probe_port: int = 1, version: int = 1,
              base: RouteTable | None = None) -> RouteTable:
    """`services` backends of 10 fake servers each, and `probe` on 127.0.0.1:probe_port.
    With `base`, every backend but probe is the base table's object (as discovery shares
    unchanged backends)."""
    probe = Backend("default/probe:80", (Server("127.0.0.1", probe_port, name="probe"),))
    if base is not None:
        backends = (*(b for b in base.backends if b.name != probe.name), probe)
        return RouteTable(http=base.http, backends=backends, version=version)
    backends = [probe]
    routes = [HttpRoute("probe", "/probe", probe.name)]
    for i in range(services):
        name = f"ns{i % 50}/svc-{i}:80"
        backends.append(Backend(name, tuple(
            Server(f"127.{1 + i // 60000}.{(i // 250) % 240}.{1 + i % 250}", 8000 + j,
                   name=f"svc-{i}-{j}") for j in range(10))))
        routes.append(HttpRoute(f"svc-{i}", f"/ns{i % 50}/svc-{i}", name))
    return RouteTable(http=tuple(routes), backends=tuple(backends), version=version)


async def apply_times(services: int, n: int = 5) -> dict[str, Any]:
    from pylb.dataplane import DataPlane

    plane = DataPlane(Settings(bind="127.0.0.1", http_port=0, workers=1))
    t = big_table(services, 1)
    t0 = time.perf_counter()
    await plane.apply(t)
    first = time.perf_counter() - t0
    times, with_delta = [], []
    for v in range(n):
        t = big_table(services, 2 + v % 2, version=v + 2, base=t)
        t0 = time.perf_counter()
        await plane.apply(t)
        times.append(time.perf_counter() - t0)
    try:  # as a worker does it: the delta comes with the table
        from pylb.delta import apply_delta, diff
    except ImportError:
        pass
    else:
        for v in range(n):
            t2 = big_table(services, 2 + v % 2, version=v + 100, base=t)
            d = diff(t, t2)
            t0 = time.perf_counter()
            t = apply_delta(t, d)
            await plane.apply(t, d)
            with_delta.append(time.perf_counter() - t0)
    out = {"first_apply_ms": round(first * 1000, 1),
           "change_apply_ms_median": round(statistics.median(times) * 1000, 2)}
    if with_delta:
        out["delta_apply_ms_median"] = round(statistics.median(with_delta) * 1000, 2)
    return out


def sizes(services: int) -> dict[str, Any]:
    t = big_table(services)
    out: dict[str, Any] = {"table_pickle_bytes": len(pickle.dumps(t, 5))}
    try:
        from pylb.delta import diff
        from pylb.messages import Table, encode

        t2 = big_table(services, 2, version=2, base=t)
        out["table_frame_bytes"] = len(encode(Table(t)))
        out["one_backend_delta_frame_bytes"] = len(encode(diff(t, t2)))
    except ImportError:
        pass
    return out


async def through_workers(services: int, changes: int, workers: int) -> dict[str, Any]:
    from pylb.workers import WorkerPool
    from tests.conftest import free_port

    one, two = await start_name_server("one"), await start_name_server("two")
    ports = [s.sockets[0].getsockname()[1] for s in (one, two)]
    s = Settings(bind="127.0.0.1", http_port=free_port(), workers=workers, grace_period=1.0)
    pool = WorkerPool(s)
    await pool.start()
    out: dict[str, Any] = {}

    async def who() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", s.http_port)
        try:
            w.write(b"GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 5)
        finally:
            w.close()
        for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
            if line.lower().startswith(b"x-backend:"):
                return line.partition(b":")[2].strip()
        return b""

    async def until(name: bytes, timeout: float) -> float | None:
        t0 = time.perf_counter()
        seen = 0
        while time.perf_counter() - t0 < timeout:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                # every worker must serve it: a few fresh connections in a row
                if await who() == name:
                    seen += 1
                    if seen >= 2 * workers:
                        return time.perf_counter() - t0
                    continue
            seen = 0
            await asyncio.sleep(0.002)
        return None

    try:
        t = big_table(services, ports[0])
        pool.apply(t)
        first = await until(b"one", 60)
        out["first_table_to_traffic_s"] = None if first is None else round(first, 2)
        if first is None:
            return out
        lat = []
        for v in range(changes):
            name = (b"two", b"one")[v % 2]
            t = big_table(services, ports[v % 2 == 0], version=v + 2, base=t)
            pool.apply(t)
            got = await until(name, 30)
            if got is None:
                out["change_failed_at"] = v
                break
            lat.append(got)
        if lat:
            out["change_to_traffic_ms_p50"] = round(statistics.median(lat) * 1000, 1)
            out["change_to_traffic_ms_max"] = round(max(lat) * 1000, 1)
        out["restarts"] = pool.restarts
    finally:
        await pool.shutdown(1.0)
        one.close()
        two.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-workers", action="store_true")
    a = ap.parse_args()
    import uvloop

    res: dict[str, Any] = {"services": a.services}
    for n in (1000, a.services):
        res[f"sizes_{n}"] = sizes(n)
    res["dataplane"] = uvloop.run(apply_times(a.services))
    if not a.skip_workers:
        res["workers"] = uvloop.run(through_workers(a.services, a.changes, a.workers))
    print(res)


if __name__ == "__main__":
    main()
