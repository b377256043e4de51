"""The stats page and /readyz at cluster scale (issue #24, part 4).

    python -m bench.stats_scale [--services 1000 10000] [--servers 10] [--readyz]

In one process, no traffic: a RouteTable of N backends x M servers (addresses in
127.0.0.0/8 that nothing listens on; no probe is ever sent), counters for every server
as a worker reports them (`Stats.snapshot()` merged by `merge_snapshots`), and a check
result for every server. It times:

1. render: `stat_rows`, the HTML page, `;csv`, `;json` and /metrics, each once, cold
   (the first render after a new table: nothing cached).
2. `--readyz`: a real HealthServer and StatsServer on loopback in this process's event
   loop, the view built as this checkout's Controller.view builds it (counters merged
   from a live `Stats` of every server); a client fetches /readyz every 20 ms while
   four others fetch the HTML page, `;csv`, `;json` and /metrics, each back to back
   (`--pause 0`: a stress far beyond any dashboard) or with `--pause` seconds between;
   it reports /readyz p50/p99/max, how late a 10 ms sleep woke (the loop's worst
   stall) and each format's slowest answer.
3. the RSS taken by the merged counters (tracemalloc of the merge, and the process RSS).

Timings are this machine's, under whatever else runs on it: compare runs, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
import tracemalloc
from typing import Any

from proxy.check import L4OK, CheckResult
from pylb.config import Settings
from pylb.counters import Stats, merge_snapshots
from pylb.model import Backend, HttpRoute, RouteTable, Server
from pylb.stats import StatsView, render_csv, render_html, render_json, stat_rows
from pylb.stats.prom import Exposition


def build(services: int, servers: int, live: list[Stats] | None = None) -> tuple[
        RouteTable, dict[str, Any], dict[tuple[str, int], CheckResult]]:
    backends = []
    routes = []
    checks: dict[tuple[str, int], CheckResult] = {}
    st = Stats()
    now = time.time()
    for i in range(services):
        name = f"ns{i % 50}/svc-{i}:80"
        srvs = []
        for j in range(servers):
            n = i * servers + j
            addr = f"127.{1 + n // 65536 % 200}.{n // 256 % 256}.{n % 256}"
            s = Server(addr, 8080, name=f"svc-{i}-pod-{j}")
            srvs.append(s)
            checks[s.key] = CheckResult(status=L4OK, up=True, health=4, checked_at=now,
                                        last_change=now - 100, duration_ms=1.0)
            c = st.server(name, s.label)
            for _ in range(3):
                c.open(now)
                c.response(200)
                c.close()
            c.bytes_in, c.bytes_out = 1234 * n, 5678 * n
        backends.append(Backend(name, tuple(srvs)))
        routes.append(HttpRoute(f"svc-{i}", f"/svc-{i}", name))
        b = st.backend(name)
        b.open(now)
        b.close()
    fe = st.frontend("http")
    fe.open(now)
    table = RouteTable(http=tuple(routes), backends=tuple(backends), version=1)
    counters = merge_snapshots([st.snapshot()])
    if live is not None:
        live.append(st)
    return table, counters, checks


def controller_view_fn(table: RouteTable, st: Stats,
                       checks: dict[tuple[str, int], CheckResult]) -> Any:
    """A view function that does what this checkout's Controller.view does with one
    in-process data plane: before #24 it merged `st.snapshot()` on the event loop;
    after, it hands a LazyCounters that merges and prunes in the render thread, at
    most once per freshness window (ShownCounters)."""
    try:
        from pylb.stats.view import LazyCounters, table_keys
    except ImportError:
        return lambda: _view(table, merge_snapshots([st.snapshot()]), checks)
    from pylb.counters import ShownCounters

    shown = ShownCounters(lambda: merge_snapshots([st.snapshot()]))

    def counters() -> dict[str, Any]:
        return shown.get(table, table_keys(table))
    return lambda: _view(table, LazyCounters(counters), checks)


def _view(table: RouteTable, counters: Any,
          checks: dict[tuple[str, int], CheckResult]) -> StatsView:
    now = time.time()
    return StatsView(version="bench", pid=os.getpid(), started=now - 60, now=now,
                     table=table, counters=counters, checks=checks, maxconn=1000,
                     table_version=table.version, table_age=1.0)


def timed(fn: Any, *args: Any) -> tuple[float, int]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, len(out)


def render_times(services: int, servers: int) -> dict[str, Any]:
    table, counters, checks = build(services, servers)
    view = _view(table, counters, checks)
    out: dict[str, Any] = {"services": services, "servers": services * servers}
    out["stat_rows"] = timed(stat_rows, view)[0]
    for fmt, fn in (("html", render_html), ("csv", render_csv), ("json", render_json)):
        t, n = timed(fn, view)
        out[fmt] = t
        out[fmt + "_bytes"] = n
    t, n = timed(Exposition(lambda: view).render)
    out["metrics"], out["metrics_bytes"] = t, n
    return out


def merged_memory(services: int, servers: int) -> dict[str, float]:
    """MiB the controller allocates for the counters of a view (tracemalloc): the
    in-process plane's snapshot, then the merge (and, after #24, the prune)."""
    table, _, _ = build(services, servers)
    st = Stats()
    for b in table.backends:
        for s in b.servers:
            st.server(b.name, s.label).open()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    snap = st.snapshot()
    snap_mib = (tracemalloc.get_traced_memory()[0] - base) / 2**20
    merged: Any = merge_snapshots([snap])
    try:
        from pylb.counters import prune_to_table, table_rows
        merged = prune_to_table(merged, *table_rows(table.backends))
    except ImportError:
        pass
    total = (tracemalloc.get_traced_memory()[0] - base) / 2**20
    peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    del merged, snap
    return {"snapshot_mib": round(snap_mib, 1), "merged_total_mib": round(total, 1),
            "peak_mib": round(peak, 1)}


async def readyz_under_load(services: int, servers: int, seconds: float,
                            pause: float = 0.0) -> dict[str, Any]:
    from pylb.health import HealthServer
    from pylb.stats import StatsServer

    live: list[Stats] = []
    table, _, checks = build(services, servers, live)
    settings = Settings(bind="127.0.0.1")
    stats = StatsServer(settings, controller_view_fn(table, live[0], checks))
    health = HealthServer(settings, lambda: True, lambda: True)
    _, sport = await stats.start("127.0.0.1", 0)
    _, hport = await health.start("127.0.0.1", 0)
    lat: list[float] = []
    lags: list[float] = []
    renders: dict[str, list[float]] = {}
    stop = time.monotonic() + seconds

    async def lag() -> None:  # how late a 10 ms sleep wakes: the loop's stalls
        while time.monotonic() < stop:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    async def get(port: int, path: str) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return await r.read()
        finally:
            w.close()

    async def prober() -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            body = await get(hport, "/readyz")
            lat.append(time.perf_counter() - t)
            assert b" 200 " in body[:20], body[:40]
            await asyncio.sleep(0.02)

    async def scraper(path: str) -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            await get(sport, path)
            renders.setdefault(path, []).append(time.perf_counter() - t)
            await asyncio.sleep(max(0.0, min(pause, stop - time.monotonic())))

    try:
        await asyncio.gather(prober(), lag(), *(scraper(p) for p in (
            "/", "/;csv", "/;json", "/metrics")))
    finally:
        await stats.close()
        await health.close()
    lat.sort()
    return {"readyz_n": len(lat), "readyz_p50_ms": 1000 * statistics.median(lat),
            "readyz_p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1],
            "readyz_max_ms": 1000 * lat[-1],
            "loop_lag_max_ms": 1000 * max(lags),
            **{f"stats {p} max_s": round(max(v), 3) for p, v in renders.items()},
            **{f"stats {p} n": len(v) for p, v in renders.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--readyz", action="store_true")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds each stats client waits between requests (0: none)")
    ap.add_argument("--no-render", action="store_true")
    a = ap.parse_args()
    for n in a.services:
        if not a.no_render:
            print(render_times(n, a.servers), flush=True)
            print(merged_memory(n, a.servers), flush=True)
        if a.readyz:
            import uvloop
            print(uvloop.run(readyz_under_load(n, a.servers, a.seconds, a.pause)),
                  flush=True)
    import resource
    print({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


if __name__ == "__main__":
    main()
