"""proxy.queue: per-server slots and the backend's FIFO queue, with an injected loop (no
sockets, no sleeping)."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable
from typing import Any

import pytest

from proxy.balance import Balancer, Balancers, cookie_value
from proxy.queue import Gate, Ticket, worker_share
from pylb.config import Limits
from pylb.counters import Stats
from pylb.failures import Failure
from pylb.model import Affinity, Algorithm, Backend, Server


class Handle:
    def __init__(self, loop: FakeLoop, when: float, fn: Callable[..., Any],
                 args: tuple[Any, ...]) -> None:
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False
        self.loop = loop

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Handle) -> bool:
        return self.when < other.when


class FakeLoop:
    """call_later and time, driven by `advance`."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Handle:
        h = Handle(self, self.now + delay, fn, args)
        heapq.heappush(self.timers, h)
        return h

    def advance(self, dt: float) -> None:
        self.now += dt
        while self.timers and self.timers[0].when <= self.now:
            h = heapq.heappop(self.timers)
            if not h.cancelled:
                h.fn(*h.args)


class Req:
    """A waiter that records what happened to it."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name, self.log = name, log
        self.server: Server | None = None
        self.failure: Failure | None = None

    def queue_granted(self, server: Server) -> None:
        self.server = server
        self.log.append((self.name, server.address))

    def queue_expired(self, failure: Failure) -> None:
        self.failure = failure
        self.log.append((self.name, failure.label))


def srv(i: int) -> Server:
    return Server(f"127.0.0.{i}", 8080, name=f"s{i}")


def setup(n: int = 2, maxconn: int = 2, queue_limit: int = 0, timeout: float = 5.0,
          affinity: Affinity = Affinity.NONE
          ) -> tuple[Balancer, Gate, FakeLoop, Stats]:
    stats = Stats()
    b = Backend("default/app:80", tuple(srv(i + 1) for i in range(n)),
                Algorithm.ROUNDROBIN, affinity, maxconn=maxconn)
    bal = Balancer(b, Limits(queue_limit=queue_limit, queue_timeout=timeout), stats=stats)
    loop = FakeLoop()
    gate = bal.gate = Gate(b.name, maxconn, queue_limit=queue_limit, timeout=timeout,
                           stats=stats, loop=loop)  # type: ignore[arg-type]
    return bal, gate, loop, stats


def go(bal: Balancer, req: Req, cookie: str | None = None) -> Server | Ticket | Failure:
    gate = bal.gate
    assert gate is not None
    got = gate.admit(req, bal, bal.pick("192.0.2.1", (), cookie), "192.0.2.1")
    if isinstance(got, Server):
        req.server = got
    return got


@pytest.mark.parametrize(("limit", "workers", "shares"), [
    (10, 1, [10]),
    (10, 4, [3, 3, 2, 2]),
    (2, 2, [1, 1]),
    (1, 3, [1, 1, 1]),  # never 0: every worker may serve
    (7, 2, [4, 3]),
])
def test_worker_shares_add_up_to_the_limit(limit: int, workers: int,
                                           shares: list[int]) -> None:
    got = [worker_share(limit, i, workers) for i in range(workers)]
    assert got == shares
    if limit >= workers:
        assert sum(got) == limit


def test_balancer_gets_a_gate_only_with_a_limit() -> None:
    assert Balancer(Backend("b", (srv(1),))).gate is None
    assert Balancer(Backend("b", (srv(1),))).limiter is None
    bal = Balancer(Backend("b", (srv(1),), maxconn=10), Limits(worker=(1, 4)))
    assert bal.gate is not None and bal.gate.maxconn == 3  # 10 over 4 workers: 3,3,2,2


def test_slots_then_fifo_queue_served_by_whichever_server_frees() -> None:
    bal, gate, _loop, stats = setup()
    log: list[tuple[str, str]] = []
    reqs = [Req(f"r{i}", log) for i in range(7)]
    went = [go(bal, r) for r in reqs[:4]]
    assert all(isinstance(g, Server) for g in went)
    assert sorted(s.address for s in went if isinstance(s, Server)) == \
        ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"]
    assert gate.full == {srv(1).key, srv(2).key}
    tickets = [go(bal, r) for r in reqs[4:]]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert gate.waiting == 3
    assert stats.backend("default/app:80").queue_cur == 3
    # A slot frees on s2: the oldest waiter gets it, at once.
    gate.release(srv(2), bal)
    assert log == [("r4", "127.0.0.2")]
    gate.release(srv(1), bal)
    gate.release(srv(1), bal)
    assert log == [("r4", "127.0.0.2"), ("r5", "127.0.0.1"), ("r6", "127.0.0.1")]
    be = stats.backend("default/app:80")
    assert (be.queue_cur, be.queue_max, be.queued) == (0, 3, 3)
    assert gate.used == {srv(1).key: 2, srv(2).key: 2}


def test_queue_timeout_answers_503_and_frees_the_place() -> None:
    bal, gate, loop, stats = setup(n=1, maxconn=1, timeout=2.0)
    log: list[tuple[str, str]] = []
    first, late = Req("first", log), Req("late", log)
    assert isinstance(go(bal, first), Server)
    assert isinstance(go(bal, late), Ticket)
    loop.advance(1.9)
    assert log == []
    loop.advance(0.2)
    assert log == [("late", "queue_timeout")]
    assert gate.waiting == 0 and stats.backend("default/app:80").queue_cur == 0
    gate.release(srv(1), bal)  # nobody waits any more: the slot is just free
    assert gate.used == {} and not gate.full


def test_queue_limit_refuses_with_queue_full() -> None:
    bal, _gate, _loop, _ = setup(n=1, maxconn=1, queue_limit=2)
    log: list[tuple[str, str]] = []
    assert isinstance(go(bal, Req("a", log)), Server)
    assert isinstance(go(bal, Req("b", log)), Ticket)
    assert isinstance(go(bal, Req("c", log)), Ticket)
    assert go(bal, Req("d", log)) is Failure.QUEUE_FULL


def test_a_client_that_leaves_loses_its_place() -> None:
    bal, gate, loop, stats = setup(n=1, maxconn=1)
    log: list[tuple[str, str]] = []
    go(bal, Req("a", log))
    b = go(bal, Req("b", log))
    go(bal, Req("c", log))
    assert isinstance(b, Ticket)
    gate.cancel(b)
    gate.cancel(b)  # twice: harmless
    gate.release(srv(1), bal)
    assert log == [("c", "127.0.0.1")]
    assert stats.backend("default/app:80").queue_cur == 0
    loop.advance(10)  # b's and c's timers were cancelled: nothing fires
    assert log == [("c", "127.0.0.1")]


def test_cookie_pinned_request_waits_for_its_own_server() -> None:
    bal, gate, _loop, stats = setup(affinity=Affinity.COOKIE)
    log: list[tuple[str, str]] = []
    cookie1 = cookie_value(srv(1))
    for name in ("a", "b", "c", "d"):
        assert isinstance(go(bal, Req(name, log)), Server)
    pinned = go(bal, Req("pinned", log), cookie1)
    anyone = go(bal, Req("anyone", log))
    assert isinstance(pinned, Ticket) and pinned.key == srv(1).key
    assert isinstance(anyone, Ticket) and anyone.key is None
    assert stats.server("default/app:80", "s1").queue_cur == 1
    assert stats.backend("default/app:80").queue_cur == 1
    gate.release(srv(2), bal)  # s2 frees: the pinned one (older) does not take it
    assert log == [("anyone", "127.0.0.2")]
    gate.release(srv(1), bal)
    assert log == [("anyone", "127.0.0.2"), ("pinned", "127.0.0.1")]


def test_pinned_request_is_redispatched_when_the_queue_is_full() -> None:
    bal, _gate, _loop, _ = setup(affinity=Affinity.COOKIE, queue_limit=1)
    log: list[tuple[str, str]] = []
    cookie1 = cookie_value(srv(1))
    assert isinstance(go(bal, Req("a", log), cookie1), Server)
    assert isinstance(go(bal, Req("b", log), cookie1), Server)
    assert isinstance(go(bal, Req("c", log), cookie1), Ticket)  # s1 full: waits for it
    got = go(bal, Req("d", log), cookie1)  # queue full: s2 has room, so there
    assert isinstance(got, Server) and got.address == "127.0.0.2"


def test_waiters_pinned_to_a_server_that_goes_down_wait_for_any() -> None:
    bal, gate, _loop, _ = setup(affinity=Affinity.COOKIE)
    log: list[tuple[str, str]] = []
    cookie1 = cookie_value(srv(1))
    for name in ("a", "b", "c", "d"):
        go(bal, Req(name, log))
    t = go(bal, Req("pinned", log), cookie1)
    assert isinstance(t, Ticket)
    bal.set_health(srv(1).key, False)
    assert t.key is None
    gate.release(srv(2), bal)
    assert log == [("pinned", "127.0.0.2")]


def ejecting(n: int, affinity: Affinity = Affinity.NONE) -> tuple[Balancer, Gate]:
    """A gated backend whose servers are ejected at their first failed connect."""
    b = Backend("default/app:80", tuple(srv(i + 1) for i in range(n)),
                Algorithm.ROUNDROBIN, affinity, maxconn=2)
    bal = Balancer(b, Limits(queue_timeout=5.0, passive_fall=1))
    gate = bal.gate = Gate(b.name, 2, queue_limit=0, timeout=5.0,
                           loop=FakeLoop())  # type: ignore[arg-type]
    return bal, gate


def test_waiters_pinned_to_an_ejected_server_wait_for_any() -> None:
    """A passive ejection (proxy.balance `failed`) unpins, as a check's mark-down does."""
    bal, gate = ejecting(2, Affinity.COOKIE)
    log: list[tuple[str, str]] = []
    for name in ("a", "b", "c", "d"):
        go(bal, Req(name, log))
    t = go(bal, Req("pinned", log), cookie_value(srv(1)))
    assert isinstance(t, Ticket) and t.key == srv(1).key
    bal.failed(srv(1))
    assert t.key is None
    gate.release(srv(2), bal)
    assert log == [("pinned", "127.0.0.2")]


def test_under_the_panic_threshold_the_queue_waits_for_ejected_servers() -> None:
    """Every server ejected: the panic threshold uses them all, so the queue keeps its
    waiters (they are not answered 503 as when a check marks everything down)."""
    bal, gate = ejecting(1)
    log: list[tuple[str, str]] = []
    go(bal, Req("a", log))
    go(bal, Req("b", log))
    waiting = go(bal, Req("c", log))
    assert isinstance(waiting, Ticket)
    bal.failed(srv(1))
    assert not bal.is_up(srv(1)) and bal.usable(srv(1))
    assert log == []
    gate.release(srv(1), bal)
    assert log == [("c", "127.0.0.1")]


def test_nothing_up_means_no_queue() -> None:
    bal, _gate, _loop, _ = setup(n=1, maxconn=1)
    bal.set_health(srv(1).key, False)
    assert go(bal, Req("a", [])) is Failure.NO_SERVER


def test_all_servers_going_down_answers_the_queue() -> None:
    bal, _gate, _loop, _ = setup(n=1, maxconn=1)
    log: list[tuple[str, str]] = []
    go(bal, Req("a", log))
    go(bal, Req("b", log))
    bal.set_health(srv(1).key, False)
    assert log == [("b", "no_server")]


def test_a_new_server_or_a_higher_limit_takes_waiters_at_once() -> None:
    stats = Stats()
    balancers = Balancers(Limits(queue_timeout=5.0), stats=stats)
    b = Backend("default/app:80", (srv(1),), maxconn=1)
    balancers.apply([b], [])
    bal = balancers.get(b.name)
    assert bal is not None and bal.gate is not None
    bal.gate._loop = FakeLoop()  # type: ignore[assignment]
    log: list[tuple[str, str]] = []
    go(bal, Req("a", log))
    go(bal, Req("b", log))
    go(bal, Req("c", log))
    go(bal, Req("d", log))
    balancers.apply([dataclasses.replace(b, servers=(srv(1), srv(2)))], [])
    assert log == [("b", "127.0.0.2")]
    balancers.apply([dataclasses.replace(b, servers=(srv(1), srv(2)), maxconn=2)], [])
    assert sorted(log) == [("b", "127.0.0.2"), ("c", "127.0.0.1"), ("d", "127.0.0.2")]
    go(bal, Req("e", log))
    go(bal, Req("f", log))
    balancers.apply([dataclasses.replace(b, servers=(srv(1), srv(2)), maxconn=0)], [])
    assert ("f", "127.0.0.1") in log or ("f", "127.0.0.2") in log  # no limit: all go
    go(bal, Req("g", log))
    balancers.apply([], [b.name])
    assert bal.gate.waiting == 0


def test_backend_leaving_answers_its_queue() -> None:
    stats = Stats()
    balancers = Balancers(Limits(), stats=stats)
    b = Backend("default/app:80", (srv(1),), maxconn=1)
    balancers.apply([b], [])
    bal = balancers.get(b.name)
    assert bal is not None and bal.gate is not None
    bal.gate._loop = FakeLoop()  # type: ignore[assignment]
    log: list[tuple[str, str]] = []
    go(bal, Req("a", log))
    go(bal, Req("b", log))
    balancers.apply([], [b.name])
    assert log == [("b", "no_server")]
