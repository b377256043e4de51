"""Idle keep-alive client connections, and the first timer of a new one: one timer per
frontend, not one per connection.

Between two requests a keep-alive connection should hold no TimerHandle and no request
parser (an llhttp parser is ~0.9 KiB, a timer ~0.6 KiB, of the ~3.9 KiB an idle
connection cost: bench/RESULTS.md, memory per connection). Going idle, a connection only
stamps the time (server.ClientProtocol._finish). This sweep, every `interval` while any
connection is idle, closes those idle longer than `timeout http-keep-alive`, and drops
the parser (freed at once: `RequestParser.drop` breaks llhttp's reference cycle, else it
waits for a full GC), the timer and the empty write buffer of those idle for a whole
interval (after a first exchange, the parser and the buffer went already when it
ended); the next request's first bytes make them again (~2 µs, only after a pause of a
second or more: `ClientProtocol._wake`; no parser for a read the parser remembers:
`parser.known_request`). The timer of a
busy connection is kept across requests (re-making it per request costs ~8k
instructions), except after its first exchange (see `_first_idle`).

The interval is a quarter of the keep-alive timeout, at most 1 s (as the L4 proxy's
inactivity sweep): a connection is closed at most 25 % (or 1 s) after its timeout, never
before it. A sweep looks at every open connection (~0.1 µs each: 1 ms a second at
10,000 connections), which costs the busy ones nothing per request.

`LateTimers`: a new connection's phase timer (`timeout http-request`, then `timeout
server` while its response is awaited...) is made only if the connection is still in
that phase at the frontend's next tick, at most `LATE` seconds on. Most exchanges of a
`Connection: close` client are over well before: making a TimerHandle (a libuv timer)
and cancelling it cost ~6k instructions per connection (bench.instructions newconn).
Until the tick the connection holds the `LateTimers` itself in place of its TimerHandle
(it answers `when()`, the tick's time, and `cancel()`, nothing to do); at the tick
each connection still in a timed phase gets its TimerHandle, due when its timeout is,
so no timeout fires later or earlier than with a timer made at once.
A phase whose deadline comes before the tick gets its TimerHandle at once. A connection
that ends while it holds the `LateTimers` takes itself off the list (its place there is
what `defer` returned): else the list would keep it, its transport and what they hold
alive till the tick, `LATE` seconds' worth of connections (~1,200 at 25,000 a second),
freed at the tick in a batch from memory long gone cold, instead of at once, where the
next connection's allocations reuse it while it is still in the cache (l7-newconn,
seven alternating runs: 0.47 us less user time a request on average, less in six).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Protocol

MAX_INTERVAL = 1.0
LATE = 0.05  # seconds: the tick of LateTimers


class Idler(Protocol):
    def idle_check(self, now: float, interval: float) -> bool:
        """Close or slim down if idle long enough; True while still idle."""
        ...


class IdleSweep:
    __slots__ = ("_conns", "_handle", "_loop", "armed", "interval")

    def __init__(self, loop: asyncio.AbstractEventLoop, conns: Collection[Idler],
                 keep_alive: float) -> None:
        self._loop = loop
        self._conns = conns
        self.interval = max(0.001, min(keep_alive / 4, MAX_INTERVAL))
        self._handle: asyncio.TimerHandle | None = None
        self.armed = False  # a sweep is due (callers look first: one call fewer)

    def watch(self) -> None:
        """A connection went idle: make sure a sweep comes."""
        if self._handle is None:
            self._handle = self._loop.call_later(self.interval, self._sweep)
            self.armed = True

    def _sweep(self) -> None:
        self._handle = None
        self.armed = False
        now = self._loop.time()
        interval = self.interval
        idle = False
        for conn in list(self._conns):
            if conn.idle_check(now, interval):
                idle = True
        if idle:
            self.watch()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self.armed = False


class Timed(Protocol):
    closed: bool  # the connection has ended: it needs no timer (nor a call to say so)

    def timer_due(self, late: LateTimers) -> None:
        """The tick: make the TimerHandle for the phase now under way, if any (and if
        the connection still holds `late`)."""
        ...


class LateTimers:
    """The first timers of a frontend's connections, made late (module docstring)."""

    __slots__ = ("_handle", "_loop", "conns", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # the connections deferred since the last tick (None: one that has ended since)
        self.conns: list[Timed | None] = []
        self._handle: asyncio.TimerHandle | None = None
        self.due = 0.0  # when the next tick comes (while one is pending)

    def defer(self, conn: Timed, now: float, deadline: float) -> int:
        """Give `conn` its timer at the next tick: its place in `conns`, unless the tick
        would come after `deadline`: -1 (then the caller makes its own TimerHandle now).
        `now`: the loop's time. A connection that ends while it holds `self` (no tick
        has come since, so its place is still that one) sets its entry to None."""
        if self._handle is None:
            self.due = now + LATE
            self._handle = self._loop.call_at(self.due, self._tick)
        if deadline < self.due:
            return -1
        conns = self.conns
        conns.append(conn)
        return len(conns) - 1

    def when(self) -> float:
        """As TimerHandle.when(): a deferred connection's timer fires no sooner."""
        return self.due

    def cancel(self) -> None:
        """As TimerHandle.cancel(): the connection that drops `self` for a TimerHandle
        or None is passed by at the tick."""

    def _tick(self) -> None:
        self._handle = None
        conns = self.conns
        self.conns = []
        for conn in conns:
            if conn is not None and not conn.closed:  # (most have ended by now)
                conn.timer_due(self)

    def close(self) -> None:
        """No more ticks. (The list stays: a connection that ends after this still
        takes itself off it.)"""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
