"""The elector: drives the decision step (election.decide) against a lock.

Theory of operation
-------------------
This is client-go's leader election (tools/leaderelection), rewritten for asyncio.

Leader election here is advisory. It gives NO FENCING: nothing stops a process that
believes it leads from writing after its lease has passed to another. A leader that cannot
renew gives up after RenewDeadline by its own clock, and followers wait LeaseDuration (by
theirs) after the last change they saw; the margin between the two absorbs clocks running
at slightly different rates, pauses and request latency, not arbitrary stalls (a process
frozen for longer than the margin may act once more after waking). Only run work under it
that tolerates a brief overlap of two leaders: pylb's leader writes service status and
events, which are idempotent, and every pod serves traffic whether it leads or not.

`run()` loops forever, until cancelled:

1. *Acquire*: attempt at once, then every RetryPeriod plus up to 1.2 x RetryPeriod of
   jitter (so followers do not stampede), until an attempt makes us the holder.
2. *Lead*: start `on_started_leading()` as a task in a task group, and renew every
   RetryPeriod. A renewal that has not succeeded within RenewDeadline of the start of the
   last successful one, or a read showing another holder, ends leadership: the task group
   cancels the leader-only work and waits for it to finish, then `on_stopped_leading()`
   runs and we go back to 1.
3. On cancellation, if we hold the lease, release it (empty holder, 1 s duration) so a
   follower takes over within one retry period instead of a whole lease duration.

One attempt is client-go's tryAcquireOrRenew: a leader whose lease is still valid by its
own clock first writes its cached record (fast path, no read); otherwise, or if that fails,
read, let `decide` choose, and write with the read's resourceVersion. Every attempt is
bounded in time (the remaining renew deadline while leading, the renew deadline while
acquiring), so a hanging API server cannot stall the loop. Every API error only fails the
attempt; nothing escapes `run()` but cancellation.

Deviations from client-go, all on the safe side: the renew deadline counts from the start
of the last successful renewal (client-go: from the first retry after it) and the leader
wakes at the deadline rather than at the next retry; a leader that reads a valid lease
held by someone else steps down at once; leaseDurationSeconds is rounded up, not
truncated. With these, and requests that complete within their bounds, a follower can
only take over strictly after the old leader stopped counting itself the leader (the
property test in tests/election/test_elector_property.py checks it).

The clock, the wall clock, sleep and the random source are injectable so tests can drive
the loops without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from election import kapi
from election.decide import (
    JITTER_FACTOR,
    Observation,
    Timing,
    Verdict,
    decide,
    fast_renew,
    release,
    utcnow,
)
from election.lock import Lock

log = logging.getLogger("pylb.election")

#: How many 409s a release retries before giving up (each means the lease moved on).
RELEASE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class ElectionStatus:
    """What the stats page and metrics show."""

    identity: str
    leader: str  # "" while no holder is known
    is_leader: bool
    leader_since: datetime | None  # the holder's acquireTime (its wall clock)
    transitions: int


class Elector:
    def __init__(
        self,
        lock: Lock,
        identity: str,
        timing: Timing | None = None,
        *,
        on_started_leading: Callable[[], Awaitable[None]] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        on_new_leader: Callable[[str], None] | None = None,
        release_on_cancel: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not identity:
            raise ValueError("election identity must not be empty")
        self.lock = lock
        self.identity = identity
        self.timing = timing or Timing()
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._release_on_cancel = release_on_cancel
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._rand = rand
        self._observed: Observation | None = None
        self._reported: str | None = None
        self._leading = False

    # -- state -------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def leader(self) -> str:
        return self._reported or ""

    def status(self) -> ElectionStatus:
        record = self._observed.record if self._observed else None
        return ElectionStatus(
            identity=self.identity,
            leader=self.leader,
            is_leader=self._leading,
            leader_since=record.acquire_time if record and record.holder else None,
            transitions=record.transitions if record else 0,
        )

    # -- loops -------------------------------------------------------------------------

    async def run(self) -> None:
        """Acquire, lead, lose, acquire again... until cancelled; then release."""
        try:
            while True:
                await self._acquire()
                await self._lead()
        finally:
            if self._release_on_cancel:
                await self._release()

    async def _acquire(self) -> None:
        t = self.timing
        while not await self._attempt(t.renew_deadline):
            await self._sleep(t.retry_period * (1 + JITTER_FACTOR * self._rand()))

    async def _lead(self) -> None:
        self._leading = True
        log.info("%s: %s became the leader", self.lock.description, self.identity)
        try:
            async with asyncio.TaskGroup() as group:
                work = group.create_task(self._leader_work()) if self._on_started else None
                await self._renew()
                if work is not None:
                    work.cancel()
        finally:
            self._leading = False
            log.info("%s: %s stopped leading", self.lock.description, self.identity)
            if self._on_stopped is not None:
                _call_safely(self._on_stopped)

    async def _leader_work(self) -> None:
        assert self._on_started is not None
        try:
            await self._on_started()
        except Exception:
            # The work is the caller's; its crash must not cost the lease or the process.
            log.exception("leader-only work failed")

    async def _renew(self) -> None:
        """Return when leadership is lost."""
        t = self.timing
        last_ok = self._clock()
        while True:
            # Wake at the deadline at the latest, so the step-down is not late by a period.
            await self._sleep(max(0.0, min(t.retry_period,
                                           last_ok + t.renew_deadline - self._clock())))
            started = self._clock()
            remaining = last_ok + t.renew_deadline - started
            if remaining <= 0:
                log.warning("%s: could not renew within %.3gs; giving up leadership",
                            self.lock.description, t.renew_deadline)
                return
            if await self._attempt(remaining):
                last_ok = started
            elif self._someone_else_holds():
                log.warning("%s: lease taken by %s", self.lock.description, self.leader)
                return

    def _someone_else_holds(self) -> bool:
        o = self._observed
        return o is not None and o.record.holder not in ("", self.identity) and o.valid_at(
            self._clock())

    # -- one attempt ---------------------------------------------------------------------

    async def _attempt(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            log.warning("%s: attempt timed out after %.3gs", self.lock.description, timeout)
        except kapi.ApiError as exc:
            log.warning("%s: %s", self.lock.description, exc)
        except Exception:
            log.exception("%s: unexpected error", self.lock.description)
        return False

    async def _try_acquire_or_renew(self) -> bool:
        t, me = self.timing, self.identity
        fast = fast_renew(self._observed, self._clock(), self._wall(), me, t)
        if fast is not None:
            try:
                await self.lock.update(fast)
            except kapi.ApiError as exc:
                log.info("%s: fast renew failed (%s); reading the lock",
                         self.lock.description, exc)
            else:
                self._observed = Observation(fast, self._clock())
                return True
        current = await self.lock.get()
        decision = decide(current, self._observed, self._clock(), self._wall(), me, t)
        if decision.observation is not None:
            self._observed = decision.observation
            self._report_leader()
        if decision.write is None:
            return False
        try:
            if decision.verdict is Verdict.CREATE:
                await self.lock.create(decision.write)
            else:
                await self.lock.update(decision.write)
        except kapi.ApiError as exc:
            if exc.conflict:
                log.debug("%s: %s lost a race (%s)", self.lock.description, me, exc)
                return False
            raise
        self._observed = Observation(decision.write, self._clock())
        self._report_leader()
        return True

    def _report_leader(self) -> None:
        holder = self._observed.record.holder if self._observed else ""
        if holder == self._reported:
            return
        self._reported = holder
        if holder:
            log.info("%s: %s is the leader", self.lock.description, holder)
        if self._on_new_leader is not None:
            _call_safely(self._on_new_leader, holder)

    # -- release -------------------------------------------------------------------------

    async def _release(self) -> None:
        if self._observed is None or self._observed.record.holder != self.identity:
            return
        try:
            async with asyncio.timeout(self.timing.renew_deadline):
                for _ in range(RELEASE_ATTEMPTS):
                    current = await self.lock.get()
                    if current is None:
                        return
                    record = release(current, self.identity, self._wall())
                    if record is None:
                        return
                    try:
                        await self.lock.update(record)
                    except kapi.ApiError as exc:
                        if exc.conflict:
                            continue
                        raise
                    self._observed = Observation(record, self._clock())
                    self._report_leader()
                    log.info("%s: %s released the lease", self.lock.description,
                             self.identity)
                    return
        except (TimeoutError, kapi.ApiError) as exc:
            log.warning("%s: release failed (%s); followers take over when the lease "
                        "expires", self.lock.description, _why(exc))


def _why(exc: BaseException) -> str:
    """An exception for a log line: its text, or what it is when it has none (a timeout's
    TimeoutError has no message, and an exception is always true, so `exc or ...` is not
    a fallback)."""
    return str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)


def _call_safely(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("election callback %r failed", callback)
