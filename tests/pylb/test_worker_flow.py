"""WorkerPool's sending policy without processes: deltas to a worker that has the previous
table, the whole table otherwise; nothing piled up behind a paused worker, the newest
table once it drains; health verdicts coalesced into one batch per loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

from pylb.config import Settings
from pylb.delta import Delta
from pylb.messages import FrameReader, Health, Message, NeedTable, Stats, Table
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
