"""Processes: a controller and SO_REUSEPORT workers, counters aggregated exactly, workers
restarted, no orphans, graceful shutdown, zero-drop table updates under wrk load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylb.config import Settings
from pylb.demo import service_manifest, slice_manifest, start_name_server
from pylb.model import Backend, HttpRoute, RouteTable, Server
from pylb.workers import WorkerPool
from tests.conftest import free_port, free_ports

pytestmark = pytest.mark.timeout(90)


async def http_get(port: int, path: str, *, host: str = "127.0.0.1",
                   timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection with Connection: close."""
    async def go() -> tuple[int, dict[str, str], bytes]:
        r, w = await asyncio.open_connection(host, port)
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = await r.read()
        finally:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return status, headers, body
    return await asyncio.wait_for(go(), timeout)


def table(backend_ports: list[int], version: int = 1,
          terminating: frozenset[int] = frozenset()) -> RouteTable:
    b = Backend("default/svc:80", tuple(
        Server("127.0.0.1", p, name=f"b{p}", ready=p not in terminating,
               terminating=p in terminating) for p in backend_ports))
    return RouteTable(http=(HttpRoute("svc", "/svc", b.name),), backends=(b,), version=version)


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(bind="127.0.0.1", http_port=free_port(), workers=2,
                                grace_period=5.0)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
async def backends() -> AsyncIterator[list[int]]:
    servers = [await start_name_server(f"b{i}") for i in range(3)]
    try:
        yield [s.sockets[0].getsockname()[1] for s in servers]
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


async def wait_until(pred: Any, timeout: float = 15.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


async def wait_routed(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.TimeoutError, IndexError, ValueError):
            if (await http_get(port, "/svc", timeout=2))[0] == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("not routed in time")


async def settled(pool: WorkerPool) -> list[int]:
    """Per-worker request counts once two reports in a row agree."""
    prev: list[int] = []
    for _ in range(50):
        cur = [_requests(pool, i) for i in range(len(pool._workers))]
        if cur == prev:
            return cur
        prev = cur
        await asyncio.sleep(0.6)
    raise AssertionError("counters never settled")


def _requests(pool: WorkerPool, i: int) -> int:
    snap = pool._workers[i].snapshot
    return int(snap.get("frontends", {}).get("http", {}).get("req_total", 0))


async def test_workers_share_connections_and_counters_sum_exactly(
        backends: list[int]) -> None:
    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    try:
        pool.apply(table(backends))
        await wait_routed(s.http_port)
        base = await settled(pool)
        n = 0
        # the kernel spreads new connections over both SO_REUSEPORT listeners; keep
        # going (bounded) until both have served some
        while n < 400 and not all(_requests(pool, i) > base[i] for i in range(2)):
            for _ in range(20):
                status, _, _ = await http_get(s.http_port, "/svc")
                assert status == 200
                n += 1
            await asyncio.sleep(0.6)  # one stats report interval
        assert all(_requests(pool, i) > base[i] for i in range(2)), "one worker idle"
        await wait_until(lambda: sum(_requests(pool, i) - base[i] for i in range(2)) == n)
        total = pool.counters()["frontends"]["http"]["req_total"]
        assert total == sum(base) + n
    finally:
        await pool.shutdown(1.0)
    assert not pool.alive()


async def test_killed_worker_is_replaced_and_traffic_continues(backends: list[int]) -> None:
    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    try:
        pool.apply(table(backends))
        await wait_routed(s.http_port)
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: pool.restarts == 1 and victim not in pool.pids()
                         and all(w.ready for w in pool._workers))
        for _ in range(30):
            assert (await http_get(s.http_port, "/svc"))[0] == 200
    finally:
        await pool.shutdown(1.0)


# -- the whole program as a user runs it ----------------------------------------------------


def manifests(path: Path, backend_ports: list[int]) -> None:
    path.write_text(yaml.safe_dump_all([
        service_manifest("svc", 80, 8080),
        slice_manifest("svc-1", "svc", backend_ports[0], ["127.0.0.1"])]))


async def start_pylb(tmp_path: Path, backend_ports: list[int], *extra: str,
                     workers: int = 2) -> tuple[asyncio.subprocess.Process, dict[str, int]]:
    f = tmp_path / "cluster.yaml"
    manifests(f, backend_ports)
    ports = dict(zip(("http", "stats", "health"), free_ports(3), strict=True))
    log = tmp_path / "pylb.log"
    with log.open("wb") as log_fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pylb.cli", "run", f"--source=file:{f}",
            "--bind=127.0.0.1", f"--http-port={ports['http']}",
            f"--stats-port={ports['stats']}", f"--health-port={ports['health']}",
            f"--workers={workers}", *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=log_fh)
    try:
        await wait_routed(ports["http"])
    except AssertionError:
        proc.kill()
        await proc.wait()
        raise AssertionError(log.read_text()[-3000:]) from None
    return proc, ports


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


async def test_controller_killed_leaves_no_worker(tmp_path: Path, backends: list[int]) -> None:
    proc, _ = await start_pylb(tmp_path, backends)
    kids = _children(proc.pid)
    workers = [k for k in kids if "pylb" in Path(f"/proc/{k}/cmdline").read_text()
               or "multiprocessing" in Path(f"/proc/{k}/cmdline").read_text()]
    assert len(workers) >= 2
    proc.kill()
    await proc.wait()
    await wait_until(lambda: not any(_alive(k) for k in workers), timeout=15)


async def test_stats_page_counts_requests_across_workers(tmp_path: Path,
                                                         backends: list[int]) -> None:
    proc, ports = await start_pylb(tmp_path, backends)
    try:
        async def total() -> int:
            _, _, body = await http_get(ports["stats"], "/;json")
            data = json.loads(body)
            return _find_req_total(data)

        before, prev = await total(), -1
        for _ in range(50):  # let the requests of start-up reach the page
            if before == prev:
                break
            await asyncio.sleep(0.6)
            prev, before = before, await total()
        for _ in range(50):
            assert (await http_get(ports["http"], "/svc"))[0] == 200
        deadline = time.monotonic() + 10
        while await total() != before + 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await total() == before + 50
        status, _, _ = await http_get(ports["health"], "/readyz")
        assert status == 200
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


def _find_req_total(data: Any) -> int:
    """The http FRONTEND row's req_tot in the stats JSON (haproxy's field names)."""
    rows = data if isinstance(data, list) else data.get("rows", data.get("stats", []))
    for row in rows:
        if isinstance(row, dict) and row.get("pxname") == "http" and \
                row.get("svname") == "FRONTEND":
            return int(row.get("req_tot") or 0)
    raise AssertionError(f"no http FRONTEND row in {str(data)[:500]}")


async def test_sigterm_lets_a_long_download_finish_and_refuses_new_connections(
        tmp_path: Path) -> None:
    chunks, chunk = 30, b"x" * 65536

    handlers: set[asyncio.Task[Any]] = set()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % (chunks * len(chunk)))
            for _ in range(chunks):
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # pylb gave up on this one (e.g. a start-up probe's connection closed)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            handlers.discard(task)

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc, ports = await start_pylb(tmp_path, [port], "--grace-period=20s", workers=1)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", ports["http"])
        w.write(b"GET /svc HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        # readiness turns false at once; new connections are refused soon after
        refused = False
        for _ in range(100):
            try:
                status, _, _ = await http_get(ports["health"], "/readyz", timeout=1)
                if status == 503:
                    break
            except OSError:
                break
            await asyncio.sleep(0.02)
        for _ in range(100):
            try:
                _, ww = await asyncio.open_connection("127.0.0.1", ports["http"])
                ww.close()
                await ww.wait_closed()
            except OSError:
                refused = True
                break
            await asyncio.sleep(0.02)
        assert refused
        body = await asyncio.wait_for(r.readexactly(chunks * len(chunk)), 20)
        assert len(body) == chunks * len(chunk)
        w.close()
        await w.wait_closed()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
        for t in list(handlers):
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.needs_tool
@pytest.mark.timeout(120)
async def test_zero_drop_while_the_table_changes_100_times(backends: list[int]) -> None:
    """wrk drives keep-alive and new-connection load while servers are added, removed and
    marked terminating 100 times: 0 socket errors and 0 non-2xx."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk not installed")
    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    try:
        pool.apply(table(backends))
        await wait_routed(s.http_port)
        url = f"http://127.0.0.1:{s.http_port}/svc"
        loads = [
            await asyncio.create_subprocess_exec(
                "wrk", "-t1", "-c8", "-d6s", *args, url, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            for args in ([], ["-H", "Connection: close"])]
        sets = [backends, backends[:1], backends[1:], backends[:2]]
        for v in range(100):
            ports = sets[v % len(sets)]
            term = frozenset(ports[:1]) if v % 3 == 0 and len(ports) > 1 else frozenset()
            pool.apply(table(ports, version=v + 2, terminating=term))
            await asyncio.sleep(0.04)
        for load in loads:
            out, err = await asyncio.wait_for(load.communicate(), 60)
            text = out.decode()
            assert load.returncode == 0, err.decode()
            assert "requests in" in text
            assert "Socket errors" not in text, text
            assert "Non-2xx" not in text, text
    finally:
        await pool.shutdown(1.0)


def test_settings_default_workers_from_affinity() -> None:
    from pylb.cli import default_workers

    assert default_workers() == len(os.sched_getaffinity(0))


async def test_workers_share_one_self_signed_certificate(backends: list[int]) -> None:
    """Without --ssl-cert, a service that needs TLS gets a self-signed certificate made
    once by the controller: every worker serves the same one."""
    import hashlib
    import ssl

    from pylb.dataplane import make_self_signed

    s = settings(https_port=free_port())
    pool = WorkerPool(s, self_signed_pem=make_self_signed(s))
    await pool.start()
    try:
        b = Backend("default/svc:80", tuple(Server("127.0.0.1", p) for p in backends))
        pool.apply(RouteTable(https=(HttpRoute("svc", "/svc", b.name, tls=True),),
                              backends=(b,), version=1))
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        seen: set[str] = set()
        workers_seen: set[int] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(workers_seen) < 2 or not seen):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", s.https_port, ssl=ctx)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
            seen.add(hashlib.sha256(der).hexdigest())
            w.write(b"GET /svc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 200")
            w.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await w.wait_closed()
            await asyncio.sleep(0.6)
            workers_seen = {i for i in range(2) if _https_conns(pool, i) > 0}
        assert workers_seen == {0, 1}, "both workers should have served a TLS connection"
        assert len(seen) == 1
    finally:
        await pool.shutdown(1.0)


def _https_conns(pool: WorkerPool, i: int) -> int:
    snap = pool._workers[i].snapshot
    return int(snap.get("frontends", {}).get("https", {}).get("total_conns", 0))


async def test_sighup_rereads_the_error_page_without_restarting_anything(
        tmp_path: Path, backends: list[int]) -> None:
    page = tmp_path / "404.html"
    page.write_text("old page")
    proc, ports = await start_pylb(tmp_path, backends, f"--error-page={page}")
    try:
        assert (await http_get(ports["http"], "/nope"))[2] == b"old page"
        kids = sorted(_children(proc.pid))
        page.write_text("new page")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # both workers reread it
            bodies = {(await http_get(ports["http"], "/nope"))[2] for _ in range(10)}
            if bodies == {b"new page"}:
                break
            await asyncio.sleep(0.1)
        assert bodies == {b"new page"}
        assert proc.returncode is None
        assert sorted(_children(proc.pid)) == kids
        assert all(_alive(k) for k in kids)
        assert (await http_get(ports["http"], "/svc"))[0] == 200
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


# -- messages between the controller and real worker processes ------------------------------


def _backend_of(headers: dict[str, str]) -> str:
    return headers.get("x-backend", "")


async def served_only_by(port: int, name: str, *, in_a_row: int = 12,
                         timeout: float = 20.0) -> None:
    """Wait until `in_a_row` fresh connections in a row (both workers, most likely) are
    answered by backend `name`."""
    deadline = time.monotonic() + timeout
    run = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.TimeoutError, IndexError, ValueError):
            status, headers, _ = await http_get(port, "/svc", timeout=2)
            if status == 200 and _backend_of(headers) == name:
                run += 1
                if run >= in_a_row:
                    return
                continue
        run = 0
        await asyncio.sleep(0.02)
    raise AssertionError(f"not served by {name} only in time")


def big_service_table(services: int, real_port: int, version: int = 1) -> RouteTable:
    """`services` backends of 10 servers at non-listening 127.0.0.0/8 addresses, and svc
    on a real one."""
    svc = Backend("default/svc:80", (Server("127.0.0.1", real_port, name="real"),))
    backends = [svc]
    routes = [HttpRoute("svc", "/svc", svc.name)]
    for i in range(services):
        name = f"ns{i % 50}/s{i}:80"
        backends.append(Backend(name, tuple(
            Server(f"127.3.{i // 250}.{1 + i % 250}", 9000 + j) for j in range(10))))
        routes.append(HttpRoute(f"s{i}", f"/ns{i % 50}/s{i}", name))
    return RouteTable(http=tuple(routes), backends=tuple(backends), version=version)


async def test_a_1000_service_table_reaches_every_worker(backends: list[int]) -> None:
    """~300 KB: the size at which a send on the non-blocking pipe used to fail with EAGAIN
    and cut the message (the worker then exited and was restarted, forever)."""
    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    try:
        pool.apply(big_service_table(1000, backends[0]))
        await served_only_by(s.http_port, "b0")
        assert pool.restarts == 0
        assert all(w.ready and w.channel is not None for w in pool._workers)
    finally:
        await pool.shutdown(1.0)


async def test_a_table_made_in_steps_and_changes_made_meanwhile_reach_every_worker(
        backends: list[int]) -> None:
    """Real workers: a 1,000-service table made into its frame over many loop turns, two
    changes published while it is made: each worker gets the table, then the change
    since, and serves the newest — never a delta before its table (no NeedTable)."""
    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    pool.table_step, pool.encode_turn = 500, 0  # ~25 steps, one a loop turn
    try:
        tables, deltas = pool.sent["tables"], pool.sent["deltas"]  # the empty one at start
        t1 = big_service_table(1000, backends[0])
        pool.apply(t1)
        assert pool._encoding is not None
        await asyncio.sleep(0)
        svc = Backend("default/svc:80", (Server("127.0.0.1", backends[1], name="real"),))
        t2 = RouteTable(http=t1.http, backends=(svc, *t1.backends[1:]), version=2)
        pool.apply(t2)
        await asyncio.sleep(0)
        svc = Backend("default/svc:80", (Server("127.0.0.1", backends[2], name="real"),))
        pool.apply(RouteTable(http=t1.http, backends=(svc, *t1.backends[1:]), version=3))
        await served_only_by(s.http_port, "b2")
        # one table and one delta a worker
        assert (pool.sent["tables"] - tables, pool.sent["deltas"] - deltas) == (2, 2)
        assert pool.restarts == 0 and all(w.sent_version == 3 for w in pool._workers)
    finally:
        await pool.shutdown(1.0)


async def test_changes_go_as_deltas_and_a_worker_that_missed_one_gets_the_table(
        backends: list[int]) -> None:
    from pylb.delta import Delta

    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    try:
        pool.apply(table(backends[:1], version=1))
        await served_only_by(s.http_port, "b0")
        deltas, tables = pool.sent["deltas"], pool.sent["tables"]
        pool.apply(table(backends[1:2], version=2))
        await served_only_by(s.http_port, "b1")
        assert pool.sent["deltas"] == deltas + 2 and pool.sent["tables"] == tables
        # worker 0 gets a delta from a version it never had: it asks for the whole table
        w = pool._workers[0]
        assert w.channel is not None
        w.channel.send(Delta(base=999, version=1000, removed=("default/svc:80",)))
        await wait_until(lambda: pool.sent["tables"] == tables + 1)
        pool.apply(table(backends[2:3], version=3))  # and takes deltas again
        await served_only_by(s.http_port, "b2")
        assert pool.sent["tables"] == tables + 1 and pool.restarts == 0
    finally:
        await pool.shutdown(1.0)


async def test_a_restarted_worker_gets_the_table_and_the_health_map(
        backends: list[int]) -> None:
    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    try:
        pool.apply(table(backends[:2], version=1))
        await wait_routed(s.http_port)
        pool.set_health(("127.0.0.1", backends[0]), False)  # an active check says: down
        await served_only_by(s.http_port, "b1")
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: pool.restarts == 1 and victim not in pool.pids()
                         and all(w.ready for w in pool._workers))
        await served_only_by(s.http_port, "b1", in_a_row=30)
    finally:
        await pool.shutdown(1.0)


async def test_eof_from_the_controller_stops_the_worker_at_once() -> None:
    pool = WorkerPool(settings(workers=1))
    await pool.start()
    try:
        w = pool._workers[0]
        w.stopping = True  # not to be restarted
        assert w.channel is not None
        w.channel.abort()
        proc = w.process
        assert proc is not None
        await wait_until(lambda: proc.poll() is not None, timeout=10)
        assert proc.returncode == 0
    finally:
        await pool.shutdown(1.0)


# A 20 MB table and 100,000 health verdicts one way while the other side writes 480 KB
# stats reports as fast as flow control lets it: both loops keep turning (a periodic timer
# measures their lag) and every message arrives whole and in order. Blocking sends would
# hang here (both sides writing more than the socket buffers), and non-blocking sends
# without a transport would cut messages.

STATS_REPORTS = 40
STATS_ROWS = 3000
LAG_BOUND = 1.0  # seconds; a loop blocked on a send would stall for the whole test


def _stats_rows() -> dict[str, dict[str, Any]]:
    return {f"ns/b:80\x00server-{i}": {"bytes_in": i, "bytes_out": 2 * i, "cur_conns": 0,
                                        "hrsp": [0, i, 0, 0, 0, 0], "req_total": i}
            for i in range(STATS_ROWS)}


def _peer_main(sock: Any) -> None:
    import uvloop

    uvloop.run(_peer(sock))


async def _lag_monitor(box: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.01)
        box[0] = max(box[0], loop.time() - t - 0.01)


async def _peer(sock: Any) -> None:
    from pylb.messages import Channel, Health, Shutdown, Stats, Table, open_channel

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    seen: dict[str, Any] = {"tables": [], "verdicts": 0, "ordered": True}
    expect = [0]

    def on_message(m: Any) -> None:
        if isinstance(m, Table):
            t = m.table
            seen["tables"].append([t.version, len(t.backends),
                                   sum(len(b.servers) for b in t.backends),
                                   sum(len(s.name) for b in t.backends for s in b.servers)])
        elif isinstance(m, Health):
            for (_, port), up in m.verdicts:
                seen["ordered"] = seen["ordered"] and port == expect[0] and up == (port % 3 == 0)
                expect[0] += 1
            seen["verdicts"] += len(m.verdicts)
        elif isinstance(m, Shutdown) and not done.done():
            done.set_result(None)

    ch = Channel(on_message, lambda _e: done.done() or done.set_result(None))
    await open_channel(sock, ch)
    lag = [0.0]
    mon = loop.create_task(_lag_monitor(lag))
    rows = _stats_rows()
    for i in range(STATS_REPORTS):
        while ch.paused:  # as a worker does: no report while the controller lags
            await asyncio.sleep(0.005)
        ch.send(Stats(frontends={"seq": {"n": i}}, servers=rows))
        await asyncio.sleep(0)
    await done
    mon.cancel()
    ch.send(Stats(frontends={"summary": {"lag": lag[0], **seen}}))
    ch.close()
    await asyncio.wait_for(ch.wait_closed(), 10)


@pytest.mark.timeout(120)
async def test_big_messages_both_ways_at_once_arrive_whole_and_no_loop_stalls() -> None:
    import multiprocessing
    import socket

    from pylb.messages import Channel, Health, Shutdown, Stats, Table, open_channel

    loop = asyncio.get_running_loop()
    label = "x" * 1000
    big = RouteTable(backends=tuple(
        Backend(f"ns/b{i}:80", tuple(Server(f"127.4.{i // 250}.{1 + i % 250}", 9000 + j,
                                            name=f"{label}-{i}-{j}") for j in range(10)))
        for i in range(2000)), version=42)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = multiprocessing.get_context("spawn").Process(target=_peer_main, args=(child,),
                                                        daemon=True)
    proc.start()
    child.close()
    got: list[Any] = []
    lost: asyncio.Future[None] = loop.create_future()
    ch = Channel(got.append, lambda _e: lost.done() or lost.set_result(None))
    try:
        await open_channel(parent, ch)
        lag = [0.0]
        mon = loop.create_task(_lag_monitor(lag))
        table_frame = len(_table_frame(big))
        assert table_frame > 20_000_000
        ch.send(Table(big))
        for batch in range(100):  # 100,000 verdicts, written regardless of flow control
            ch.send(Health(tuple((("127.5.0.1", p), p % 3 == 0)
                                 for p in range(batch * 1000, (batch + 1) * 1000))))
            await asyncio.sleep(0)
        await wait_until(lambda: len(got) >= STATS_REPORTS, timeout=90)
        ch.send(Shutdown(0))
        await asyncio.wait_for(lost, 60)
        mon.cancel()
    finally:
        ch.abort()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    reports = [m for m in got if isinstance(m, Stats)]
    assert [m.frontends["seq"]["n"] for m in reports[:STATS_REPORTS]] == \
        list(range(STATS_REPORTS))
    rows = _stats_rows()
    assert all(m.servers == rows for m in reports[:STATS_REPORTS])
    summary = reports[-1].frontends["summary"]
    assert summary["tables"] == [[42, 2000, 20000, sum(len(s.name) for b in big.backends
                                                        for s in b.servers)]]
    assert summary["verdicts"] == 100_000 and summary["ordered"]
    assert summary["lag"] < LAG_BOUND, summary["lag"]
    assert lag[0] < LAG_BOUND, lag[0]


def _table_frame(table: RouteTable) -> bytes:
    from pylb.messages import Table, encode

    return encode(Table(table))


async def test_a_stalled_worker_gets_the_newest_whole_table_when_it_drains(
        backends: list[int]) -> None:
    """Worker 0 is stopped (SIGSTOP) while every backend changes 30 times: the controller
    buffers at most about one watermark's worth for it, the other worker follows every
    change, and worker 0, resumed, gets the newest whole table once and serves it."""
    from pylb.messages import HIGH_WATER

    def churn(version: int, real: int) -> RouteTable:
        svc = Backend("default/svc:80", (Server("127.0.0.1", real),))
        others = tuple(Backend(f"ns/s{i}:80", tuple(
            Server(f"127.3.{i // 250}.{1 + i % 250}", 9000 + version, name=f"p{version}-{j}")
            for j in range(10))) for i in range(300))
        return RouteTable(http=(HttpRoute("svc", "/svc", svc.name),),
                          backends=(svc, *others), version=version)

    s = settings()
    pool = WorkerPool(s)
    await pool.start()
    stopped = pool.pids()[0]
    try:
        pool.apply(churn(1, backends[0]))
        await served_only_by(s.http_port, "b0")
        w0 = pool._workers[0]
        assert w0.channel is not None
        os.kill(stopped, signal.SIGSTOP)
        tables = pool.sent["tables"]
        peak = 0
        for v in range(2, 32):
            pool.apply(churn(v, backends[v % 2]))
            peak = max(peak, w0.channel.buffered)
            await asyncio.sleep(0.01)
        assert w0.table_stale and w0.channel.paused
        assert peak < HIGH_WATER + 600_000  # a watermark and one message, not 30 deltas
        assert pool.sent["tables"] == tables  # nothing more for it while it is stalled
        os.kill(stopped, signal.SIGCONT)
        stopped = 0
        await wait_until(lambda: pool.sent["tables"] == tables + 1 and not w0.table_stale)
        await served_only_by(s.http_port, "b1", in_a_row=20)  # v31: backends[31 % 2]
        assert pool.restarts == 0
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        await pool.shutdown(1.0)


# -- Gateway plans to real workers: whole, then deltas -------------------------------------


def _gw_plan(port: int, service: str, routes: int = 50) -> Any:
    """A Gateway listener at 127.0.0.1:`port` with `routes` routes on other hostnames
    and one, `ns/probe`, sending any host's requests to Service `service`."""
    from pylb.gatewaymodel import (
        Filters,
        GatewayPlan,
        Listener,
        RouteMatch,
        RuleEntry,
        WeightedBackend,
    )

    def entry(host: str, route: str, svc: str, order: int) -> RuleEntry:
        return RuleEntry(host, RouteMatch(), (WeightedBackend(("default", svc, 80), 1),),
                         Filters(), route, (order,))

    rules = [entry(f"h{i}.example.com", f"ns/r{i}", "b0", i) for i in range(routes)]
    rules.append(entry("", "ns/probe", service, routes))
    return GatewayPlan((Listener("ns/gw", "http", "127.0.0.1", port, "HTTP", "",
                                 tuple(rules)),))


async def test_gateway_plans_go_as_deltas_and_a_worker_that_missed_one_gets_the_plan(
        backends: list[int]) -> None:
    from pylb.config import GatewayApi
    from pylb.gatewaydelta import PlanDelta
    from pylb.messages import GatewaysDelta

    s = settings(gateway=GatewayApi(enabled=True))
    gw = free_port()
    pool = WorkerPool(s)
    await pool.start()
    try:
        bs = tuple(Backend(f"default/b{i}:80", (Server("127.0.0.1", p, name=f"b{i}"),))
                   for i, p in enumerate(backends[:2]))
        pool.apply(RouteTable(backends=bs, version=1))
        assert await pool.apply_gateways(_gw_plan(gw, "b0")) == frozenset()
        await served_only_by(gw, "b0")
        assert (pool.sent["gateway_plans"], pool.sent["gateway_deltas"]) == (2, 0)
        assert all(w.gateways_seq == 0 for w in pool._workers)
        assert await pool.apply_gateways(_gw_plan(gw, "b1")) == frozenset()
        await served_only_by(gw, "b1")
        assert (pool.sent["gateway_plans"], pool.sent["gateway_deltas"]) == (2, 2)
        assert pool.sent["gateway_delta_bytes"] < pool.sent["gateway_plan_bytes"] / 10
        # worker 0 gets a delta from a plan it never had: it asks for the whole plan
        w = pool._workers[0]
        assert w.channel is not None
        w.channel.send(GatewaysDelta(99, 98, PlanDelta((0,))))
        await wait_until(lambda: pool.sent["gateway_plans"] == 3)
        assert await pool.apply_gateways(_gw_plan(gw, "b0")) == frozenset()  # deltas again
        await served_only_by(gw, "b0")
        assert (pool.sent["gateway_plans"], pool.sent["gateway_deltas"]) == (3, 4)
        assert all(w.gateways_seq == 2 for w in pool._workers) and pool.restarts == 0
    finally:
        await pool.shutdown(1.0)
