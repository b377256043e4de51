"""Worker processes: N data planes on one node's cores, fed by the controller.

Theory of operation. The controller starts N workers (multiprocessing, `spawn`: a fresh
interpreter, no event loop state inherited). Each worker runs its own uvloop loop and binds
every frontend with SO_REUSEPORT, so the kernel spreads new connections across them.
Between the controller and each worker runs one duplex pipe carrying pickled messages:

    controller → worker   ("table", RouteTable)      the whole table: a worker that missed
                                                     one version is current with the next
                          ("health", key, up)        an active check's verdict
                          ("shutdown", grace)        stop accepting, drain, exit
    worker → controller   ("ready", index)           listeners bound
                          ("error", message)         could not start (e.g. port in use)
                          ("stats", snapshot)        counters, every `STATS_INTERVAL`

A worker that dies is restarted with exponential backoff and given the current table and
health. Its last counters are kept (with current connections zeroed), so totals on the
stats page never go backwards. A worker whose pipe reaches EOF — the controller died, even
by SIGKILL — shuts down at once: no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from pylb.config import Settings
from pylb.counters import merge_snapshots
from pylb.model import RouteTable

log = logging.getLogger("pylb.workers")

STATS_INTERVAL = 0.5  # seconds between counter reports; the stats page lags by at most this
RESTART_BACKOFF = (0.5, 30.0)  # first delay and cap, doubling per consecutive crash


@dataclass
class _Worker:
    index: int
    process: Any = None
    conn: multiprocessing.connection.Connection | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    crashes: int = 0
    started: float = 0.0
    stopping: bool = False


def _retire(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A dead worker's counters, kept for the totals: nothing of it is current."""
    out = {sec: {k: dict(row, cur_conns=0, rate=0) for k, row in rows.items()}
           for sec, rows in snapshot.items() if sec != "failures"}
    out["failures"] = dict(snapshot.get("failures", {}))
    return out


class WorkerPool:
    def __init__(self, settings: Settings, *, self_signed_pem: bytes | None = None) -> None:
        self.settings = settings
        self.self_signed_pem = self_signed_pem
        self.restarts = 0
        self.table = RouteTable()
        self.health: dict[tuple[str, int], bool] = {}
        self._ctx = multiprocessing.get_context("spawn")
        self._workers = [_Worker(i) for i in range(settings.workers)]
        self._retired: list[dict[str, Any]] = []
        self._closing = False
        self._monitor: asyncio.Task[None] | None = None
        self._ready_waiters: dict[int, asyncio.Future[None]] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start every worker and wait until all have bound their listeners."""
        for w in self._workers:
            self._spawn(w)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self._ready_waiters[w.index] for w in self._workers)),
                timeout)
        except BaseException:
            await self.shutdown(0)
            raise
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _spawn(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(w.index, self.settings, child,
                                                                 self.self_signed_pem),
                                 name=f"pylb-worker-{w.index}", daemon=True)
        proc.start()
        child.close()
        w.process, w.conn, w.ready, w.started = proc, parent, False, time.monotonic()
        self._ready_waiters[w.index] = loop.create_future()
        loop.add_reader(parent.fileno(), self._on_message, w)
        self._send(w, ("table", self.table))
        for key, up in self.health.items():
            self._send(w, ("health", key, up))

    def _on_message(self, w: _Worker) -> None:
        conn = w.conn
        assert conn is not None
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            self._detach(w)
            return
        kind = msg[0]
        if kind == "stats":
            w.snapshot = msg[1]
        elif kind == "ready":
            w.ready = True
            fut = self._ready_waiters.get(w.index)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "error":
            log.error("worker %d: %s", w.index, msg[1])
            fut = self._ready_waiters.get(w.index)
            if fut is not None and not fut.done():
                from pylb.app import StartupError

                fut.set_exception(StartupError(msg[1]))

    def _detach(self, w: _Worker) -> None:
        if w.conn is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(w.conn.fileno())
            w.conn.close()
            w.conn = None

    async def _watch(self) -> None:
        """Restart workers that die, with backoff."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            sentinels = {w.process.sentinel: w for w in self._workers if w.process}
            ready = await loop.run_in_executor(
                None, multiprocessing.connection.wait, list(sentinels), 1.0)
            for s in ready:
                w = sentinels[s]
                if self._closing or w.stopping:
                    continue
                code = w.process.exitcode
                self._detach(w)
                w.process.join(0)
                if w.snapshot:
                    self._retired.append(_retire(w.snapshot))
                    w.snapshot = {}
                if time.monotonic() - w.started > 60:
                    w.crashes = 0
                delay = min(RESTART_BACKOFF[0] * 2 ** w.crashes, RESTART_BACKOFF[1])
                w.crashes += 1
                self.restarts += 1
                log.error("worker %d exited (code %s); restarting in %.1fs",
                          w.index, code, delay)
                w.process = None
                loop.call_later(delay, self._respawn, w)

    def _respawn(self, w: _Worker) -> None:
        if not self._closing and w.process is None:
            self._spawn(w)

    async def shutdown(self, grace: float) -> None:
        self._closing = True
        for w in self._workers:
            w.stopping = True
            self._send(w, ("shutdown", grace))
        deadline = time.monotonic() + grace + 5.0
        for w in self._workers:
            if w.process is None:
                continue
            while w.process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.process.is_alive():
                log.warning("worker %d did not stop in time; killing it", w.index)
                w.process.kill()
            w.process.join(1.0)
            self._detach(w)
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor

    # -- controller → workers -----------------------------------------------------------

    def _send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        if w.conn is None:
            return
        try:
            w.conn.send(msg)
        except (OSError, ValueError) as e:
            log.warning("worker %d unreachable: %s", w.index, e)

    def apply(self, table: RouteTable) -> None:
        self.table = table
        for w in self._workers:
            self._send(w, ("table", table))

    def set_health(self, key: tuple[str, int], up: bool) -> None:
        self.health[key] = up
        for w in self._workers:
            self._send(w, ("health", key, up))

    def signal(self, signum: int) -> None:
        for w in self._workers:
            if w.process is not None and w.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.process.pid, signum)

    # -- status -------------------------------------------------------------------------

    def snapshots(self) -> list[dict[str, Any]]:
        return [w.snapshot for w in self._workers if w.snapshot] + self._retired

    def counters(self) -> dict[str, Any]:
        return merge_snapshots(self.snapshots())

    def alive(self) -> bool:
        return any(w.process is not None and w.process.is_alive() for w in self._workers)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]


# -- the worker process ------------------------------------------------------------------


def worker_main(index: int, settings: Settings,
                conn: multiprocessing.connection.Connection,
                self_signed_pem: bytes | None = None) -> None:
    """Entry point of a worker process."""
    from pylb.cli import setup_logging

    setup_logging(settings.log_level, tag=f"worker {index}", access_log=settings.syslog)
    # Ctrl-C reaches the whole process group; the controller decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import uvloop

    try:
        uvloop.run(_worker(index, settings, conn, self_signed_pem))
    except Exception as e:
        log.exception("worker %d failed", index)
        with contextlib.suppress(Exception):
            conn.send(("error", f"worker {index}: {e}"))
        raise SystemExit(1) from None


async def _worker(index: int, settings: Settings,
                  conn: multiprocessing.connection.Connection,
                  self_signed_pem: bytes | None) -> None:
    from pylb.app import DataPlane

    loop = asyncio.get_running_loop()
    plane = DataPlane(settings, reuse_port=True, self_signed_pem=self_signed_pem)
    try:
        await plane.start()
    except OSError as e:
        conn.send(("error", f"cannot listen on {settings.bind}:{settings.http_port}: "
                            f"{e.strerror or e}"))
        return
    stop: asyncio.Future[float] = loop.create_future()
    tables: asyncio.Queue[RouteTable] = asyncio.Queue()

    def on_message() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            if not stop.done():
                log.warning("controller gone; worker %d exits", index)
                stop.set_result(0.0)
            return
        kind = msg[0]
        if kind == "table":
            tables.put_nowait(msg[1])
        elif kind == "health":
            plane.set_health(msg[1], msg[2])
        elif kind == "shutdown" and not stop.done():
            stop.set_result(float(msg[1]))

    async def apply_tables() -> None:
        while True:
            table = await tables.get()
            while not tables.empty():
                table = tables.get_nowait()
            await plane.apply(table)

    def report() -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("stats", plane.stats.snapshot()))

    async def report_loop() -> None:
        while True:
            report()
            await asyncio.sleep(STATS_INTERVAL)

    loop.add_reader(conn.fileno(), on_message)
    def on_sigterm() -> None:
        if not stop.done():
            stop.set_result(settings.grace_period)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    def on_sighup() -> None:  # always handled: SIGHUP's default action would kill us
        plane.reload()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    conn.send(("ready", index))
    tasks = [loop.create_task(apply_tables()), loop.create_task(report_loop())]
    grace = await stop
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await plane.shutdown(grace)
    report()
