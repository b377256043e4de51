"""The controller: what `pylb run` is, above the data plane.

Theory of operation
-------------------
What it owns. `Controller` owns everything that talks to the world besides traffic: the
source of truth (`Source`: discovery.kube's watches or discovery.filesource's file), the
active health checks (proxy.check), the stats server (:1936, pylb.stats) and the health
server (/healthz, /readyz: pylb.health), the election when `--election` is given
(election.app), and the data plane — one `DataPlane` (pylb.dataplane) in this process with
`--workers 1`, else a `WorkerPool` (pylb.workers) of processes that each run their own.

Which loop runs what. Everything here runs on the controller process's one uvloop loop,
as tasks: `apply-tables`, `discovery` (the source's `run`), `health-checks` and
`election`. Nothing on it may block: the source translates big changes in a worker
thread (asyncio.to_thread), and the stats server renders in its own thread, reading a
`StatsView` snapshot taken on the loop (counters merged lazily, in that thread). Workers
run their own loops in their own processes and never talk to Kubernetes.

How a table travels. The source builds an immutable, versioned `RouteTable` and calls
`publish(table)`, which only queues it. `_apply_tables` takes the newest queued table
(older ones are skipped: only the newest matters), gives it to the checker (which servers
to probe), then to the data plane: `DataPlane.apply` in process, or `WorkerPool.apply`,
which sends each worker the delta from the table it has (pylb.delta, pylb.messages;
whole when it lags). Check verdicts travel the same way (`on_check` → `set_health`).
The stats page shows the table as it stands here and the counters the workers report.

What each signal does. SIGTERM/SIGINT: a plain signal handler (not the loop's, so it runs
however busy the loop is: pylb.stopping) sets readiness false, arms the hard deadline of
--grace-period and asks the loop to `stop()`; `run` then cancels its tasks (bounded by
STOP_TASKS_TIMEOUT), drains the data plane within what is left of the grace period, and
closes the stats and health servers. A second SIGTERM/SIGINT, or the deadline, kills the
workers and exits at once. SIGHUP: reread certificates and the error page, here
(`DataPlane.reload`) or in every worker (the pool forwards the signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import uvloop

from discovery.filesource import FileSource
from proxy.check import HealthChecker
from pylb import __version__, collector
from pylb.config import Settings
from pylb.counters import ShownCounters, merge_snapshots
from pylb.dataplane import DataPlane, gateway_node_address, make_self_signed, make_tls_store
from pylb.health import HealthServer
from pylb.model import RouteTable
from pylb.preflight import StartupError
from pylb.stats import StatsServer, StatsView
from pylb.stats.view import LazyCounters, table_keys
from pylb.stopping import EXIT_HARD, HardStop, hard_exit
from pylb.workers import WorkerPool

log = logging.getLogger("pylb")

# On shutdown, how long the controller's tasks (discovery, checks, election) get to unwind
# before the listeners close anyway; what is still unwinding then is left to the hard stop.
STOP_TASKS_TIMEOUT = 2.0
SWITCH_INTERVAL = 0.001  # seconds a thread holds the GIL while another waits (see main)


class Source(Protocol):
    """A source of truth: discovery.kube.KubeSource or discovery.filesource.FileSource."""

    @property
    def synced(self) -> bool:
        """A complete first read is in (readiness waits for it)."""

    @property
    def last_sync(self) -> float | None:
        """Wall time of the last complete read, when the source keeps one."""

    async def run(self, publish: Callable[[RouteTable], None]) -> None:
        """Publish a table now and a new one on each change, until cancelled."""

    def metrics(self) -> Mapping[str, float]:
        """Numbers for the stats page and /metrics (empty when there are none)."""


def make_source(settings: Settings) -> Source:
    if settings.source.startswith("file:"):
        return FileSource(settings.source[5:], settings)
    # Imported here, not at the top: discovery.kube (like election) pulls in
    # kubernetes-asyncio, ~0.6 s of CPU that a file source never needs.
    from discovery.kube import KubeSource

    return KubeSource(settings)


class Controller:
    """Discovery, health checks, stats and health servers, election; one data plane in
    process or a pool of worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.time()
        self.source: Source = make_source(settings)
        self.table = RouteTable()
        self.table_time = 0.0
        self.shutting_down = False
        self.leader: dict[str, Any] | None = None
        self.plane: DataPlane | None = None
        self.pool: WorkerPool | None = None
        self.checker = HealthChecker(settings, self.on_check, on_pass=self.on_check_passed)
        self.stats_server = StatsServer(settings, self.view)
        self.health_server = HealthServer(settings, self.alive, self.ready)
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.hard_stop = HardStop(settings.grace_period, self._hard_exit)
        self._table_updates: asyncio.Queue[RouteTable] = asyncio.Queue()
        self._shown = ShownCounters(lambda: self.counters())

    # -- status for the stats page and health server -----------------------------------

    def counters(self) -> dict[str, Any]:
        if self.pool is not None:
            return self.pool.counters()
        assert self.plane is not None
        return merge_snapshots([self.plane.stats.snapshot()])

    def shown_counters(self, table: RouteTable) -> dict[str, Any]:
        """The merged counters bounded by `table` (counters.prune_to_table): what the
        stats page shows. Runs in the stats render thread (see LazyCounters)."""
        return self._shown.get(table, table_keys(table))

    def view(self) -> StatsView:
        table = self.table
        if self.plane is not None:  # here on the loop, not in the render thread
            self.plane.stats.sweep()  # rows of servers gone from the table, now idle
        tls_store = self.plane.tls_store if self.plane is not None else None
        certs = tls_store.certificates() if tls_store is not None else []
        metrics = dict(self.source.metrics())
        return StatsView(
            version=__version__,
            pid=os.getpid(),
            started=self.started,
            now=time.time(),
            workers=self.settings.workers,
            worker_restarts=self.pool.restarts if self.pool is not None else 0,
            table=table,
            # Merged in the render thread, not here on the loop: 100,000 server rows
            # take seconds, and /readyz, discovery and checks wait for the loop.
            counters=LazyCounters(lambda: self.shown_counters(table)),
            checks=self.checker.results(),
            leader=self.leader,
            discovery_synced=self.source.synced,
            discovery_metrics=metrics,
            discovery_last_sync=self.source.last_sync,
            certificates=certs,
            table_version=table.version,
            table_age=(time.time() - self.table_time) if self.table_time else None,
            maxconn=self.settings.limits.maxconn,
            queue_limit=self.settings.limits.queue_limit,
        )

    def alive(self) -> bool:
        if self.pool is not None:
            return bool(self.pool.alive())
        return self.plane is not None

    def ready(self) -> bool:
        return (not self.shutting_down) and self.source.synced

    # -- running ------------------------------------------------------------------------

    def publish(self, table: RouteTable) -> None:
        """Called by the source with each new table (already versioned)."""
        self._table_updates.put_nowait(table)

    async def _apply_tables(self) -> None:
        while True:
            table = await self._table_updates.get()
            while not self._table_updates.empty():  # coalesce: only the newest matters
                table = self._table_updates.get_nowait()
            first = self.table_time == 0.0
            self.table = table
            self.table_time = time.time()
            log.info("route table v%d: %d http, %d https, %d tcp, %d backends, %d skipped",
                     table.version, len(table.http), len(table.https), len(table.tcp),
                     len(table.backends), len(table.skipped))
            if self.pool is not None:
                self.pool.apply(table)
            elif self.plane is not None:
                await self.plane.apply(table)
            # After the data plane has it: checks need not hold traffic up (a first table
            # of 100,000 checked servers costs ~60 ms here, then chunks on later turns).
            self.checker.set_table(table)
            if first:  # the first table of a big cluster: see collector.settle
                collector.settle()

    def on_check(self, key: tuple[str, int], up: bool, _result: object) -> None:
        """The checker's verdict change, passed on to the data plane (the result itself
        stays with the checker, whose `results()` the stats page reads)."""
        if self.pool is not None:
            self.pool.set_health(key, up)
        elif self.plane is not None:
            self.plane.set_health(key, up)

    def on_check_passed(self, key: tuple[str, int], result: object) -> None:
        """A passing probe of a server a data plane ejected while its check stayed up:
        the UP verdict again, which ends the ejection (issue #22)."""
        self.on_check(key, True, result)

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        # Discovery lists while the workers start (each a second or more at 10,000
        # services); its tables wait in the queue until _apply_tables runs.
        discovery = loop.create_task(self.source.run(self.publish), name="discovery")
        try:
            await self._open(s)
        except BaseException:
            discovery.cancel()
            await asyncio.wait([discovery])
            raise
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):  # not the loop's: see pylb.stopping
            signal.signal(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self._tasks = [
            # The checker first: running, it takes a big first table in over many loop
            # turns; a table given before it runs is taken in at once (~0.5 s at 100,000).
            loop.create_task(self.checker.run(), name="health-checks"),
            loop.create_task(self._apply_tables(), name="apply-tables"),
            discovery,
        ]
        if s.election:
            self._tasks.append(loop.create_task(self._run_election(), name="election"))
        if s.gateway.enabled:
            self._tasks.append(loop.create_task(self._run_gateways(), name="gateway-api"))
        log.info("pylb %s serving: http :%d, stats :%d, health :%d, %d worker(s)",
                 __version__, s.http_port, s.stats_port, s.health_port, s.workers)
        stop = loop.create_task(self._stopped.wait())
        done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        failure: BaseException | None = None
        for t in done:
            if t is not stop and not t.cancelled() and t.exception() is not None:
                failure = t.exception()
                log.error("%s failed: %s", t.get_name(), failure)
        stop.cancel()
        await self.shutdown()
        if failure is not None:  # e.g. no cluster configuration: say so and exit non-zero
            raise StartupError(f"{failure}") from failure

    async def _open(self, s: Settings) -> None:
        """Start the workers (or the data plane here), the stats and health servers."""
        if s.workers > 1:
            self.pool = WorkerPool(s, self_signed_pem=make_self_signed(s))
            self.pool.on_ejection = self.checker.watch
            await self.pool.start()
        else:
            tls_store = make_tls_store(s.tls, need_tls=True) if s.tls.cert else None
            self.plane = DataPlane(s, tls_store=tls_store,
                                   self_signed_pem=make_self_signed(s))
            self.plane.on_ejection = self.checker.watch
            try:
                await self.plane.start()
            except OSError as e:
                raise StartupError(f"cannot listen on {s.bind}:{s.http_port}: "
                                   f"{e.strerror or e}") from None
        try:
            await self.stats_server.start(s.stats_bind, s.stats_port)
            await self.health_server.start(s.bind, s.health_port)
        except OSError as e:
            raise StartupError(f"cannot listen for stats/health: {e.strerror or e}") from None

    def stop(self) -> None:
        """Begin the graceful shutdown (as SIGTERM does)."""
        self._stopped.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT, run between two bytecodes of the main thread however busy the
        loop is (pylb.stopping): readiness false and the deadline armed now, the graceful
        path on the loop's next turn; a second signal exits at once."""
        if not self.hard_stop.on_signal(signum):
            return
        self.shutting_down = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: exit is under way
                self._loop.call_soon_threadsafe(self._signalled, signum)

    def _signalled(self, signum: int) -> None:
        log.info("%s: shutting down; the process ends within %.1fs (a second signal ends "
                 "it at once)", signal.Signals(signum).name, self.hard_stop.remaining())
        self.stop()

    def _hard_exit(self, code: int) -> None:
        why = ("a second stop signal" if code != EXIT_HARD else
               f"the graceful shutdown did not end within --grace-period "
               f"{self.settings.grace_period:g}s")
        pids = self.pool.pids() if self.pool is not None else []
        hard_exit(code, pids, f"{why}: killing {len(pids)} worker(s) and exiting now")

    def _reload(self) -> None:
        log.info("SIGHUP: rereading certificates and the error page")
        if self.plane is not None:
            self.plane.reload()
        if self.pool is not None:
            self.pool.signal(signal.SIGHUP)

    async def _run_gateways(self) -> None:
        """--gateway-api: watch the Gateway API kinds, serve the plan's listeners; write
        status when leader (always without --election)."""
        from discovery.gateway.source import GatewaySource

        # Gateways on the node's own address are advertised as $NODE_IP, bound at --bind.
        # Every worker binds every listener (SO_REUSEPORT); status is written here only.
        node_ip = gateway_node_address(self.settings)
        if self.pool is not None:
            publish: Callable[[Any], Any] = self.pool.apply_gateways
        else:
            assert self.plane is not None
            self.plane.attach_gateways(node_ip)
            publish = self.plane.apply_gateway_plan

        def leader() -> bool:
            return not self.settings.election or bool(
                self.leader and self.leader.get("is_self"))

        self.gateway_source = GatewaySource(self.settings, is_leader=leader,
                                            node_address=node_ip)
        await self.gateway_source.run(publish)

    async def _run_election(self) -> None:
        from election.app import run_election  # kubernetes-asyncio: see make_source

        def on_leader(name: str | None, info: dict[str, Any]) -> None:
            self.leader = {"name": name, **info}

        await run_election(self.settings, on_leader, lambda: self.table)

    async def shutdown(self) -> None:
        """Graceful: readiness false at once, stop accepting, let open work finish up to
        --grace-period, then close."""
        self.shutting_down = True
        log.info("shutting down: up to %.1fs for open connections",
                 self.hard_stop.drain_budget())
        for t in self._tasks:
            t.cancel()
        if self._tasks:  # bounded: a task slow to unwind must not hold the listeners open
            await asyncio.wait(self._tasks, timeout=STOP_TASKS_TIMEOUT)
        grace = self.hard_stop.drain_budget()
        if self.pool is not None:
            await self.pool.shutdown(grace)
        elif self.plane is not None:
            await self.plane.shutdown(grace)
        await self.stats_server.close()
        await self.health_server.close()


def dry_run(settings: Settings, out: Callable[[str], Any] = print) -> int:
    """`--dry`: print the table that would be served, and exit."""
    source = make_source(settings)
    # The file source reads once, without a loop; Kubernetes needs one list.
    table = (source.load() if isinstance(source, FileSource)
             else asyncio.run(_first_table(source)))
    out(table.render())
    return 0


async def _first_table(source: Source) -> RouteTable:
    got: asyncio.Future[RouteTable] = asyncio.get_running_loop().create_future()

    def publish(t: RouteTable) -> None:
        if not got.done():
            got.set_result(t)

    task = asyncio.create_task(source.run(publish))
    try:
        return await got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def raise_nofile_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: a load balancer holds two file
    descriptors per proxied connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(settings: Settings) -> int:
    if settings.dry:
        try:
            return dry_run(settings)
        except Exception as e:  # the source names the file/cluster problem
            raise StartupError(str(e)) from e
    raise_nofile_limit()
    # The loop shares the GIL with the stats page's render thread and discovery's build
    # thread (pylb.stats.server, discovery.kube), each a second of pure Python at 10,000
    # services. uvloop takes the GIL back for every callback, and behind a busy thread
    # each take waits up to the switch interval: 5 ms by default, so a loop turn of a few
    # dozen callbacks (probes ending, a request on /readyz) took 100-250 ms while a page
    # rendered. 1 ms cuts that wait fivefold, for more hand-offs between the threads.
    sys.setswitchinterval(SWITCH_INTERVAL)
    collector.tune()  # (it serves traffic itself with --workers=1)

    async def _main() -> None:
        await Controller(settings).run()

    try:
        uvloop.run(_main())
    except KeyboardInterrupt:
        return 130
    return 0
