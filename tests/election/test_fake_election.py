"""Electors against the fake API server (tests/kfake): real HTTP, real compare-and-swap.

Most tests run the electors on virtual time that advances only when every elector is
asleep (VirtualTime.advance_idle), so the client-go default durations (15/10/2 s) are
used and the bounds asserted are exact whatever the machine's speed. One smoke test runs
on real time with tiny durations and asserts no timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from kubernetes_asyncio.client import ApiClient

from election.decide import JITTER_FACTOR, Record, Timing, parse_time
from election.kapi import ApiError
from election.lock import LEADER_ANNOTATION, EndpointsLock, LeaseLock, Lock
from tests.election.helpers import Candidate, VirtualTime
from tests.kfake import FakeApiServer, faults
from tests.kfake.resources import is_microtime

TIMING = Timing()
NAME = "pylb"
LockFactory = Callable[[ApiClient], Lock]


def lease(api: ApiClient) -> Lock:
    return LeaseLock(api, "default", NAME)


def endpoints(api: ApiClient) -> Lock:
    return EndpointsLock(api, "default", NAME)


def leaders(cs: list[Candidate]) -> list[str]:
    return [c.name for c in cs if c.elector.is_leader]


def lease_spec(kube: FakeApiServer) -> dict[str, object]:
    obj = kube.store.get("leases", "default", NAME)
    assert obj is not None
    spec = obj["spec"]
    assert isinstance(spec, dict)
    return spec


def endpoints_record(kube: FakeApiServer) -> dict[str, object]:
    obj = kube.store.get("endpoints", "default", NAME)
    assert obj is not None
    value = json.loads(obj["metadata"]["annotations"][LEADER_ANNOTATION])
    assert isinstance(value, dict)
    return value


@asynccontextmanager
async def candidates(api: ApiClient, vt: VirtualTime | None, names: list[str],
                     make_lock: LockFactory = lease, timing: Timing = TIMING,
                     ) -> AsyncIterator[list[Candidate]]:
    cs = [Candidate(make_lock(api), vt, n, timing, rand=0.3 * i) for i, n in enumerate(names)]
    for c in cs:
        c.start()
    try:
        yield cs
    finally:
        for c in cs:
            if c.task is not None and not c.task.done():
                c.task.cancel()
        await asyncio.gather(*(c.task for c in cs if c.task), return_exceptions=True)


def running(cs: list[Candidate]) -> int:
    return sum(1 for c in cs if c.task is not None and not c.task.done())


async def step_until(vt: VirtualTime, cs: list[Candidate], condition: Callable[[], bool],
                     limit: float, step: float = 0.1) -> float:
    """Advance virtual time in small steps until `condition()`; return when it held."""
    end = vt.now + limit
    while vt.now < end:
        if condition():
            return vt.now
        await vt.advance_idle(step, running(cs))
    assert condition(), f"not within {limit} virtual seconds"
    return vt.now


# -- the locks on their own -----------------------------------------------------------------


async def test_lease_lock_round_trip(kube_api: FakeApiServer, api_client: ApiClient) -> None:
    lock = LeaseLock(api_client, "default", NAME)
    assert await lock.get() is None
    t = parse_time("2026-11-21T22:00:00Z")
    await lock.create(Record("a", 15, t, t, 0))
    spec = lease_spec(kube_api)
    assert spec["renewTime"] == "2026-11-21T22:00:00.000000Z"
    assert is_microtime(str(spec["acquireTime"]))
    assert await lock.get() == Record("a", 15, t, t, 0)
    # Someone else writes: our cached resourceVersion is stale → 409.
    other = LeaseLock(api_client, "default", NAME)
    await other.get()
    await other.update(Record("b", 15, t, t, 1))
    with pytest.raises(ApiError) as exc:
        await lock.update(Record("a", 15, t, t, 0))
    assert exc.value.conflict
    # Fields the lock does not own survive an update.
    obj = kube_api.store.read("leases", "default", NAME)
    obj["metadata"]["labels"] = {"team": "lb"}
    obj["metadata"]["annotations"] = {"note": "kept"}
    kube_api.store.update("leases", obj)
    assert (await lock.get()) == Record("b", 15, t, t, 1)
    await lock.update(Record("a", 15, t, t, 2))
    after = kube_api.store.read("leases", "default", NAME)
    assert after["metadata"]["labels"] == {"team": "lb"}
    assert after["metadata"]["annotations"] == {"note": "kept"}
    assert after["spec"]["holderIdentity"] == "a"


async def test_endpoints_lock_round_trip(kube_api: FakeApiServer,
                                         api_client: ApiClient) -> None:
    lock = EndpointsLock(api_client, "default", NAME)
    assert await lock.get() is None
    t = parse_time("2026-11-21T22:00:00.250000Z")
    await lock.create(Record("a", 10, t, t, 0))
    assert endpoints_record(kube_api) == {
        "holderIdentity": "a", "leaseDurationSeconds": 10,
        "acquireTime": "2026-11-21T22:00:00Z", "renewTime": "2026-11-21T22:00:00Z",
        "leaderTransitions": 0}
    got = await lock.get()
    assert got is not None and got.holder == "a" and got.lease_seconds == 10


async def test_endpoints_lock_reads_an_empty_endpoints_as_free(
        kube_api: FakeApiServer, api_client: ApiClient) -> None:
    # The 2016 sidecar pre-creates an Endpoints with no annotation.
    kube_api.store.create("endpoints", {"metadata": {"name": NAME, "namespace": "default"}})
    lock = EndpointsLock(api_client, "default", NAME)
    assert await lock.get() == Record()
    t = parse_time("2026-11-21T22:00:00Z")
    await lock.update(Record("a", 10, t, t, 1))
    assert endpoints_record(kube_api)["holderIdentity"] == "a"


# -- elections ----------------------------------------------------------------------------


@pytest.mark.parametrize("make_lock", [lease, endpoints], ids=["lease", "endpoints"])
async def test_three_electors_exactly_one_leader(kube_api: FakeApiServer,
                                                 api_client: ApiClient,
                                                 make_lock: LockFactory) -> None:
    vt = VirtualTime()
    async with candidates(api_client, vt, ["a", "b", "c"], make_lock) as cs:
        for _ in range(40):
            await vt.advance_idle(1.0, 3)
            assert len(leaders(cs)) <= 1
        (leader,) = leaders(cs)
        for c in cs:
            assert c.elector.leader == leader
        if make_lock is lease:
            spec = lease_spec(kube_api)
            assert spec["holderIdentity"] == leader and spec["leaseTransitions"] == 0
            assert spec["leaseDurationSeconds"] == 15
            assert is_microtime(str(spec["renewTime"]))
        else:
            record = endpoints_record(kube_api)
            assert record["holderIdentity"] == leader and record["leaderTransitions"] == 0


@pytest.mark.parametrize("make_lock", [lease, endpoints], ids=["lease", "endpoints"])
async def test_killed_leader_replaced_within_lease_plus_retry(
        kube_api: FakeApiServer, api_client: ApiClient, make_lock: LockFactory) -> None:
    vt = VirtualTime()
    async with candidates(api_client, vt, ["a", "b", "c"], make_lock) as cs:
        await vt.advance_idle(5, 3)
        (first,) = [c for c in cs if c.elector.is_leader]
        first.elector._release_on_cancel = False  # kill -9: no release
        await first.stop()
        killed = vt.now
        rest = [c for c in cs if c is not first]
        took = await step_until(vt, cs, lambda: len(leaders(rest)) == 1, limit=60)
        retry = TIMING.retry_period * (1 + JITTER_FACTOR)
        assert TIMING.lease_duration - retry <= took - killed
        assert took - killed <= TIMING.lease_duration + 2 * retry
        (second,) = leaders(rest)
        # The other follower learns of it at its next attempt.
        await step_until(vt, cs, lambda: all(c.elector.leader == second for c in rest),
                         limit=retry)
        if make_lock is lease:
            spec = lease_spec(kube_api)
            assert spec["holderIdentity"] == second and spec["leaseTransitions"] == 1
            acquired = parse_time(spec["acquireTime"])
            assert acquired is not None and acquired > first.elector.status().leader_since
        else:
            assert endpoints_record(kube_api)["leaderTransitions"] == 1


async def test_released_lease_taken_within_one_retry_period(
        kube_api: FakeApiServer, api_client: ApiClient) -> None:
    vt = VirtualTime()
    async with candidates(api_client, vt, ["a", "b", "c"]) as cs:
        await vt.advance_idle(5, 3)
        (first,) = [c for c in cs if c.elector.is_leader]
        await first.stop()
        spec = lease_spec(kube_api)
        assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
        assert spec["leaseTransitions"] == 0
        released = vt.now
        rest = [c for c in cs if c is not first]
        took = await step_until(vt, cs, lambda: len(leaders(rest)) == 1, limit=30)
        assert took - released <= TIMING.retry_period * (1 + JITTER_FACTOR)
        assert lease_spec(kube_api)["leaseTransitions"] == 1


async def test_api_failing_past_renew_deadline_leader_steps_down(
        kube_api: FakeApiServer, api_client: ApiClient) -> None:
    vt = VirtualTime()
    async with candidates(api_client, vt, ["a", "b"]) as cs:
        await vt.advance_idle(5, 2)
        (leader,) = [c for c in cs if c.elector.is_leader]
        assert leader.work_running
        rule = kube_api.faults.add(faults.http(503), path_re="/leases", count=None)
        failed = vt.now
        lost = await step_until(vt, cs, lambda: not leader.elector.is_leader, limit=30)
        assert lost - failed <= TIMING.renew_deadline
        assert not leader.work_running and leader.work_cancelled == 1
        assert leader.events[-1] == "stopped"
        await vt.advance_idle(30, 2)
        assert leaders(cs) == []  # nobody leads while the API is down
        kube_api.faults.rules.remove(rule)
        await step_until(vt, cs, lambda: len(leaders(cs)) == 1, limit=30)


async def test_api_connection_refused_is_survived(kube_api: FakeApiServer,
                                                  api_client: ApiClient) -> None:
    vt = VirtualTime()
    async with candidates(api_client, vt, ["a"]) as cs:
        await vt.advance_idle(3, 1)
        assert leaders(cs) == ["a"]
        kube_api.faults.add(faults.reset(), path_re="/leases", count=None)
        await step_until(vt, cs, lambda: not leaders(cs), limit=30)
        kube_api.faults.clear()
        await step_until(vt, cs, lambda: leaders(cs) == ["a"], limit=30)
        assert cs[0].events.count("started") == 2


async def test_lease_and_endpoints_locks_do_not_see_each_other(
        kube_api: FakeApiServer, api_client: ApiClient) -> None:
    """What a "mixed" election cannot be: a Lease elector and an Endpoints elector of the
    same name hold different objects, so both lead. Mixing works only by every member
    using the same lock (pylb --lock=endpoints next to 2016 sidecars)."""
    vt = VirtualTime()
    a = Candidate(lease(api_client), vt, "a", TIMING)
    b = Candidate(endpoints(api_client), vt, "b", TIMING)
    cs = [a, b]
    for c in cs:
        c.start()
    try:
        await vt.advance_idle(5, 2)
        assert leaders(cs) == ["a", "b"]
    finally:
        for c in cs:
            await c.stop()


async def test_pylb_joins_an_election_run_by_an_old_sidecar(
        kube_api: FakeApiServer, api_client: ApiClient) -> None:
    """An Endpoints record as leader-elector:0.5 writes it (seconds, leaderTransitions):
    pylb with the endpoints lock follows it, and takes over when it stops renewing."""
    annotation = json.dumps({"holderIdentity": "old-sidecar", "leaseDurationSeconds": 10,
                             "acquireTime": "2016-07-01T00:00:00Z",
                             "renewTime": "2016-07-01T00:00:05Z", "leaderTransitions": 3})
    kube_api.store.create("endpoints", {"metadata": {
        "name": NAME, "namespace": "default", "annotations": {LEADER_ANNOTATION: annotation}}})
    vt = VirtualTime()
    async with candidates(api_client, vt, ["pylb-0"], endpoints) as cs:
        await vt.advance_idle(5, 1)
        assert leaders(cs) == [] and cs[0].elector.leader == "old-sidecar"
        took = await step_until(vt, cs, lambda: leaders(cs) == ["pylb-0"], limit=30)
        assert 10 <= took <= 10 + 2 * TIMING.retry_period * (1 + JITTER_FACTOR)
        record = endpoints_record(kube_api)
        assert record["holderIdentity"] == "pylb-0" and record["leaderTransitions"] == 4


async def test_real_time_smoke_with_tiny_durations(kube_api: FakeApiServer,
                                                   api_client: ApiClient) -> None:
    tiny = Timing(1.0, 0.6, 0.2)
    async with candidates(api_client, None, ["a", "b", "c"], timing=tiny) as cs:
        for _ in range(200):
            if leaders(cs):
                break
            await asyncio.sleep(0.05)
        (first,) = [c for c in cs if c.elector.is_leader]
        first.elector._release_on_cancel = False
        await first.stop()
        rest = [c for c in cs if c is not first]
        for _ in range(400):
            if len(leaders(rest)) == 1:
                break
            await asyncio.sleep(0.025)
        assert len(leaders(rest)) == 1
        assert lease_spec(kube_api)["leaseTransitions"] == 1


async def test_hanging_api_bounded_by_the_renew_deadline(kube_api: FakeApiServer,
                                                         api_client: ApiClient) -> None:
    tiny = Timing(1.0, 0.6, 0.2)
    async with candidates(api_client, None, ["a"], timing=tiny) as cs:
        for _ in range(200):
            if leaders(cs):
                break
            await asyncio.sleep(0.05)
        assert leaders(cs) == ["a"]
        kube_api.faults.add(faults.hang(), path_re="/leases", count=None)
        for _ in range(400):
            if not leaders(cs):
                break
            await asyncio.sleep(0.025)
        assert leaders(cs) == [] and not cs[0].work_running
        kube_api.faults.clear()
        kube_api.drop_watches()  # releases the hung requests
