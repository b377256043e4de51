"""Worker processes: N data planes on one node's cores, fed by the controller.

Theory of operation. The controller starts N workers, each a fresh interpreter
(`python -m pylb.workerproc FD`: no event loop state inherited, and only the modules a data
plane needs — not multiprocessing, whose `spawn` start method also runs a resource-tracker
process, 13 MiB for nothing we use). Each worker runs its own uvloop loop and binds every
frontend with SO_REUSEPORT, so the kernel spreads new connections across them. Between the
controller and each worker runs one Unix stream socket (a socketpair; the worker's end is
the one descriptor it inherits), which both sides drive through their event loop's own
buffered transport (pylb.messages: frozen dataclasses in length-prefixed frames; writes
never block and are never cut). The first frame is the worker's start-up arguments
(`_Start`: its index and the settings), which the worker reads before it starts its loop:

    controller → worker   Table(table)          the whole table: on start and restart, or
                                                after the worker lagged or asked for it
                          Delta                 each later table as a change (pylb.delta)
                                                from the version the worker has
                          Health(verdicts)      active-check verdicts, coalesced: the latest
                                                per server, one batch per loop turn; the
                                                whole map (full=True) on start
                          Gateways(seq, plan)   --gateway-api: the Gateway listeners to
                                                bind, whole: on start and restart, after
                                                the worker lagged or asked for it
                          GatewaysDelta         each later plan as a change (pylb.
                                                gatewaydelta) from the one sent before
                          Shutdown(grace)       stop accepting, drain, exit
    worker → controller   Ready(index)          listeners bound
                          Error(message)        could not start (e.g. port in use)
                          NeedTable(have)       a delta was not from its version
                          NeedGateways(have)    a plan delta was not from the plan it holds
                          GatewaysBound(seq, …) the Gateway listeners it could not bind
                          Stats(rows…)          counter rows changed since its last report,
                                                every `STATS_INTERVAL`
                          Ejected(key)          it ejected that server (failed connects): the
                                                controller's next passing check of it comes
                                                back as an UP verdict, which ends ejections

Nothing piles up behind a slow reader. While a worker's write buffer is above the high
watermark (its transport paused writing), the controller sends it nothing new and notes
what it will need — the newest whole table, the whole health map — and sends that once
the buffer drains: at most one table is buffered per worker, whatever the rate of change.
A worker skips its stats reports the same way (the next one carries every row changed
meanwhile).

A whole table of a big cluster is made into its frame a step per loop turn (~8 ms each;
10,000 services in one go held the controller's loop ~230 ms, /readyz with it), and
written whole when made. A worker awaiting it gets nothing else of the table meanwhile (no
delta may come before the table it is from); when the table moved on during the making,
the change since follows it (`WorkerPool._encode`). A change as big as a step — the first
real table after the empty one, a namespace created at once — goes the same way, whole.

A worker that dies is restarted with exponential backoff and given the current table and
health. Its last counters are kept (with current connections zeroed), so totals on the
stats page never go backwards. A worker whose stream reaches EOF — the controller died,
even by SIGKILL — shuts down at once: no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

from pylb import collector
from pylb.config import Settings
from pylb.counters import fold_report, merge_snapshots, server_key
from pylb.dataplane import DataPlane, gateway_node_address
from pylb.delta import Delta, apply_delta, diff
from pylb.gatewaydelta import apply_delta as apply_plan_delta
from pylb.gatewaydelta import plan_delta
from pylb.gatewaymodel import GatewayPlan
from pylb.logs import setup_logging
from pylb.messages import (
    HEADER,
    TABLE_STEP,
    Channel,
    Ejected,
    Error,
    Gateways,
    GatewaysBound,
    GatewaysDelta,
    Health,
    Message,
    NeedGateways,
    NeedTable,
    Ready,
    Shutdown,
    Stats,
    Table,
    encode,
    open_channel,
    table_frame,
)
from pylb.model import RouteTable
from pylb.preflight import StartupError

log = logging.getLogger("pylb.workers")

STATS_INTERVAL = 0.5  # seconds between counter reports; the stats page lags by at most this
RESTART_BACKOFF = (0.5, 30.0)  # first delay and cap, doubling per consecutive crash
WATCH_INTERVAL = 0.25  # seconds between two looks at whether a worker has exited
# Seconds of the controller's loop a turn may give to making a whole table's frame (steps
# of ~8 ms each: messages.TABLE_STEP); the loop's other work runs between two turns.
ENCODE_TURN = 0.02
# How long a Gateway plan waits for the workers to say what they bound: binding is a few
# system calls per listener, so this is only reached by a worker that is stuck or dying
# (its listeners are then left out of PortUnavailable until the next plan).
GATEWAY_BIND_TIMEOUT = 5.0


@dataclass(frozen=True)
class _Start:
    """A worker's start-up arguments: the first frame on its stream, read before its loop
    starts. A plain pickle of the controller's own settings, not a `Message`: the stream
    is private to the pair, and a Settings holds more classes than messages may name."""

    index: int
    settings: Settings
    self_signed_pem: bytes | None


def worker_argv(fd: int) -> list[str]:
    """The command line of a worker whose stream is descriptor `fd`."""
    return [sys.executable, "-m", "pylb.workerproc", str(fd)]


def _worker_env() -> dict[str, str]:
    """The controller's environment, with pylb's own directory first on PYTHONPATH: a
    worker imports the same pylb as the controller, installed or run from a checkout."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    channel: Channel | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    crashes: int = 0
    started: float = 0.0
    stopping: bool = False
    # The table version the worker has once it has read all that was sent (None: not
    # known; the next table goes whole).
    sent_version: int | None = None
    # Noted while its buffer is above the high watermark; sent when it drains.
    table_stale: bool = False
    # Waits for the whole-table frame being made (WorkerPool._encode): nothing else of
    # the table is sent to it until that is written.
    awaiting_frame: bool = False
    health_stale: bool = False
    gateways_stale: bool = False
    # The seq of the Gateway plan it holds once it has read all that was sent (None: not
    # known; the next plan goes whole).
    gateways_sent: int | None = None
    # The Gateway plan the worker last said it serves, and what of it it could not bind.
    gateways_seq: int = -1
    gateways_down: tuple[tuple[str, int], ...] = ()


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
        self._workers = [_Worker(i) for i in range(settings.workers)]
        self._retired: list[dict[str, Any]] = []
        self._closing = False
        self._monitor: asyncio.Task[None] | None = None
        self._ready_waiters: dict[int, asyncio.Future[None]] = {}
        self._spawning: set[asyncio.Task[None]] = set()
        self._table_frame: tuple[RouteTable, bytes] | None = None  # encoded once per table
        self._encoding: asyncio.Task[None] | None = None  # a big table's frame being made
        self.table_step = TABLE_STEP  # servers or routes per step of making it
        self.encode_turn = ENCODE_TURN  # seconds of steps per loop turn (0: one step)
        self._pending_health: dict[tuple[str, int], bool] = {}
        self._health_flush: asyncio.Handle | None = None
        self._health_bound = 1024  # prune self.health to the table above this many keys
        self.gateways: Gateways | None = None  # the newest Gateway plan (--gateway-api)
        self._gateways_answered = asyncio.Event()
        # A worker's Ejected(key): the controller watches that server's next passing check.
        self.on_ejection: Callable[[tuple[str, int]], None] | None = None
        # what was sent, for the figures in the report and the tests
        self.sent = {"tables": 0, "deltas": 0, "health": 0, "table_bytes": 0,
                     "delta_bytes": 0, "gateway_plans": 0, "gateway_deltas": 0,
                     "gateway_plan_bytes": 0, "gateway_delta_bytes": 0}

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start every worker and wait until all have bound their listeners."""
        try:
            for w in self._workers:
                await self._spawn(w)
            await asyncio.wait_for(
                asyncio.gather(*(self._ready_waiters[w.index] for w in self._workers)),
                timeout)
        except BaseException:
            await self.shutdown(0)
            raise
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _spawn(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(worker_argv(child.fileno()), pass_fds=(child.fileno(),),
                                    stdin=subprocess.DEVNULL, env=_worker_env())
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        w.process, w.ready, w.started = proc, False, time.monotonic()
        w.sent_version, w.table_stale, w.health_stale = None, False, False
        w.gateways_stale, w.gateways_seq, w.gateways_down = False, -1, ()
        w.gateways_sent = None
        self._ready_waiters[w.index] = loop.create_future()
        ch = Channel(lambda m: self._on_message(w, m), lambda _exc: self._on_lost(w, ch),
                     None, lambda: self._drained(w), name=f"worker {w.index}")
        try:
            await open_channel(parent, ch)
        except OSError as e:
            parent.close()  # the worker sees EOF and exits; it is restarted
            log.error("worker %d: cannot attach its stream: %s", w.index, e)
            return
        start = pickle.dumps(_Start(w.index, self.settings, self.self_signed_pem), protocol=5)
        self._attached(w, ch, HEADER.pack(len(start)) + start)

    def _attached(self, w: _Worker, ch: Channel, start: bytes) -> None:
        """A (re)started worker's stream: its start frame, then the table, the health map
        and the Gateway plan of this moment."""
        w.channel = ch
        w.sent_version, w.table_stale, w.awaiting_frame = None, False, False
        ch.send_frame(start)
        self._send_table(w)
        self._send_health_map(w)
        self._send_gateways(w)

    def _on_message(self, w: _Worker, msg: Message) -> None:
        if isinstance(msg, Stats):
            w.snapshot = fold_report(w.snapshot, {
                "frontends": msg.frontends, "backends": msg.backends,
                "servers": msg.servers, "failures": msg.failures,
                "removed_backends": msg.removed_backends,
                "removed_servers": msg.removed_servers}, full=msg.full)
        elif isinstance(msg, Ejected):
            if self.on_ejection is not None:
                self.on_ejection(msg.key)
        elif isinstance(msg, Ready):
            w.ready = True
            fut = self._ready_waiters.get(w.index)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(msg, GatewaysBound):
            w.gateways_seq, w.gateways_down = msg.seq, msg.unavailable
            self._gateways_answered.set()
        elif isinstance(msg, NeedGateways):
            log.warning("worker %d holds Gateway plan %d and missed a change: sending it "
                        "the whole plan %d", w.index, msg.have,
                        self.gateways.seq if self.gateways is not None else -1)
            w.gateways_sent = None
            self._send_gateways(w)
        elif isinstance(msg, NeedTable):
            log.warning("worker %d has table v%d and missed a change: sending it the whole "
                        "table v%d", w.index, msg.have, self.table.version)
            w.sent_version = None
            self._send_table(w)
        elif isinstance(msg, Error):
            log.error("worker %d: %s", w.index, msg.message)
            fut = self._ready_waiters.get(w.index)
            if fut is not None and not fut.done():
                fut.set_exception(StartupError(msg.message))
        else:
            log.warning("worker %d sent an unexpected %s", w.index, type(msg).__name__)

    def _on_lost(self, w: _Worker, ch: Channel) -> None:
        if w.channel is ch:
            w.channel = None
        self._gateways_answered.set()  # apply_gateways waits for this worker no more

    def _detach(self, w: _Worker) -> None:
        if w.channel is not None:
            w.channel.abort()
            w.channel = None

    async def _watch(self) -> None:
        """Restart workers that die, with backoff."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(WATCH_INTERVAL)
            for w in self._workers:
                if w.process is None or self._closing or w.stopping:
                    continue
                code = w.process.poll()  # reaps it
                if code is None:
                    continue
                self._detach(w)
                if w.snapshot:
                    self._retire(w.snapshot)
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

    def _retire(self, snapshot: dict[str, Any]) -> None:
        """Keep a dead worker's counters for the totals, folded into one retired snapshot
        whose backend and server rows are those of the current table (bounded however
        often workers die and pods come and go)."""
        merged = merge_snapshots([*self._retired, _retire(snapshot)])
        table = self.table
        merged["backends"] = {k: v for k, v in merged["backends"].items()
                              if table.get_backend(k) is not None}
        live = {server_key(b.name, s.label) for b in table.backends for s in b.servers}
        merged["servers"] = {k: v for k, v in merged["servers"].items() if k in live}
        self._retired = [merged]

    def _respawn(self, w: _Worker) -> None:
        if not self._closing and w.process is None:
            task = asyncio.get_running_loop().create_task(self._spawn(w))
            self._spawning.add(task)
            task.add_done_callback(self._spawning.discard)

    async def shutdown(self, grace: float) -> None:
        self._closing = True
        frame = encode(Shutdown(grace))
        for w in self._workers:
            w.stopping = True
            if w.channel is not None:
                w.channel.send_frame(frame)
        deadline = time.monotonic() + grace + 5.0
        for w in self._workers:
            if w.process is None:
                continue
            while w.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.process.poll() is None:
                log.warning("worker %d did not stop in time; killing it", w.index)
                w.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(1.0)
            self._detach(w)
        await asyncio.sleep(0)  # let the aborted transports close
        for task in list(self._spawning):
            task.cancel()
        if self._encoding is not None:
            self._encoding.cancel()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor

    # -- controller → workers -----------------------------------------------------------

    def _usable(self, w: _Worker) -> Channel | None:
        ch = w.channel
        return ch if ch is not None and not ch.closed else None

    def _send_table(self, w: _Worker) -> None:
        """The whole current table, now, or when its frame is made (`_encode`), or when
        the worker's buffer drains."""
        ch = self._usable(w)
        if ch is None:
            return
        if ch.paused:
            w.table_stale = True
            return
        cached = self._table_frame
        if cached is not None and cached[0] is self.table:
            self._write_table(w, ch, *cached)
            return
        w.table_stale, w.awaiting_frame = False, True
        if self._encoding is None:
            self._encode(self.table)

    def _write_table(self, w: _Worker, ch: Channel, table: RouteTable, frame: bytes) -> None:
        ch.send_frame(frame)
        self.sent["tables"] += 1
        self.sent["table_bytes"] = len(frame)
        w.sent_version, w.table_stale, w.awaiting_frame = table.version, False, False

    def _encode(self, table: RouteTable) -> None:
        """Make the whole-table frame of `table` for the workers awaiting it: a small
        table at once, a big one a step per loop turn (messages.table_frame; 10,000
        services in one go held the loop ~230 ms, and /readyz with it). Nothing is
        written to a worker awaiting it meanwhile — no delta may reach a worker before
        the table it is from — and the table may move on meanwhile: `_encoded` then
        sends the change since."""
        steps = table_frame(table, self.table_step)
        frame = _step(steps)
        if frame is not None:
            self._encoded(table, frame)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to let run (tests): every step now
            while frame is None:
                frame = _step(steps)
            self._encoded(table, frame)
            return
        self._encoding = loop.create_task(self._encode_steps(table, steps),
                                          name=f"encode table v{table.version}")

    async def _encode_steps(self, table: RouteTable, steps: Generator[None, None, bytes]) -> None:
        # As many steps a loop turn as fit in ENCODE_TURN: the frame is made in a few
        # turns on an idle loop, and one step a turn on a busy one (whose turns are long:
        # a step a turn there put seconds between the first table and the workers).
        frame = None
        clock = time.perf_counter
        while frame is None:
            await asyncio.sleep(0)
            began = clock()
            frame = _step(steps)
            while frame is None and clock() - began < self.encode_turn:
                frame = _step(steps)
        self._encoding = None
        self._encoded(table, frame)

    def _encoded(self, table: RouteTable, frame: bytes) -> None:
        """`table`'s frame is made: write it to each worker awaiting it, then the change
        from it to the current table when that moved on meanwhile."""
        if table is self.table:
            self._table_frame = (table, frame)
        catch_up: bytes | None = None
        for w in self._workers:
            if not w.awaiting_frame:
                continue
            w.awaiting_frame = False
            ch = self._usable(w)
            if ch is None:
                continue  # (re)spawn sends the table of that moment
            if ch.paused:
                w.table_stale = True
                continue
            self._write_table(w, ch, table, frame)
            if table is self.table:
                continue
            if catch_up is None:
                delta = diff(table, self.table)
                if _big(delta, self.table_step):
                    self._send_table(w)  # the current table, made the same way
                    continue
                catch_up = encode(delta)
            self._send_delta(w, ch, catch_up)

    def _send_delta(self, w: _Worker, ch: Channel, frame: bytes) -> None:
        ch.send_frame(frame)
        self.sent["deltas"] += 1
        self.sent["delta_bytes"] = len(frame)
        w.sent_version = self.table.version

    def _send_health_map(self, w: _Worker) -> None:
        ch = self._usable(w)
        if ch is None:
            return
        if ch.paused:
            w.health_stale = True
            return
        ch.send(Health(tuple(self.health.items()), full=True))
        w.health_stale = False

    def _drained(self, w: _Worker) -> None:
        """A worker's buffer fell below the low watermark: what it missed meanwhile."""
        if w.table_stale:
            self._send_table(w)
        if w.health_stale:
            self._send_health_map(w)
        if w.gateways_stale:
            self._send_gateways(w)

    def apply(self, table: RouteTable) -> None:
        """Publish a new table: a delta to each worker that has the previous one, the
        whole table to any other (none to a worker whose buffer is full: it gets the
        newest whole table when that drains; a worker awaiting a whole table being made
        gets the change since after it: `_encoded`). A change as big as a table step
        goes whole, made in steps (`_encode`), rather than as one big delta frame."""
        prev, self.table = self.table, table
        # The whole-table frame of the previous table (a few MiB at 10,000 services, and
        # the old table it names) is of no use any more.
        self._table_frame = None
        delta: Delta | None = None
        frame: bytes | None = None
        for w in self._workers:
            ch = self._usable(w)
            if ch is None or w.awaiting_frame:
                continue  # (re)spawn sends the table of that moment; see _encoded
            if ch.paused:
                w.table_stale = True
                continue
            if w.table_stale or w.sent_version is None or w.sent_version != prev.version:
                self._send_table(w)
                continue
            if delta is None:
                delta = diff(prev, table)
            if _big(delta, self.table_step):
                self._send_table(w)
                continue
            if frame is None:
                frame = encode(delta)
            self._send_delta(w, ch, frame)
        if len(self.health) > self._health_bound:
            self._prune_health(table)

    def _prune_health(self, table: RouteTable) -> None:
        """Forget the verdicts of servers gone from `table` once the map holds more than
        twice the table's servers (pod churn). Counting them is a walk over the backends;
        the prune itself walks every server (~50 ms at 100,000): not while checks merely
        fill the map during start-up, only when it outgrew the table."""
        servers = sum(len(b.servers) for b in table.backends)
        if len(self.health) <= 2 * servers:
            self._health_bound = 2 * servers + 1024
            return
        live = {s.key for b in table.backends for s in b.servers}
        self.health = {k: v for k, v in self.health.items() if k in live}
        self._health_bound = 2 * max(len(self.health), servers) + 1024

    def _send_gateways(self, w: _Worker, frame: bytes | None = None) -> None:
        """The whole current Gateway plan. `frame`: its frame, encoded once for every
        worker that gets it (5,000 routes: ~40 ms each)."""
        ch = self._usable(w)
        if ch is None or self.gateways is None:
            return
        if ch.paused:
            w.gateways_stale, w.gateways_sent = True, None
            return
        if frame is None:
            frame = encode(self.gateways)
        ch.send_frame(frame)
        self.sent["gateway_plans"] += 1
        self.sent["gateway_plan_bytes"] = len(frame)
        w.gateways_stale, w.gateways_sent = False, self.gateways.seq

    async def apply_gateways(self, plan: GatewayPlan,
                             timeout: float = GATEWAY_BIND_TIMEOUT) -> frozenset[tuple[str, int]]:
        """Send every worker the Gateway listeners of `plan` — the change from the plan
        it was sent before (`GatewaysDelta`), or the whole plan to a worker that plan
        may not have reached (started since, lagging: see `_send_gateways`) — and wait,
        up to `timeout`, for each live one to bind them: the (address, port) some worker
        could not bind. Each frame is made once for all the workers that get it, and
        only when one does."""
        prev = self.gateways
        seq = (prev.seq + 1) if prev is not None else 0
        # the status stays here: only the controller writes it
        self.gateways = Gateways(seq, dataclasses.replace(plan, status={}))
        whole: bytes | None = None
        change: bytes | None = None
        for w in self._workers:
            ch = self._usable(w)
            if ch is None:
                continue  # (re)spawn sends the plan of that moment
            if prev is None or ch.paused or w.gateways_stale or w.gateways_sent != prev.seq:
                if whole is None and not ch.paused:
                    whole = encode(self.gateways)
                self._send_gateways(w, whole)
                continue
            if change is None:
                change = encode(GatewaysDelta(seq, prev.seq,
                                              plan_delta(prev.plan, self.gateways.plan)))
            ch.send_frame(change)
            self.sent["gateway_deltas"] += 1
            self.sent["gateway_delta_bytes"] = len(change)
            w.gateways_sent = seq
        deadline = time.monotonic() + timeout
        while True:
            waiting = [w for w in self._workers
                       if w.gateways_seq != seq and self._usable(w) is not None]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            self._gateways_answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gateways_answered.wait(), left)
        if waiting:
            log.warning("gateway plan %d: worker(s) %s did not answer in %.0fs", seq,
                        ", ".join(str(w.index) for w in waiting), timeout)
        return frozenset(k for w in self._workers if w.gateways_seq == seq
                         for k in w.gateways_down)

    def set_health(self, key: tuple[str, int], up: bool) -> None:
        """An active check's verdict. Verdicts are coalesced: the latest per server goes
        to the workers in one batch at the end of this loop turn."""
        self.health[key] = up
        self._pending_health[key] = up
        if self._health_flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush_health()
                return
            self._health_flush = loop.call_soon(self._flush_health)

    def _flush_health(self) -> None:
        self._health_flush = None
        if not self._pending_health:
            return
        batch = tuple(self._pending_health.items())
        self._pending_health = {}
        frame: bytes | None = None
        for w in self._workers:
            ch = self._usable(w)
            if ch is None:
                continue
            if ch.paused:
                w.health_stale = True
                continue
            if frame is None:
                frame = encode(Health(batch))
            ch.send_frame(frame)
            self.sent["health"] += 1

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
        return any(w.process is not None and w.process.poll() is None for w in self._workers)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]


def _step(steps: Generator[None, None, bytes]) -> bytes | None:
    """One step of making a frame: the frame when that was the last, else None."""
    try:
        next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    return None


def _big(delta: Delta, step: int) -> bool:
    """A change of more than one step of encoding (messages.TABLE_STEP): it goes as the
    whole table, made in steps, not as one delta frame made in one go."""
    size = len(delta.backends)
    if size >= step:
        return True
    return size + sum(len(b.servers) for b in delta.backends) >= step


# -- the worker process ------------------------------------------------------------------


def _read_start(sock: socket.socket) -> _Start:
    """The first frame of the stream, read blocking, byte-exact: what follows is the
    framed stream the worker's loop takes over."""

    def exactly(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("the controller closed the stream before the start frame")
            buf += chunk
        return bytes(buf)

    (size,) = HEADER.unpack(exactly(HEADER.size))
    start = pickle.loads(exactly(size))
    if not isinstance(start, _Start):
        raise TypeError(f"the first frame is a {type(start).__name__}, not the start frame")
    return start


def process_main(argv: list[str]) -> None:
    """`python -m pylb.workerproc FD`: a worker whose stream to the controller is FD."""
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    try:
        start = _read_start(sock)
    except (OSError, EOFError) as e:  # the controller is gone already: nothing to serve
        print(f"pylb worker: no start frame: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    worker_main(start.index, start.settings, sock, start.self_signed_pem)


def worker_main(index: int, settings: Settings, sock: socket.socket,
                self_signed_pem: bytes | None = None) -> None:
    """Entry point of a worker process."""
    setup_logging(settings.log_level, tag=f"worker {index}", access_log=settings.syslog)
    # Ctrl-C reaches the whole process group; the controller decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collector.tune()
    import uvloop

    try:
        uvloop.run(_worker(index, settings, sock, self_signed_pem))
    except Exception:
        log.exception("worker %d failed", index)
        raise SystemExit(1) from None


async def _worker(index: int, settings: Settings, sock: socket.socket,
                  self_signed_pem: bytes | None) -> None:
    loop = asyncio.get_running_loop()
    # Per-server limits are divided among the workers (proxy/queue.py says why).
    settings = replace(settings, limits=replace(settings.limits,
                                                worker=(index, settings.workers)))
    plane = DataPlane(settings, reuse_port=True, self_signed_pem=self_signed_pem)
    failed: str | None = None
    try:
        await plane.start()
    except OSError as e:
        failed = f"cannot listen on {settings.bind}:{settings.http_port}: {e.strerror or e}"
    stop: asyncio.Future[float] = loop.create_future()
    # Tables read and not yet applied, oldest first; `received` is the newest, the base
    # the next delta must be from.
    pending: deque[tuple[RouteTable, Delta | None]] = deque()
    wake = asyncio.Event()
    received = RouteTable()
    awaiting_table = False
    gateways: Gateways | None = None  # the newest Gateway plan, not yet applied
    # The newest Gateway plan read (whole, or made from every delta since): the base the
    # next delta must be from.
    held: Gateways | None = None
    awaiting_plan = False
    gateways_wake = asyncio.Event()

    def on_gateways_delta(msg: GatewaysDelta) -> None:
        """Every delta is applied to the plan held, in order (unlike whole plans, none
        can be skipped); only the newest plan made is bound (`apply_gateways`)."""
        nonlocal held, awaiting_plan, gateways
        if awaiting_plan:
            return  # the whole plan is on its way
        problem = None
        if held is None or held.seq != msg.base:
            problem = f"a Gateway plan delta from plan {msg.base}, not from the one it holds"
        else:
            try:
                held = Gateways(msg.seq, apply_plan_delta(held.plan, msg.delta))
            except (ValueError, TypeError) as e:
                problem = f"Gateway plan delta {msg.base} -> {msg.seq}: {e}"
        if problem is not None:
            log.warning("worker %d: %s; asking for the whole plan", index, problem)
            awaiting_plan = True
            channel.send(NeedGateways(held.seq if held is not None else -1))
            return
        gateways = held
        gateways_wake.set()

    def on_message(msg: Message) -> None:
        nonlocal received, awaiting_table, gateways, held, awaiting_plan
        if isinstance(msg, Table):
            received, awaiting_table = msg.table, False
            pending.clear()
            pending.append((msg.table, None))
            wake.set()
        elif isinstance(msg, Delta):
            if awaiting_table:
                return  # the whole table is on its way
            try:
                table = apply_delta(received, msg)
            except ValueError as e:
                log.warning("worker %d: %s; asking for the whole table", index, e)
                awaiting_table = True
                channel.send(NeedTable(received.version))
                return
            received = table
            pending.append((table, msg))
            wake.set()
        elif isinstance(msg, Gateways):
            gateways = held = msg
            awaiting_plan = False
            gateways_wake.set()
        elif isinstance(msg, GatewaysDelta):
            on_gateways_delta(msg)
        elif isinstance(msg, Health):
            plane.set_health_many(msg.verdicts, full=msg.full)
        elif isinstance(msg, Shutdown) and not stop.done():
            stop.set_result(msg.grace)

    def on_lost(_exc: BaseException | None) -> None:
        if not stop.done():
            log.warning("controller gone; worker %d exits", index)
            stop.set_result(0.0)

    channel = Channel(on_message, on_lost, name=f"worker {index}: controller stream")

    def on_ejection(key: tuple[str, int]) -> None:
        channel.send(Ejected(key))

    plane.on_ejection = on_ejection
    await open_channel(sock, channel)
    if failed is not None:
        channel.send(Error(failed))
        channel.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.wait_closed(), 5.0)
        return

    async def apply_tables() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while pending:
                # Several queued: the newest only (the plane works out the change itself).
                table, delta = pending[-1]
                if len(pending) > 1:
                    delta = None
                pending.clear()
                try:
                    await plane.apply(table, delta)
                except Exception:  # a table that cannot be served must not end the worker
                    log.exception("worker %d: cannot apply table v%d", index, table.version)
                if delta is None:  # a whole table: see collector.settle
                    collector.settle()

    async def apply_gateways() -> None:
        """Bind the newest Gateway plan (older ones unapplied are skipped: the plane
        works out the change from the plan it serves itself), and say what could not be
        bound."""
        nonlocal gateways
        plane.attach_gateways(gateway_node_address(settings))
        while True:
            await gateways_wake.wait()
            gateways_wake.clear()
            msg, gateways = gateways, None
            if msg is None:
                continue
            try:
                down = await plane.apply_gateway_plan(msg.plan)
            except Exception:  # a plan that cannot be served must not end the worker
                log.exception("worker %d: cannot apply Gateway plan %d", index, msg.seq)
                down = frozenset(msg.plan.by_endpoint()) | {
                    (lst.address, lst.port) for lst in msg.plan.l4_listeners}
            channel.send(GatewaysBound(msg.seq, tuple(sorted(down))))

    def report(full: bool = False) -> None:
        r = plane.stats.report(full)
        channel.send(Stats(frontends=r["frontends"], backends=r["backends"],
                           servers=r["servers"], failures=r["failures"],
                           removed_backends=r["removed_backends"],
                           removed_servers=r["removed_servers"], full=full))

    async def report_loop() -> None:
        full = True
        while True:
            if not channel.paused:  # a lagging controller: the next report has it all
                report(full)
                full = False
            await asyncio.sleep(STATS_INTERVAL)

    def on_sigterm() -> None:
        if not stop.done():
            stop.set_result(settings.grace_period)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    def on_sighup() -> None:  # always handled: SIGHUP's default action would kill us
        plane.reload()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    channel.send(Ready(index))
    tasks = [loop.create_task(apply_tables()), loop.create_task(report_loop())]
    if settings.gateway.enabled:
        tasks.append(loop.create_task(apply_gateways()))
    grace = await stop
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await plane.shutdown(grace)
    if not channel.closed:
        report()
        channel.close()  # after the buffered frames are written
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.wait_closed(), 5.0)
