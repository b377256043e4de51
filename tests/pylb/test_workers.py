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
from tests.conftest import free_port

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
    ports = {"http": free_port(), "stats": free_port(), "health": free_port()}
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

    from pylb.app import make_self_signed

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
