"""Connecting to a backend server: one attempt, its timeout, and what a failure means.

Theory of operation. `Dial(loop, factory, host, port, done).start(timeout)` starts
`loop.create_connection` and calls `done(dial)` exactly once with the outcome: the
transport and protocol, or a `Failure` (CONNECT_TIMEOUT, CONNECT_FAILED, or CLIENT_ABORT
when the caller cancelled) with the exception and whether it was this process's own
shortage (`local`). `done` may run inside `start` (a connect that fails at once), so a
caller that keeps the Dial (to cancel it) stores it before calling `start`. The TCP
splicer, the HTTP router and the listener's hand-over of accepted sockets all go through
here; nothing else in pylb steps a connect.

- No Task per connection. uvloop's create_connection (and connect_accepted_socket) is a
  coroutine; `Steps` runs it to its end from its futures' done-callbacks, exactly as a
  Task's step does (send, and when a future is yielded, step again when it is done).
  Measured under contention (uvloop, 100,000 awaits of one future each): 5.9-6.6 µs of
  CPU per coroutine stepped this way, 9.4-12.6 µs with a Task — a few per cent of a
  proxied TCP connection (~98 µs, proxy/tcp/proxy.py). A Task also resets the flag
  `Future.__await__` sets on a yielded future (`_asyncio_future_blocking`); only a Task
  reads that flag, so it is left alone here.
- The connect timeout is one TimerHandle. A timer that fires more than EXPIRY_SLACK after
  its deadline found the loop stalled (a starved worker): libuv runs due timers before it
  polls for I/O, so a connect that completed during the stall is not seen yet, and would be
  dropped as CONNECT_TIMEOUT. It looks once more, after the loop has polled.
- connect() errors in LOCAL_ERRNOS (out of descriptors, memory or ephemeral ports) say
  this process is short, not that the server is down: callers shed the connection without
  blaming the server or redispatching (no other server would fare better), and log it
  through a `ShortageLog`, at most once per WARN_EVERY seconds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from pylb.failures import Failure

log = logging.getLogger("pylb.connect")

# connect() errors that mean this process is short of descriptors, memory or ephemeral
# ports, not that the server is down (accept's "overloaded" set, proxy.listener, plus
# EADDRNOTAVAIL: no local port left for this destination).
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                          errno.EADDRNOTAVAIL})
# A connect timer that fires later than this after its deadline found the loop stalled;
# it looks again this much later.
EXPIRY_SLACK = 0.05
WARN_EVERY = 1.0  # seconds between two warnings about this process's own shortage


class Steps:
    """Runs a coroutine to its end from its futures' done-callbacks, as a Task would,
    without a Task; `on_end(result, None)` or `on_end(None, exc)` once at the end.
    `cancel()` cancels the future it waits on (or throws CancelledError in at the next
    step), so the coroutine cleans up where it awaits, as under Task.cancel()."""

    __slots__ = ("cancelled", "coro", "loop", "on_end", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                 on_end: Callable[[Any, BaseException | None], None]) -> None:
        self.loop = loop
        self.coro = coro
        self.on_end = on_end
        self.waiting: asyncio.Future[Any] | None = None
        self.cancelled = False
        self._step(None)

    def cancel(self) -> None:
        self.cancelled = True
        if self.waiting is not None:
            self.waiting.cancel()

    def _step(self, fut: object) -> None:
        # `waiting` may still name the future just done: cancelling a done future does
        # nothing, and a cancel between steps is seen below (fut is None).
        coro = self.coro
        try:
            if fut is None and self.cancelled:
                yielded = coro.throw(asyncio.CancelledError())
            else:
                yielded = coro.send(None)
        except StopIteration as end:
            self.on_end(end.value, None)
            return
        except (Exception, asyncio.CancelledError) as e:
            self.on_end(None, e)
            return
        if yielded is None:  # a bare yield (sleep(0)): step again on the next turn
            self.loop.call_soon(self._step, None)
            return
        self.waiting = yielded
        yielded.add_done_callback(self._step)
        if self.cancelled:
            yielded.cancel()


class Dial:
    """One connect attempt to `host:port` (see the module's comment). After `done(dial)`:
    `failure` is None and `transport`/`protocol` are set, or `failure` says why not,
    `error` is the exception (if any) and `local` whether it was this process's own
    shortage (LOCAL_ERRNOS)."""

    __slots__ = ("deadline", "done", "error", "factory", "failure", "host", "local", "loop",
                 "port", "protocol", "rechecked", "steps", "timed_out", "timer", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 factory: Callable[[], asyncio.BaseProtocol], host: str, port: int,
                 done: Callable[[Dial], None]) -> None:
        self.loop = loop
        self.factory = factory
        self.host = host
        self.port = port
        self.done = done
        self.steps: Steps | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.rechecked = False
        self.timed_out = False
        self.transport: asyncio.Transport | None = None
        self.protocol: asyncio.BaseProtocol | None = None
        self.failure: Failure | None = None
        self.error: BaseException | None = None
        self.local = False

    def start(self, timeout: float) -> None:
        """Connect, giving up after `timeout` seconds (0: no limit but the kernel's)."""
        loop = self.loop
        if timeout > 0:
            self.deadline = loop.time() + timeout
            self.timer = loop.call_later(timeout, self._expire)
        self.steps = Steps(loop, loop.create_connection(self.factory, self.host, self.port),
                           self._ended)

    def cancel(self) -> None:
        """Give up (the client went away): `done` follows with CLIENT_ABORT, or with the
        connection when it was already made."""
        if self.steps is not None:
            self.steps.cancel()

    def _expire(self) -> None:
        if not self.rechecked and self.loop.time() - self.deadline > EXPIRY_SLACK:
            self.rechecked = True  # fired late: look once more after the loop has polled
            self.timer = self.loop.call_later(EXPIRY_SLACK, self._expire)
            return
        self.timer = None
        self.timed_out = True
        self.cancel()

    def _ended(self, result: Any, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.steps = None
        if exc is None:
            self.transport, self.protocol = result
        elif isinstance(exc, asyncio.CancelledError):
            self.failure = Failure.CONNECT_TIMEOUT if self.timed_out else Failure.CLIENT_ABORT
        else:
            self.failure = Failure.CONNECT_FAILED
            self.error = exc
            if isinstance(exc, OSError):
                self.local = exc.errno in LOCAL_ERRNOS
            else:  # a bad address, say: fail this connection, not the worker
                log.warning("connect to %s:%d failed: %r", self.host, self.port, exc)
        self.done(self)


class ShortageLog:
    """The warning that connects fail for want of this process's own descriptors, memory
    or ports: at most one per WARN_EVERY seconds, naming how many connections are open."""

    __slots__ = ("last", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.last = -1e9

    def note(self, loop: asyncio.AbstractEventLoop, exc: BaseException | None,
             open_connections: int) -> None:
        now = loop.time()
        if now >= self.last + WARN_EVERY:
            self.last = now
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.warning("%s: shedding connections, cannot connect to backends: %s "
                        "(%d open)", self.what, why, open_connections)
