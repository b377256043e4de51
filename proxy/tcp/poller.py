"""Readiness for the splice pumps: one level-triggered epoll set per event loop.

Why not `loop.add_reader`. uvloop's add_reader is a libuv `uv_poll_t`, and libuv stops a
poll handle for good on the first EPOLLERR (uv__poll_io: `uv__io_stop`, then the callback
once with UV_EBADF, which uvloop turns into one call of the reader). A backend that sends
its last bytes and then resets (postgres on `pg_ctl stop -m fast`, any server closing with
the client's bytes unread) makes the socket report data and the error in one wake-up: the
reader splices the data, the error waits in SO_ERROR, and no callback ever comes again.
The pump hung until the tunnel timeout, its sockets in CLOSE-WAIT (issue #22, item 1;
asyncio's own selector loop reports EPOLLERR as readable again and again, as epoll is
level-triggered, and never hung). Measured: 5 of 5 runs hung before this module.

So the pumps keep their own epoll set, watched by the loop through ONE add_reader on the
epoll fd (an epoll fd never reports an error). Registrations are level-triggered and
EPOLLERR/EPOLLHUP are always reported: an fd with an error or a hang-up keeps calling its
reader (and its writer) until the callback has read the data, then the error, and
unregistered it. No spin: a callback either makes progress (reads, writes, or fails and
unregisters), and an fd with neither a reader nor a writer is not in the set. Cost: one
`epoll_wait` from Python per wake-up of the set, shared by every spliced connection that
is ready at once, and one `epoll_ctl` per change of interest, as libuv would make.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_MAX_EVENTS = 256


class Poller:
    """`add_reader`/`remove_reader`/`add_writer`/`remove_writer` as the loop's, with one
    callback argument, on fds the caller owns (it must remove them before closing)."""

    __slots__ = ("_ep", "_fds", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ep: select.epoll | None = None
        # fd → [mask, reader, reader's argument, writer, writer's argument]
        self._fds: dict[int, list[object]] = {}

    def _epoll(self) -> select.epoll:
        ep = self._ep
        if ep is None:
            ep = self._ep = select.epoll()
            self.loop.add_reader(ep.fileno(), self._run)
        return ep

    def _set(self, fd: int, bit: int, cb: Callable[[Any], None] | None,
             arg: object) -> None:
        ep = self._epoll()
        entry = self._fds.get(fd)
        if entry is None:
            if cb is None:
                return
            self._fds[fd] = entry = [bit, None, None, None, None]
            ep.register(fd, bit)
        else:
            old = entry[0]
            assert isinstance(old, int)
            mask = (old | bit) if cb is not None else (old & ~bit)
            if mask == 0:
                del self._fds[fd]
                ep.unregister(fd)
                return
            if mask != old:
                entry[0] = mask
                ep.modify(fd, mask)
        i = 1 if bit == _IN else 3
        entry[i], entry[i + 1] = cb, arg

    def add_reader(self, fd: int, cb: Callable[[Any], None], arg: object) -> None:
        self._set(fd, _IN, cb, arg)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, _IN, None, None)

    def add_writer(self, fd: int, cb: Callable[[Any], None], arg: object) -> None:
        self._set(fd, _OUT, cb, arg)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, _OUT, None, None)

    def __len__(self) -> int:
        """The fds watched now."""
        return len(self._fds)

    @property
    def own_fds(self) -> int:
        """The fds the poller itself holds: its epoll fd, once made."""
        return 0 if self._ep is None else 1

    def _run(self) -> None:
        ep = self._ep
        if ep is None:
            return
        fds = self._fds
        for fd, ev in ep.poll(0, _MAX_EVENTS):
            # Look the entry up again before each call: an earlier callback of this batch
            # may have removed it (the pump ends both of its fds at once).
            entry = fds.get(fd)
            if entry is not None and ev & (_IN | _ERR) and entry[1] is not None:
                entry[1](entry[2])  # type: ignore[operator]
                entry = fds.get(fd)
            if entry is not None and ev & (_OUT | _ERR) and entry[3] is not None:
                entry[3](entry[4])  # type: ignore[operator]

    def close(self) -> None:
        ep = self._ep
        if ep is not None:
            self._ep = None
            self.loop.remove_reader(ep.fileno())
            ep.close()
        self._fds.clear()
