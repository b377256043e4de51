"""proxy.balance: algorithms, affinity, passive health and state kept across updates.

Pure logic: no sockets, an injected clock.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest

from proxy.balance import BACK_BY_CHECK, Balancer, Balancers, cookie_value, normalize_client_ip
from pylb.config import Limits
from pylb.model import Affinity, Algorithm, Backend, Server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def srv(i: int, weight: int = 1, ready: bool = True, serving: bool = True,
        terminating: bool = False) -> Server:
    return Server(f"10.0.0.{i}", 8080, weight=weight, ready=ready, serving=serving,
                  terminating=terminating)


def backend(*servers: Server, algorithm: Algorithm = Algorithm.ROUNDROBIN,
            affinity: Affinity = Affinity.NONE) -> Backend:
    return Backend("default/app:80", servers, algorithm, affinity)


def picks(bal: Balancer, n: int, client: str = "192.0.2.1") -> list[int]:
    """The last octet of the server chosen by each of n picks."""
    out = []
    for _ in range(n):
        s = bal.pick(client)
        assert s is not None
        out.append(int(s.address.rsplit(".", 1)[1]))
    return out


# -- roundrobin --------------------------------------------------------------------------------


def test_smooth_weighted_round_robin_spreads_the_heavy_server() -> None:
    bal = Balancer(backend(srv(1, 5), srv(2), srv(3)))
    assert picks(bal, 7) == [1, 1, 2, 1, 3, 1, 1]  # nginx's sequence for 5:1:1


@pytest.mark.parametrize("weights", [(1, 1, 1), (5, 1, 1), (3, 2), (1, 10, 100), (7,)])
def test_round_robin_is_exactly_fair_over_whole_cycles(weights: tuple[int, ...]) -> None:
    bal = Balancer(backend(*(srv(i + 1, w) for i, w in enumerate(weights))))
    cycles = 13
    counts = collections.Counter(picks(bal, cycles * sum(weights)))
    assert [counts[i + 1] for i in range(len(weights))] == [cycles * w for w in weights]


def test_round_robin_skips_servers_that_take_no_new_work() -> None:
    bal = Balancer(backend(srv(1), srv(2, ready=False, serving=True, terminating=True),
                           srv(3, ready=False, serving=False), srv(4, weight=0), srv(5)))
    assert set(picks(bal, 10)) == {1, 5}


def test_no_server_gives_none() -> None:
    assert Balancer(backend()).pick("192.0.2.1") is None
    assert Balancer(backend(srv(1, ready=False))).pick("192.0.2.1") is None


# -- leastconn ---------------------------------------------------------------------------------


def test_leastconn_picks_the_least_loaded_relative_to_weight() -> None:
    s1, s2, s3 = srv(1), srv(2, weight=2), srv(3)
    bal = Balancer(backend(s1, s2, s3, algorithm=Algorithm.LEASTCONN))
    for s, n in ((s1, 2), (s2, 3), (s3, 1)):
        for _ in range(n):
            bal.acquire(s)
    # loads: 2/1, 3/2, 1/1 -> s3
    assert bal.pick("c") == s3
    bal.acquire(s3)
    bal.acquire(s3)
    # loads: 2, 1.5, 3 -> s2
    assert bal.pick("c") == s2
    for _ in range(3):
        bal.release(s2)
    assert bal.pick("c") == s2
    assert bal.active.get(s2.key) is None  # released to zero: no entry kept


def test_leastconn_ties_rotate() -> None:
    bal = Balancer(backend(srv(1), srv(2), srv(3), algorithm=Algorithm.LEASTCONN))
    assert sorted(picks(bal, 3)) == [1, 2, 3]


def test_leastconn_spreads_concurrent_connections() -> None:
    bal = Balancer(backend(srv(1), srv(2), srv(3, weight=2), algorithm=Algorithm.LEASTCONN))
    for _ in range(40):
        s = bal.pick("c")
        assert s is not None
        bal.acquire(s)
    assert [bal.active[srv(i).key] for i in (1, 2, 3)] == [10, 10, 20]


# -- first -------------------------------------------------------------------------------------


def test_first_fills_servers_in_order() -> None:
    bal = Balancer(backend(srv(3), srv(1), srv(2), algorithm=Algorithm.FIRST),
                   Limits(maxconn=2))
    chosen = []
    for _ in range(7):
        s = bal.pick("c")
        assert s is not None
        bal.acquire(s)
        chosen.append(int(s.address[-1]))
    # servers in address order, two slots each, then the least loaded when all are full
    assert chosen[:6] == [1, 1, 2, 2, 3, 3]
    assert chosen[6] in (1, 2, 3)
    bal.release(srv(1))
    bal.release(srv(1))
    assert bal.pick("c") == srv(1)


# -- source ------------------------------------------------------------------------------------


CLIENTS = [f"198.51.{i // 250}.{i % 250}" for i in range(2000)]


def test_source_is_stable_and_only_the_removed_servers_clients_move() -> None:
    servers = [srv(i) for i in range(1, 11)]
    bal = Balancer(backend(*servers, algorithm=Algorithm.SOURCE))
    before = {c: bal.pick(c) for c in CLIENTS}
    assert before == {c: bal.pick(c) for c in CLIENTS}  # same client, same server
    spread = collections.Counter(s.key for s in before.values() if s)
    assert all(100 <= n <= 300 for n in spread.values()), spread  # about 2000/10 each

    removed = servers[3]
    bal.update(backend(*(s for s in servers if s != removed), algorithm=Algorithm.SOURCE))
    after = {c: bal.pick(c) for c in CLIENTS}
    moved = {c for c in CLIENTS if after[c] != before[c]}
    assert moved == {c for c in CLIENTS if before[c] == removed}
    assert len(moved) < len(CLIENTS) / 5  # ~1/10 of clients, not a reshuffle

    bal.update(backend(*servers, algorithm=Algorithm.SOURCE))
    assert {c: bal.pick(c) for c in CLIENTS} == before  # it comes back: they go back


def test_source_respects_weights() -> None:
    bal = Balancer(backend(srv(1, 3), srv(2), algorithm=Algorithm.SOURCE))
    counts = collections.Counter(picks(bal, 1, c)[0] for c in CLIENTS)
    assert 1300 <= counts[1] <= 1700  # 3/4 of 2000


def test_ipv4_mapped_clients_hash_as_ipv4() -> None:
    bal = Balancer(backend(*(srv(i) for i in range(1, 6)), algorithm=Algorithm.SOURCE))
    for c in CLIENTS[:50]:
        assert bal.pick("::ffff:" + c) == bal.pick(c)
    assert normalize_client_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert normalize_client_ip("::ffff:zz") == "::ffff:zz"
    assert normalize_client_ip("2001:db8::1") == "2001:db8::1"


# -- client-IP affinity ------------------------------------------------------------------------


def test_client_ip_stickiness_and_expiry() -> None:
    clock = Clock()
    limits = Limits(stick_expire=60.0)
    bal = Balancer(backend(srv(1), srv(2), srv(3), affinity=Affinity.CLIENT_IP), limits,
                   clock)
    first = bal.pick("192.0.2.1")
    assert first is not None
    for _ in range(10):
        clock.now += 30.0  # each use renews the entry
        assert bal.pick("192.0.2.1") == first
    # other clients still rotate
    assert {bal.pick(f"192.0.2.{i}") for i in range(2, 8)} == {srv(1), srv(2), srv(3)}
    clock.now += 61.0  # expired: round robin decides again
    seen = {bal.pick("192.0.2.1")}
    for _ in range(3):
        clock.now += 61.0
        seen.add(bal.pick("192.0.2.1"))
    assert len(seen) > 1


def test_stick_table_is_bounded_oldest_out() -> None:
    bal = Balancer(backend(srv(1), srv(2), affinity=Affinity.CLIENT_IP),
                   Limits(stick_size=3), Clock())
    for i in range(5):
        bal.pick(f"192.0.2.{i}")
    assert list(bal._sticky) == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_sticky_server_that_leaves_or_is_excluded_is_replaced() -> None:
    clock = Clock()
    bal = Balancer(backend(srv(1), srv(2), affinity=Affinity.CLIENT_IP), clock=clock)
    first = bal.pick("c")
    assert first is not None
    other = srv(2) if first == srv(1) else srv(1)
    assert bal.pick("c", exclude={first.key}) == other  # redispatch re-sticks
    assert bal.pick("c") == other
    bal.update(backend(first, affinity=Affinity.CLIENT_IP))
    assert bal.pick("c") == first


# -- cookie affinity ---------------------------------------------------------------------------


def test_cookie_affinity() -> None:
    servers = [srv(1), srv(2), srv(3)]
    bal = Balancer(backend(*servers, affinity=Affinity.COOKIE))
    for s in servers:
        for _ in range(3):
            assert bal.pick("c", cookie=cookie_value(s)) == s
    assert len({cookie_value(s) for s in servers}) == 3
    assert "10.0.0" not in cookie_value(servers[0])  # opaque
    # unknown or missing cookie: the algorithm decides
    assert set(picks(bal, 3)) == {1, 2, 3}
    assert bal.pick("c", cookie="nonsense") in servers
    # a cookie for an excluded or down server is not honoured
    assert bal.pick("c", exclude={servers[0].key}, cookie=cookie_value(servers[0])) != servers[0]
    bal.set_health(servers[1].key, False)
    assert bal.pick("c", cookie=cookie_value(servers[1])) != servers[1]
    # nor for a server that is draining
    bal.update(backend(dataclasses.replace(servers[2], ready=False, terminating=True),
                       servers[0], affinity=Affinity.COOKIE))
    assert bal.pick("c", cookie=cookie_value(servers[2])) == servers[0]


def test_cookie_ignored_without_cookie_affinity() -> None:
    bal = Balancer(backend(srv(1), srv(2)))
    assert picks(bal, 2) == [1, 2]
    assert bal.pick("c", cookie=cookie_value(srv(2))) == srv(1)


# -- health ------------------------------------------------------------------------------------


def test_passive_down_and_recovery() -> None:
    clock = Clock()
    limits = Limits(passive_fall=3, passive_down_for=10.0)
    s1, s2 = srv(1), srv(2)
    bal = Balancer(backend(s1, s2), limits, clock)
    bal.failed(s1)
    bal.failed(s1)
    assert bal.is_up(s1)
    bal.succeeded(s1)  # the count is of failures in a row
    bal.failed(s1)
    bal.failed(s1)
    assert bal.is_up(s1)
    bal.failed(s1)
    assert not bal.is_up(s1)
    assert set(picks(bal, 6)) == {2}
    clock.now += 9.9
    assert set(picks(bal, 4)) == {2}
    clock.now += 0.2
    assert set(picks(bal, 4)) == {1, 2}  # retried after passive_down_for
    bal.failed(s1)  # still failing: down again at once
    assert not bal.is_up(s1)
    clock.now += 10.1
    assert bal.is_up(s1)
    bal.succeeded(s1)
    bal.failed(s1)
    assert bal.is_up(s1)


def test_active_health_is_not_lifted_by_time_or_success() -> None:
    clock = Clock()
    s1, s2 = srv(1), srv(2)
    bal = Balancer(backend(s1, s2), Limits(passive_fall=1), clock)
    bal.set_health(s1.key, False)
    clock.now += 10**6
    bal.failed(s1)
    bal.succeeded(s1)
    assert not bal.is_up(s1) and set(picks(bal, 4)) == {2}
    bal.set_health(s1.key, True)
    assert set(picks(bal, 4)) == {1, 2}


def test_panic_threshold_never_ejects_the_last_servers() -> None:
    """Envoy's panic threshold (50%): with too few servers left, the ejected are used too;
    a server an active check marked down never is."""
    clock = Clock()
    events: list[tuple[str, int, int, float | None]] = []
    limits = Limits(passive_fall=1, passive_down_for=10.0)

    def on_eject(b: str, s: Server, n: int, down_for: float | None) -> None:
        events.append((b, int(s.address.rsplit('.', 1)[1]), n, down_for))
    one = Balancer(backend(srv(1)), limits, clock, on_eject)
    one.failed(srv(1))
    assert not one.is_up(srv(1)) and one.usable(srv(1))  # ejected, used anyway
    assert one.pick("c") == srv(1)
    assert events == [("default/app:80", 1, 1, 10.0)]
    s1, s2, s3 = srv(1), srv(2), srv(3)
    bal = Balancer(backend(s1, s2, s3), limits, clock)
    bal.failed(s1)  # 2 of 3 left: >= 50%, the ejection holds
    assert set(picks(bal, 6)) == {2, 3}
    bal.failed(s2)  # 1 of 3 left: panic, all three
    assert set(picks(bal, 6)) == {1, 2, 3}
    bal.set_health(s3.key, False)  # checked down: never used; of 1 and 2, none is left
    assert set(picks(bal, 6)) == {1, 2}
    assert Balancer(backend(s1, s2), dataclasses.replace(limits, panic_threshold=0),
                    clock).pick("c") is not None
    zero = Balancer(backend(s1), dataclasses.replace(limits, panic_threshold=0), clock)
    zero.failed(s1)
    assert zero.pick("c") is None  # a threshold of 0: ejections always apply


def test_error_limit_per_backend_and_returns_are_told() -> None:
    clock = Clock()
    events: list[tuple[int, int, float | None]] = []
    bal = Balancer(dataclasses.replace(backend(srv(1), srv(2), srv(3)), error_limit=2),
                   Limits(passive_fall=5), clock,
                   lambda _b, s, n, down_for: events.append(
                       (int(s.address.rsplit('.', 1)[1]), n, down_for)))
    bal.failed(srv(1))
    assert bal.is_up(srv(1))
    bal.failed(srv(1))  # the backend's limit (2), not --error-limit's (5)
    assert not bal.is_up(srv(1)) and events == [(1, 2, 10.0)]
    bal.failed(srv(1))  # still failing (panic or a connect in flight): no second line
    assert events == [(1, 2, 10.0)]
    bal.set_health(srv(1).key, True)  # a passing active check ends it, and says so
    assert bal.is_up(srv(1)) and events[-1] == (1, BACK_BY_CHECK, None)
    bal.failed(srv(2))
    bal.failed(srv(2))
    clock.now += 10.1
    assert bal.is_up(srv(2)) and events[-1] == (2, 0, None)  # time ends it
    off = Balancer(dataclasses.replace(backend(srv(1), srv(2)), error_limit=0),
                   Limits(passive_fall=1), clock)
    for _ in range(10):
        off.failed(srv(1))
    assert off.is_up(srv(1))  # 0: never ejected


def test_all_down_gives_none() -> None:
    bal = Balancer(backend(srv(1)))
    bal.set_health(srv(1).key, False)
    assert bal.pick("c") is None


def test_exclusion_for_redispatch() -> None:
    servers = [srv(1), srv(2), srv(3)]
    for algorithm in Algorithm:
        bal = Balancer(backend(*servers, algorithm=algorithm))
        for _ in range(6):
            s = bal.pick("c", exclude={srv(1).key, srv(2).key})
            assert s == srv(3)
        assert bal.pick("c", exclude={s.key for s in servers}) is None


# -- updates -----------------------------------------------------------------------------------


def test_update_keeps_rotation_and_state_of_servers_that_stay() -> None:
    clock = Clock()
    s1, s2, s3 = srv(1), srv(2), srv(3)
    bal = Balancer(backend(s1, s2, s3), Limits(passive_fall=1), clock)
    assert picks(bal, 2) == [1, 2]
    bal.failed(s2)
    bal.acquire(s3)
    bal.update(backend(s1, s2, s3, srv(4)))
    assert not bal.is_up(s2)  # passive down kept
    assert bal.active[s3.key] == 1  # connections in flight still counted
    assert picks(bal, 3) == [3, 4, 1]  # the rotation went on, it did not restart at 1
    bal.update(backend(s1, s3, srv(4)))
    assert s2.key not in bal.down and s2.key not in bal.fails  # state of leavers dropped
    bal.release(s3)
    assert s3.key not in bal.active


def test_balancers_registry_keeps_balancers_across_tables() -> None:
    clock = Clock()
    regs = Balancers(Limits(), clock)
    a = Backend("ns/a:80", (srv(1), srv(2)))
    b = Backend("ns/b:80", (srv(2), srv(3)))
    regs.update([a, b])
    bal_a = regs.get("ns/a:80")
    assert bal_a is not None and bal_a.pick("c") == srv(1)
    regs.update([a, b])
    assert regs.get("ns/a:80") is bal_a
    a2 = Backend("ns/a:80", (srv(1), srv(2), srv(4)))
    regs.update([a2])
    assert regs.get("ns/a:80") is bal_a and bal_a.backend == a2
    assert bal_a.pick("c") == srv(2)  # the rotation continued
    assert regs.get("ns/b:80") is None


def test_balancers_health_applies_everywhere_and_to_new_servers() -> None:
    regs = Balancers(Limits(), Clock())
    a = Backend("ns/a:80", (srv(1), srv(2)))
    b = Backend("ns/b:80", (srv(2), srv(3)))
    regs.update([a, b])
    regs.set_health(srv(2).key, False)
    for name in ("ns/a:80", "ns/b:80"):
        bal = regs.get(name)
        assert bal is not None and not bal.is_up(srv(2))
    # a new backend with the down server, and an existing backend that gains it
    c = Backend("ns/c:80", (srv(2), srv(5)))
    regs.update([Backend("ns/a:80", (srv(1),)), Backend("ns/b:80", (srv(2), srv(3), srv(4))),
                 c])
    for name in ("ns/b:80", "ns/c:80"):
        bal = regs.get(name)
        assert bal is not None and not bal.is_up(srv(2))
    regs.update([Backend("ns/a:80", (srv(1), srv(2)))])
    bal_a = regs.get("ns/a:80")
    assert bal_a is not None and not bal_a.is_up(srv(2))
    regs.set_health(srv(2).key, True)
    assert bal_a.is_up(srv(2))


def lo(i: int) -> Server:
    """A server at a loopback address that does not listen (nothing here connects)."""
    return Server(f"127.7.0.{i}", 8080)


def test_balancers_apply_touches_only_the_change_and_names_servers_that_left() -> None:
    regs = Balancers(Limits(), Clock())
    a = Backend("ns/a:80", (lo(1), lo(2)))
    b = Backend("ns/b:80", (lo(2), lo(3)))
    assert regs.update([a, b]) == set()
    bal_b = regs.get("ns/b:80")
    # lo(2) stays listed by b: only lo(1) left the table
    assert regs.apply([Backend("ns/a:80", (lo(4),))], []) == {lo(1).key}
    assert regs.get("ns/b:80") is bal_b
    assert set(regs.live_keys) == {lo(2).key, lo(3).key, lo(4).key}
    assert regs.apply([], ["ns/b:80"]) == {lo(2).key, lo(3).key}
    assert regs.get("ns/b:80") is None and set(regs.live_keys) == {lo(4).key}
    assert regs.apply([], ["ns/b:80"]) == set()  # idempotent
    # update() works out the same change from a whole table
    assert regs.update([Backend("ns/c:80", (lo(4), lo(5)))]) == set()
    assert regs.get("ns/a:80") is None and set(regs.live_keys) == {lo(4).key, lo(5).key}


def test_balancers_health_map_replaced_whole() -> None:
    regs = Balancers(Limits(), Clock())
    a = Backend("ns/a:80", (lo(1), lo(2)))
    regs.update([a])
    regs.set_health(lo(1).key, False)
    bal = regs.get("ns/a:80")
    assert bal is not None and not bal.is_up(lo(1))
    regs.reset_health({lo(2).key: False})  # lo(1) has no verdict any more
    assert bal.is_up(lo(1)) and not bal.is_up(lo(2))


def test_an_address_in_several_backends_gets_every_verdict_until_the_last_leaves() -> None:
    regs = Balancers(Limits(), Clock())
    names = ("ns/a:80", "ns/b:80", "ns/c:80")
    regs.update([Backend(n, (lo(1), lo(2))) for n in names])
    regs.set_health(lo(1).key, False)
    for n in names:
        bal = regs.get(n)
        assert bal is not None and not bal.is_up(lo(1)) and bal.is_up(lo(2))
    assert regs.apply([], ["ns/b:80"]) == set()  # still listed by a and c
    assert regs.apply([], ["ns/a:80"]) == set()  # still listed by c
    regs.set_health(lo(1).key, True)
    bal_c = regs.get("ns/c:80")
    assert bal_c is not None and bal_c.is_up(lo(1))
    regs.apply([Backend("ns/a:80", (lo(1),))], [])  # listed by two again
    assert regs.apply([], ["ns/c:80"]) == {lo(2).key}
    assert set(regs.live_keys) == {lo(1).key}
    assert regs.apply([], ["ns/a:80"]) == {lo(1).key}
    assert not set(regs.live_keys)


class _CountingTuple(tuple[Server, ...]):
    """A server list that counts the passes over it."""

    passes = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).passes += 1
        return super().__iter__()


def test_panic_verdict_is_kept_until_something_changes() -> None:
    """`_honour_ejections` is O(1) amortised: asking `usable` of every server (as
    `others_usable` and the queue do) passes over the server list once, not once per
    ejected server; the verdict still follows ejections running out and new ones."""
    clock = Clock()
    servers = [srv(i) for i in range(1, 201)]
    bal = Balancer(backend(*servers), Limits(passive_fall=1, passive_down_for=10.0), clock)
    for s in servers[:60]:
        bal.failed(s)  # 60 of 200 ejected: 70% left, the ejections hold
    bal.candidates = _CountingTuple(bal.candidates)
    _CountingTuple.passes = 0
    for s in servers:
        assert bal.usable(s) is (s not in servers[:60])
    assert bal.others_usable(servers[0])
    assert _CountingTuple.passes == 2  # one verdict, then others_usable's own pass
    clock.now += 5
    for s in servers[60:120]:
        bal.failed(s)  # 120 of 200: 40% left, panic: all used
    assert all(bal.usable(s) for s in servers)
    clock.now += 5.5  # the first 60 ran out: 140 of 200 left, the second 60 hold again
    assert not bal.usable(servers[60]) and bal.usable(servers[0])
    assert not bal.usable(servers[119]) and bal.usable(servers[59])
    bal.set_health(servers[60].key, True)  # a passing check: one fewer ejected
    assert bal.usable(servers[60]) and not bal.usable(servers[61])


def test_an_ejection_under_a_down_check_ends_with_its_up_verdict() -> None:
    """Ejected, then marked down by a check, then up: the return is told (its log line
    and the stats row's ejected_until depend on it), once."""
    clock = Clock()
    events: list[tuple[int, int, float | None]] = []
    bal = Balancer(backend(srv(1), srv(2)), Limits(passive_fall=1), clock,
                   lambda _b, s, n, down_for: events.append(
                       (int(s.address.rsplit('.', 1)[1]), n, down_for)))
    bal.failed(srv(1))
    bal.set_health(srv(1).key, False)
    bal.set_health(srv(1).key, True)
    assert bal.is_up(srv(1)) and events == [(1, 1, 10.0), (1, BACK_BY_CHECK, None)]
    bal.set_health(srv(1).key, False)  # a check alone: no return to tell
    bal.set_health(srv(1).key, True)
    assert len(events) == 2


def test_pick_makes_no_cells() -> None:
    """`pick` runs per request: a generator or lambda in its body would make it keep the
    variables it captures in cells, made on every call (two cells: ~250 instructions a
    request, bench.instructions). The filtering of the rare case lives in `_eligible`."""
    assert Balancer.pick.__code__.co_cellvars == ()
    assert Balancer.pick.__code__.co_freevars == ()


@pytest.mark.parametrize("change", ["algorithm", "affinity"])
def test_a_backend_update_changes_how_pick_chooses(change: str) -> None:
    """`pick` takes a short way for round robin without affinity (decided per backend
    version, in `update`): a backend that changes its algorithm or affinity is picked for
    by its new rules from its next pick on."""
    s1, s2 = srv(1), srv(2)
    bal = Balancer(backend(s1, s2))
    assert sorted(picks(bal, 2)) == [1, 2]
    if change == "algorithm":
        bal.update(backend(s1, s2, algorithm=Algorithm.LEASTCONN))
        bal.acquire(s1)
        assert picks(bal, 4) == [2, 2, 2, 2]  # the least loaded, every time
    else:
        bal.update(backend(s1, s2, affinity=Affinity.CLIENT_IP))
        first = picks(bal, 1)
        assert picks(bal, 4) == first * 4  # the client sticks to its server
    bal.update(backend(s1, s2))
    assert sorted(picks(bal, 2)) == [1, 2]  # round robin again
