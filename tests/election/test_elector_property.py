"""Safety as a property: whatever the timings (within validation), jitter and per-pod
partitions, no two electors ever count themselves the leader at the same moment, and
someone leads again once the partitions heal.

Requests are instantaneous here (in-memory lock, virtual time); the margin for request
latency is what the per-attempt time bounds in the elector provide.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from election.decide import JITTER_FACTOR, Timing
from election.elector import Elector
from tests.election.helpers import MemoryLock, MemoryStore, VirtualTime


@st.composite
def timings(draw: st.DrawFn) -> Timing:
    retry = draw(st.floats(0.2, 3.0))
    renew = draw(st.floats(JITTER_FACTOR * retry * 1.01, JITTER_FACTOR * retry * 4 + 1))
    lease = draw(st.floats(max(1.0, renew * 1.01), renew * 2 + 1))
    return Timing(lease, renew, retry)


# A schedule: (seconds to run, which candidate's partition to flip: -1 none, 4 the leader).
LEADER = 4
schedules = st.lists(st.tuples(st.floats(0.1, 10.0), st.integers(-1, LEADER)), min_size=1,
                     max_size=8)


@example(timing=Timing(3.8, 3.7, 3.0), n=2, schedule=[(3.1, -1), (20.0, LEADER)],
         jitter=[0.0, 0.3, 0.0, 0.0], kill=-1)  # a leader waking late would overlap here
@example(timing=Timing(1.5, 1.2, 0.5), n=2, schedule=[(1.05, -1), (10.0, LEADER)],
         jitter=[0.0, 0.0, 0.0, 0.0], kill=-1)  # followers waiting int(1.5) = 1 s overlap
# p1 partitioned from the start first reads dead p0's record at 2.1875 s, after the heal
# at 2 s; its leaseDurationSeconds is ceil(1.25) = 2, so p1 leads at 4.375 s: past a bound
# of lease_duration (1.25 s) + two jittered retries, within lease_seconds (2 s) + two.
@example(timing=Timing(1.25, 1.0, 0.21875), n=2, schedule=[(1.0, 1), (1.0, 0)],
         jitter=[0.0, 0.0, 0.0, 0.0], kill=0)
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(timing=timings(), n=st.integers(2, 4), schedule=schedules,
       jitter=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
       kill=st.integers(-1, 3))
def test_never_two_leaders(timing: Timing, n: int, schedule: list[tuple[float, int]],
                           jitter: list[float], kill: int) -> None:
    asyncio.run(_scenario(timing, n, schedule, jitter, kill))


async def _scenario(timing: Timing, n: int, schedule: list[tuple[float, int]],
                    jitter: list[float], kill: int) -> None:
    vt, store = VirtualTime(), MemoryStore()
    locks = [MemoryLock(store, f"p{i}") for i in range(n)]
    electors = [Elector(lock, f"p{i}", timing, clock=vt.clock, wall_clock=vt.wall,
                        sleep=vt.sleep, rand=lambda j=jitter[i]: j,
                        release_on_cancel=False)
                for i, lock in enumerate(locks)]
    tasks = [asyncio.create_task(e.run()) for e in electors]

    def alive() -> int:
        return sum(1 for t in tasks if not t.done())

    def at_most_one() -> None:
        leading = [e.identity for e in electors if e.is_leader]
        assert len(leading) <= 1, f"two leaders at t={vt.now}: {leading}"

    try:
        for i, (seconds, flip) in enumerate(schedule):
            if flip == LEADER:
                flip = next((i for i, e in enumerate(electors) if e.is_leader), -1)
            if 0 <= flip < n:
                locks[flip].failing = not locks[flip].failing
            if i == 1 and 0 <= kill < n:
                tasks[kill].cancel()  # a pod dies without releasing
            await vt.advance(seconds, check=at_most_one, participants=alive)
        for lock in locks:
            lock.failing = False
        living = [e for e, t in zip(electors, tasks, strict=True) if not t.done()]
        await vt.advance(_healed_within(timing), check=at_most_one, participants=alive)
        if living:
            assert sum(e.is_leader for e in living) == 1
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _healed_within(timing: Timing) -> float:
    """How long after the partitions heal someone must lead, as client-go's semantics
    allow it (tryAcquireOrRenew: a holder is presumed alive until observedTime + the
    *record's* leaseDurationSeconds, observedTime being when this process first read that
    record). A follower partitioned all along first reads the dead holder's record at its
    next attempt, up to one jittered retry period after the heal; it waits the record's
    lease from then, and takes over at its first attempt after that, up to one more
    jittered retry period. The record says `lease_seconds`, the configured lease rounded
    UP to whole seconds (Timing.lease_seconds; 2 s for 1.25 s), not `lease_duration`.
    +0.01 for float sums."""
    return timing.lease_seconds + 2 * timing.retry_period * (1 + JITTER_FACTOR) + 0.01
