"""WorkerPool's sending policy without processes: deltas to a worker that has the previous
table, the whole table otherwise; nothing piled up behind a paused worker, the newest
table once it drains; health verdicts coalesced into one batch per loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

from pylb.config import Settings
from pylb.delta import Delta
from pylb.gatewaydelta import apply_delta as apply_plan_delta
from pylb.gatewaymodel import GatewayPlan, Listener
from pylb.messages import (
    FrameReader,
    Gateways,
    GatewaysDelta,
    Health,
    Message,
    NeedGateways,
    NeedTable,
    Ready,
    Stats,
    Table,
    encode,
)
from pylb.model import Backend, HttpRoute, RouteTable, Server
from pylb.workers import WorkerPool


class FakeChannel:
    def __init__(self) -> None:
        self.paused = False
        self.closed = False
        self.reader = FrameReader()
        self.got: list[Message] = []

    def send_frame(self, frame: bytes) -> bool:
        self.got += self.reader.feed(frame)
        return True

    def send(self, msg: Any) -> bool:
        from pylb.messages import encode

        return self.send_frame(encode(msg))

    def take(self) -> list[Message]:
        got, self.got = self.got, []
        return got


def table(version: int, n: int = 3, port: int = 80) -> RouteTable:
    bs = tuple(Backend(f"ns/s{i}:80", (Server("127.2.0.1", port + i),)) for i in range(n))
    return RouteTable(http=tuple(HttpRoute(f"s{i}", f"/s{i}", b.name) for i, b in
                                 enumerate(bs)), backends=bs, version=version)


def pool_with(n: int) -> tuple[WorkerPool, list[FakeChannel]]:
    pool = WorkerPool(Settings(workers=n))
    chans = [FakeChannel() for _ in range(n)]
    for w, ch in zip(pool._workers, chans, strict=True):
        w.channel = ch  # type: ignore[assignment]
        pool._send_table(w)
    return pool, chans


def test_whole_table_first_then_deltas() -> None:
    pool, (ch,) = pool_with(1)
    assert ch.take() == [Table(RouteTable())]
    t1 = table(1)
    pool.apply(t1)
    (d,) = ch.take()
    assert isinstance(d, Delta) and d.base == 0 and d.version == 1
    t2 = RouteTable(http=t1.http, backends=(*t1.backends[:2],
                                           Backend("ns/s2:80", (Server("127.2.0.9", 1),))),
                    version=2)
    pool.apply(t2)
    (d2,) = ch.take()
    assert isinstance(d2, Delta) and d2.base == 1 and d2.http is None
    assert [b.name for b in d2.backends] == ["ns/s2:80"]


def test_a_paused_worker_gets_only_the_newest_table_when_it_drains() -> None:
    pool, (slow, fast) = pool_with(2)
    slow.take(), fast.take()
    slow.paused = True
    for v in range(1, 101):
        pool.apply(table(v, port=80 + v))
    assert slow.take() == []  # nothing piled up
    assert len(fast.take()) == 100  # the other worker is not held back
    slow.paused = False
    pool._drained(pool._workers[0])
    assert slow.take() == [Table(table(100, port=180))]
    pool.apply(table(101))
    (d,) = slow.take()
    assert isinstance(d, Delta) and d.base == 100


def test_health_verdicts_are_coalesced_per_loop_turn() -> None:
    async def go() -> None:
        pool, (ch,) = pool_with(1)
        ch.take()
        for i in range(10_000):
            pool.set_health(("127.2.0.1", 1000 + i % 100), i % 2 == 0)
        assert ch.take() == []  # not one message per verdict
        await asyncio.sleep(0)
        (h,) = ch.take()
        assert isinstance(h, Health) and not h.full
        assert dict(h.verdicts) == {("127.2.0.1", 1000 + i): i % 2 == 0 for i in range(100)}
        # a paused worker gets the whole map once it drains
        ch.paused = True
        pool.set_health(("127.2.0.1", 1), False)
        await asyncio.sleep(0)
        assert ch.take() == []
        ch.paused = False
        pool._drained(pool._workers[0])
        (full,) = ch.take()
        assert isinstance(full, Health) and full.full and len(full.verdicts) == 101

    asyncio.run(go())


def test_need_table_gets_the_whole_table() -> None:
    pool, (ch,) = pool_with(1)
    pool.apply(table(5))
    ch.take()
    pool._on_message(pool._workers[0], NeedTable(3))
    assert ch.take() == [Table(table(5))]


def test_stats_reports_fold_into_the_workers_snapshot() -> None:
    pool, _ = pool_with(1)
    w = pool._workers[0]
    row = {"req_total": 1, "hrsp": [0] * 6, "cur_conns": 0}
    pool._on_message(w, Stats(frontends={"http": row}, servers={"b\x00s1": row,
                                                                "b\x00s2": row}, full=True))
    pool._on_message(w, Stats(frontends={"http": dict(row, req_total=2)},
                              servers={"b\x00s1": dict(row, req_total=5)},
                              removed_servers=("b\x00s2",)))
    assert w.snapshot["servers"] == {"b\x00s1": dict(row, req_total=5)}
    assert pool.counters()["frontends"]["http"]["req_total"] == 2


def test_retired_counters_are_one_snapshot_pruned_to_the_table() -> None:
    pool, _ = pool_with(1)
    pool.apply(table(1))
    row = {"req_total": 3, "cur_conns": 2, "hrsp": [0] * 6}
    for gone in ("ns/old:80", "ns/older:80"):
        pool._retire({"frontends": {"http": row}, "backends": {"ns/s0:80": row, gone: row},
                      "servers": {"ns/s0:80\x00127.2.0.1:80": row, f"{gone}\x00x": row},
                      "failures": {"NO_ROUTE": 1}})
    assert len(pool._retired) == 1
    (r,) = pool._retired
    assert r["frontends"]["http"]["req_total"] == 6 and r["frontends"]["http"]["cur_conns"] == 0
    assert set(r["backends"]) == {"ns/s0:80"}
    assert set(r["servers"]) == {"ns/s0:80\x00127.2.0.1:80"}
    assert r["failures"] == {"NO_ROUTE": 2}


async def test_a_channel_pauses_above_the_high_watermark_and_resumes_when_read() -> None:
    """Real transports on a socketpair: a reader that stops reading pauses the writer
    (writes still never block), and reading again resumes it; every frame arrives."""
    import socket

    from pylb.messages import HIGH_WATER, Channel, Ready, open_channel

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    events: list[str] = []
    got: list[Message] = []
    writer = Channel(lambda m: None, lambda e: None, lambda: events.append("pause"),
                     lambda: events.append("resume"))
    reader = Channel(got.append, lambda e: None)
    await open_channel(a, writer)
    await open_channel(b, reader)
    try:
        assert reader.transport is not None
        reader.transport.pause_reading()
        blob = Stats(frontends={"x": {"pad": "y" * 100_000}})
        sent = 0
        while not writer.paused and sent < 1000:
            assert writer.send(blob)
            sent += 1
        assert writer.paused and events == ["pause"]
        assert writer.buffered > HIGH_WATER // 2
        writer.send(Ready(7))  # still accepted: the sender decides what to hold back
        reader.transport.resume_reading()
        for _ in range(500):
            if len(got) == sent + 1:
                break
            await asyncio.sleep(0.01)
        assert events == ["pause", "resume"] and not writer.paused
        assert got[:sent] == [blob] * sent and got[sent] == Ready(7)
    finally:
        writer.close()
        reader.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        await asyncio.wait_for(reader.wait_closed(), 5)


# -- a big whole table is made a step per loop turn (WorkerPool._encode) ---------------------

def big(version: int, n: int = 30, port: int = 80) -> RouteTable:
    bs = tuple(Backend(f"ns/s{i:02}:80", tuple(Server(f"127.2.{i}.{j}", port) for j in range(3)))
               for i in range(n))
    return RouteTable(http=tuple(HttpRoute(f"s{i}", f"/s{i}", b.name) for i, b in
                                 enumerate(bs)), backends=bs, version=version)


def changed(t: RouteTable, version: int, i: int = 0) -> RouteTable:
    """`t` with backend `i`'s servers moved to another port: a small change."""
    bs = list(t.backends)
    bs[i] = Backend(bs[i].name, (Server("127.2.200.1", 9000 + version),))
    return RouteTable(http=t.http, backends=tuple(bs), version=version)


def fold(msgs: list[Message], have: RouteTable) -> RouteTable:
    """What a worker makes of `msgs`: a whole table replaces its own, a delta applies to
    the table it is from (apply_delta raises when it is not: the worker would ask for the
    whole table again — which must never be needed here)."""
    from pylb.delta import apply_delta

    for m in msgs:
        if isinstance(m, Table):
            have = m.table
        elif isinstance(m, Delta):
            have = apply_delta(have, m)
    return have


async def until_made(pool: WorkerPool) -> int:
    """Loop turns until no table is being made (bounded)."""
    turns = 0
    while pool._encoding is not None and turns < 10_000:
        await asyncio.sleep(0)
        turns += 1
    assert pool._encoding is None
    return turns


async def test_a_big_table_is_made_over_loop_turns_and_changes_wait_for_it() -> None:
    pool, chans = pool_with(2)
    pool.table_step = 5  # 30 backends of 3 servers: ~24 steps
    pool.encode_turn = 0  # one a loop turn
    for ch in chans:
        ch.take()
    t1 = big(1)
    pool.apply(t1)  # from the empty table: a change as big as a table goes whole, in steps
    assert pool._encoding is not None and [ch.take() for ch in chans] == [[], []]
    await asyncio.sleep(0)
    t2 = changed(t1, 2)
    pool.apply(t2)
    pool.set_health(("127.2.0.0", 80), False)  # verdicts are not held back
    await asyncio.sleep(0)
    t3 = changed(t2, 3, i=5)
    pool.apply(t3)
    for ch in chans:  # the verdict; no delta before the table it is from
        assert [type(m) for m in ch.take()] == [Health]
    assert await until_made(pool) > 5  # the loop ran in between
    for ch in chans:
        got = ch.take()
        assert [type(m) for m in got] == [Table, Delta]
        assert got[0] == Table(t1)  # the table being made when the changes came
        assert isinstance(got[1], Delta) and (got[1].base, got[1].version) == (1, 3)
        assert fold(got, RouteTable()) == t3
    pool.apply(changed(t3, 4, i=7))  # after: deltas as usual
    for ch in chans:
        (d,) = ch.take()
        assert isinstance(d, Delta) and d.base == 3
    assert pool._table_frame is None  # the frame made was of a table gone


async def test_a_big_change_while_a_table_is_made_is_made_whole_after_it() -> None:
    pool, (ch,) = pool_with(1)
    pool.table_step, pool.encode_turn = 5, 0
    ch.take()
    t1 = big(1)
    pool.apply(t1)
    await asyncio.sleep(0)
    t2 = big(2, port=81)  # every backend changed
    pool.apply(t2)
    await until_made(pool)
    await until_made(pool)  # the second whole table
    got = ch.take()
    assert got == [Table(t1), Table(t2)] and fold(got, RouteTable()) == t2
    assert pool._table_frame is not None and pool._table_frame[0] is t2
    pool._on_message(pool._workers[0], NeedTable(1))  # made already: sent at once
    assert ch.take() == [Table(t2)]


async def test_a_worker_restarted_while_a_table_is_made_gets_a_consistent_one() -> None:
    pool, (old, other) = pool_with(2)
    pool.table_step, pool.encode_turn = 5, 0
    old.take(), other.take()
    t1 = big(1)
    pool.apply(t1)
    for _ in range(3):
        await asyncio.sleep(0)
    assert pool._encoding is not None
    # worker 0 dies and its restart attaches a new stream while the frame is being made
    old.closed = True
    new = FakeChannel()
    pool._attached(pool._workers[0], new, b"")  # type: ignore[arg-type]
    t2 = changed(t1, 2)
    pool.apply(t2)
    await until_made(pool)
    assert old.take() == []
    for ch in (new, other):
        got = [m for m in ch.take() if not isinstance(m, Health)]  # the new one's map
        assert [type(m) for m in got] == [Table, Delta] and fold(got, RouteTable()) == t2
    # and one restarted after: the current table, whole, at once (its frame is kept)
    pool._attached(pool._workers[1], other, b"")  # type: ignore[arg-type]
    assert pool._encoding is not None  # t2 went as a delta: its whole frame is made now
    assert [type(m) for m in other.take()] == [Health]
    await until_made(pool)
    assert other.take() == [Table(t2)]


def test_verdicts_of_servers_gone_are_forgotten_once_they_outnumber_the_table() -> None:
    pool, _ = pool_with(1)
    t = big(1, n=400)  # 1,200 servers
    pool.apply(t)
    for b in t.backends:  # every server has a verdict: no prune, however many
        for s in b.servers:
            pool.set_health(s.key, False)
    pool.apply(changed(t, 2))
    assert len(pool.health) == 1200
    for i in range(3000):  # churn: servers that came and went
        pool.set_health(("127.9.0.1", 1000 + i), True)
    pool.apply(changed(t, 3, i=1))
    assert len(pool.health) == 1200 - 3  # v3 is v1 with backend 1 moved: its old servers go
    assert all(k[0] != "127.9.0.1" for k in pool.health)


async def test_a_big_table_takes_as_many_steps_a_turn_as_fit_in_the_budget() -> None:
    pool, (ch,) = pool_with(1)
    pool.table_step, pool.encode_turn = 5, 60.0  # a budget no machine runs out of
    ch.take()
    t1 = big(1)
    pool.apply(t1)
    assert pool._encoding is not None  # the first step now, the rest on later turns
    assert await until_made(pool) <= 2  # ~24 steps in the one turn after the task starts
    assert ch.take() == [Table(t1)]


# -- Gateway plans: whole, then deltas -----------------------------------------------------


def gw_plan(*paths: str) -> GatewayPlan:
    from pylb.gatewaymodel import Filters, RouteMatch, RuleEntry, WeightedBackend

    rules = tuple(RuleEntry("", RouteMatch(path=p), (WeightedBackend(("ns", "s", 80), 1),),
                            Filters(), f"ns/r{i}", (i,)) for i, p in enumerate(paths))
    return GatewayPlan((Listener("ns/gw", "http", "127.0.0.1", 80, "HTTP", "", rules),),
                       status={("httproutes", "ns", "r0"): {"parents": []}})


def gateways(pool: WorkerPool, plan: GatewayPlan) -> None:
    asyncio.run(pool.apply_gateways(plan, timeout=0))  # no worker answers here


def test_a_gateway_plan_goes_whole_then_as_deltas_from_the_plan_sent() -> None:
    pool, (ch, other) = pool_with(2)
    ch.take(), other.take()
    p0, p1 = gw_plan("/a", "/b"), gw_plan("/a", "/c")
    gateways(pool, p0)
    (m0,) = ch.take()
    assert isinstance(m0, Gateways) and m0.seq == 0 and m0.plan == p0 and m0.plan.status == {}
    assert other.take() == [m0]
    gateways(pool, p1)
    (m1,) = ch.take()
    assert isinstance(m1, GatewaysDelta) and (m1.seq, m1.base) == (1, 0)
    assert m1.delta.routes == 1  # one route changed: only it travels
    assert apply_plan_delta(m0.plan, m1.delta) == p1
    assert other.take() == [m1]
    assert pool.sent["gateway_plans"] == 2 and pool.sent["gateway_deltas"] == 2


def test_a_paused_worker_gets_the_newest_whole_plan_when_it_drains() -> None:
    pool, (slow, fast) = pool_with(2)
    gateways(pool, gw_plan("/a"))
    slow.take(), fast.take()
    slow.paused = True
    for i in range(5):
        gateways(pool, gw_plan("/a", f"/p{i}"))
    assert slow.take() == []
    assert [type(m) for m in fast.take()] == [GatewaysDelta] * 5
    slow.paused = False
    pool._drained(pool._workers[0])
    (whole,) = slow.take()
    assert isinstance(whole, Gateways) and whole.seq == 5 and whole.plan == gw_plan("/a", "/p4")
    gateways(pool, gw_plan("/b"))  # and deltas again, from the plan it has
    (d,) = slow.take()
    assert isinstance(d, GatewaysDelta) and d.base == 5


def test_need_gateways_and_a_restart_get_the_whole_plan() -> None:
    pool, (ch,) = pool_with(1)
    gateways(pool, gw_plan("/a"))
    gateways(pool, gw_plan("/b"))
    ch.take()
    w = pool._workers[0]
    pool._on_message(w, NeedGateways(0))
    (whole,) = ch.take()
    assert isinstance(whole, Gateways) and whole.seq == 1
    gateways(pool, gw_plan("/c"))
    assert [type(m) for m in ch.take()] == [GatewaysDelta]
    # a worker (re)started: its stream starts over, with the whole plan of that moment
    fresh = FakeChannel()
    w.sent_version = None
    w.gateways_sent = None
    pool._attached(w, fresh, encode(Ready(0)))  # type: ignore[arg-type]  # (a start frame)
    assert [type(m) for m in fresh.got if isinstance(m, Gateways | GatewaysDelta)] == [Gateways]
