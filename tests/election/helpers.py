"""Test doubles for the elector: an in-memory lock store with compare-and-swap and a
virtual clock that advances only when every task is waiting."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from election.decide import Record, Timing
from election.elector import Elector
from election.kapi import ApiError
from election.lock import Lock


class MemoryStore:
    """One lock object, as an API server would hold it."""

    def __init__(self) -> None:
        self.record: Record | None = None
        self.rv = 0
        self.failing = False  # every call fails with 503 while set
        self.writes: list[Record] = []

    def check(self) -> None:
        if self.failing:
            raise ApiError(503, "ServiceUnavailable", "apiserver is shutting down")


class MemoryLock:
    """One client's handle on a MemoryStore (caches the resourceVersion it last saw).
    `failing` makes this client's calls fail (a partition of one pod)."""

    def __init__(self, store: MemoryStore, name: str = "mem") -> None:
        self.store = store
        self.name = name
        self.failing = False
        self._rv: int | None = None

    def _check(self) -> None:
        self.store.check()
        if self.failing:
            raise ApiError(0, "ClientConnectorError", "connection refused")

    @property
    def description(self) -> str:
        return f"memory lock {self.name}"

    async def get(self) -> Record | None:
        await asyncio.sleep(0)
        self._check()
        if self.store.record is None:
            return None
        self._rv = self.store.rv
        return self.store.record

    async def create(self, record: Record) -> None:
        await asyncio.sleep(0)
        self._check()
        if self.store.record is not None:
            raise ApiError(409, "AlreadyExists", "already exists")
        self._write(record)

    async def update(self, record: Record) -> None:
        await asyncio.sleep(0)
        self._check()
        if self._rv != self.store.rv:
            raise ApiError(409, "Conflict", "the object has been modified")
        self._write(record)

    def _write(self, record: Record) -> None:
        self.store.rv += 1
        self.store.record = record
        self.store.writes.append(record)
        self._rv = self.store.rv


class VirtualTime:
    """Monotonic and wall clocks plus a sleep that waits for virtual time. `advance()`
    lets every runnable task run, then jumps to the next wake-up, until a bound."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._epoch = datetime(2026, 11, 21, 22, 0, tzinfo=UTC)

    def clock(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self._epoch + timedelta(seconds=self.now)

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.now + max(seconds, 0.0), next(self._seq), fut))
        await fut

    async def _settle(self) -> None:
        for _ in range(200):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, check: Callable[[], None] | None = None,
                      participants: Callable[[], int] | None = None) -> None:
        """Run every task until all wait, then jump to the next wake-up, up to `seconds`
        from now; `check()` runs each time all tasks wait. With `participants`, "all
        wait" means that many tasks sleep in virtual time (else: 200 loop turns)."""
        end = self.now + seconds
        for _ in range(1_000_000):
            if participants is None:
                await self._settle()
            else:
                for _ in range(100_000):
                    await asyncio.sleep(0)
                    if self.sleeping() >= participants():
                        break
                else:
                    raise AssertionError("participants never went idle")
            if check is not None:
                check()
            while self._heap and self._heap[0][2].done():
                heapq.heappop(self._heap)
            if not self._heap or self._heap[0][0] > end:
                self.now = end
                await self._settle()
                return
            when, _, fut = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            fut.set_result(None)
        raise AssertionError("virtual time did not settle")

    def sleeping(self) -> int:
        return sum(1 for _, _, fut in self._heap if not fut.done())

    async def advance_idle(self, seconds: float, participants: int,
                           real_limit: float = 20.0) -> None:
        """Like advance(), for tasks that also do real I/O (against the fake API server):
        time moves only once all `participants` are asleep in virtual time, so how long
        the real requests take does not change what the test sees."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + real_limit
        end = self.now + seconds
        while True:
            while self.sleeping() < participants:
                if loop.time() > give_up:
                    raise AssertionError(
                        f"{participants - self.sleeping()} participant(s) never went idle")
                await asyncio.sleep(0.001)
            while self._heap and self._heap[0][2].done():
                heapq.heappop(self._heap)
            if self._heap[0][0] > end:
                self.now = end
                await self._settle()  # let tasks the last wake-up started run
                return
            when, _, fut = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            fut.set_result(None)
            await asyncio.sleep(0)

    async def advance_until(self, condition: object, limit: float, step: float = 0.05) -> float:
        """Advance in small steps until `condition()` holds; return the virtual time."""
        assert callable(condition)
        end = self.now + limit
        while self.now < end:
            if condition():
                return self.now
            await self.advance(step)
        if condition():
            return self.now
        raise AssertionError(f"condition not met within {limit} virtual seconds")


class Candidate:
    """An elector plus a record of what its callbacks saw."""

    def __init__(self, lock: Lock, vt: VirtualTime | None, name: str, timing: Timing,
                 rand: float = 0.5, release_on_cancel: bool = True) -> None:
        self.name = name
        self.events: list[str] = []
        self.work_running = False
        self.work_cancelled = 0
        clocks: dict[str, Any] = {}
        if vt is not None:
            clocks = {"clock": vt.clock, "wall_clock": vt.wall, "sleep": vt.sleep}
        self.elector = Elector(
            lock, name, timing, on_started_leading=self._work,
            on_stopped_leading=self._stopped, on_new_leader=self._new_leader,
            release_on_cancel=release_on_cancel, rand=lambda: rand, **clocks)
        self.task: asyncio.Task[None] | None = None

    async def _work(self) -> None:
        self.events.append("started")
        self.work_running = True
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            self.work_cancelled += 1
            raise
        finally:
            self.work_running = False

    def _stopped(self) -> None:
        self.events.append("stopped")

    def _new_leader(self, name: str) -> None:
        self.events.append(f"leader={name}")

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task
