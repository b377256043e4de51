"""The elector's loops on an in-memory lock and virtual time (no test waits for real)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from election.decide import JITTER_FACTOR, Record, Timing
from election.elector import Elector
from tests.election.helpers import Candidate, MemoryLock, MemoryStore, VirtualTime

TIMING = Timing(15, 10, 2)


@asynccontextmanager
async def candidates(store: MemoryStore, vt: VirtualTime, *names: str,
                     ) -> AsyncIterator[list[Candidate]]:
    cs = [Candidate(MemoryLock(store, n), vt, n, TIMING, rand=0.1 * i)
          for i, n in enumerate(names)]
    for c in cs:
        c.start()
    try:
        yield cs
    finally:
        for c in cs:
            if c.task is not None and not c.task.done():
                c.task.cancel()
        await asyncio.gather(*(c.task for c in cs if c.task), return_exceptions=True)


def leaders(cs: list[Candidate]) -> list[str]:
    return [c.name for c in cs if c.elector.is_leader]


async def test_three_electors_exactly_one_leader() -> None:
    store, vt = MemoryStore(), VirtualTime()
    async with candidates(store, vt, "a", "b", "c") as cs:
        for _ in range(30):
            await vt.advance(1.0)
            assert len(leaders(cs)) <= 1
        assert len(leaders(cs)) == 1
        (leader,) = leaders(cs)
        assert store.record is not None and store.record.holder == leader
        assert store.record.transitions == 0
        for c in cs:
            assert c.elector.leader == leader
            assert f"leader={leader}" in c.events
        # The leader renewed about every retry period; nobody else ever wrote.
        assert {w.holder for w in store.writes} == {leader}
        assert len(store.writes) >= 30 / TIMING.retry_period - 2
        winner = next(c for c in cs if c.name == leader)
        assert winner.events.count("started") == 1 and winner.work_running


async def test_killed_leader_replaced_within_lease_plus_retry() -> None:
    store, vt = MemoryStore(), VirtualTime()
    async with candidates(store, vt, "a", "b", "c") as cs:
        await vt.advance(5)
        (first,) = [c for c in cs if c.elector.is_leader]
        first.elector._release_on_cancel = False  # a kill -9: no release
        await first.stop()
        killed_at = vt.now
        rest = [c for c in cs if c is not first]
        took = await vt.advance_until(lambda: len(leaders(rest)) == 1, limit=60)
        worst = TIMING.lease_duration + 2 * TIMING.retry_period * (1 + JITTER_FACTOR)
        assert took - killed_at <= worst
        # ... and not before the lease could have expired for anyone who saw it renewed.
        assert took - killed_at >= TIMING.lease_duration - TIMING.retry_period
        assert store.record is not None
        assert store.record.transitions == 1
        assert store.record.acquire_time is not None
        assert store.record.acquire_time > vt._epoch


async def test_released_lease_taken_within_one_retry_period() -> None:
    store, vt = MemoryStore(), VirtualTime()
    async with candidates(store, vt, "a", "b") as cs:
        await vt.advance(5)
        (first,) = [c for c in cs if c.elector.is_leader]
        await first.stop()
        assert store.record is not None
        assert store.record.holder == "" and store.record.lease_seconds == 1
        assert store.record.transitions == 0
        assert first.events[-2:] == ["stopped", "leader="]
        released_at = vt.now
        (other,) = [c for c in cs if c is not first]
        took = await vt.advance_until(lambda: other.elector.is_leader, limit=30)
        assert took - released_at <= TIMING.retry_period * (1 + JITTER_FACTOR)
        assert store.record.holder == other.name and store.record.transitions == 1


async def test_api_failing_past_renew_deadline_steps_down_and_cancels_work() -> None:
    store, vt = MemoryStore(), VirtualTime()
    async with candidates(store, vt, "a") as (a,):
        await vt.advance(3)
        assert a.elector.is_leader and a.work_running
        store.failing = True
        failed_at = vt.now
        lost = await vt.advance_until(lambda: not a.elector.is_leader, limit=30)
        assert lost - failed_at <= TIMING.renew_deadline
        assert not a.work_running and a.work_cancelled == 1
        assert a.events[-1] == "stopped"
        await vt.advance(20)
        assert not a.elector.is_leader  # still failing: no leadership without the API
        store.failing = False
        await vt.advance_until(lambda: a.elector.is_leader, limit=10)
        assert a.work_running and a.events.count("started") == 2
        # Our own record was still there: re-acquiring it is a renewal, not a transition.
        assert store.record is not None and store.record.transitions == 0


async def test_short_outage_does_not_lose_leadership() -> None:
    store, vt = MemoryStore(), VirtualTime()
    async with candidates(store, vt, "a") as (a,):
        await vt.advance(3)
        store.failing = True
        await vt.advance(TIMING.renew_deadline - 2 * TIMING.retry_period)
        store.failing = False
        await vt.advance(10)
        assert a.elector.is_leader and a.events.count("started") == 1


async def test_leader_overwritten_steps_down_at_once() -> None:
    store, vt = MemoryStore(), VirtualTime()
    async with candidates(store, vt, "a") as (a,):
        await vt.advance(3)
        assert store.record is not None
        store.record = Record("intruder", 15, vt.wall(), vt.wall(), 7)
        store.rv += 1
        lost = vt.now
        await vt.advance_until(lambda: not a.elector.is_leader, limit=10)
        assert vt.now - lost <= 2 * TIMING.retry_period
        assert a.elector.leader == "intruder" and not a.work_running
        assert "leader=intruder" in a.events


async def test_leader_work_failure_keeps_the_lease() -> None:
    store, vt = MemoryStore(), VirtualTime()

    async def broken() -> None:
        raise RuntimeError("boom")

    elector = Elector(MemoryLock(store), "a", TIMING, on_started_leading=broken,
                      clock=vt.clock, wall_clock=vt.wall, sleep=vt.sleep)
    task = asyncio.create_task(elector.run())
    try:
        await vt.advance(10)
        assert elector.is_leader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_status_reports_leader_since_and_transitions() -> None:
    store, vt = MemoryStore(), VirtualTime()
    async with candidates(store, vt, "a", "b") as cs:
        await vt.advance(3)
        (first,) = [c for c in cs if c.elector.is_leader]
        st = first.elector.status()
        assert st.is_leader and st.leader == first.name and st.transitions == 0
        assert st.leader_since == vt._epoch
        (other,) = [c for c in cs if c is not first]
        assert other.elector.status().leader == first.name
        assert not other.elector.status().is_leader


def test_empty_identity_rejected() -> None:
    with pytest.raises(ValueError, match="identity"):
        Elector(MemoryLock(MemoryStore()), "")


class _HangingLock(MemoryLock):
    """A MemoryLock whose reads can be made to hang (an API server that never answers)."""

    hang = False

    async def get(self) -> Record | None:
        if self.hang:
            await asyncio.Event().wait()
        return await super().get()


@pytest.mark.parametrize(("fault", "logged"), [
    ("hang", "release failed (timed out)"),
    ("fail", "release failed (503 ServiceUnavailable: apiserver is shutting down)"),
])
async def test_failed_release_says_why(fault: str, logged: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """The release's log line names the failure; a timeout (whose exception has no text)
    says "timed out" rather than "()"."""
    store = MemoryStore()
    lock = _HangingLock(store, "a")
    # Real time, kept short: the release is bounded by the renew deadline (0.2 s).
    elector = Elector(lock, "a", Timing(1, 0.2, 0.1))
    task = asyncio.get_running_loop().create_task(elector.run())
    for _ in range(100):
        if elector.is_leader:
            break
        await asyncio.sleep(0.01)
    assert elector.is_leader
    if fault == "hang":
        lock.hang = True
    else:
        store.failing = True
    task.cancel()
    with caplog.at_level("WARNING", logger="pylb.election"), \
            pytest.raises(asyncio.CancelledError):
        await task
    assert any(logged in r.getMessage() for r in caplog.records), caplog.text
    assert store.record is not None and store.record.holder == "a"  # not released
