"""The hard stop behind the controller's graceful shutdown.

Theory of operation. SIGTERM asks for a graceful shutdown (pylb.app.Controller.shutdown):
readiness false, listeners closed, open connections given up to --grace-period, workers
told to drain, then exit. That path runs on the controller's event loop, and a loop can be
slow to get there: 100,000 check tasks ready at once, a big table being pickled, a
translation in a thread that interpreter exit waits for (asyncio's runner joins its default
executor, Python joins non-daemon threads). The kubelet does not wait: it SIGKILLs at
terminationGracePeriodSeconds. An operator at a terminal presses Ctrl-C again.

So the controller takes SIGTERM and SIGINT with `signal.signal`, not
`loop.add_signal_handler`: CPython runs a Python-level handler in the main thread between
two bytecodes, even in the middle of a long callback, where a loop handler waits for the
loop's next turn (measured: 0 ms against 2.7 s behind a 3 s callback). The handler does
only what is safe there: it flips state, arms this deadline (a daemon timer thread) and
hands the graceful path to the loop with call_soon_threadsafe. It does not log: the
logging stream may be mid-write in the frame it interrupted.

- First SIGTERM/SIGINT: `on_signal` arms the deadline, `grace - EXIT_MARGIN` from now (at
  least `MIN_DEADLINE`), so that the tree is gone within --grace-period, before the
  kubelet's SIGKILL. The graceful path drains connections for `drain_budget()` — the time
  left minus a reserve for closing up — so when the loop is healthy it ends first and the
  deadline dies with the process (a daemon thread never delays exit).
- The deadline expires: `kill(EXIT_HARD)` — the caller SIGKILLs its workers and exits.
- A second SIGTERM/SIGINT: `kill(128 + signum)` at once, as a shell reports a death by
  signal.

What this does not do: make the loop-side steps (closing listeners, the drain, the
"shutting down" log line) come sooner. They wait for the loop's turn; with 100,000 checks on
the controller's loop that turn did not come within 30 s (bench/RESULTS.md, issue #24), and
the cure for that is a loop that is never saturated, not this module. And the deadline
counts from the handler, which runs only when the main thread next executes bytecode: a
C call or a garbage collection holding the GIL delays it. At 10,000 services, 2 workers and
1.9 GiB, the handler once ran 4.6 s after the signal (the tree was gone 33.8 s after it).
The kubelet's SIGKILL remains the backstop (pylb's DaemonSet: 40 s for a 30 s grace).

The decisions take an injected clock and timer, so they are tested without waiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

log = logging.getLogger("pylb")

# Closing up after the drain (worker exit, joining them, closing the stats and health
# servers) takes well under a second on an idle machine; 1 s keeps a loaded one inside the
# deadline. A deadline under 2 s gives half of itself to closing.
RESERVE = 1.0
# From the deadline to the last process gone. Measured at 10,000 services, 2 workers, 1.3 GiB
# in all, on a loaded machine: the timer thread got the GIL 0.14 s late, and the tree was gone
# 0.55 s after the last log line (the kernel freeing the memory of three processes).
EXIT_MARGIN = 1.0
# --grace-period=0 means "do not wait for connections", not "no time to close": the graceful
# path still gets this long before the hard stop.
MIN_DEADLINE = 0.5
EXIT_HARD = 1  # the graceful path did not finish within the grace period

Timer = Callable[[float, Callable[[], None]], Any]


def start_timer(delay: float, fn: Callable[[], None]) -> threading.Timer:
    t = threading.Timer(delay, fn)
    t.name = "pylb-hard-stop"
    t.daemon = True
    t.start()
    return t


class HardStop:
    """The deadline of one shutdown. `kill(code)` must not return (it exits the process)."""

    def __init__(self, grace: float, kill: Callable[[int], None], *,
                 clock: Callable[[], float] = time.monotonic,
                 timer: Timer = start_timer) -> None:
        self.grace = grace
        self._kill = kill
        self._clock = clock
        self._timer = timer
        self._deadline: float | None = None
        self.signals = 0

    @property
    def armed(self) -> bool:
        return self._deadline is not None

    @property
    def delay(self) -> float:
        """From the first signal to the deadline."""
        return max(self.grace - EXIT_MARGIN, MIN_DEADLINE)

    def arm(self) -> None:
        """Start the deadline (once; later calls keep the first)."""
        if self._deadline is None:
            self._deadline = self._clock() + self.delay
            self._timer(self.delay, self._expire)

    def on_signal(self, signum: int) -> bool:
        """A stop signal: True for the first (begin the graceful path); a second one kills
        at once."""
        self.signals += 1
        if self.signals > 1:
            self._kill(128 + signum)
            return False
        self.arm()
        return True

    def remaining(self) -> float:
        """Seconds to the deadline (the whole grace period while unarmed)."""
        if self._deadline is None:
            return self.delay
        return max(0.0, self._deadline - self._clock())

    def drain_budget(self) -> float:
        """How long open connections may still take: the grace period when no deadline runs
        (a shutdown not asked for by a signal), else the time left minus the reserve, never
        more than the grace period."""
        if self._deadline is None:
            return self.grace
        reserve = min(RESERVE, self.delay / 2)
        return max(0.0, min(self.grace, self.remaining() - reserve))

    def _expire(self) -> None:
        self._kill(EXIT_HARD)


def hard_exit(code: int, pids: Iterable[int], message: str) -> NoReturn:
    """SIGKILL `pids` (the workers), say why, and exit now without cleanup."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    # Logged from a thread given a moment: if the interrupted main thread holds the log
    # handler's lock (or stderr is a full pipe), the exit must not wait for it.
    t = threading.Thread(target=log.error, args=("%s", message), daemon=True)
    t.start()
    t.join(0.5)
    os._exit(code)
