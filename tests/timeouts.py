"""pytest-timeout, made able to stop a test that awaits in an event loop (a pytest plugin).

Theory of operation. pytest-timeout's `signal` method (this suite's) raises its `Failed`
from a SIGALRM handler, in whatever Python code the main thread runs at that moment. A test
awaiting in uvloop runs none: the signal wakes uvloop's self-pipe reader, the handler raises
inside that callback, and uvloop's Handle passes every exception to the loop's exception
handler, which logs it. The test awaits on past its timeout, for good (a `timeout(2)` test
awaiting `asyncio.sleep(3600)` ran until killed from outside), and one such test hangs the
whole CI run. (asyncio's own loop polls in Python, so the exception lands there.)

So the timer here has two lines, set and cancelled with pytest-timeout's own hooks, from
the timeout pytest-timeout resolves (ini `timeout`, `--timeout`, the `timeout` marker):

1. At the timeout, the SIGALRM handler first cancels every task of the event loop running
   in the main thread — any loop: pytest-asyncio's, for async tests and async fixtures
   alike, or one a sync test runs itself — and then raises pytest-timeout's `Failed` as
   before. A test awaiting in the loop fails with a CancelledError that names its timeout
   (or with `Failed`, when the signal lands in its own task), its fixtures' teardowns run,
   and the session goes on. Sync code fails as it always did.
2. A backstop: if the test (setup, call and teardown: the span pytest-timeout times) is
   still running `timeout_grace` seconds after its timeout — a task that swallowed the
   cancel, a teardown that waits for good, a C call that never returns — pytest-timeout's
   `thread` method takes over: it dumps the captured output and every thread's stack and
   ends the process (os._exit(1)). The run then fails at once instead of hanging until CI
   kills it. It is a thread, not a signal, so it needs nothing from the stuck main thread.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from types import FrameType
from typing import Any

import pytest
import pytest_timeout

# The backstop's default. Longer than any bounded teardown of the suite (the live Gateway
# harness gives pylb 20 s to stop, then 10 s after SIGKILL, then 10 s to clean the echo
# backends: tests/gateway/live.py), short beside CI's 90 minutes.
GRACE = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "timeout_grace",
        "Seconds a test may still run after its pytest-timeout timeout fired (its tasks "
        "cancelled, its teardown running) before the session dumps every stack and exits",
        default=str(GRACE))


def cancel_loop_tasks(reason: str) -> None:
    """Cancel every task of the loop running in this thread, if one is."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for task in asyncio.all_tasks(loop):
        task.cancel(reason)


class Backstop:
    """One daemon thread for the session, armed per test: a thread per test (a
    threading.Timer) costs ~0.2 ms of CPU each, this a lock and a notify."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.armed: tuple[float, pytest.Item, Any, float] | None = None
        self.thread: threading.Thread | None = None

    def arm(self, item: pytest.Item, settings: Any, grace: float) -> None:
        with self.cond:
            self.armed = (time.monotonic() + settings.timeout + grace, item, settings, grace)
            if self.thread is None:
                self.thread = threading.Thread(target=self.watch, name="timeout backstop",
                                               daemon=True)
                self.thread.start()
            self.cond.notify()

    def disarm(self) -> None:
        with self.cond:
            self.armed = None
            self.cond.notify()

    def watch(self) -> None:
        with self.cond:
            while self.armed is None or (left := self.armed[0] - time.monotonic()) > 0:
                self.cond.wait(None if self.armed is None else left)
            _, item, settings, grace = self.armed
        exit_session(item, settings, grace)


BACKSTOP = Backstop()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's `thread` method: it ends the process at the timeout
    reason = f"Timeout (>{settings.timeout:g}s) from pytest-timeout (tests/timeouts.py)"

    def expire(signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        cancel_loop_tasks(reason)
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    # pytest-timeout calls this at the end of the test, and also as soon as the test fails
    # (before pdb could start): the backstop stays till the end, teardown included.
    item.cancel_timeout = cancel  # type: ignore[attr-defined]
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)

    BACKSTOP.arm(item, settings, float(item.config.getini("timeout_grace")))
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Any:
    try:
        return (yield)
    finally:
        BACKSTOP.disarm()


def exit_session(item: pytest.Item, settings: Any, grace: float) -> None:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)  # idempotent: timeout_timer suspends too
    item.config.get_terminal_writer().line(
        f"\n{item.nodeid}: still running {grace:g} s after its {settings.timeout:g} s timeout "
        "(tests/timeouts.py); dumping stacks and exiting")
    pytest_timeout.timeout_timer(item, settings)
