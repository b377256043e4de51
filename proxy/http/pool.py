"""Idle keep-alive connections to backend servers, per server address.

A connection enters the pool only after a clean exchange (the response said keep-alive,
ended exactly where its framing said, the request was sent whole). It leaves it when
taken for a request (most recently used first: the warmest, least likely to have been
closed by the server), when the server closes it, when its server leaves the route table,
or when it has been idle `idle_timeout` seconds. At most `per_server` are kept.
A client connection keeps its last exchange's connection for its next request instead,
while busy (proxy.http.server, "Backend connections between a client's requests"): it
comes here when the client lets it go.

Idle time is a timestamp, not a timer per connection (a timer armed and cancelled per
request costs more than the request's routing): `take` skips connections idle too long,
and one sweep per pool, every half `idle_timeout` while anything is pooled, closes them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Container
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.http.upstream import UpstreamProtocol

Key = tuple[str, int]


class Pool:
    __slots__ = ("_idle", "_live", "_loop", "_sweeper", "idle_timeout", "per_server")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_server: int,
                 idle_timeout: float) -> None:
        self._loop = loop
        self.per_server = per_server
        self.idle_timeout = idle_timeout
        # Per address, a stack (most recently used last). A deque, not a list: one
        # connection taken and put back per request takes a list from one item to none
        # and back, and a list reallocates its array each time; a deque keeps its block.
        self._idle: dict[Key, deque[UpstreamProtocol]] = {}
        # The addresses of the current table (a live view kept by the balancers), or None:
        # every address is live.
        self._live: Container[Key] | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, key: Key, now: float) -> UpstreamProtocol | None:
        """The last pooled connection to `key` still usable and fresh at `now` (the
        loop's time, as the caller read it), or None."""
        conns = self._idle.get(key)
        if not conns:
            return None
        stale = now - self.idle_timeout
        while conns:
            conn = conns.pop()
            conn.pool = None  # conn.leave_pool(), inline
            t = conn.transport  # conn.usable, inline (a property call per request)
            if not conn.closed and not conn.eof and t is not None and not t.is_closing() \
                    and conn.idle_since > stale:
                return conn
            conn.close()
        return None

    def put(self, conn: UpstreamProtocol, now: float) -> None:
        """Keep `conn`, idle since `now` (the loop's time, as the caller read it), if it
        is usable, its server still in the table and its server's share not full; else
        close it."""
        key = conn.key
        conns = self._idle.get(key)
        if conns is None:
            # (an address with a list of its own is in the table: `retain` drops the
            # lists of those that leave it, and the next `retain` closes what a list
            # took in the meantime)
            live = self._live
            if live is not None and key not in live:
                conn.close()
                return
            conns = self._idle[key] = deque()
        t = conn.transport  # not conn.usable, inline:
        if len(conns) >= self.per_server or conn.closed or conn.eof or t is None \
                or t.is_closing():
            conn.close()
            return
        conns.append(conn)
        # Idle now: no owner (its parser, kept for reuse, let go of the last client at
        # the response's end), this pool's, since `now`
        conn.owner = None
        conn.pool = self
        conn.idle_since = now
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self.idle_timeout / 2, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        stale = self._loop.time() - self.idle_timeout
        left = 0
        for key in list(self._idle):
            conns = self._idle[key]
            keep = [c for c in conns if c.idle_since > stale]
            for c in conns:
                if c.idle_since <= stale:
                    c.leave_pool()
                    c.close()
            if keep:
                self._idle[key] = deque(keep)
                left += len(keep)
            else:
                del self._idle[key]
        if left:
            self._sweeper = self._loop.call_later(self.idle_timeout / 2, self._sweep)

    def remove(self, conn: UpstreamProtocol) -> None:
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            conn.leave_pool()

    def retain(self, keys: Container[Key]) -> None:
        """Servers not in `keys` left the table: close their idle connections now, and
        do not pool theirs that finish later."""
        self._live = keys
        for key in [k for k in self._idle if k not in keys]:
            for conn in self._idle.pop(key):
                conn.leave_pool()
                conn.close()

    def idle_count(self, key: Key | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle = self._idle
        self._idle = {}
        for conns in idle.values():
            for conn in conns:
                conn.leave_pool()
                conn.close()
