"""Wiring: the controller (discovery, checks, stats, health, election) and the data plane.

`DataPlane` is what one worker runs: the HTTP and HTTPS routers and the TCP splicer over
one set of balancers and counters. `Controller` owns everything that talks to the outside
world besides traffic, and pushes each new RouteTable and each health verdict to the data
plane — in this process (`--workers 1`) or, through pylb.workers, to worker processes.
SIGTERM/SIGINT start the graceful shutdown however busy the loop is, and a deadline ends
the process tree at --grace-period if that path has not (pylb.stopping).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from pylb import __version__, collector
from pylb.config import Settings, TlsSettings
from pylb.counters import ShownCounters, Stats, merge_snapshots
from pylb.delta import Delta, diff
from pylb.model import RouteTable
from pylb.stopping import EXIT_HARD, HardStop, hard_exit

log = logging.getLogger("pylb")

# Backends applied per turn of the loop in a big table change (~10,000 servers, ~30 ms
# on the reference machine): see DataPlane._apply_backends.
APPLY_SLICE = 1000

# On shutdown, how long the controller's tasks (discovery, checks, election) get to unwind
# before the listeners close anyway; what is still unwinding then is left to the hard stop.
STOP_TASKS_TIMEOUT = 2.0


class StartupError(Exception):
    """Start-up cannot go on; the message says what to fix."""


def make_tls_store(tls: TlsSettings, need_tls: bool,
                   self_signed_pem: bytes | None = None) -> Any:
    from proxy.certs import CertificateError
    from proxy.tls import TlsStore

    try:
        return TlsStore(tls, need_tls=need_tls, self_signed_pem=self_signed_pem)
    except CertificateError as e:
        raise StartupError(str(e)) from None


def make_self_signed(settings: Settings) -> bytes | None:
    """Without --ssl-cert, the certificate a TLS frontend falls back to: made once by the
    controller so that every worker serves the same one."""
    if settings.tls.cert:
        return None
    from proxy.certs import generate_self_signed
    from proxy.tls import self_signed_names

    return generate_self_signed(self_signed_names())


class DataPlane:
    """One worker's listeners. `apply(table)` is atomic for new connections."""

    def __init__(self, settings: Settings, *, reuse_port: bool = False,
                 tls_store: Any = None, self_signed_pem: bytes | None = None) -> None:
        from proxy.balance import Balancers
        from proxy.http import HttpProxy
        from proxy.listener import ConnectionLimit
        from proxy.tcp import TcpProxy

        self.settings = settings
        self.reuse_port = reuse_port
        self.stats = Stats()
        self.balancers = Balancers(settings.limits)
        # --maxconn counts every frontend's connections together, as haproxy's global
        # maxconn does.
        self.limit = ConnectionLimit(settings.limits.maxconn)
        self.http = HttpProxy(settings, self.stats, self.balancers, frontend="http",
                              limit=self.limit)
        self.https: Any = None
        self.tls_store = tls_store
        self.self_signed_pem = self_signed_pem
        self.tcp = TcpProxy(settings, self.stats, self.balancers, host=settings.bind,
                            reuse_port=reuse_port, limit=self.limit)
        self.table = RouteTable()
        self.addresses: dict[str, tuple[str, int]] = {}
        self._tls_watch: asyncio.Task[None] | None = None
        self._https_blocked = settings.https_port in {p for _, p in settings.tcp_services}
        self._https_warned = False

    async def start(self) -> None:
        s = self.settings
        self.addresses["http"] = await self.http.start(s.bind, s.http_port,
                                                       reuse_port=self.reuse_port)
        if s.tls.cert:
            await self._open_https()

    async def _open_https(self) -> None:
        from proxy.http import HttpProxy

        if self.tls_store is None:
            self.tls_store = make_tls_store(self.settings.tls, need_tls=True,
                                            self_signed_pem=self.self_signed_pem)
        self.https = HttpProxy(self.settings, self.stats, self.balancers, frontend="https",
                               tls=True, ssl_context=self.tls_store.server_context(),
                               limit=self.limit)
        self.https.set_table(self.table)
        self.addresses["https"] = await self.https.start(
            self.settings.bind, self.settings.https_port, reuse_port=self.reuse_port)
        self._tls_watch = asyncio.get_running_loop().create_task(self.tls_store.watch())

    async def apply(self, table: RouteTable, delta: Delta | None = None) -> None:
        """Serve `table` from now on. Incremental: `delta` is the change from the table
        served so far (a worker gets it from the controller); without it, or when it is
        not from this table's version, it is worked out here (`diff`, cheap when the new
        table shares unchanged backends with the old). Only changed backends' balancers
        and counters are touched, a router only when its routes changed, the TCP
        listeners only when TCP frontends changed."""
        old = self.table
        if delta is None or delta.base != old.version:
            delta = diff(old, table)
        self.table = table
        left = await self._apply_backends(delta)
        self._prune_counters(old, delta)
        self.http.set_table(table, delta, left)
        if self.https is not None:
            self.https.set_table(table, delta, left)
        elif table.https and self._https_blocked:
            if not self._https_warned:
                self._https_warned = True
                log.error("services need the TLS frontend, but --https-port %d is a TCP "
                          "service's port", self.settings.https_port)
        elif table.https:
            try:
                await self._open_https()
            except (StartupError, OSError) as e:
                log.error("cannot open the TLS frontend on :%d: %s",
                          self.settings.https_port, e)
        await self.tcp.set_table(table, delta)

    async def _apply_backends(self, delta: Delta) -> set[tuple[str, int]]:
        """The balancers brought up to `delta`; returns the server addresses no backend
        lists any more. A big change (a whole table of a big cluster: the first, or after a
        worker lagged) is taken in slices of APPLY_SLICE backends with the loop let in
        between, so that the controller's loop in `--workers 1` keeps answering /readyz
        and the stats page (10,000 backends in one go held it ~0.4 s). Routers still point
        at the old table meanwhile, and every backend's balancer changes whole, so a
        request in between is served by the old table or the new, per backend; removals
        come last, once nothing routes to them."""
        changed = delta.backends
        if len(changed) <= APPLY_SLICE:
            return self.balancers.apply(changed, delta.removed)
        left: set[tuple[str, int]] = set()
        for i in range(0, len(changed), APPLY_SLICE):
            left |= self.balancers.apply(changed[i:i + APPLY_SLICE], ())
            await asyncio.sleep(0)
        left |= self.balancers.apply((), delta.removed)
        live = self.balancers.live_keys
        return {k for k in left if k not in live}

    def _prune_counters(self, old: RouteTable, delta: Delta) -> None:
        """Counter rows follow the table: rows of servers and backends that left go (when
        their connections have closed: pylb.counters.Stats.prune)."""
        stats = self.stats
        if not stats.servers and not stats.backends:
            return
        gone: list[tuple[str, str]] = []
        back: list[tuple[str, str]] = []
        for name in delta.removed:
            ob = old.get_backend(name)
            if ob is not None:
                gone.extend((name, s.label) for s in ob.servers)
        for b in delta.backends:
            stats.keep_backend(b.name)
            ob = old.get_backend(b.name)
            labels = {s.label for s in b.servers}
            back.extend((b.name, label) for label in labels)
            if ob is not None:
                gone.extend((b.name, s.label) for s in ob.servers if s.label not in labels)
        stats.prune(gone, delta.removed, back)

    def set_health(self, key: tuple[str, int], up: bool) -> None:
        self.balancers.set_health(key, up)

    def set_health_many(self, verdicts: Iterable[tuple[tuple[str, int], bool]],
                        full: bool = False) -> None:
        """A batch of active-check verdicts; `full`: the whole map (pylb.messages.Health)."""
        if full:
            self.balancers.reset_health(dict(verdicts))
            return
        for key, up in verdicts:
            self.balancers.set_health(key, up)

    def reload(self) -> None:
        """SIGHUP: reread the certificate files and the error page. A file that cannot be
        read or checked is refused with a log line; what was loaded stays."""
        if self.tls_store is not None:
            self.tls_store.reload_if_changed()
        if self.settings.error_page:
            from pylb.cli import FlagError, load_error_page

            try:
                page = load_error_page(self.settings.error_page)
            except FlagError as e:
                log.error("SIGHUP: keeping the old error page: %s", e)
                return
            for proxy in (self.http, self.https):
                if proxy is not None:
                    proxy.error_page = page

    @property
    def connections(self) -> int:
        n = self.http.connections + self.tcp.connections
        return n + (self.https.connections if self.https is not None else 0)

    async def shutdown(self, grace: float) -> None:
        if self._tls_watch is not None:
            self._tls_watch.cancel()
        parts = [self.http.shutdown(grace), self.tcp.shutdown(grace)]
        if self.https is not None:
            parts.append(self.https.shutdown(grace))
        await asyncio.gather(*parts, return_exceptions=True)


def make_source(settings: Settings) -> Any:
    if settings.source.startswith("file:"):
        from discovery.filesource import FileSource

        return FileSource(settings.source[5:], settings)
    from discovery.kube import KubeSource

    return KubeSource(settings)


class Controller:
    """Discovery, health checks, stats and health servers, election; one data plane in
    process or a pool of worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.time()
        self.source = make_source(settings)
        self.table = RouteTable()
        self.table_time = 0.0
        self.shutting_down = False
        self.leader: Any = None
        self.plane: DataPlane | None = None
        self.pool: Any = None
        self.checker: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.hard_stop = HardStop(settings.grace_period, self._hard_exit)
        self._table_updates: asyncio.Queue[RouteTable] = asyncio.Queue()
        self._shown = ShownCounters(lambda: self.counters())

    # -- status for the stats page and health server -----------------------------------

    def counters(self) -> dict[str, Any]:
        if self.pool is not None:
            counters: dict[str, Any] = self.pool.counters()
            return counters
        assert self.plane is not None
        return merge_snapshots([self.plane.stats.snapshot()])

    def shown_counters(self, table: RouteTable) -> dict[str, Any]:
        """The merged counters bounded by `table` (counters.prune_to_table): what the
        stats page shows. Runs in the stats render thread (see LazyCounters)."""
        from pylb.stats.view import table_keys

        return self._shown.get(table, table_keys(table))

    def view(self) -> Any:
        from pylb.stats import StatsView
        from pylb.stats.view import LazyCounters

        table = self.table
        if self.plane is not None:  # here on the loop, not in the render thread
            self.plane.stats.sweep()  # rows of servers gone from the table, now idle
        tls_store = self.plane.tls_store if self.plane is not None else None
        certs = tls_store.certificates() if tls_store is not None else []
        metrics = self.source.metrics() if hasattr(self.source, "metrics") else {}
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
            checks=self.checker.results() if self.checker is not None else {},
            leader=self.leader,
            discovery_synced=bool(getattr(self.source, "synced", False)),
            discovery_metrics=metrics,
            discovery_last_sync=getattr(self.source, "last_sync", None),
            certificates=certs,
            table_version=table.version,
            table_age=(time.time() - self.table_time) if self.table_time else None,
            maxconn=self.settings.limits.maxconn,
        )

    def alive(self) -> bool:
        if self.pool is not None:
            return bool(self.pool.alive())
        return self.plane is not None

    def ready(self) -> bool:
        return (not self.shutting_down) and bool(getattr(self.source, "synced", False))

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
            if self.checker is not None:
                self.checker.set_table(table)
            if first:  # the first table of a big cluster: see collector.settle
                collector.settle()

    def on_check(self, key: tuple[str, int], up: bool, result: Any) -> None:
        if self.pool is not None:
            self.pool.set_health(key, up)
        elif self.plane is not None:
            self.plane.set_health(key, up)

    async def run(self) -> None:
        from proxy.check import HealthChecker

        s = self.settings
        loop = asyncio.get_running_loop()
        self.checker = HealthChecker(s, self.on_check)
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
            loop.create_task(self._apply_tables(), name="apply-tables"),
            discovery,
            loop.create_task(self.checker.run(), name="health-checks"),
        ]
        if s.election:
            self._tasks.append(loop.create_task(self._run_election(), name="election"))
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
        from pylb.health import HealthServer
        from pylb.stats import StatsServer

        if s.workers > 1:
            from pylb.workers import WorkerPool

            self.pool = WorkerPool(s, self_signed_pem=make_self_signed(s))
            await self.pool.start()
        else:
            tls_store = make_tls_store(s.tls, need_tls=True) if s.tls.cert else None
            self.plane = DataPlane(s, tls_store=tls_store,
                                   self_signed_pem=make_self_signed(s))
            try:
                await self.plane.start()
            except OSError as e:
                raise StartupError(f"cannot listen on {s.bind}:{s.http_port}: "
                                   f"{e.strerror or e}") from None
        self.stats_server = StatsServer(s, self.view)
        self.health_server = HealthServer(s, self.alive, self.ready)
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

    async def _run_election(self) -> None:
        from election.app import run_election

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
    table = source.load() if hasattr(source, "load") else asyncio.run(_first_table(source))
    out(table.render())
    return 0


async def _first_table(source: Any) -> RouteTable:
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
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(settings: Settings) -> int:
    import uvloop

    if settings.dry:
        try:
            return dry_run(settings)
        except Exception as e:  # the source names the file/cluster problem
            raise StartupError(str(e)) from e
    raise_nofile_limit()
    controller_box: list[Controller] = []

    async def _main() -> None:
        c = Controller(settings)
        controller_box.append(c)
        await c.run()

    try:
        uvloop.run(_main())
    except StartupError:
        raise
    except KeyboardInterrupt:
        return 130
    return 0
