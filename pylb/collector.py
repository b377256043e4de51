"""Pausing Python's cyclic garbage collector around big one-off work.

A full collection walks every tracked object; at 10,000 services that is a million objects
or more (the informers' stores, the route table), and the big jobs that allocate most —
the initial lists, the first table build, a stats render of 100,000 rows — would each
trigger several such walks, stalling the event loop for hundreds of ms each (measured:
first build 2.2 s with the collector, 1.3 s without; stats renders up to 740 ms stalls).
Nothing those jobs build is cyclic garbage, so the collector is paused while they run.

`tune()` sets the young generation's threshold for a process that serves traffic.

`paused()` is nestable and thread-safe (discovery pauses on the loop and in its build
thread, the stats server in its render threads, and these overlap): the collector stays
off while any holder is inside, and the last one out restores what the first one in found
— a collector someone else had turned off stays off.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The cyclic collector off while held (see the module docstring)."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()


# The young generation's threshold in a process that serves traffic (CPython's is 700).
# Generation 0's count is container objects allocated less those freed, never below zero;
# a connection's objects come and go (nothing of it is cyclic garbage: server.py's
# connection_lost breaks the parser's cycle), yet with 16 connections opening and closing
# the count's swings cross 700 every ~270 requests, and each crossing walks the young
# objects of every open connection, memory the request path had left cold. Measured under
# `bench run --only l7-newconn` (8 s, ~190,000 requests): 666 young and 60 middle
# collections, 0.12 s of the process's 7.4 s of CPU, 276 objects freed; at 10,000: 6
# young collections, 0.009 s, and 0.5-0.6 us less user time a request. What it costs: up
# to 10,000 young container objects walked at once (~0.5 ms), and a cycle that is
# garbage waits longer to be freed (they are rare here: the count above).
YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """The cyclic collector's thresholds for a serving process: the young generation's
    is YOUNG_THRESHOLD (see there); the older generations' stay as they are."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


_malloc_trim: Any = None


def settle() -> None:
    """After a big one-off job whose results live on (the first table built and applied,
    a whole table decoded and applied in a worker): move everything alive now out of the
    cyclic collector's way (`gc.freeze`: at 10,000 services a million long-lived objects,
    which each full collection would otherwise walk again, stalling the loop for hundreds
    of ms at a time; frozen objects are still freed by reference counting), and give the
    freed memory back (`trim`). Cycles that were garbage already stay; no `gc.collect()`
    first, as that alone would stall the loop as long as the walk it saves."""
    gc.freeze()
    trim()


def trim() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim(0)`; nothing
    elsewhere). After a big one-off job — the first table of a big cluster, built and sent,
    or decoded and applied — the memory it freed stays in the process's malloc arenas,
    counted in its RSS, until a later allocation reuses it: tens of MiB at 10,000 services.
    Costs a walk of the heap (a few ms): call it after big jobs, not per change."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            _malloc_trim.argtypes = [ctypes.c_size_t]
    if _malloc_trim:
        _malloc_trim(0)
