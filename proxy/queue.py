"""Per-server connection slots and the backend's queue (haproxy's server `maxconn`,
`timeout queue`): the mechanics, apart from the L7 and L4 call sites that use them.

Theory of operation. A backend with a per-server limit (`Backend.maxconn`, from the
annotation `serviceloadbalancer/lb.maxconn` or `--server-maxconn`) gets a `Gate`, held by
its `Balancer` (`Balancer.gate`). A request (L7) or connection (L4) holds a *slot* on its
server from the moment it is assigned to it until its exchange ends — as haproxy counts a
server's `served` from assignment, not from the connect's success, so a slow connect
counts against the limit. `Balancer.pick` skips servers whose slots are all taken
(`Gate.full`), except the server an affinity names, which it still returns. Then:

- the server returned has a free slot: `admit` takes it, and the request goes;
- it is full (so affinity named it): the request waits *pinned* to that server, which is
  haproxy's server queue for persistent requests;
- no server returned, but some are up and only full: it waits *unpinned*, haproxy's
  backend queue;
- the queue is at its length limit: a pinned request is redispatched to a free server if
  there is one (haproxy's `maxqueue` with `option redispatch`, which the 2015 template
  sets), else the request is refused (503, `Failure.QUEUE_FULL`).

Both queues are one FIFO (`_waiting`, in arrival order): when a slot frees on server S
(`release`), S goes to the oldest waiter that is unpinned or pinned to S — haproxy takes
the older of the heads of S's queue and the backend queue, which is the same choice. The
freed server is given without consulting the algorithm (haproxy does the same: the queue
drains into whichever server frees a slot). A waiter not served within `timeout queue`
is refused (503, `Failure.QUEUE_TIMEOUT`); one whose client leaves is dropped (`cancel`).
When the table changes, a check marks a server down or a passive ejection takes it out
(`refresh`), waiters pinned to a server that left or is no longer usable become unpinned
(redispatch), and free slots (a new server, a raised limit) are handed out. "Usable" is
`Balancer.usable`: under the panic threshold (`--panic-threshold`) ejected servers are
used, so waiters keep waiting for them rather than being answered 503.

Retries (proxy/retry.py). A connect retried on the same server after the turn-around
keeps its slot; a redispatch gives it back, then takes one on the new server or waits in
the queue — that wait is the retry, so it counts as one of `--retries`. The first wait in
the queue spends no retry.

Waiters are granted synchronously: `release` calls the waiter's `queue_granted(server)`
from inside the releasing request's end, so the freed slot (and the warm pooled
connection the releasing request has just returned) goes to the next request in the same
loop turn.

Processes. Every worker has its own balancers, so a per-server limit is divided among the
workers (`worker_share`): with maxconn 10 and 4 workers, the shares are 3, 3, 2, 2, and
the server never has more than 10 in flight from this node. Divided, not per worker,
because the limit exists to protect the server: under haproxy's `nbproc` each process kept
its own count, so the server could see nbproc x maxconn, which is not what an operator
who writes a server's capacity means. The price: the kernel spreads
connections over workers unevenly, so one worker may queue while another has a free slot
(at most workers - 1 slots idle). A limit below the number of workers still gives every
worker one slot (a zero share would refuse everything), so there the server may see
`workers` requests at once.

Nothing here allocates unless a limit is set: a backend without one has no Gate.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from pylb.failures import Failure

if TYPE_CHECKING:
    from proxy.balance import Balancer
    from pylb.config import Limits
    from pylb.counters import Stats
    from pylb.model import Backend, Server

Key = tuple[str, int]
# A gate whose backend dropped its limit keeps counting (its slots are held by requests in
# flight) but never fills.
_NO_LIMIT = 1 << 62


def worker_share(limit: int, index: int, workers: int) -> int:
    """Worker `index`'s part of a per-server `limit` divided among `workers` processes:
    the parts add up to `limit` (the first `limit % workers` workers take one more), and
    none is below 1."""
    if workers <= 1:
        return limit
    return max(1, limit // workers + (1 if index < limit % workers else 0))


class Waiter(Protocol):
    """What waits in a queue: an L7 exchange or an L4 connection."""

    def queue_granted(self, server: Server) -> None:
        """A slot on `server` is now this waiter's (taken already): go."""

    def queue_expired(self, failure: Failure) -> None:
        """Not served within `timeout queue` (or the backend is gone): answer 503."""


class Ticket:
    """One waiter's place in the queue."""

    __slots__ = ("key", "owner", "server", "since", "timer")

    def __init__(self, owner: Waiter, server: Server | None, since: float) -> None:
        self.owner = owner
        self.server = server  # the server it is pinned to, or None: any server
        self.key = server.key if server is not None else None
        self.since = since
        self.timer: asyncio.TimerHandle | None = None


class Gate:
    """The slots of one backend's servers and its queue, in one worker."""

    __slots__ = (
        "_loop",
        "_pinned",
        "_stats",
        "_waiting",
        "full",
        "limit",
        "maxconn",
        "name",
        "timeout",
        "used",
    )

    def __init__(self, name: str, maxconn: int, *, queue_limit: int, timeout: float,
                 stats: Stats | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        self.maxconn = maxconn  # slots per server, in this worker
        self.limit = queue_limit  # waiters at most (pinned and not); 0: no own limit
        self.timeout = timeout
        self.used: dict[Key, int] = {}
        self.full: set[Key] = set()  # servers with no free slot (Balancer.pick skips)
        self._waiting: OrderedDict[Ticket, None] = OrderedDict()  # arrival order
        self._pinned: dict[Key, int] = {}  # waiters pinned to each server
        self._stats = stats
        self._loop = loop

    # -- slots ----------------------------------------------------------------------------

    def free(self, key: Key) -> bool:
        return key not in self.full

    def set_limit(self, maxconn: int, queue_limit: int, timeout: float) -> None:
        self.maxconn = maxconn
        self.limit = queue_limit
        self.timeout = timeout
        self.full = {k for k, n in self.used.items() if n >= maxconn}

    def take(self, server: Server) -> None:
        key = server.key
        n = self.used.get(key, 0) + 1
        self.used[key] = n
        if n >= self.maxconn:
            self.full.add(key)

    def release(self, server: Server, bal: Balancer) -> None:
        """`server`'s slot is free again: give it to the oldest waiter that may use it."""
        key = server.key
        n = self.used.get(key, 0) - 1
        if n > 0:
            self.used[key] = n
        else:
            self.used.pop(key, None)
        if n < self.maxconn:
            self.full.discard(key)
        if self._waiting and key not in self.full:
            current = _usable(bal, key)
            if current is not None:
                self._serve(current)

    # -- the queue ------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def pinned(self, key: Key) -> int:
        return self._pinned.get(key, 0)

    def admit(self, owner: Waiter, bal: Balancer, server: Server | None, client_ip: str,
              exclude: frozenset[Key] | set[Key] | tuple[()] = ()
              ) -> Server | Ticket | Failure:
        """Where a request that `bal.pick` answered with `server` goes: that server, with
        its slot taken; a place in the queue (the owner hears back later); or a refusal."""
        if server is not None and server.key not in self.full:
            self.take(server)
            return server
        if self.limit and len(self._waiting) >= self.limit:
            if server is not None:
                # The server its affinity names is full and so is the queue: redispatch.
                other = bal.pick(client_ip, {server.key, *exclude})
                if other is not None and other.key not in self.full:
                    self.take(other)
                    return other
            return Failure.QUEUE_FULL
        if server is None and not any(s.key not in exclude and bal.usable(s)
                                      for s in bal.candidates):
            return Failure.NO_SERVER  # nothing to wait for: none up (or all tried)
        return self._enqueue(owner, server)

    def _enqueue(self, owner: Waiter, server: Server | None) -> Ticket:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        ticket = Ticket(owner, server, loop.time())
        ticket.timer = loop.call_later(self.timeout, self._expire, ticket)
        self._waiting[ticket] = None
        if server is not None:
            self._pinned[server.key] = self._pinned.get(server.key, 0) + 1
        self._count_queued(server, +1)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The waiter left (its client closed): forget it."""
        if self._waiting.pop(ticket, 1) is None:
            self._unpin(ticket)
            if ticket.timer is not None:
                ticket.timer.cancel()
                ticket.timer = None
            self._count_queued(ticket.server, -1)

    def _expire(self, ticket: Ticket) -> None:
        ticket.timer = None
        if self._waiting.pop(ticket, 1) is None:
            self._unpin(ticket)
            self._count_queued(ticket.server, -1)
            self._count_wait(ticket, None)
            ticket.owner.queue_expired(Failure.QUEUE_TIMEOUT)

    def _unpin(self, ticket: Ticket) -> None:
        key = ticket.key
        if key is not None:
            n = self._pinned[key] - 1
            if n:
                self._pinned[key] = n
            else:
                del self._pinned[key]

    def _serve(self, server: Server) -> None:
        """Hand `server`'s free slots to the oldest waiters that may use them."""
        key = server.key
        while key not in self.full:
            for ticket in self._waiting:
                if ticket.key is None or ticket.key == key:
                    break
            else:
                return
            del self._waiting[ticket]
            self._unpin(ticket)
            if ticket.timer is not None:
                ticket.timer.cancel()
                ticket.timer = None
            self._count_queued(ticket.server, -1)
            self._count_wait(ticket, server)
            self.take(server)
            ticket.owner.queue_granted(server)

    def refresh(self, bal: Balancer) -> None:
        """After a table change (or health change): waiters pinned to a server that can no
        longer take them are unpinned, and every free slot is handed out."""
        if not self._waiting:
            return
        usable = {s.key: s for s in bal.candidates if bal.usable(s)}
        for ticket in self._waiting:
            key = ticket.key
            if key is not None and key not in usable:
                self._count_queued(ticket.server, -1)
                self._unpin(ticket)
                ticket.key = ticket.server = None
                self._count_queued(None, +1)
        if not usable:
            # Nothing left to wait for: haproxy answers the queue's requests 503 at once.
            for ticket in list(self._waiting):
                self.cancel(ticket)
                ticket.owner.queue_expired(Failure.NO_SERVER)
            return
        for server in usable.values():
            if not self._waiting:
                return
            if server.key not in self.full:
                self._serve(server)

    def close(self) -> None:
        """The backend left the table: its waiters are answered 503 now."""
        for ticket in list(self._waiting):
            self.cancel(ticket)
            ticket.owner.queue_expired(Failure.NO_SERVER)

    # -- counters (the stats page's Queue columns) ---------------------------------------

    def _count_queued(self, server: Server | None, delta: int) -> None:
        stats = self._stats
        if stats is None:
            return
        c = stats.backend(self.name) if server is None else \
            stats.server(self.name, server.label)
        c.queue_cur += delta
        if c.queue_cur > c.queue_max:
            c.queue_max = c.queue_cur

    def _count_wait(self, ticket: Ticket, server: Server | None) -> None:
        """haproxy's qtime averages the time requests spent queued; pylb keeps the sum and
        the count of queued requests (cumulative, so workers' rows add up exactly)."""
        stats = self._stats
        loop = self._loop
        if stats is None or loop is None:
            return
        waited = loop.time() - ticket.since
        be = stats.backend(self.name)
        be.queue_time += waited
        be.queued += 1
        if server is not None:
            srv = stats.server(self.name, server.label)
            srv.queue_time += waited
            srv.queued += 1


def configure(bal: Balancer, backend: Backend, limits: Limits,
              stats: Stats | None) -> None:
    """Give `bal` the gate its backend's `maxconn` asks for (this worker's share), or
    lift the limit of one it has (its waiters go at once)."""
    index, workers = limits.worker
    share = worker_share(backend.maxconn, index, workers) if backend.maxconn else _NO_LIMIT
    gate = bal.gate
    if gate is None:
        bal.gate = Gate(backend.name, share, queue_limit=limits.queue_limit,
                        timeout=limits.queue_timeout, stats=stats)
        return
    gate.set_limit(share, limits.queue_limit, limits.queue_timeout)
    gate.refresh(bal)


def _usable(bal: Balancer, key: Key) -> Server | None:
    """The backend's current server at `key`, if it may take new work: still listed and
    usable (proxy.balance). (A new table may have replaced the Server object, with a new
    weight or name.)"""
    for s in bal.candidates:
        if s.key == key:
            return s if bal.usable(s) else None
    return None
