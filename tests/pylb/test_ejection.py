"""Passive ejection seen from outside (issue #22, item 2): a server that refuses connects is
ejected after --error-limit failures in a row, with a log line; the stats CSV shows it
DOWN with the reason; a passing active check brings it back, with a log line; and the
only server of a backend is never ejected (the panic threshold)."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time

import pytest

from pylb.app import DataPlane
from pylb.config import Limits, Settings
from pylb.counters import merge_snapshots
from pylb.demo import start_echo_server
from pylb.model import Backend, RouteTable, Server, TcpFrontend
from pylb.stats.formats import render_csv
from tests.conftest import free_port
from tests.pylb.stats_fixtures import known_view


async def _echo_once(port: int) -> bool:
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        w.write(b"a")
        return await asyncio.wait_for(r.read(1), 10) == b"a"
    except OSError:
        return False
    finally:
        w.close()


def _csv_row(plane: DataPlane, table: RouteTable, name: str) -> dict[str, str]:
    view = known_view(table=table, counters=merge_snapshots([plane.stats.snapshot()]),
                      checks={}, now=time.time())
    rows = list(csv.DictReader(io.StringIO(render_csv(view).lstrip("# "))))
    return next(r for r in rows if r["svname"] == name)


async def test_ejected_logged_shown_and_ended_by_a_passing_check(
        caplog: pytest.LogCaptureFixture) -> None:
    echo = await start_echo_server()
    good = Server("127.0.0.1", echo.sockets[0].getsockname()[1], name="good")
    dead = Server("127.0.0.1", free_port(), name="dead")
    port = free_port()
    plane = DataPlane(Settings(bind="127.0.0.1", http_port=0,
                               limits=Limits(retries=3, passive_fall=3)))
    be = Backend("d/db:5432", (dead, good))
    table = RouteTable(tcp=(TcpFrontend("db", port, be.name),), backends=(be,), version=1)
    caplog.set_level(logging.INFO, logger="pylb")
    try:
        await plane.apply(table)
        # Round robin: every other client meets the dead server and is redispatched.
        results = [await _echo_once(port) for _ in range(8)]
        assert results == [True] * 8
        assert plane.stats.server(be.name, "dead").conn_errors == 3
        assert plane.stats.server(be.name, "dead").ejected_until > time.time()
        ejected = [r.getMessage() for r in caplog.records if "ejected" in r.getMessage()]
        assert ejected == ["server d/db:5432/dead ejected for 10s: 3 failed connects in a "
                           "row (error-limit; still used while too few servers are left)"]
        row = _csv_row(plane, table, "dead")
        assert row["status"] == "DOWN"
        assert row["check_desc"].startswith("ejected: failed connects (error-limit)")
        assert _csv_row(plane, table, "good")["status"] == "no check"
        assert _csv_row(plane, table, "BACKEND")["act"] == "1"
        plane.set_health(dead.key, True)  # a passing active check
        assert plane.stats.server(be.name, "dead").ejected_until == 0
        assert any(r.getMessage() == "server d/db:5432/dead is back after a passing check"
                   for r in caplog.records)
        assert _csv_row(plane, table, "dead")["status"] == "no check"
    finally:
        await plane.shutdown(0.5)
        echo.close()
        await echo.wait_closed()


async def test_the_only_server_is_never_ejected() -> None:
    """A one-server backend refusing connects: ejected on paper (and shown), used anyway,
    so the first client after it is back gets through, not a 10 s refusal."""
    echo = await start_echo_server()
    addr = echo.sockets[0].getsockname()[1]
    echo.close()
    await echo.wait_closed()
    port = free_port()
    plane = DataPlane(Settings(bind="127.0.0.1", http_port=0,
                               limits=Limits(retries=0, passive_fall=1)))
    be = Backend("d/db:5432", (Server("127.0.0.1", addr),))
    await plane.apply(RouteTable(tcp=(TcpFrontend("db", port, be.name),), backends=(be,),
                                 version=1))
    try:
        assert not await _echo_once(port)
        bal = plane.balancers.get(be.name)
        assert bal is not None and not bal.is_up(be.servers[0])  # ejected
        echo = await start_echo_server(port=addr)
        assert await _echo_once(port)  # still used: the last server
        echo.close()
        await echo.wait_closed()
    finally:
        await plane.shutdown(0.5)
