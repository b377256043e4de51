"""A server removed from the table while its connections live on keeps its stats row,
marked DRAIN, until its last session ends (issue #22, item 4; the scenario as reported:
redis connections kept working, backend scur=4, yet only the remaining server's row with
2). Real connections through a worker's data plane; the counters go the stats page's way
(merge, prune_to_table, the CSV)."""

from __future__ import annotations

import asyncio
import csv
import io
import time

from pylb.app import DataPlane
from pylb.config import Settings
from pylb.counters import merge_snapshots, prune_to_table
from pylb.demo import start_echo_server
from pylb.model import Backend, RouteTable, Server, TcpFrontend
from pylb.stats.formats import render_csv
from pylb.stats.view import table_keys
from tests.conftest import free_port
from tests.pylb.stats_fixtures import known_view


def _rows(plane: DataPlane, table: RouteTable) -> dict[str, dict[str, str]]:
    plane.stats.sweep()  # as the controller does before each render
    counters = prune_to_table(merge_snapshots([plane.stats.snapshot()]), *table_keys(table))
    view = known_view(table=table, counters=counters, checks={}, now=time.time())
    rows = csv.DictReader(io.StringIO(render_csv(view).lstrip("# ")))
    return {r["svname"]: r for r in rows if r["pxname"] == "d/redis:6379"}


async def test_removed_server_row_drains_until_its_last_session() -> None:
    echoes = [await start_echo_server() for _ in range(2)]
    s1, s2 = (Server("127.0.0.1", e.sockets[0].getsockname()[1], name=n)
              for e, n in zip(echoes, ("redis-0", "redis-1"), strict=True))
    port = free_port()
    plane = DataPlane(Settings(bind="127.0.0.1", http_port=0))
    fe = (TcpFrontend("redis", port, "d/redis:6379"),)
    t1 = RouteTable(tcp=fe, backends=(Backend("d/redis:6379", (s1, s2)),), version=1)
    t2 = RouteTable(tcp=fe, backends=(Backend("d/redis:6379", (s2,)),), version=2)
    conns = []
    try:
        await plane.apply(t1)
        for i in range(4):  # round robin: two on each server
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"PING%d\n" % i)
            assert await asyncio.wait_for(r.readline(), 10) == b"PING%d\n" % i
            conns.append((r, w))
        await plane.apply(t2)  # redis-0 leaves the table; its two connections live on
        for i, (r, w) in enumerate(conns):
            w.write(b"again%d\n" % i)
            assert await asyncio.wait_for(r.readline(), 10) == b"again%d\n" % i
        rows = _rows(plane, t2)
        assert rows["BACKEND"]["scur"] == "4"
        assert (rows["redis-0"]["status"], rows["redis-0"]["scur"]) == ("DRAIN", "2")
        assert rows["redis-0"]["weight"] == "0"
        assert rows["redis-0"]["check_desc"]  # says it was removed from the table
        assert (rows["redis-1"]["scur"], rows["redis-1"]["status"]) == ("2", "no check")
        assert rows["BACKEND"]["act"] == "1"
        # Round robin takes the servers in address order: the 1st and 3rd connections
        # went to the first of them.
        first = min((s1, s2), key=lambda s: s.key)
        mine = conns[0::2] if first is s1 else conns[1::2]
        for _, w in mine:  # redis-0's two
            w.close()
            await w.wait_closed()
        for _ in range(200):
            if _rows(plane, t2)["BACKEND"]["scur"] == "2":
                break
            await asyncio.sleep(0.02)
        rows = _rows(plane, t2)
        assert "redis-0" not in rows  # gone with its last session
        assert rows["BACKEND"]["scur"] == rows["redis-1"]["scur"] == "2"
    finally:
        for _, w in conns:
            w.close()
        await plane.shutdown(0.5)
        for e in echoes:
            e.close()
            await e.wait_closed()


async def test_removed_server_row_drains_across_workers() -> None:
    """The same with two worker processes: each reports its rows, the controller merges
    them, and the removed server's row stays (DRAIN) while any worker holds a session."""
    from pylb.workers import WorkerPool

    echoes = [await start_echo_server() for _ in range(2)]
    s1, s2 = (Server("127.0.0.1", e.sockets[0].getsockname()[1], name=n)
              for e, n in zip(echoes, ("redis-0", "redis-1"), strict=True))
    port = free_port()
    pool = WorkerPool(Settings(bind="127.0.0.1", http_port=free_port(), workers=2,
                               grace_period=5.0))
    fe = (TcpFrontend("redis", port, "d/redis:6379"),)
    t1 = RouteTable(tcp=fe, backends=(Backend("d/redis:6379", (s1, s2)),), version=1)
    t2 = RouteTable(tcp=fe, backends=(Backend("d/redis:6379", (s2,)),), version=2)

    def rows(table: RouteTable) -> dict[str, dict[str, str]]:
        counters = prune_to_table(pool.counters(), *table_keys(table))
        view = known_view(table=table, counters=counters, checks={}, now=time.time())
        got = csv.DictReader(io.StringIO(render_csv(view).lstrip("# ")))
        return {r["svname"]: r for r in got if r["pxname"] == "d/redis:6379"}

    async def until(pred: object) -> None:
        for _ in range(300):  # workers report every ~0.5 s
            if pred():  # type: ignore[operator]
                return
            await asyncio.sleep(0.05)
        raise AssertionError(rows(t2))

    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    await pool.start()
    try:
        pool.apply(t1)
        for _ in range(200):  # the workers listen once they have the table
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        w.close()
        while len(conns) < 8:  # enough that each server holds some (per worker RR)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"x\n")
            assert await asyncio.wait_for(r.readline(), 10) == b"x\n"
            conns.append((r, w))
        pool.apply(t2)
        await until(lambda: rows(t2).get("redis-0", {}).get("status") == "DRAIN"
                    and rows(t2)["BACKEND"]["scur"] == "8")
        r0 = int(rows(t2)["redis-0"]["scur"])
        assert r0 > 0 and r0 + int(rows(t2)["redis-1"]["scur"]) == 8
        for _, w in conns:
            w.close()
        await until(lambda: "redis-0" not in rows(t2))
    finally:
        for _, w in conns:
            w.close()
        await pool.shutdown(1.0)
        for e in echoes:
            e.close()
            await e.wait_closed()
