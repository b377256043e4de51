"""Active checks under a budget: the arithmetic as tables, the schedule driven by a fake
clock (sans-IO), the incremental index against its reference, and the checker's loop
with an injected probe (no sockets, no long sleeps)."""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.check import (
    _CHUNK,
    _INDEX_STEP,
    L4CON,
    L4OK,
    CheckResult,
    HealthChecker,
    Key,
    Probe,
    Schedule,
    _Index,
    backend_checked,
    check_targets,
    effective_interval,
    inflight_cap,
)
from pylb.config import CheckScope, CheckSettings, Settings
from pylb.model import Backend, RouteTable, Server

ROOT = Path(__file__).resolve().parents[2]

# -- the arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize(("servers", "interval", "rate", "expected"), [
    (0, 2.0, 1000.0, 2.0),
    (1, 2.0, 1000.0, 2.0),
    (2000, 2.0, 1000.0, 2.0),  # exactly the budget
    (2001, 2.0, 1000.0, 2.001),  # one more: stretched
    (100_000, 2.0, 1000.0, 100.0),
    (100_000, 2.0, 50_000.0, 2.0),
    (10, 0.01, 1000.0, 0.01),
])
def test_effective_interval(servers: int, interval: float, rate: float,
                            expected: float) -> None:
    assert effective_interval(servers, interval, rate) == pytest.approx(expected)


@pytest.mark.parametrize(("max_inflight", "nofile", "expected"), [
    (512, None, 512),  # unlimited descriptors
    (512, 1_048_576, 512),  # a container's usual limit: the flag binds
    (512, 1024, 256),  # a quarter of the limit
    (512, 256, 64),
    (512, 3, 1),  # never none at all
    (10, 256, 10),
])
def test_inflight_cap(max_inflight: int, nofile: int | None, expected: int) -> None:
    assert inflight_cap(max_inflight, nofile) == expected


@pytest.mark.parametrize(("scope", "check", "expected"), [
    (CheckScope.ALL, None, True),
    (CheckScope.ALL, True, True),
    (CheckScope.ALL, False, False),
    (CheckScope.ANNOTATED, None, False),
    (CheckScope.ANNOTATED, True, True),
    (CheckScope.ANNOTATED, False, False),
    (CheckScope.OFF, None, False),
    (CheckScope.OFF, True, False),
])
def test_backend_checked(scope: CheckScope, check: bool | None, expected: bool) -> None:
    assert backend_checked(Backend("b", check=check), scope) is expected


def test_check_targets_by_scope() -> None:
    t = RouteTable(backends=(
        Backend("a", (Server("127.0.0.1", 1),)),
        Backend("b", (Server("127.0.0.1", 2),), check=True, check_path="/h"),
        Backend("c", (Server("127.0.0.1", 3),), check=False),
    ))
    assert check_targets(t, CheckScope.ALL) == {("127.0.0.1", 1): None,
                                                ("127.0.0.1", 2): "/h"}
    assert check_targets(t, CheckScope.ANNOTATED) == {("127.0.0.1", 2): "/h"}
    assert check_targets(t, CheckScope.OFF) == {}


# -- the incremental index against check_targets ---------------------------------------


def _random_backend(rng: random.Random, name: str) -> Backend:
    servers = tuple(
        Server(f"127.3.0.{rng.randrange(1, 30)}", 80, ready=rng.random() < 0.8,
               terminating=rng.random() < 0.1)
        for _ in range(rng.randrange(0, 5)))
    return Backend(name, servers, check_path=rng.choice([None, None, "/a", "/b"]),
                   check=rng.choice([None, True, False]))


@pytest.mark.parametrize("scope", list(CheckScope))
def test_index_agrees_with_check_targets(scope: CheckScope) -> None:
    rng = random.Random(7)
    index = _Index(scope)
    backends = {f"b{i}": _random_backend(rng, f"b{i}") for i in range(8)}
    for _ in range(300):
        op = rng.random()
        name = f"b{rng.randrange(12)}"
        if op < 0.4:
            backends[name] = _random_backend(rng, name)
        elif op < 0.55:
            backends.pop(name, None)
        elif op < 0.7 and name in backends:  # a new object around the same servers
            backends[name] = replace(backends[name])
        elif op < 0.8 and name in backends:
            backends[name] = replace(backends[name], check_path=rng.choice([None, "/c"]))
        table = RouteTable(backends=tuple(sorted(backends.values(), key=lambda b: b.name)))
        touched = index.update(table.backends)
        expected = check_targets(table, scope)
        got = {k: index.resolve(k)[1] for k in index.refs}
        assert got == expected
        assert all(index.resolve(k) == (False, None) for k in touched if k not in expected)


@pytest.mark.parametrize("step", [1, 4])
def test_index_taken_in_steps_agrees_with_check_targets(step: int) -> None:
    """`_Index.steps` (a big table read a part per loop turn): usable between its stops,
    and the table's when it ends; it touches what `update` touches."""
    rng = random.Random(11)
    index, reference = _Index(CheckScope.ALL), _Index(CheckScope.ALL)
    backends = {f"b{i}": _random_backend(rng, f"b{i}") for i in range(8)}
    for _ in range(200):
        name = f"b{rng.randrange(12)}"
        if rng.random() < 0.6:
            backends[name] = _random_backend(rng, name)
        else:
            backends.pop(name, None)
        table = RouteTable(backends=tuple(sorted(backends.values(), key=lambda b: b.name)))
        touched: dict[Key, None] = {}
        for _ in index.steps(table.backends, touched, step):
            for k in list(index.refs):
                index.resolve(k)  # every name it refers to is there
        assert {k: index.resolve(k)[1] for k in index.refs} == check_targets(table)
        assert set(touched) == set(reference.update(table.backends))


async def test_a_table_that_comes_while_one_is_read_in_steps_is_taken_in_after_it() -> None:
    async def ok(key: Key, path: str | None, timeout: float) -> Probe:
        return Probe(L4OK)

    checker = HealthChecker(Settings(), lambda *a: None, probe=ok, nofile=None,
                            params=CheckSettings(interval=2.0, rate=1000.0))
    task = asyncio.create_task(checker.run())
    try:
        await asyncio.sleep(0.01)
        big = _table(3 * _INDEX_STEP)
        checker.set_table(big)
        assert checker._taking is not None
        await asyncio.sleep(0)
        other = _table(2 * _INDEX_STEP, prefix="127.6")  # while the first is being read
        checker.set_table(other)
        read_in_steps, jump, seen = False, 0, len(checker._results)
        async with asyncio.timeout(30):
            while checker._taking is not None or checker._pending:
                await asyncio.sleep(0)
                read_in_steps |= checker._taking_table is other and checker._taking is not None
                jump, seen = max(jump, len(checker._results) - seen), len(checker._results)
        assert read_in_steps  # the second too, after the first
        assert jump <= _CHUNK  # and taken in a chunk a turn: never all at once
        assert set(checker._schedule.targets) == set(check_targets(other))
        assert set(checker.results()) == set(check_targets(other))
    finally:
        checker.stop()
        await task


def test_index_walks_only_changed_backends() -> None:
    """A backend that is the same object, or a new one around the same servers, touches
    nothing: a table of many backends that changed in one costs one backend's servers."""
    servers = tuple(Server(f"127.3.0.{i}", 80) for i in range(1, 6))
    a, b = Backend("a", servers), Backend("b", (Server("127.3.1.1", 80),))
    index = _Index(CheckScope.ALL)
    assert len(index.update((a, b))) == 6
    assert index.update((a, b)) == {}
    assert index.update((replace(a), b)) == {}
    b2 = Backend("b", (Server("127.3.1.2", 80),))
    assert set(index.update((a, b2))) == {("127.3.1.1", 80), ("127.3.1.2", 80)}
    assert set(index.update((a,))) == {("127.3.1.2", 80)}


# -- the schedule on a fake clock ------------------------------------------------------


def _simulate(schedule: Schedule, until: float, latency: float,
              rng: random.Random) -> tuple[list[tuple[float, Key]], int]:
    """Run `schedule` with probes that each take up to `latency` (fake) seconds. The
    (start time, server) of every probe, and the most ever in flight."""
    now = 0.0
    ends: list[tuple[float, int, Key, object, float]] = []
    started: list[tuple[float, Key]] = []
    most = 0
    n = 0
    while now <= until:
        for key, target in schedule.take(now):
            n += 1
            heapq.heappush(ends, (now + rng.uniform(0.0, latency), n, key, target, now))
            started.append((now, key))
        most = max(most, schedule.inflight)
        wake = schedule.wake_at(now)
        nxt = min(wake if wake is not None else float("inf"),
                  ends[0][0] if ends else float("inf"))
        if nxt == float("inf"):
            break
        now = max(nxt, now)
        while ends and ends[0][0] <= now:
            _, _, key, target, t0 = heapq.heappop(ends)
            schedule.done(key, target, t0)  # type: ignore[arg-type]
    return started, most


def test_ten_thousand_servers_under_the_budget() -> None:
    """10,000 servers at 1,000 probes/s and 50 in flight: never more than 50 at once,
    never more than the rate (plus the small burst) in any second, every server reached
    within one stretched interval (10 s), then each again about 10 s later."""
    rng = random.Random(3)
    schedule = Schedule(interval=2.0, rate=1000.0, cap=50, rng=rng)
    keys = [(f"127.4.{i // 250}.{i % 250 + 1}", 80) for i in range(10_000)]
    schedule.add([(k, None) for k in keys], 0.0)
    assert schedule.effective_interval == 10.0
    started, most = _simulate(schedule, 25.0, latency=0.05, rng=rng)
    assert most <= 50
    first: dict[Key, float] = {}
    again: dict[Key, float] = {}
    for t, key in started:
        if key not in first:
            first[key] = t
        elif key not in again:
            again[key] = t
    assert set(first) == set(keys)
    assert max(first.values()) <= 10.0 + 0.1
    per_second = Counter(int(t) for t, _ in started)
    assert max(per_second.values()) <= 1000 + 20  # the bucket saves 20 ms of budget
    assert len(started) >= 2 * 10_000 * 0.95  # about two rounds in 25 s
    gaps = [again[k] - first[k] for k in again]
    assert min(gaps) >= 10.0 - 1e-9 and statistics_median(gaps) < 10.5


def statistics_median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def test_slow_servers_are_held_by_the_inflight_cap() -> None:
    """Servers that take the whole timeout (1 s here): the cap, not the rate, binds."""
    rng = random.Random(4)
    schedule = Schedule(interval=2.0, rate=1000.0, cap=20, rng=rng)
    schedule.add([((f"127.4.0.{i}", 80), None) for i in range(1, 201)], 0.0)
    started, most = _simulate(schedule, 5.0, latency=1.0, rng=rng)
    assert most == 20
    assert len(started) <= 20 * 5 * 2 + 20  # at most cap per (mean) probe time


def test_under_budget_the_first_probes_spread_evenly() -> None:
    """100 servers, 2 s interval: ten probes in each fifth of a second, not a bunch."""
    schedule = Schedule(interval=2.0, rate=1000.0, cap=512, rng=random.Random(5))
    schedule.add([((f"127.4.0.{i}", 80), None) for i in range(1, 101)], 0.0)
    started, _ = _simulate(schedule, 1.999, latency=0.001, rng=random.Random(5))
    assert Counter(int(t / 0.2) for t, _ in started) == {i: 10 for i in range(10)}


def test_removed_or_changed_server_mid_probe_gets_no_result() -> None:
    schedule = Schedule(interval=1.0, rate=100.0, cap=10, rng=random.Random(1))
    a, b = ("127.4.0.1", 80), ("127.4.0.2", 80)
    schedule.add([(a, None), (b, None)], 0.0)
    taken = dict(schedule.take(1.0))
    assert set(taken) == {a, b} and schedule.inflight == 2
    schedule.remove(a)
    schedule.set_path(b, "/h", 1.0)
    assert schedule.done(a, taken[a], 1.0) is None
    assert schedule.done(b, taken[b], 1.0) is None  # probed the old way: stale
    assert schedule.inflight == 0
    assert set(schedule.targets) == {b} and schedule.targets[b].path == "/h"
    assert [k for k, _ in schedule.take(3.0)] == [b]


def test_local_shortage_pauses_and_backs_off() -> None:
    schedule = Schedule(interval=1.0, rate=1000.0, cap=10, rng=random.Random(1))
    keys = [(f"127.4.0.{i}", 80) for i in range(1, 6)]
    schedule.add([(k, None) for k in keys], 0.0)
    taken = schedule.take(1.0)
    assert len(taken) == 5
    (k0, t0), (k1, t1) = taken[0], taken[1]
    assert schedule.put_off(k0, t0, 1.0) == pytest.approx(1.1)
    assert schedule.put_off(k1, t1, 1.0) == pytest.approx(1.2)  # in a row: longer
    assert schedule.take(1.15) == [] and schedule.wake_at(1.15) == pytest.approx(1.2)
    assert {k for k, _ in schedule.take(1.2)} == {k0, k1}  # retried after the pause
    for key, target in taken[2:]:
        schedule.done(key, target, 1.0)
    assert schedule.put_offs == 2
    k, t = next((k, t) for k, t in schedule.take(3.0))
    assert schedule.put_off(k, t, 3.0) == pytest.approx(3.1)  # a success reset it


def test_no_targets_no_wake() -> None:
    schedule = Schedule(interval=1.0, rate=10.0, cap=1, rng=random.Random(1))
    assert schedule.take(0.0) == [] and schedule.wake_at(0.0) is None


# -- the checker's loop with an injected probe -----------------------------------------


def _table(n: int, prefix: str = "127.5") -> RouteTable:
    servers = tuple(Server(f"{prefix}.{i // 250}.{i % 250 + 1}", 80) for i in range(n))
    return RouteTable(backends=tuple(
        Backend(f"b{j:04d}", servers[j * 10:(j + 1) * 10]) for j in range((n + 9) // 10)))


async def test_loop_ten_thousand_targets_cap_and_coverage() -> None:
    """The real loop, 10,000 servers, a fast rate and 64 in flight: the probe function
    sees at most 64 at once, and every server."""
    inflight = 0
    most = 0
    seen: Counter[Key] = Counter()
    done = asyncio.Event()

    async def probe(key: Key, path: str | None, timeout: float) -> Probe:
        nonlocal inflight, most
        inflight += 1
        most = max(most, inflight)
        try:
            await asyncio.sleep(0.001 * (hash(key) % 3))
        finally:
            inflight -= 1
        seen[key] += 1
        if len(seen) == 10_000:
            done.set()
        return Probe(L4OK)

    params = CheckSettings(interval=0.5, rate=20_000.0, max_inflight=64)
    checker = HealthChecker(Settings(), lambda *a: None, params=params, probe=probe,
                            rng=random.Random(1), nofile=None)
    checker.set_table(_table(10_000))
    task = asyncio.create_task(checker.run())
    try:
        # the first round is spread over 0.5 s; a slow machine may take longer
        async with asyncio.timeout(60):
            await done.wait()
    finally:
        checker.stop()
        await task
    assert most <= 64 and checker.inflight_cap == 64
    assert len(seen) == 10_000
    assert checker.probes_total >= 10_000


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
async def test_local_shortage_is_no_verdict(err: int,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A connect that fails with EMFILE & co. pauses the checks; the server is not
    marked down, and is probed again once the shortage passes."""
    calls = 0
    changes: list[tuple[Key, bool]] = []

    async def probe(key: Key, path: str | None, timeout: float) -> Probe:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise OSError(err, "Too many open files")
        return Probe(L4OK)

    params = CheckSettings(interval=0.01, rise=1, fall=1)
    checker = HealthChecker(Settings(), lambda k, up, r: changes.append((k, up)),
                            params=params, probe=probe, nofile=None)
    key = ("127.5.0.1", 80)
    checker.set_table(RouteTable(backends=(Backend("b", (Server(*key),)),)))
    task = asyncio.create_task(checker.run())
    try:
        async with asyncio.timeout(30):
            while checker.results()[key].status != L4OK:
                await asyncio.sleep(0.01)
    finally:
        checker.stop()
        await task
    result = checker.results()[key]
    assert changes == [] and result.up and result.failures == 0
    assert checker.put_offs == 3
    warnings = [r for r in caplog.records if "health checks paused" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one line for three put-offs
    assert "no server marked down" in warnings[0].getMessage()


async def test_other_connect_errors_are_still_verdicts() -> None:
    changes: list[tuple[Key, bool, CheckResult]] = []

    async def probe(key: Key, path: str | None, timeout: float) -> Probe:
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    checker = HealthChecker(Settings(), lambda k, up, r: changes.append((k, up, r)),
                            params=CheckSettings(interval=0.01, rise=1, fall=1),
                            probe=probe, nofile=None)
    key = ("127.5.0.1", 80)
    checker.set_table(RouteTable(backends=(Backend("b", (Server(*key),)),)))
    task = asyncio.create_task(checker.run())
    try:
        async with asyncio.timeout(30):
            while not changes:
                await asyncio.sleep(0.01)
    finally:
        checker.stop()
        await task
    assert changes[0][:2] == (key, False)
    assert changes[0][2].detail == "No route to host"


async def test_inflight_cap_follows_the_descriptor_limit() -> None:
    checker = HealthChecker(Settings(), lambda *a: None, nofile=256,
                            params=CheckSettings(max_inflight=512))
    checker.stop()
    await checker.run()
    assert checker.inflight_cap == 64


def test_stretched_interval_is_logged_once_per_change(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.check")
    params = CheckSettings(interval=2.0, rate=1000.0)
    checker = HealthChecker(Settings(), lambda *a: None, params=params, nofile=None)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "servers" in r.getMessage()]
    checker.set_table(_table(1000))
    assert checker.effective_interval == 2.0 and lines() == []
    checker.set_table(_table(3000))
    assert checker.effective_interval == 3.0
    assert lines() == ["health checks: 3000 servers at --check-rate 1000/s: each is "
                       "checked every 3.0s instead of every 2s"]
    checker.set_table(_table(3010))  # a small change: no new line
    assert len(lines()) == 1
    checker.set_table(_table(6000))
    assert lines()[-1].endswith("every 6.0s instead of every 2s")
    checker.set_table(_table(100))
    assert lines()[-1] == "health checks: 100 servers, each checked every 2s"
    assert len(lines()) == 3


def test_set_table_keeps_results_of_servers_that_stay() -> None:
    checker = HealthChecker(Settings(), lambda *a: None, nofile=None)
    t = _table(30)
    checker.set_table(t)
    key = t.backends[0].servers[0].key
    marked = replace(checker.results()[key], status=L4CON)
    checker._results[key] = marked  # as a probe would have left it
    rebuilt = RouteTable(backends=tuple(replace(b) for b in t.backends))
    checker.set_table(rebuilt)
    assert checker.results()[key] == marked
    checker.set_table(RouteTable(backends=t.backends[1:]))
    assert key not in checker.results() and len(checker.results()) == 20


async def test_up_down_lines_are_capped_and_the_rest_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """200 servers down at once: 50 lines, then one that counts the other 150 (written
    when the next 10 s window starts; the clock is pushed on to get there)."""
    caplog.set_level(logging.INFO, logger="proxy.check")
    offset = [0.0]
    downs: list[Key] = []

    async def refused(key: Key, path: str | None, timeout: float) -> Probe:
        return Probe(L4CON, detail="Connection refused")

    checker = HealthChecker(
        Settings(), lambda k, up, r: downs.append(k), probe=refused, nofile=None,
        monotonic=lambda: time.monotonic() + offset[0],
        params=CheckSettings(interval=0.05, rate=100_000.0, rise=1, fall=1))
    checker.set_table(_table(200))
    task = asyncio.create_task(checker.run())
    try:
        async with asyncio.timeout(30):
            while len(downs) < 200:
                await asyncio.sleep(0.01)
        lines = [r.getMessage() for r in caplog.records]
        assert sum(" is DOWN: " in m for m in lines) == 50
        offset[0] += 11.0
        checker.set_table(_table(201))
        async with asyncio.timeout(30):
            while not any("more server" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.01)
    finally:
        checker.stop()
        await task
    summary = [r.getMessage() for r in caplog.records if "more server" in r.getMessage()]
    assert summary[0].startswith("health checks: 150 more server(s) went DOWN and 0 UP")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_real_emfile_from_a_probe_is_raised_not_a_verdict(loop: str) -> None:
    """Out of descriptors for real (RLIMIT_NOFILE lowered in a child process): the probe
    functions raise OSError(EMFILE) — which the checker takes as a pause — instead of
    returning a SOCKERR verdict on the server."""
    code = textwrap.dedent('''
        import asyncio, errno, os, resource, socket, sys
        sys.path.insert(0, ROOT)
        from proxy.check import probe_http, probe_tcp

        async def main():
            srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            used = len(os.listdir("/proc/self/fd"))
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 5, hard))
            hog = []
            try:
                while True:
                    hog.append(socket.socket())
            except OSError as e:
                assert e.errno == errno.EMFILE
            out = []
            for probe in (lambda: probe_tcp("127.0.0.1", port, 2.0),
                          lambda: probe_http("127.0.0.1", port, "/", 2.0)):
                try:
                    out.append((await probe()).status)
                except OSError as e:
                    out.append(errno.errorcode[e.errno])
            print(" ".join(out))

        if LOOP == "uvloop":
            import uvloop
            uvloop.run(main())
        else:
            asyncio.run(main())
    ''').replace("ROOT", repr(str(ROOT))).replace("LOOP", repr(loop))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["EMFILE", "EMFILE"]


async def test_a_big_table_is_taken_in_parts_while_running() -> None:
    """12,000 new servers while the loop runs: read into the index `_INDEX_STEP` servers
    a turn, then taken in `_CHUNK` a turn (other work runs between), spread over one span
    as a whole."""
    async def ok(key: Key, path: str | None, timeout: float) -> Probe:
        return Probe(L4OK)

    checker = HealthChecker(Settings(), lambda *a: None, probe=ok, nofile=None,
                            params=CheckSettings(interval=2.0, rate=1000.0))
    checker.set_table(_table(10))
    task = asyncio.create_task(checker.run())
    try:
        await asyncio.sleep(0.01)
        checker.set_table(_table(12_000))
        assert _INDEX_STEP < 12_000 and checker._taking is not None  # read in steps
        assert len(checker.results()) == 10  # taken in once the whole table is read
        for _ in range(100):
            if checker._taking is None:
                break
            await asyncio.sleep(0)
        assert checker._taking is None  # read: then taken in a chunk a turn
        assert len(checker.results()) in (10, 10 + _CHUNK)
        async with asyncio.timeout(30):
            while len(checker.results()) < 12_000:
                await asyncio.sleep(0)
        assert checker.effective_interval == 12.0
        t0 = time.monotonic()
        dues = [t.due - t0 for t in checker._schedule._heap]
        early = sum(1 for d in dues if d < 6.0)
        assert 0.4 < early / len(dues) < 0.6  # half the servers in the first half
    finally:
        checker.stop()
        await task


def test_probes_started_together_share_their_next_due_time() -> None:
    """One float object for a batch's next due time (24 B a server otherwise), equal to
    what each would compute; a later batch gets its own."""
    schedule = Schedule(interval=2.0, rate=1000.0, cap=100, rng=random.Random(3))
    schedule.add([(("127.7.0.1", 80 + i), None) for i in range(6)], 0.0)
    now = float(100)
    batch = schedule.take(now)
    assert len(batch) == 6
    dues = [schedule.done(key, target, now) for key, target in batch[:3]]
    later = now + 0.5
    dues += [schedule.done(key, target, later) for key, target in batch[3:]]
    assert dues[:3] == [now + 2.0] * 3 and dues[3:] == [later + 2.0] * 3
    assert dues[0] is dues[1] is dues[2] and dues[3] is dues[4] is dues[5]
    assert dues[0] is not dues[3]
    assert all(t.due is d for (_, t), d in zip(batch, dues, strict=True))
