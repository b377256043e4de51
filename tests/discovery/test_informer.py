"""The informer alone against the fake API server: paging, resume points, and the backoff
schedule (with an injected sleep, so the schedule is checked exactly and instantly)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import pytest

from discovery.informer import ENDPOINTSLICES, SERVICES, Informer
from pylb.config import KubeSettings
from pylb.kubeapi import api_client_from_dict
from tests.kfake import FakeApiServer, faults

SETTINGS = KubeSettings(watch_timeout=30, read_timeout=2.0, connect_timeout=2.0,
                        list_timeout=5.0, backoff_base=0.5, backoff_cap=30.0)
RND = 0.75


@pytest.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeApiServer]:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost,::1")
    async with FakeApiServer(bookmark_interval=0.2, bookmark_before_deadline=0.0) as server:
        yield server


def service(name: str, ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 80}]}}


class Sleeps:
    """An injected sleep: records each delay, then yields without waiting it."""

    def __init__(self, api: FakeApiServer) -> None:
        self.delays: list[float] = []
        self.lists_before: list[int] = []
        self._api = api

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.lists_before.append(sum(1 for r in self._api.requests if r.verb == "list"))
        await asyncio.sleep(0.001)

    async def until(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.delays) < n:
                await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def informing(api: FakeApiServer, kind: Any = SERVICES, namespace: str | None = "default",
                    settings: KubeSettings = SETTINGS, sleeps: Sleeps | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    on_change: Callable[[], None] | None = None) -> AsyncIterator[Informer]:
    client = await api_client_from_dict(api.kubeconfig_dict())
    informer = Informer(client, kind, namespace, settings, on_change, rng=lambda: RND,
                        sleep=sleeps or asyncio.sleep, clock=clock)
    task = asyncio.create_task(informer.run())
    try:
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def until(pred: Any) -> None:
    async with asyncio.timeout(10):
        while not pred():
            await asyncio.sleep(0.005)


def window(failures: int) -> float:
    return RND * min(30.0, 0.5 * 2 ** (failures - 1))


async def test_paged_list_then_watch_from_the_list_version(api: FakeApiServer) -> None:
    for i in range(5):
        api.store.create("services", service(f"s{i}"))
    api.store.create("services", service("elsewhere", ns="other"))
    list_rv = str(api.store.rv)
    settings = dataclasses.replace(SETTINGS, page_size=2)
    async with informing(api, settings=settings) as inf:
        await until(lambda: inf.synced)
        assert sorted(name for _, name in inf.objects) == [f"s{i}" for i in range(5)]
        assert inf.resource_version == list_rv
        await until(lambda: any(r.verb == "watch" for r in api.requests))
        api.store.create("services", service("s5"))
        await until(lambda: ("default", "s5") in inf.objects)
    lists = [r.query for r in api.requests if r.verb == "list"]
    assert len(lists) == 3 and all("limit=2" in q for q in lists)
    assert all("continue=" in q for q in lists[1:])
    watch = next(r.query for r in api.requests if r.verb == "watch")
    for part in (f"resourceVersion={list_rv}", "allowWatchBookmarks=True", "watch=True",
                 "timeoutSeconds=30"):
        assert part in watch
    assert inf.metrics.lists == 1 and inf.metrics.relists == 0


async def test_all_namespaces_informer(api: FakeApiServer) -> None:
    api.store.create("services", service("a", ns="one"))
    api.store.create("services", service("b", ns="two"))
    async with informing(api, namespace=None) as inf:
        await until(lambda: len(inf.objects) == 2)
        assert inf.name == "services@*"


async def test_watch_resumes_from_the_last_version_seen(api: FakeApiServer) -> None:
    async with informing(api, kind=ENDPOINTSLICES) as inf:
        await until(lambda: inf.synced)
        await until(lambda: any(r.verb == "watch" for r in api.requests))
        api.store.create("endpointslices", {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-a", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": None, "ports": None})
        await until(lambda: ("default", "web-a") in inf.objects)
        seen = inf.resource_version
        api.drop_watches()
        await until(lambda: sum(r.verb == "watch" for r in api.requests) >= 2)
    last_watch = [r.query for r in api.requests if r.verb == "watch"][-1]
    assert parse_qs(last_watch)["resourceVersion"] == [seen]
    assert inf.metrics.lists == 1


async def test_empty_watches_back_off_exponentially(api: FakeApiServer) -> None:
    """An API server that answers every watch with an empty 200 must not spin us."""
    api.faults.add(faults.eof_after(0), verb="watch", count=None)
    sleeps = Sleeps(api)
    async with informing(api, sleeps=sleeps) as inf:
        await sleeps.until(8)
    assert sleeps.delays[:8] == pytest.approx([window(n) for n in range(1, 9)])
    assert window(8) == RND * 30.0  # capped
    assert inf.metrics.lists == 1 and inf.metrics.relists == 0


async def test_repeated_410_relists_at_once_then_backs_off(api: FakeApiServer) -> None:
    api.faults.add(faults.http(410, "too old resource version"), verb="watch", count=None)
    sleeps = Sleeps(api)
    async with informing(api, sleeps=sleeps) as inf:
        await sleeps.until(3)
    # list, 410, relist at once, 410, sleep, relist, 410, sleep...
    assert sleeps.lists_before[0] == 2
    assert sleeps.delays[:3] == pytest.approx([window(2), window(3), window(4)])
    assert inf.metrics.relists >= 2


async def test_events_reset_the_backoff(api: FakeApiServer) -> None:
    api.store.create("services", service("web"))
    sleeps = Sleeps(api)
    async with informing(api, sleeps=sleeps) as inf:
        await until(lambda: inf.metrics.events > 0)  # a bookmark: the watch is live
        api.faults.add(faults.http(500), verb="watch", count=3)
        api.drop_watches()
        await sleeps.until(3)
        events = inf.metrics.events
        await until(lambda: inf.metrics.events > events)  # progress again
        api.faults.add(faults.http(500), verb="watch", count=1)
        api.drop_watches()
        await sleeps.until(4)
    assert sleeps.delays[:4] == pytest.approx([window(1), window(2), window(3), window(1)])


async def test_retry_after_beats_a_shorter_backoff(api: FakeApiServer) -> None:
    api.store.create("services", service("web"))
    sleeps = Sleeps(api)
    async with informing(api, sleeps=sleeps) as inf:
        await until(lambda: inf.metrics.events > 0)
        api.faults.add(faults.http(503, retry_after=5), verb="watch", count=1)
        api.faults.add(faults.text429(retry_after=120), verb="watch", count=1)
        api.drop_watches()
        await sleeps.until(2)
    assert sleeps.delays[:2] == [5.0, 30.0]  # Retry-After, but never above the cap


# ---- the backoff after a long, quiet watch (found by tests/hardening/test_api_faults.py) --

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _outage_then_quiet_watch(api: FakeApiServer, clock: Clock, sleeps: Sleeps,
                                   held: float) -> None:
    """Three failed watches, then a watch that holds for `held` s with no event at all
    (no bookmarks: the fake sends one an hour), then one more failure."""
    api.store.create("services", service("web"))
    api.faults.add(faults.http(500), verb="watch", count=3)
    quiet = replace(SETTINGS, watch_timeout=3600)
    async with informing(api, settings=quiet, sleeps=sleeps, clock=clock) as inf:
        await sleeps.until(3)
        await until(lambda: api.store.watcher_count > 0)  # the 4th watch is open
        clock.now += held
        api.faults.add(faults.http(500), verb="watch", count=1)
        api.drop_watches()
        await sleeps.until(4)
        assert inf.metrics.events == 0 and inf.objects


async def test_a_long_quiet_watch_forgets_the_last_outages_backoff(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost,::1")
    async with FakeApiServer(bookmark_interval=3600) as api:
        sleeps = Sleeps(api)
        await _outage_then_quiet_watch(api, Clock(), sleeps, held=SETTINGS.backoff_cap)
    # The watch held as long as the longest backoff: the next blip starts from scratch.
    assert sleeps.delays[:4] == pytest.approx([window(1), window(2), window(3), window(1)])


async def test_a_short_quiet_watch_keeps_backing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost,::1")
    async with FakeApiServer(bookmark_interval=3600) as api:
        sleeps = Sleeps(api)
        await _outage_then_quiet_watch(api, Clock(), sleeps, held=SETTINGS.backoff_cap / 2)
    # Ended with no event after 15 s: not proof the server is back; the backoff goes on.
    assert sleeps.delays[:4] == pytest.approx([window(1), window(2), window(3), window(4)])


async def test_a_kind_not_served_is_absent_until_listed(
        api: FakeApiServer, caplog: pytest.LogCaptureFixture) -> None:
    """A list answered 404 (a CRD not installed) marks the kind `absent` (the Gateway source
    then counts it as synced and empty), logged at WARNING once, not at every retry; the
    lists go on with backoff, and one that succeeds clears it."""
    missing = api.faults.add(faults.http(404, "the server could not find the requested "
                                              "resource"), verb="list", count=None)
    sleeps = Sleeps(api)
    with caplog.at_level("DEBUG", logger="discovery.informer"):
        async with informing(api, sleeps=sleeps) as inf:
            await sleeps.until(3)
            assert inf.absent and not inf.synced
            api.faults.rules.remove(missing)
            await until(lambda: inf.synced)
            assert not inf.absent
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "404" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_kind_found_absent_tells_its_owner(api: FakeApiServer) -> None:
    """Becoming absent is a change its owner must hear of: the Gateway source counts an
    absent optional kind as synced, so when that 404 is the last list to answer, nothing
    else would wake it to build its first plan (seen: HTTPRoutes not served at all in a
    cluster without the TCPRoute CRD, when its 404 came after every other list). Once per
    flip, not at every retry."""
    api.faults.add(faults.http(404, "the server could not find the requested resource"),
                   verb="list", count=None)
    sleeps = Sleeps(api)
    told: list[bool] = []
    async with informing(api, sleeps=sleeps, on_change=lambda: told.append(inf.absent)) as inf:
        await sleeps.until(3)
        assert inf.absent
    assert told == [True]
