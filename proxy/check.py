"""Active health checks of backend servers, run once in the controller for all workers.

Theory of operation. The checks share the controller's one event loop with discovery,
table publishing, the stats page, /readyz and signal handling, so they run under a budget
and never as a task per server (at 100,000 servers every 2 s that was 50,000 connects a
second: the loop starved and the process ran out of descriptors).

- Which servers. Every distinct address (`ip:port`) that is ready or draining in a
  backend that is checked: `--checks=all|annotated|off` and the `lb.check` annotation
  (`backend_checked`). `_Index` keeps, per backend, the addresses it contributes, and per
  address the backends naming it; `set_table` re-reads only backends that are not the
  same object as before (or whose checked addresses differ), so a table of 100,000
  servers that changed in a few costs a walk over its backends, not over its servers.
- When. One `Schedule` (sans-IO: it is told the time) holds a heap of due times and
  hands out the due servers under two limits: a token bucket of `rate` probes per second
  (`--check-rate`) and `cap` probes open at once (`--check-max-inflight`, at most a
  quarter of RLIMIT_NOFILE). New servers are spread evenly over one interval; after a
  probe a server is due again one *effective* interval after it started, where the
  effective interval is `interval`, stretched to servers / rate when the servers
  outnumber the budget (`effective_interval`; logged once when it changes, shown on the
  stats page). One loop (`HealthChecker.run`) sleeps until the schedule's next wake-up,
  starts what is due as short-lived tasks — never more than `cap` — and goes back to
  sleep; a probe's end, `set_table` and `stop` wake it early.
- Local shortage is no verdict. A connect that fails with EMFILE, ENFILE, ENOBUFS, ENOMEM
  or EADDRNOTAVAIL (`proxy.connect.LOCAL_ERRNOS`) says this process is short, not that
  the server is down: the schedule pauses (backing off from 0.1 s to 2 s), the server is
  retried after the pause, and a warning is logged at most every 10 s.
- Measured (bench/checks.py, 100,000 servers that refuse, defaults, uvloop): a probe
  costs ~160 us of CPU, so 1,000/s is ~16% of a core; the loop's worst lag stays ~10 ms
  (it was 6.9 s with a task per server); `set_table` for a table that changed in one
  server takes ~2 ms when backends are shared, ~5 ms when only their servers tuples are
  (the first table: ~0.8 s, once).

`on_change(key, up, result)` is called on every up/down transition only, and the
transition logged — the first 50 in any 10 s one line each, the rest counted in one line,
so a node lost with its thousand pods is not a thousand writes on the controller's loop.

A probe is a TCP connect (`L4OK`, `L4CON` refused, `L4TOUT` timed out, `SOCKERR`), or,
when a backend using the server has a `check_path`, an HTTP/1.1 `GET` of that path whose
status line must arrive within the timeout (`L7OK` for 2xx/3xx, `L7STS` otherwise,
`L7RSP` for a reply that is not HTTP, `L7TOUT`): haproxy's `check_status` vocabulary, so
the stats page and its CSV read as haproxy's do. A backend whose servers speak h2c
(`Backend.h2c`, gRPC) with a check path is checked over h2c instead
(`proxy.check_h2c`): `GET path` with prior knowledge, or, when the path is
`/grpc.health.v1.Health/Check[?service=NAME]`, the gRPC health checking protocol (passes
on SERVING), as Envoy's `grpc_health_check` does. Its target carries the path as
`h2c:PATH` (`H2C`), so the schedule and the index stay as they are: same budget, same
probe per server.

What a probe means for the server is decided by `advance`, a pure function with haproxy's
health counter (check.c): `health` runs from 0 to rise+fall-1 and the server is up while
`health >= rise`. A good probe of a down server counts up and at `rise` jumps to the top;
a bad probe of an up server counts down and below `rise` drops to 0. The stats page
shows the steps between as "UP 1/3" (going down) and "DOWN 1/2" (going up). A server
starts at `health = rise`, as in haproxy: up (Kubernetes says it is ready), but the first
failed probe takes it down and the first good one confirms it.

`results()` is the latest result per server, for the stats page. If one address serves
several backends with different check paths, the first backend by name that has a path
decides it (one address, one verdict, since workers keep health per address).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import logging
import random
import resource
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import h11

from proxy import check_h2c
from proxy.connect import LOCAL_ERRNOS
from pylb.config import CheckScope, CheckSettings, Settings
from pylb.model import Backend, RouteTable, format_hostport

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
H2C = "h2c:"  # a target path with this prefix is checked over h2c (`check_path`)


def check_path(backend: Backend) -> str | None:
    """What a probe of `backend`'s servers asks: None (TCP), an HTTP/1.1 path, or, for an
    h2c backend, `h2c:` and the path."""
    path = backend.check_path
    if path is not None and backend.h2c:
        return H2C + path
    return path


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


# Status strings by number, for `CheckResults`: haproxy's vocabulary first, any other
# text a probe reports appended on first sight (a handful at most).
_STATUSES: list[str] = [INI, L4OK, L4CON, L4TOUT, L7OK, L7STS, L7RSP, L7TOUT, SOCKERR]
_STATUS_NO: dict[str, int] = {s: i for i, s in enumerate(_STATUSES)}
_UP, _HTTP = 1, 2  # bits of a server's flags
_NONE = -1.0  # "not yet" in a time or duration column (all real ones are >= 0)


class CheckResults(Mapping[Key, CheckResult]):
    """Every checked server's latest `CheckResult`, stored by columns: one slot per
    server in typed arrays (numbers and times unboxed, the status as a small number, the
    detail an interned string shared by every server that saw the same error), not an
    object per server with its own float objects: 100,000 servers probed once each, the
    checker 52.0 → 42.8 MiB (bench/check_memory.py). `CheckResult`s are made on reading
    (the stats page reads a `copy()`, taken on the loop, in its render thread).

    A server not probed yet has no slot: `share` names one `CheckResult` object for all
    the servers added together (a negative number in `_slots`, counted in `_shared`), so
    a big table's servers cost a dict entry each until their first probe.
    """

    __slots__ = ("_detail", "_flags", "_floats", "_free", "_ints", "_next_code", "_shared",
                 "_shared_ids", "_slots", "_status")

    _INTS = 6  # health, rise, fall, code (-1: None), failures, downs
    _FLOATS = 4  # duration_ms, checked_at, last_change, downtime

    def __init__(self) -> None:
        self._slots: dict[Key, int] = {}
        self._free: list[int] = []
        self._status = bytearray()
        self._flags = bytearray()
        self._ints = array("i")
        self._floats = array("d")
        self._detail: list[str] = []
        self._shared: dict[int, list[Any]] = {}  # code -> [CheckResult, servers using it]
        self._shared_ids: dict[int, int] = {}  # id(CheckResult) -> its code
        self._next_code = -1

    def share(self, key: Key, r: CheckResult) -> None:
        """`key`'s result is `r`, as (the same object) for the other servers given it."""
        code = self._shared_ids.get(id(r))
        if code is None:
            code = self._shared_ids[id(r)] = self._next_code
            self._next_code -= 1
            self._shared[code] = [r, 0]
        self._release(key)
        self._shared[code][1] += 1
        self._slots[key] = code

    def _release(self, key: Key) -> None:
        """Forget `key`'s shared result, if it has one (its slot stays in `_slots`)."""
        code = self._slots.get(key)
        if code is None or code >= 0:
            return
        entry = self._shared[code]
        entry[1] -= 1
        if entry[1] == 0:
            del self._shared[code], self._shared_ids[id(entry[0])]

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def __getitem__(self, key: Key) -> CheckResult:
        i = self._slots[key]
        if i < 0:
            return cast(CheckResult, self._shared[i][0])
        ints, floats = self._ints, self._floats
        n, f = i * self._INTS, i * self._FLOATS
        flags = self._flags[i]
        code, duration, checked = ints[n + 3], floats[f], floats[f + 1]
        return CheckResult(
            status=_STATUSES[self._status[i]], code=None if code < 0 else code,
            duration_ms=None if duration < 0 else duration, detail=self._detail[i],
            up=bool(flags & _UP), health=ints[n], rise=ints[n + 1], fall=ints[n + 2],
            checked_at=None if checked < 0 else checked, last_change=floats[f + 2],
            failures=ints[n + 4], downs=ints[n + 5], downtime=floats[f + 3],
            http=bool(flags & _HTTP))

    def __setitem__(self, key: Key, r: CheckResult) -> None:
        self._release(key)
        i = self._slots.get(key)
        if i is None or i < 0:
            if self._free:
                i = self._free.pop()
            else:
                i = len(self._status)
                self._status.append(0)
                self._flags.append(0)
                self._ints.extend((0,) * self._INTS)
                self._floats.extend((0.0,) * self._FLOATS)
                self._detail.append("")
            self._slots[key] = i
        no = _STATUS_NO.get(r.status)
        if no is None:
            no = _STATUS_NO[r.status] = len(_STATUSES)
            _STATUSES.append(r.status)
        self._status[i] = no
        self._flags[i] = (_UP if r.up else 0) | (_HTTP if r.http else 0)
        n, f = i * self._INTS, i * self._FLOATS
        self._ints[n:n + self._INTS] = array("i", (
            r.health, r.rise, r.fall, -1 if r.code is None else r.code, r.failures,
            r.downs))
        self._floats[f:f + self._FLOATS] = array("d", (
            _NONE if r.duration_ms is None else r.duration_ms,
            _NONE if r.checked_at is None else r.checked_at, r.last_change, r.downtime))
        self._detail[i] = sys.intern(r.detail)

    def __delitem__(self, key: Key) -> None:
        self._release(key)
        i = self._slots.pop(key)
        if i >= 0:
            self._detail[i] = ""
            self._free.append(i)

    def copy(self) -> CheckResults:
        """A snapshot (the columns are copied whole: a memcpy each)."""
        out = CheckResults()
        out._slots = dict(self._slots)
        out._status = bytearray(self._status)
        out._flags = bytearray(self._flags)
        out._ints = array("i", self._ints)
        out._floats = array("d", self._floats)
        out._detail = list(self._detail)
        out._shared = {code: list(e) for code, e in self._shared.items()}
        return out


def backend_checked(backend: Backend, scope: CheckScope) -> bool:
    """Whether `backend`'s servers are actively checked: `--checks` off checks nothing;
    otherwise the backend's own word (`lb.check`, resolved by translate) and, where it
    has none (a hand-built table), all or annotated-only."""
    if scope is CheckScope.OFF:
        return False
    if backend.check is not None:
        return backend.check
    return scope is CheckScope.ALL


def _eligible(backend: Backend, scope: CheckScope) -> tuple[Key, ...]:
    """The addresses `backend` asks to check (ready or draining); repeats are possible.

    Endpoints Kubernetes does not call ready (and that are not draining) are left
    alone, as haproxy does not check a server in maintenance: they get no traffic, and
    probing pods that are still starting would only load them.
    """
    if not backend_checked(backend, scope):
        return ()
    return tuple([s.key for s in backend.servers if s.ready or s.terminating])


def check_targets(table: RouteTable, scope: CheckScope = CheckScope.ALL
                  ) -> dict[Key, str | None]:
    """Every server address in `table` to check, and its HTTP check path (None: TCP).
    The reference for `_Index`, which computes the same incrementally."""
    out: dict[Key, str | None] = {}
    for backend in sorted(table.backends, key=lambda b: b.name):  # first path wins
        for key in _eligible(backend, scope):
            if out.get(key) is None:
                out[key] = check_path(backend)
    return out


def effective_interval(servers: int, interval: float, rate: float) -> float:
    """Seconds between two probes of one server: `interval`, stretched to servers / rate
    when the budget cannot probe them all that often."""
    return max(interval, servers / rate)


def inflight_cap(max_inflight: int, nofile: int | None) -> int:
    """Probes open at once: `max_inflight`, but never more than a quarter of the
    descriptor limit (`nofile`, None for unlimited): the rest is for the stats and
    health servers, discovery's watches and the worker pipes."""
    if nofile is None or nofile < 0:
        return max_inflight
    return max(1, min(max_inflight, nofile // 4))


def _nofile() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class _Index:
    """Which addresses the current table asks to check, kept up to date backend by
    backend (see the module docstring).

    `backends` maps a backend's name to the backend object last seen and the addresses it
    contributes (updated in place, so that a big table can be taken in in steps);
    `refs` maps an address to the name of the backend contributing it, or the names,
    sorted, when several do (the first with a check path decides the path; a bare name
    for the usual one spares a tuple per server).
    """

    __slots__ = ("backends", "refs", "scope")

    def __init__(self, scope: CheckScope) -> None:
        self.scope = scope
        self.backends: dict[str, tuple[Backend, tuple[Key, ...]]] = {}
        self.refs: dict[Key, str | tuple[str, ...]] = {}

    def update(self, backends: Sequence[Backend]) -> dict[Key, None]:
        """Take the table's backends; the addresses whose target state may have changed
        (a dict for its order: the table's)."""
        touched: dict[Key, None] = {}
        for _ in self.steps(backends, touched, 0):
            pass
        return touched

    def steps(self, backends: Sequence[Backend], touched: dict[Key, None],
              step: int) -> Iterator[None]:
        """`update` a part at a time: stops after about every `step` servers read (0:
        never), adding the addresses it touches to `touched` as it goes. Between two
        stops the index is usable — `resolve` answers from the backends taken in so far
        and the old ones not yet reached — and it is the table's once this ends."""
        index, scope = self.backends, self.scope
        work = 0
        for b in backends:
            prev = index.get(b.name)
            if prev is not None:
                was = prev[0]
                if was is b:
                    continue
                if was.servers is b.servers and was.check == b.check and \
                        was.check_path == b.check_path and was.h2c == b.h2c:
                    # (rebuilt around the same servers)
                    index[b.name] = (b, prev[1])
                    continue
            keys = _eligible(b, scope)
            index[b.name] = (b, keys)
            if prev is None or prev[1] != keys or prev[0].check_path != b.check_path \
                    or prev[0].h2c != b.h2c:
                if prev is not None:
                    self._unref(b.name, prev[1], touched)
                self._ref(b.name, keys, touched)
            if step:
                work += 1 + len(b.servers)
                if work >= step:
                    work = 0
                    yield
        if len(index) > len(backends):  # names are unique: some left the table
            names = {b.name for b in backends}
            for name in [n for n in index if n not in names]:
                self._unref(name, index.pop(name)[1], touched)

    def _ref(self, name: str, keys: tuple[Key, ...], touched: dict[Key, None]) -> None:
        refs = self.refs
        for key in keys:
            touched[key] = None
            names = refs.get(key)
            if names is None:
                refs[key] = name
            elif isinstance(names, str):
                if names != name:
                    refs[key] = (name, names) if name < names else (names, name)
            elif name not in names:
                refs[key] = tuple(sorted((*names, name)))

    def _unref(self, name: str, keys: tuple[Key, ...], touched: dict[Key, None]) -> None:
        refs = self.refs
        for key in keys:
            touched[key] = None
            names = refs.get(key)
            if names is None:
                continue
            if isinstance(names, str):
                if names == name:
                    del refs[key]
            elif name in names:
                rest = tuple(n for n in names if n != name)
                refs[key] = rest[0] if len(rest) == 1 else rest

    def resolve(self, key: Key) -> tuple[bool, str | None]:
        """(checked?, HTTP path or None) for `key` in the current table."""
        names = self.refs.get(key)
        if names is None:
            return False, None
        if isinstance(names, str):
            return True, check_path(self.backends[names][0])
        for name in names:
            path = check_path(self.backends[name][0])
            if path is not None:
                return True, path
        return True, None


class _Target:
    """One server in the schedule, and its entry in the schedule's heap (ordered by
    `due`; in the heap at most once: taken out before its probe starts, put back after).
    A new object when the server is re-added or its path changes, so a probe started
    for the old one knows its result is stale, and an old heap entry too (`targets` no
    longer names it). One object a server, not a target plus a (due, seq, key) tuple
    and a seq int: 100,000 servers, 176 -> 88 B each (bench/check_memory.py)."""

    __slots__ = ("due", "key", "path")

    def __init__(self, key: Key, path: str | None, due: float) -> None:
        self.key = key
        self.path = path
        self.due = due

    def __lt__(self, other: _Target) -> bool:
        return self.due < other.due


_BURST = 0.02  # seconds of budget the token bucket may save up (coarse wake-ups lose none)
_PAUSE_MIN = 0.1  # first pause after a local connect error (proxy.listener.OVERLOAD_PAUSE)
_PAUSE_MAX = 2.0


class Schedule:
    """When to probe which server, under the rate and in-flight budget. Sans-IO: every
    method is told the (monotonic) time; the caller starts the probes `take` returns and
    reports each back with `done` or `put_off`."""

    def __init__(self, interval: float, rate: float, cap: int,
                 rng: random.Random | None = None) -> None:
        self.interval = interval
        self.rate = rate
        self.cap = cap
        self.targets: dict[Key, _Target] = {}
        self.inflight = 0
        self.started = 0  # probes handed out, all told
        self.put_offs = 0  # probes returned unfinished for a local shortage
        self.paused_until = 0.0
        self._pause = 0.0
        self._heap: list[_Target] = []
        self._tokens = 1.0
        self._refilled: float | None = None
        self._rng = rng or random.Random()
        self._last_due: tuple[float, float, float] = (-1.0, 0.0, 0.0)  # see done()

    @property
    def effective_interval(self) -> float:
        return effective_interval(len(self.targets), self.interval, self.rate)

    def add(self, items: list[tuple[Key, str | None]], now: float, more: int = 0) -> None:
        """New servers, spread evenly over one (effective) interval from `now` — the
        interval for `more` servers still to come too, when a big table is added in
        parts, so that every part spreads over the same span."""
        m = len(items)
        span = effective_interval(len(self.targets) + m + more, self.interval, self.rate)
        step, rand = span / m, self._rng.random
        targets = self.targets
        entries = []
        for i, (key, path) in enumerate(items):
            target = targets[key] = _Target(key, path, now + step * (i + rand()))
            entries.append(target)
        if len(entries) > len(self._heap):  # one heapify beats m pushes
            self._heap.extend(entries)
            heapq.heapify(self._heap)
        else:
            for e in entries:
                heapq.heappush(self._heap, e)

    def remove(self, key: Key) -> None:
        self.targets.pop(key, None)  # its heap entry goes stale; see _top

    def set_path(self, key: Key, path: str | None, now: float) -> None:
        """A server's check changed: probe it the new way from within one interval."""
        if key in self.targets:
            self._put(key, path, now + self.effective_interval * self._rng.random())

    def take(self, now: float) -> list[tuple[Key, _Target]]:
        """The servers to probe now; each counts as in flight until `done`/`put_off`."""
        if now < self.paused_until:
            return []
        self._refill(now)
        out: list[tuple[Key, _Target]] = []
        heap = self._heap
        while self.inflight < self.cap and self._tokens >= 1.0:
            top = self._top()
            if top is None or top.due > now:
                break
            heapq.heappop(heap)
            self._tokens -= 1.0
            self.inflight += 1
            out.append((top.key, top))
        self.started += len(out)
        return out

    def wake_at(self, now: float) -> float | None:
        """When `take` may next return something (None: not before a `done`/`add`)."""
        if now < self.paused_until:
            return self.paused_until
        if self.inflight >= self.cap:
            return None
        top = self._top()
        if top is None:
            return None
        self._refill(now)
        ready = now if self._tokens >= 1.0 else now + (1.0 - self._tokens) / self.rate
        return max(top.due, ready)

    def done(self, key: Key, target: _Target, started: float) -> float | None:
        """A probe of `target` ended. Its due time again, or None when the server left
        (or changed) meanwhile and the result is stale."""
        self.inflight -= 1
        self._pause = 0.0
        if self.targets.get(key) is not target:
            return None
        # The probes started in one batch share `started` (one float object) and so
        # their next due time: one float object for them all, not 24 B per server.
        interval = self.effective_interval
        last = self._last_due
        if last[0] is started and last[1] == interval:
            due = last[2]
        else:
            due = started + interval
            self._last_due = (started, interval, due)
        self._push(key, target, due)
        return due

    def put_off(self, key: Key, target: _Target, now: float) -> float:
        """A probe could not start for want of local resources: pause every probe for a
        while (longer each time in a row), and retry this server after it. Returns the
        end of the pause."""
        self.inflight -= 1
        self.put_offs += 1
        self._pause = min(_PAUSE_MAX, self._pause * 2) if self._pause else _PAUSE_MIN
        self.paused_until = max(self.paused_until, now + self._pause)
        if self.targets.get(key) is target:
            self._push(key, target, self.paused_until)
        return self.paused_until

    def _put(self, key: Key, path: str | None, due: float) -> None:
        target = self.targets[key] = _Target(key, path, due)
        self._push(key, target, due)

    def _push(self, key: Key, target: _Target, due: float) -> None:
        target.due = due
        heapq.heappush(self._heap, target)
        if len(self._heap) > 2 * len(self.targets) + 1024:
            self._compact()

    def _top(self) -> _Target | None:
        """The earliest live heap entry (stale ones — servers gone or re-added — go)."""
        heap, targets = self._heap, self.targets
        while heap:
            top = heap[0]
            if targets.get(top.key) is top:
                return top
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        targets = self.targets
        self._heap = [t for t in self._heap if targets.get(t.key) is t]
        heapq.heapify(self._heap)

    def _refill(self, now: float) -> None:
        """The token bucket: `rate` a second, saving up at most `_BURST` seconds' worth
        (it starts full)."""
        full = max(1.0, self.rate * _BURST)
        if self._refilled is None:
            self._tokens = full
        elif now > self._refilled:
            self._tokens = min(full, self._tokens + (now - self._refilled) * self.rate)
        else:
            return
        self._refilled = now


async def _connect(address: str, port: int, timeout: float, t0: float
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | Probe:
    """The connection, or the failed probe (L4TOUT, L4CON or SOCKERR) saying why not.
    Raises OSError when the failure is this process's (LOCAL_ERRNOS: out of descriptors,
    memory or ports), which says nothing about the server."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(address, port)
    except TimeoutError:
        return Probe(L4TOUT, duration_ms=_ms(t0), detail="connect timed out")
    # The error text is kept in the server's result until its next probe: one shared
    # string per distinct text (sys.intern), not one per server (~6 MiB at 100,000).
    except ConnectionRefusedError as e:
        return Probe(L4CON, duration_ms=_ms(t0), detail=sys.intern(e.strerror or "refused"))
    except OSError as e:
        if e.errno in LOCAL_ERRNOS:
            raise
        return Probe(SOCKERR, duration_ms=_ms(t0), detail=sys.intern(e.strerror or str(e)))


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
    return await _probe_l7(address, port, timeout, lambda r, w, t0: _http_exchange(
        r, w, address, port, path, t0))


L7Exchange = Callable[[asyncio.StreamReader, asyncio.StreamWriter, float],
                      Awaitable[Probe]]


async def _probe_l7(address: str, port: int, timeout: float, exchange: L7Exchange) -> Probe:
    """Connect, then `exchange` within what is left of `timeout`: L7TOUT when it runs
    out, L7RSP on a socket error; the connection closed in every case."""
    t0 = time.monotonic()
    conn = await _connect(address, port, timeout, t0)
    if isinstance(conn, Probe):
        return conn
    reader, writer = conn
    try:
        remaining = max(0.0, timeout - (time.monotonic() - t0))
        async with asyncio.timeout(remaining):
            return await exchange(reader, writer, t0)
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


async def probe_h2c(address: str, port: int, path: str, timeout: float) -> Probe:
    """One h2c check (`proxy.check_h2c`): L7OK, L7STS (a status, or a gRPC health
    answer other than SERVING), L7RSP, L7TOUT, or the connect's failure."""
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       t0: float) -> Probe:
        try:
            passed, code, detail = await check_h2c.exchange(
                reader, writer, format_hostport(address, port), path)
        except check_h2c.BadResponse as e:
            return Probe(L7RSP, duration_ms=_ms(t0), detail=str(e))
        return Probe(L7OK if passed else L7STS, code=code, duration_ms=_ms(t0),
                     detail=detail)
    return await _probe_l7(address, port, timeout, exchange)


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000.0, 3)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


ProbeFn = Callable[[Key, str | None, float], Awaitable[Probe]]


async def probe_server(key: Key, path: str | None, timeout: float) -> Probe:
    """One check of `key`: TCP when `path` is None, else HTTP. Raises OSError for a
    local shortage (see `_connect`)."""
    if path is None:
        return await probe_tcp(key[0], key[1], timeout)
    if path.startswith(H2C):
        return await probe_h2c(key[0], key[1], path[len(H2C):], timeout)
    return await probe_http(key[0], key[1], path, timeout)


_WARN_EVERY = 10.0  # seconds between two "paused" warnings
# Servers of a table change taken in per turn of the loop while running (~2-4 ms; 5,000
# was 10-20 ms, 50+ on a busy machine, which the first changes after start waited behind):
# the first table of a big cluster (100,000 servers, ~0.5 s of work) is taken in parts.
_CHUNK = 1000
# Servers of a table read into the index (`_Index.steps`) per turn of the loop: ~6 ms
# (reading is cheaper than starting or stopping checks).
_INDEX_STEP = 10_000
_DONE = object()
# Up/down lines, one per server as haproxy writes them — but at most this many per
# _WARN_EVERY seconds, then one line that counts the rest: a node going away with a
# thousand pods must not become a thousand log writes on the controller's loop.
_LINES_PER_WINDOW = 50
_MIN_SLEEP = 0.002  # the scheduler's shortest nap: probes due within it start together


class HealthChecker:
    """Probes the servers of the current route table under the budget; see the module
    docstring.

    `params` overrides `settings.checks` (tests use millisecond intervals); `clock` is
    the wall clock stamped on results, `monotonic` the one the schedule runs on; `probe`
    does one check (tests inject failures); `nofile` overrides RLIMIT_NOFILE (by default
    it is read when `run()` starts; None: no limit).
    """

    def __init__(self, settings: Settings,
                 on_change: Callable[[Key, bool, CheckResult], None], *,
                 params: CheckSettings | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 probe: ProbeFn = probe_server,
                 nofile: int | None = -1,
                 on_pass: Callable[[Key, CheckResult], None] | None = None) -> None:
        self._params = params or settings.checks
        self._timeout = (self._params.timeout if self._params.timeout is not None
                         else settings.timeouts.connect)
        self._on_change = on_change
        self._on_pass = on_pass
        # Servers a data plane ejected (failed connects) -> when they were watched: the
        # first passing probe started after that is told to `on_pass` (see `watch`).
        self._watched: dict[Key, float] = {}
        self._clock = clock
        self._mono = monotonic
        self._probe = probe
        self._nofile = nofile
        self._index = _Index(self._params.scope)
        self._schedule = Schedule(self._params.interval, self._params.rate,
                                  self._params.max_inflight, rng)
        self._table: RouteTable | None = None
        self._results = CheckResults()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_time = float("inf")
        self._stopping = False
        self._running = False  # run() is on: it finishes what set_table starts
        self._logged_interval = self._params.interval
        self._warned_at = float("-inf")
        self._put_offs_warned = 0
        self._rate_since = (self._mono(), 0)
        self._rate = 0.0
        self._pending: list[Key] = []  # servers touched by table changes, not yet applied
        # The table being read into the index in steps (run() goes on with it), and what
        # its steps touched, not yet in _pending.
        self._taking: Iterator[None] | None = None
        self._taking_table: RouteTable | None = None
        self._touched: dict[Key, None] = {}
        self._pending_pos = 0
        self._lines_window = float("-inf")  # when the current window of up/down lines began
        self._lines_left = _LINES_PER_WINDOW
        self._unlogged = [0, 0]  # transitions not logged one by one: down, up

    @property
    def params(self) -> CheckSettings:
        return self._params

    @property
    def effective_interval(self) -> float:
        """Seconds between two probes of one server: the interval, or longer when the
        servers outnumber the budget (for the stats page)."""
        return self._schedule.effective_interval

    @property
    def probes_total(self) -> int:
        return self._schedule.started

    @property
    def probes_per_second(self) -> float:
        """Probes started per second: the mean since the previous reading that is at
        least 5 s old (the stats page reads it every few seconds)."""
        now = self._mono()
        since, count = self._rate_since
        if now - since >= 5.0:
            self._rate = (self._schedule.started - count) / (now - since)
            self._rate_since = (now, self._schedule.started)
        return self._rate

    @property
    def inflight(self) -> int:
        return self._schedule.inflight

    @property
    def inflight_cap(self) -> int:
        return self._schedule.cap

    @property
    def put_offs(self) -> int:
        """Probes put off because this process was short of descriptors or memory."""
        return self._schedule.put_offs

    def results(self) -> CheckResults:
        """The latest result per server (a snapshot)."""
        return self._results.copy()

    def set_table(self, table: RouteTable) -> None:
        """Check the servers of `table` from now on: new ones are spread over one
        interval, gone ones stop and are forgotten, ones whose check changed are probed
        the new way. Cost: a walk over the backends, plus the servers of those that
        changed (see `_Index`), taken in `_INDEX_STEP` servers per loop turn while
        running (the first table of 100,000 servers was ~60-90 ms in one go)."""
        if table is self._table:
            return
        self._table = table
        if self._taking is None:
            self._take_in(table)
        # else: run() takes it in once the table being taken in is (_index_step)

    def _take_in(self, table: RouteTable) -> None:
        # Before run() there is nobody to finish the job later (and tests read results()
        # at once); running, the first step is done here and now — all of a change of a
        # few thousand servers.
        running = self._running  # (not `_waiter`: None too when run() itself calls this)
        self._taking = self._index.steps(table.backends, self._touched,
                                         _INDEX_STEP if running else 0)
        self._taking_table = table
        self._index_step()
        if self._taking is None and self._pending:
            self._apply_pending(_CHUNK if running else None)
        self._wake()

    def _index_step(self) -> None:
        """One step of taking a table into the index; the servers it touched are then
        brought in line (`_apply_pending`) once the whole table is in, so that a big
        table's new servers are spread over one interval for all of them."""
        assert self._taking is not None
        done = next(self._taking, _DONE) is _DONE
        if self._touched:
            self._pending.extend(self._touched)
            self._touched.clear()
        if done:
            self._taking = None
            if self._taking_table is not self._table:  # a newer one came meanwhile
                self._take_in(cast(RouteTable, self._table))

    def _apply_pending(self, limit: int | None) -> None:
        """Bring up to `limit` (None: all) of the servers touched by table changes in
        line with the index: start, stop or re-path their checks."""
        pending, pos = self._pending, self._pending_pos
        end = len(pending) if limit is None else min(len(pending), pos + limit)
        chunk = pending[pos:end]
        if end >= len(pending):
            self._pending, self._pending_pos = [], 0
        else:
            self._pending_pos = end
        now, wall = self._mono(), self._clock()
        schedule, results, index = self._schedule, self._results, self._index
        fresh: dict[bool, CheckResult] = {}
        added: dict[Key, str | None] = {}  # a dict: a server touched twice is added once
        for key in chunk:
            checked, path = index.resolve(key)
            target = schedule.targets.get(key)
            if not checked:
                if target is not None:
                    schedule.remove(key)
                    if key in results:
                        del results[key]
                    self._watched.pop(key, None)
            elif target is None:
                if key in added:
                    continue
                added[key] = path
                http = path is not None
                if http not in fresh:
                    fresh[http] = initial(self._params, wall, http=http)
                results.share(key, fresh[http])
            elif target.path != path:
                schedule.set_path(key, path, now)
                results[key] = replace(results[key], http=path is not None)
        if added:
            schedule.add(list(added.items()), now, more=len(self._pending) - self._pending_pos)
        if not self._pending:
            self._note_interval()

    async def run(self) -> None:
        """Probe until cancelled (or `stop()`); cancels its probes on the way out."""
        loop = asyncio.get_running_loop()
        schedule = self._schedule
        nofile = _nofile() if self._nofile == -1 else self._nofile
        schedule.cap = inflight_cap(self._params.max_inflight, nofile)
        if schedule.cap < self._params.max_inflight:
            log.info("health checks: at most %d probes at once (a quarter of the "
                     "descriptor limit %s)", schedule.cap, nofile)
        self._running = True
        try:
            while not self._stopping:
                if self._taking is not None:
                    self._index_step()
                elif self._pending:
                    self._apply_pending(_CHUNK)
                now = self._mono()
                if now - self._lines_window >= _WARN_EVERY and any(self._unlogged):
                    self._log_unlogged(now)
                for key, target in schedule.take(now):
                    task = loop.create_task(self._run_probe(key, target, now))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                more = self._pending or self._taking is not None
                wake = now if more else schedule.wake_at(now)
                self._waiter = loop.create_future()
                handle = None
                if wake is None:
                    self._wake_time = float("inf")
                elif more:  # more table to take in: after the loop's other work
                    self._wake_time = now
                    handle = loop.call_soon(self._wake)
                else:
                    self._wake_time = max(wake, now + _MIN_SLEEP)
                    handle = loop.call_later(self._wake_time - now, self._wake)
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                    if handle is not None:
                        handle.cancel()
        finally:
            self._running = False
            tasks = list(self._tasks)
            self._tasks.clear()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Make `run()` return (at once if it has not started yet)."""
        self._stopping = True
        self._wake()

    def watch(self, key: Key) -> None:
        """A data plane ejected the server at `key`: the first probe of it that passes,
        started from now on, is told to `on_pass` even though the check stays up (its
        transitions alone would not end the ejection). Only checked servers are watched,
        each once, so this holds at most one entry per checked server."""
        if key in self._results:
            self._watched[key] = self._mono()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _run_probe(self, key: Key, target: _Target, started: float) -> None:
        try:
            result = await self._probe(key, target.path, self._timeout)
        except OSError as e:
            if e.errno not in LOCAL_ERRNOS:
                result = Probe(SOCKERR, detail=e.strerror or str(e))
            else:
                self._put_off(key, target, e)
                return
        except Exception as e:  # a bug in a probe is its server's SOCKERR, not our end
            log.exception("health check of %s failed", format_hostport(*key))
            result = Probe(SOCKERR, detail=f"check failed: {e!r}")
        schedule = self._schedule
        was_full = schedule.inflight >= schedule.cap
        due = schedule.done(key, target, started)
        if was_full or (due is not None and due < self._wake_time):
            self._wake()
        if due is None:
            return
        prev = self._results[key]
        now = self._clock()
        new = advance(prev, result, now)
        self._results[key] = new
        if new.up != prev.up:
            self._log_transition(key, new)
            try:
                self._on_change(key, new.up, new)
            except Exception:
                log.exception("health check callback failed for %s", format_hostport(*key))
        watched = self._watched
        if watched and new.up and result.passed and watched.get(key, started) < started:
            del watched[key]
            if self._on_pass is not None and new.up == prev.up:  # else on_change told it
                try:
                    self._on_pass(key, new)
                except Exception:
                    log.exception("health check callback failed for %s",
                                  format_hostport(*key))

    def _log_transition(self, key: Key, new: CheckResult) -> None:
        now = self._mono()
        if now - self._lines_window >= _WARN_EVERY:
            self._log_unlogged(now)
        if self._lines_left > 0:
            self._lines_left -= 1
            log.log(logging.INFO if new.up else logging.WARNING,
                    "server %s is %s: %s (%s ms)", format_hostport(*key),
                    "UP" if new.up else "DOWN", new.description, new.duration_ms)
        else:
            self._unlogged[new.up] += 1

    def _log_unlogged(self, now: float) -> None:
        """Start a new window of up/down lines, after one line for the last one's rest."""
        down, up = self._unlogged
        if down or up:
            log.warning("health checks: %d more server(s) went DOWN and %d UP in the last "
                        "%.0fs (not logged one by one; the stats page has each)", down, up,
                        now - self._lines_window)
        self._lines_window, self._lines_left, self._unlogged = now, _LINES_PER_WINDOW, [0, 0]

    def _put_off(self, key: Key, target: _Target, e: OSError) -> None:
        now = self._mono()
        until = self._schedule.put_off(key, target, now)
        if until < self._wake_time:
            self._wake()
        if now - self._warned_at >= _WARN_EVERY:
            n = self._schedule.put_offs - self._put_offs_warned
            self._warned_at, self._put_offs_warned = now, self._schedule.put_offs
            log.warning("health checks paused %.1fs: %s (errno %s); %d probe(s) put off "
                        "and retried, no server marked down for it", until - now,
                        e.strerror or e, errno.errorcode.get(e.errno or 0, e.errno), n)

    def _note_interval(self) -> None:
        """One log line when the effective interval changes (by a tenth or more, or
        between stretched and not), never per probe."""
        eff, last = self._schedule.effective_interval, self._logged_interval
        base = self._params.interval
        stretched, was = eff > base, last > base
        if stretched == was and abs(eff - last) <= 0.1 * last:
            return
        self._logged_interval = eff
        n = len(self._schedule.targets)
        if stretched:
            log.warning("health checks: %d servers at --check-rate %g/s: each is checked "
                        "every %.1fs instead of every %gs", n, self._params.rate, eff, base)
        else:
            log.info("health checks: %d servers, each checked every %gs", n, base)
