"""Active health checks of backend servers, run once in the controller for all workers.

Theory of operation. Each distinct server address (`ip:port`) in the route table that is
ready or draining gets one asyncio task that probes it every `interval` seconds, the first
probe jittered uniformly over one interval so that a table of a thousand servers does not
probe them all at once.
A probe is a TCP connect (`L4OK`, `L4CON` refused, `L4TOUT` timed out, `SOCKERR`), or,
when a backend using the server has a `check_path`, an HTTP/1.1 `GET` of that path whose
status line must arrive within the timeout (`L7OK` for 2xx/3xx, `L7STS` otherwise,
`L7RSP` for a reply that is not HTTP, `L7TOUT`): haproxy's `check_status` vocabulary, so
the stats page and its CSV read as haproxy's do.

What a probe means for the server is decided by `advance`, a pure function with haproxy's
health counter (check.c): `health` runs from 0 to rise+fall-1 and the server is up while
`health >= rise`. A good probe of a down server counts up and at `rise` jumps to the top;
a bad probe of an up server counts down and below `rise` drops to 0. The stats page
shows the steps between as "UP 1/3" (going down) and "DOWN 1/2" (going up). A server
starts at `health = rise`, as in haproxy: up (Kubernetes says it is ready), but the first
failed probe takes it down and the first good one confirms it.

`on_change(key, up, result)` is called on every up/down transition only; `results()` is
the latest result per server, for the stats page. If one address serves several backends
with different check paths, the first backend by name that has a path decides it (one
address, one verdict, since workers keep health per address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import h11

from pylb.config import CheckSettings, Settings
from pylb.model import RouteTable, format_hostport

log = logging.getLogger(__name__)

Key = tuple[str, int]

# Probe outcomes, named as haproxy names them in its `check_status` field.
L4OK = "L4OK"
L4CON = "L4CON"
L4TOUT = "L4TOUT"
L7OK = "L7OK"
L7STS = "L7STS"
L7RSP = "L7RSP"
L7TOUT = "L7TOUT"
SOCKERR = "SOCKERR"
INI = "INI"  # not probed yet

_PASSED = frozenset({L4OK, L7OK})
DESCRIPTIONS: Mapping[str, str] = {
    L4OK: "Layer4 check passed",
    L4CON: "Layer4 connection problem",
    L4TOUT: "Layer4 timeout",
    L7OK: "Layer7 check passed",
    L7STS: "Layer7 wrong status",
    L7RSP: "Layer7 invalid response",
    L7TOUT: "Layer7 timeout",
    SOCKERR: "Socket error",
    INI: "Initializing",
}

_MAX_RESPONSE_HEAD = 16 * 1024  # a health endpoint's status line and headers, not more


@dataclass(frozen=True, slots=True)
class Probe:
    """What one probe saw."""

    status: str  # L4OK, L4CON, ...
    code: int | None = None  # HTTP status of an L7 probe
    duration_ms: float = 0.0
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status in _PASSED


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A server's check state after its latest probe (haproxy's check fields).

    Times are wall-clock seconds. `downtime` is the total time spent down before the
    current down period; `total_downtime(now)` adds the current one.
    """

    status: str = INI
    code: int | None = None
    duration_ms: float | None = None
    detail: str = ""
    up: bool = True
    health: int = 0
    rise: int = 2
    fall: int = 3
    checked_at: float | None = None
    last_change: float = 0.0
    failures: int = 0  # failed probes, all told (haproxy chkfail)
    downs: int = 0  # up → down transitions (haproxy chkdown)
    downtime: float = 0.0
    http: bool = False

    @property
    def description(self) -> str:
        text = DESCRIPTIONS.get(self.status, self.status)
        return f"{text}: {self.detail}" if self.detail else text

    @property
    def going_down(self) -> bool:
        return self.up and self.health < self.rise + self.fall - 1

    @property
    def going_up(self) -> bool:
        return not self.up and self.health > 0

    def total_downtime(self, now: float) -> float:
        if self.up:
            return self.downtime
        return self.downtime + max(0.0, now - self.last_change)

    def status_text(self) -> str:
        """The server's status as haproxy's stats page writes it: UP, UP 1/3, DOWN,
        DOWN 1/2."""
        if self.going_down:
            return f"UP {self.health - self.rise + 1}/{self.fall}"
        if self.going_up:
            return f"DOWN {self.health}/{self.rise}"
        return "UP" if self.up else "DOWN"


def initial(params: CheckSettings, now: float, http: bool = False) -> CheckResult:
    """A server not probed yet: up, one failure from down (haproxy's start state)."""
    return CheckResult(up=True, health=params.rise, rise=params.rise, fall=params.fall,
                       last_change=now, http=http)


def advance(prev: CheckResult, probe: Probe, now: float) -> CheckResult:
    """The state after `probe` (pure: haproxy's health counter, see module docstring)."""
    top = prev.rise + prev.fall - 1
    health = prev.health
    failures = prev.failures
    if probe.passed:
        if health < top:
            health += 1
            if health >= prev.rise:
                health = top
    else:
        failures += 1
        if health > 0:
            health -= 1
            if health < prev.rise:
                health = 0
    up = health >= prev.rise
    last_change, downs, downtime = prev.last_change, prev.downs, prev.downtime
    if up != prev.up:
        if up:
            downtime += max(0.0, now - prev.last_change)
        else:
            downs += 1
        last_change = now
    return replace(prev, status=probe.status, code=probe.code,
                   duration_ms=probe.duration_ms, detail=probe.detail, up=up,
                   health=health, checked_at=now, last_change=last_change,
                   failures=failures, downs=downs, downtime=downtime)


def check_targets(table: RouteTable) -> dict[Key, str | None]:
    """Every server address in `table` to check, and its HTTP check path (None: TCP).

    Endpoints Kubernetes does not call ready (and that are not draining) are left
    alone, as haproxy does not check a server in maintenance: they get no traffic, and
    probing pods that are still starting would only load them.
    """
    out: dict[Key, str | None] = {}
    for backend in table.backends:  # sorted by name: the first with a path wins
        for server in backend.servers:
            if not server.ready and not server.terminating:
                continue
            if out.get(server.key) is None:
                out[server.key] = backend.check_path
    return out


async def _connect(address: str, port: int, timeout: float, t0: float
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | Probe:
    """The connection, or the failed probe (L4TOUT, L4CON or SOCKERR) saying why not."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(address, port)
    except TimeoutError:
        return Probe(L4TOUT, duration_ms=_ms(t0), detail="connect timed out")
    except ConnectionRefusedError as e:
        return Probe(L4CON, duration_ms=_ms(t0), detail=e.strerror or "refused")
    except OSError as e:
        return Probe(SOCKERR, duration_ms=_ms(t0), detail=e.strerror or str(e))


async def probe_tcp(address: str, port: int, timeout: float) -> Probe:
    """Connect, then close: L4OK, L4CON, L4TOUT or SOCKERR."""
    t0 = time.monotonic()
    conn = await _connect(address, port, timeout, t0)
    if isinstance(conn, Probe):
        return conn
    _, writer = conn
    duration = _ms(t0)
    await _close(writer)
    return Probe(L4OK, duration_ms=duration)


async def probe_http(address: str, port: int, path: str, timeout: float) -> Probe:
    """`GET path` with `Connection: close`; 2xx and 3xx pass, as haproxy's
    `option httpchk` with no `http-check expect`."""
    t0 = time.monotonic()
    conn = await _connect(address, port, timeout, t0)
    if isinstance(conn, Probe):
        return conn
    reader, writer = conn
    try:
        remaining = max(0.0, timeout - (time.monotonic() - t0))
        async with asyncio.timeout(remaining):
            return await _http_exchange(reader, writer, address, port, path, t0)
    except TimeoutError:
        return Probe(L7TOUT, duration_ms=_ms(t0), detail="no response in time")
    except OSError as e:
        return Probe(L7RSP, duration_ms=_ms(t0), detail=e.strerror or str(e))
    finally:
        await _close(writer)


async def _http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         address: str, port: int, path: str, t0: float) -> Probe:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_RESPONSE_HEAD)
    request = h11.Request(method="GET", target=path, headers=[
        ("Host", format_hostport(address, port)),
        ("User-Agent", "pylb-check"),
        ("Connection", "close"),
    ])
    writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            return Probe(L7RSP, duration_ms=_ms(t0), detail=str(e))
        if event is h11.NEED_DATA:
            data = await reader.read(4096)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            passed = 200 <= status < 400
            return Probe(L7OK if passed else L7STS, code=status, duration_ms=_ms(t0),
                         detail="" if passed else f"HTTP status {status}")
        if isinstance(event, h11.InformationalResponse):
            continue
        return Probe(L7RSP, duration_ms=_ms(t0), detail="connection closed")


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000.0, 3)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class HealthChecker:
    """Probes every server of the current route table; see the module docstring.

    `params` overrides `settings.checks` (tests use millisecond intervals); `clock` is
    the wall clock stamped on results.
    """

    def __init__(self, settings: Settings,
                 on_change: Callable[[Key, bool, CheckResult], None], *,
                 params: CheckSettings | None = None,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self._params = params or settings.checks
        self._timeout = (self._params.timeout if self._params.timeout is not None
                         else settings.timeouts.connect)
        self._on_change = on_change
        self._clock = clock
        self._rng = rng or random.Random()
        self._targets: dict[Key, str | None] = {}
        self._results: dict[Key, CheckResult] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._running = False
        self._stopped = asyncio.Event()  # binds to a loop only when first awaited

    @property
    def params(self) -> CheckSettings:
        return self._params

    def results(self) -> dict[Key, CheckResult]:
        """The latest result per server (a copy)."""
        return dict(self._results)

    def set_table(self, table: RouteTable) -> None:
        """Check the servers of `table` from now on: new ones start (jittered), gone ones
        stop and are forgotten, ones whose check path changed restart."""
        targets = check_targets(table) if self._params.enabled else {}
        changed = {k for k, p in targets.items()
                   if k in self._targets and self._targets[k] != p}
        for key in list(self._targets):
            if key not in targets or key in changed:
                task = self._tasks.pop(key, None)
                if task is not None:
                    task.cancel()
                if key not in targets:
                    self._results.pop(key, None)
        self._targets = targets
        now = self._clock()
        for key, path in targets.items():
            if key not in self._results:
                self._results[key] = initial(self._params, now, http=path is not None)
            elif key in changed:
                self._results[key] = replace(self._results[key], http=path is not None)
        if self._running:
            self._spawn_missing()

    async def run(self) -> None:
        """Probe until cancelled (or `stop()`); cancels its probes on the way out."""
        self._running = True
        try:
            self._spawn_missing()
            await self._stopped.wait()
        finally:
            self._running = False
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Make `run()` return (at once if it has not started yet)."""
        self._stopped.set()

    def _spawn_missing(self) -> None:
        for key, path in self._targets.items():
            if key not in self._tasks:
                self._tasks[key] = asyncio.get_running_loop().create_task(
                    self._loop(key, path), name=f"check {format_hostport(*key)}")

    async def _loop(self, key: Key, path: str | None) -> None:
        interval = self._params.interval
        await asyncio.sleep(self._rng.uniform(0.0, interval))
        while True:
            if path is None:
                probe = await probe_tcp(key[0], key[1], self._timeout)
            else:
                probe = await probe_http(key[0], key[1], path, self._timeout)
            prev = self._results.get(key)
            if prev is None or self._tasks.get(key) is not asyncio.current_task():
                return
            result = advance(prev, probe, self._clock())
            self._results[key] = result
            if result.up != prev.up:
                log.log(logging.INFO if result.up else logging.WARNING,
                        "server %s is %s: %s (%s ms)", format_hostport(*key),
                        "UP" if result.up else "DOWN", result.description,
                        probe.duration_ms)
                try:
                    self._on_change(key, result.up, result)
                except Exception:
                    log.exception("health check callback failed for %s",
                                  format_hostport(*key))
            await asyncio.sleep(interval)
