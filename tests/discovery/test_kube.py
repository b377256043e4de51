"""KubeSource end to end: the real kubernetes-asyncio client against the fake API server
(tests/kfake) over loopback HTTP(S), with tiny timeouts so the whole file runs in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from discovery.kube import KubeSource
from pylb.config import KubeSettings, Settings
from pylb.kubeapi import api_client_from_dict, client_for, pod_namespace
from pylb.model import RouteTable
from tests.kfake import FakeApiServer, faults

FAST = KubeSettings(watch_timeout=30, read_timeout=2.0, connect_timeout=2.0, list_timeout=5.0,
                    backoff_base=0.01, backoff_cap=0.05, coalesce_window=0.01,
                    coalesce_max_delay=0.05, dns_interval=0.2, dns_timeout=2.0)
WAIT = 10.0  # only ever reached when a test is failing


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp honours *_PROXY (trust_env=True): keep loopback direct."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost,::1")


@pytest.fixture
async def kube_api(no_proxy_env: None) -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.2, bookmark_before_deadline=0.0) as api:
        yield api


def settings(**kw: Any) -> Settings:
    kube = kw.pop("kube", FAST)
    return Settings(use_cluster_service=False, kube=kube, **kw)


# --- objects as the API takes them -----------------------------------------------------------

def service(name: str, ns: str = "default", port: int = 80, target: int = 8080,
            **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "ClusterIP", "ports": [
        {"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns}, "spec": body}


def eslice(service_name: str, ips: list[str], ns: str = "default", port: int = 8080,
           suffix: str = "a", ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-{suffix}", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


def endpoints(service_name: str, ips: list[str], ns: str = "default",
              port: int = 8080) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": service_name, "namespace": ns},
            "subsets": [{"addresses": [{"ip": ip} for ip in ips],
                         "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}]}


def servers(table: RouteTable, backend: str) -> set[str]:
    b = table.get_backend(backend)
    return set() if b is None else {f"{s.address}:{s.port}" for s in b.servers}


def has(backend: str, *expected: str) -> Callable[[RouteTable], bool]:
    return lambda t: servers(t, backend) == set(expected)


# --- running a source ------------------------------------------------------------------------

class Published:
    """The tables a running source published, and a way to wait for one."""

    def __init__(self) -> None:
        self.tables: list[RouteTable] = []
        self._event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def __call__(self, table: RouteTable) -> None:
        self.tables.append(table)
        self._event.set()

    @property
    def last(self) -> RouteTable:
        return self.tables[-1]

    async def until(self, pred: Callable[[RouteTable], bool]) -> RouteTable:
        async with asyncio.timeout(WAIT):
            while True:
                if self.tables and pred(self.tables[-1]):
                    return self.tables[-1]
                if self.task is not None and self.task.done():
                    self.task.result()
                    raise AssertionError("the source stopped")
                self._event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event.wait(), 0.05)


@contextlib.asynccontextmanager
async def running(source: KubeSource) -> AsyncIterator[Published]:
    pub = Published()
    pub.task = asyncio.create_task(source.run(pub))
    try:
        yield pub
    finally:
        pub.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pub.task


def source_for(api: FakeApiServer, s: Settings, **kw: Any) -> KubeSource:
    async def factory() -> ApiClient:
        return await api_client_from_dict(api.kubeconfig_dict())
    return KubeSource(s, factory, **kw)


async def until_metric(source: KubeSource, key: str, at_least: int) -> None:
    async with asyncio.timeout(WAIT):
        while source.metrics()[key] < at_least:
            await asyncio.sleep(0.01)


def check_versions(pub: Published) -> None:
    versions = [t.version for t in pub.tables]
    assert versions == list(range(1, len(versions) + 1))
    for a, b in zip(pub.tables, pub.tables[1:], strict=False):
        assert a != b, "an unchanged table was published again"


# --- sync and changes ------------------------------------------------------------------------

async def test_initial_sync_then_add_modify_delete(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    source = source_for(kube_api, settings())
    assert not source.synced
    async with running(source) as pub:
        first = await pub.until(has("default/web:80", "10.0.0.1:8080"))
        assert source.synced
        assert first.version == 1
        assert [r.prefix for r in first.http] == ["/web"]

        store.create("services", service("api", port=8000, target=9000))
        store.create("endpointslices", eslice("api", ["10.0.1.1", "10.0.1.2"], port=9000))
        await pub.until(has("default/api:8000", "10.0.1.1:9000", "10.0.1.2:9000"))

        store.put("endpointslices", eslice("web", ["10.0.0.1", "10.0.0.2"]))
        await pub.until(has("default/web:80", "10.0.0.1:8080", "10.0.0.2:8080"))

        store.create("endpointslices", eslice("web", ["10.0.0.3"], suffix="b"))
        await pub.until(has("default/web:80", "10.0.0.1:8080", "10.0.0.2:8080",
                            "10.0.0.3:8080"))

        store.delete("endpointslices", "default", "web-a")
        await pub.until(has("default/web:80", "10.0.0.3:8080"))

        store.delete("services", "default", "api")
        table = await pub.until(lambda t: t.get_backend("default/api:8000") is None)
        assert [r.prefix for r in table.http] == ["/web"]
    check_versions(pub)
    m = source.metrics()
    assert (m["objects_services"], m["objects_endpointslices"]) == (1, 2)
    assert m["version"] == pub.last.version
    assert m["synced"] == 1.0
    assert all(isinstance(v, float) for v in m.values())  # /metrics takes float(v)
    assert m["relists"] == 0
    assert m["last_sync"] == source.last_sync
    assert m["last_event_to_table_seconds"] >= 0


async def test_a_change_replans_one_service_and_shares_the_rest(
        kube_api: FakeApiServer) -> None:
    store = kube_api.store
    for i in range(30):
        store.create("services", service(f"s{i:02}"))
        store.create("endpointslices", eslice(f"s{i:02}", [f"127.1.0.{i + 1}"]))
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        first = await pub.until(lambda t: len(t.backends) == 30)
        assert len(pub.tables) == 1  # built once, after every informer had listed
        assert source.metrics()["plans"] == 30
        store.put("endpointslices", eslice("s07", ["127.1.1.7"]))
        second = await pub.until(has("default/s07:80", "127.1.1.7:8080"))
        assert source.metrics()["plans"] == 31
        for old, new in zip(first.backends, second.backends, strict=True):
            assert (new is old) == (new.name != "default/s07:80")
        assert all(a is b for a, b in zip(first.http, second.http, strict=True))
        # a relist that finds one change re-plans that one service only
        kube_api.drop_watches()
        store.put("endpointslices", eslice("s08", ["127.1.1.8"]))
        store.compact()
        third = await pub.until(has("default/s08:80", "127.1.1.8:8080"))
        assert source.metrics()["relists"] >= 1
        assert source.metrics()["plans"] == 32
        assert third.backend("default/s09:80") is first.backend("default/s09:80")
    check_versions(pub)


async def test_empty_cluster_publishes_an_empty_table(kube_api: FakeApiServer) -> None:
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        table = await pub.until(lambda t: True)
        assert table.backends == () and table.http == ()


async def test_unchanged_tables_are_not_published(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        await pub.until(has("default/web:80", "10.0.0.1:8080"))
        before = len(pub.tables)
        events = source.metrics()["events"]
        labelled = service("web")
        labelled["metadata"]["labels"] = {"team": "blue"}  # no route depends on labels
        store.put("services", labelled)
        await until_metric(source, "events", events + 1)
        store.put("endpointslices", eslice("web", ["10.0.0.9"]))
        await pub.until(has("default/web:80", "10.0.0.9:8080"))
        assert len(pub.tables) == before + 1
    check_versions(pub)


async def test_bursts_are_coalesced(kube_api: FakeApiServer) -> None:
    kube = dataclasses.replace(FAST, coalesce_window=0.2, coalesce_max_delay=2.0)
    source = source_for(kube_api, settings(kube=kube))
    async with running(source) as pub:
        await pub.until(lambda t: True)
        for i in range(40):
            kube_api.store.create("services", service(f"s{i:02}"))
        await pub.until(lambda t: len(t.backends) == 40)
        assert len(pub.tables) < 10  # 40 events, a handful of tables at most
    check_versions(pub)


async def test_a_failing_translation_keeps_the_last_table(kube_api: FakeApiServer) -> None:
    from discovery.translate import translate

    calls = 0

    def flaky_translate(objects: Any, s: Settings) -> RouteTable:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("bug in translate")
        return translate(objects, s)

    kube_api.store.create("services", service("web"))
    source = source_for(kube_api, settings(), translate_fn=flaky_translate)
    async with running(source) as pub:
        await pub.until(lambda t: t.get_backend("default/web:80") is not None)
        kube_api.store.create("services", service("two"))
        await until_metric(source, "translate_errors", 1)
        assert len(pub.tables) == 1
        kube_api.store.create("services", service("three"))
        await pub.until(lambda t: len(t.backends) == 3)
    check_versions(pub)


async def test_a_failing_publish_does_not_stop_the_source(kube_api: FakeApiServer) -> None:
    class RefusesSecond(Published):
        def __call__(self, table: RouteTable) -> None:
            self.offered = getattr(self, "offered", 0) + 1
            if self.offered == 2:
                raise RuntimeError("worker pipe closed")
            super().__call__(table)

    kube_api.store.create("services", service("web"))
    source = source_for(kube_api, settings())
    pub = RefusesSecond()
    pub.task = asyncio.create_task(source.run(pub))
    try:
        await pub.until(lambda t: len(t.backends) == 1)
        kube_api.store.create("services", service("two"))  # refused, then offered again
        table = await pub.until(lambda t: len(t.backends) == 2)
        assert table.version == 3  # the refused table used up v2
        kube_api.store.create("services", service("three"))
        table = await pub.until(lambda t: len(t.backends) == 3)
        assert table.version == 4
    finally:
        pub.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pub.task
    assert pub.offered == 4


# --- namespaces ------------------------------------------------------------------------------

def _three_namespaces(api: FakeApiServer) -> None:
    for ns, ip in (("a", "10.1.0.1"), ("b", "10.2.0.1"), ("c", "10.3.0.1")):
        api.store.create("services", service(f"web-{ns}", ns=ns))
        api.store.create("endpointslices", eslice(f"web-{ns}", [ip], ns=ns))


async def test_several_namespaces(kube_api: FakeApiServer) -> None:
    _three_namespaces(kube_api)
    source = source_for(kube_api, settings(namespaces=("a", "b", "a")))
    async with running(source) as pub:
        table = await pub.until(lambda t: len(t.backends) == 2)
        assert {b.name for b in table.backends} == {"a/web-a:80", "b/web-b:80"}
        assert servers(table, "b/web-b:80") == {"10.2.0.1:8080"}
        kube_api.store.create("services", service("late", ns="c"))
        kube_api.store.create("services", service("late", ns="b"))
        table = await pub.until(lambda t: len(t.backends) == 3)
        assert table.get_backend("b/late:80") is not None
        assert table.get_backend("c/late:80") is None
    assert len(source.informers()) == 4
    paths = {r.path for r in kube_api.requests}
    assert "/api/v1/namespaces/a/services" in paths
    assert "/apis/discovery.k8s.io/v1/namespaces/b/endpointslices" in paths
    assert not any(p.endswith("/c/services") for p in paths)


async def test_all_namespaces(kube_api: FakeApiServer) -> None:
    _three_namespaces(kube_api)
    source = source_for(kube_api, settings(namespaces=()))
    async with running(source) as pub:
        table = await pub.until(lambda t: len(t.backends) == 3)
        assert servers(table, "c/web-c:80") == {"10.3.0.1:8080"}
        kube_api.store.create("services", service("new", ns="d"))
        await pub.until(lambda t: t.get_backend("d/new:80") is not None)
    assert {r.path for r in kube_api.requests} >= {"/api/v1/services",
                                                   "/apis/discovery.k8s.io/v1/endpointslices"}


# --- 410 and relists -------------------------------------------------------------------------

async def test_410_relists_and_replaces_the_store(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("services", service("old"))
    store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        await pub.until(lambda t: t.get_backend("default/old:80") is not None)
        # Changed while the watches are down, then the history compacted: the informers
        # come back with versions the server no longer has.
        kube_api.drop_watches()
        store.delete("services", "default", "old")
        store.create("services", service("new"))
        store.compact()
        table = await pub.until(lambda t: t.get_backend("default/new:80") is not None)
        assert table.get_backend("default/old:80") is None
        assert servers(table, "default/web:80") == {"10.0.0.1:8080"}
        assert all(servers(t, "default/web:80") == {"10.0.0.1:8080"} for t in pub.tables)
    assert source.metrics()["relists"] >= 1
    check_versions(pub)


async def test_expired_continue_token_restarts_the_list(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    for i in range(7):
        store.create("services", service(f"s{i}"))
    pages = 0
    real_list_page = store.list_page

    def five_minutes_before_second_page(*args: Any, **kw: Any) -> Any:
        nonlocal pages
        if not kw.get("continue_token"):
            return real_list_page(*args, **kw)
        pages += 1
        if pages == 1:
            store.clock = lambda: time.time() + 600  # the token's 5 minutes are up
        try:
            return real_list_page(*args, **kw)
        finally:
            store.clock = time.time

    store.list_page = five_minutes_before_second_page  # type: ignore[method-assign]
    source = source_for(kube_api, settings(kube=dataclasses.replace(FAST, page_size=3)))
    async with running(source) as pub:
        table = await pub.until(lambda t: len(t.backends) == 7)
    assert len(table.backends) == 7
    svc_lists = [r for r in kube_api.requests
                 if r.path == "/api/v1/namespaces/default/services" and r.verb == "list"]
    # first page, expired continue (410), then the whole list again: 1 + 1 + 3 pages
    assert len(svc_lists) == 5
    assert "limit=3" in svc_lists[0].query
    assert source.metrics()["relists"] == 1


# --- faults ----------------------------------------------------------------------------------

WATCH_FAULTS = {
    "429-text": faults.text429(retry_after=0),
    "429-json": faults.http(429, retry_after=0),
    "500": faults.http(500),
    "503": faults.http(503),
    "504": faults.http(504),
    "reset": faults.reset(),
    "empty-200": faults.eof_after(0),
    "eof-after-1": faults.eof_after(1),
    "reset-after-1": faults.reset_after(1),
    "truncated": faults.truncate_after(1),
    "401": faults.http(401),
}


@pytest.mark.parametrize("name", sorted(WATCH_FAULTS))
async def test_watch_faults_keep_the_last_table(kube_api: FakeApiServer, name: str) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        await pub.until(has("default/web:80", "10.0.0.1:8080"))
        kube_api.faults.add(WATCH_FAULTS[name], verb="watch", count=3)
        kube_api.drop_watches()
        await until_metric(source, "errors", 1)
        store.create("endpointslices", eslice("web", ["10.0.0.2"], suffix="b"))
        await pub.until(has("default/web:80", "10.0.0.1:8080", "10.0.0.2:8080"))
        assert all("10.0.0.1:8080" in servers(t, "default/web:80") for t in pub.tables)
    assert source.metrics()["errors"] >= 1
    assert source.metrics()["relists"] == 0  # errors resume the watch; only 410 relists
    check_versions(pub)


LIST_FAULTS = {
    "403": faults.http(403),
    "404": faults.http(404),
    "429-text": faults.text429(retry_after=0),
    "500": faults.http(500),
    "503": faults.http(503),
    "reset": faults.reset(),
}


@pytest.mark.parametrize("name", sorted(LIST_FAULTS))
async def test_list_faults_delay_the_first_table(kube_api: FakeApiServer, name: str) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    kube_api.faults.add(LIST_FAULTS[name], verb="list", path_re="endpointslices$", count=3)
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        table = await pub.until(lambda t: True)
        assert servers(table, "default/web:80") == {"10.0.0.1:8080"}  # never a partial one
        assert pub.tables == [table]
    # aiohttp itself retries an idempotent request once when a reused connection is reset
    assert 1 <= source.metrics()["errors"] <= 3
    last_error = {i["name"]: i["last_error"] for i in source.informers()}
    hint = {"403": "RBAC", "404": "--endpoints-api=endpoints"}.get(name, "")
    assert hint in last_error["endpointslices@default"]


async def test_relist_failures_keep_the_last_table(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        await pub.until(has("default/web:80", "10.0.0.1:8080"))
        kube_api.faults.add(faults.http(500), verb="list", count=4)
        kube_api.drop_watches()
        store.put("endpointslices", eslice("web", ["10.0.0.2"]))
        store.compact()
        await pub.until(has("default/web:80", "10.0.0.2:8080"))
        assert [servers(t, "default/web:80") for t in pub.tables] == [
            {"10.0.0.1:8080"}, {"10.0.0.2:8080"}]
    assert source.metrics()["relists"] >= 1


async def test_retry_after_is_honoured(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    kube_api.faults.add(faults.text429(retry_after=7), verb="list", path_re="services$")
    kube = dataclasses.replace(FAST, backoff_cap=60.0, dns_interval=3600.0)
    source = source_for(kube_api, settings(kube=kube), sleep=sleep, rng=lambda: 0.0)
    async with running(source) as pub:
        await pub.until(lambda t: t.get_backend("default/web:80") is not None)
    assert 7.0 in slept


async def test_silent_watch_is_detected(no_proxy_env: None) -> None:
    async with FakeApiServer(bookmark_interval=3600.0) as api:  # no bookmarks at all
        api.store.create("services", service("web"))
        kube = dataclasses.replace(FAST, read_timeout=0.2)
        source = source_for(api, settings(kube=kube))
        async with running(source) as pub:
            await pub.until(lambda t: t.get_backend("default/web:80") is not None)
            await until_metric(source, "watch_restarts", 2)
            api.store.create("endpointslices", eslice("web", ["10.0.0.1"]))
            await pub.until(has("default/web:80", "10.0.0.1:8080"))
        assert "silent" in json.dumps(source.informers())


async def test_hung_request_is_detected(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    kube = dataclasses.replace(FAST, read_timeout=0.2)
    source = source_for(kube_api, settings(kube=kube))
    async with running(source) as pub:
        await pub.until(lambda t: t.get_backend("default/web:80") is not None)
        kube_api.faults.add(faults.hang(), verb="watch", count=2)
        kube_api.store.close_watchers()  # end the watches, leave hung requests hanging
        await until_metric(source, "errors", 2)
        store.create("endpointslices", eslice("web", ["10.0.0.1"]))
        await pub.until(has("default/web:80", "10.0.0.1:8080"))


async def test_server_restart(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        await pub.until(has("default/web:80", "10.0.0.1:8080"))
        await kube_api.restart(down_for=0.2)
        kube_api.store.put("endpointslices", eslice("web", ["10.0.0.2"]))
        await pub.until(has("default/web:80", "10.0.0.2:8080"))
        assert all(servers(t, "default/web:80") for t in pub.tables)


async def test_server_restored_from_an_older_backup(kube_api: FakeApiServer) -> None:
    """The server comes back with a lower resourceVersion: resuming the watch gets 504
    "Too large resource version" for ever, so the informer must relist."""
    for i in range(5):
        kube_api.store.create("services", service(f"s{i}"))
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        await pub.until(lambda t: len(t.backends) == 5)
        await kube_api.restart(wipe=True)
        kube_api.store.create("services", service("restored"))
        table = await pub.until(lambda t: len(t.backends) == 1)
        assert table.get_backend("default/restored:80") is not None
    assert source.metrics()["relists"] >= 1


# --- kinds -----------------------------------------------------------------------------------

async def test_legacy_endpoints_mode(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpoints", endpoints("web", ["10.0.0.1"]))
    store.create("endpointslices", eslice("web", ["10.9.9.9"]))  # not read in this mode
    source = source_for(kube_api, settings(endpoints_api="endpoints"))
    async with running(source) as pub:
        await pub.until(has("default/web:80", "10.0.0.1:8080"))
        store.put("endpoints", endpoints("web", ["10.0.0.1", "10.0.0.2"]))
        await pub.until(has("default/web:80", "10.0.0.1:8080", "10.0.0.2:8080"))
    m = source.metrics()
    assert (m["objects_services"], m["objects_endpoints"]) == (1, 1)
    assert "objects_endpointslices" not in m
    assert not any("endpointslices" in r.path for r in kube_api.requests)


async def test_externalname_is_resolved(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "localhost",
                 "ports": [{"name": "mysql", "port": 3306, "protocol": "TCP"}]}})
    source = source_for(kube_api, settings())
    async with running(source) as pub:
        table = await pub.until(lambda t: bool(servers(t, "default/db:3306")))
    assert servers(table, "default/db:3306") <= {"127.0.0.1:3306", "::1:3306"}
    assert source.metrics()["external_names"] == 1


async def test_externalname_is_re_resolved(kube_api: FakeApiServer) -> None:
    answers = {"db.example": ("192.0.2.1",)}

    async def resolver(name: str) -> tuple[str, ...]:
        return answers[name]

    kube_api.store.create("services", service("db", type="ExternalName",
                                              externalName="db.example"))
    source = source_for(kube_api, settings(), resolver=resolver)
    async with running(source) as pub:
        await pub.until(has("default/db:80", "192.0.2.1:80"))
        answers["db.example"] = ("192.0.2.2", "192.0.2.3")
        await pub.until(has("default/db:80", "192.0.2.2:80", "192.0.2.3:80"))


# --- client set-up ---------------------------------------------------------------------------

async def _sync_once(s: Settings, api: FakeApiServer, **kw: Any) -> RouteTable:
    api.store.create("services", service("web"))
    api.store.create("endpointslices", eslice("web", ["10.0.0.1"]))
    async def factory() -> ApiClient:
        return await client_for(s, **kw)

    async with running(KubeSource(s, factory)) as pub:
        return await pub.until(has("default/web:80", "10.0.0.1:8080"))


def _write_kubeconfig(api: FakeApiServer, path: Path, **kw: Any) -> str:
    import yaml

    path.write_text(yaml.safe_dump(api.kubeconfig_dict(**kw)))
    return str(path)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_kubeconfig_file(no_proxy_env: None, tmp_path: Path, tls: bool) -> None:
    async with FakeApiServer(tls=tls, tokens={"secret"}) as api:
        path = _write_kubeconfig(api, tmp_path / "config", token="secret")
        await _sync_once(settings(kubeconfig=path), api)
        assert all(r.authorization == "Bearer secret" for r in api.requests)


async def test_kubeconfig_from_environment_and_context(no_proxy_env: None,
                                                       tmp_path: Path) -> None:
    async with FakeApiServer(tls=True) as api:
        doc = api.kubeconfig_dict()
        doc["clusters"].append({"name": "nowhere",
                                "cluster": {"server": "http://127.0.0.1:9"}})
        doc["contexts"].append({"name": "nowhere",
                                "context": {"cluster": "nowhere", "user": "kfake"}})
        doc["current-context"] = "nowhere"
        import yaml

        path = tmp_path / "config"
        path.write_text(yaml.safe_dump(doc))
        await _sync_once(settings(context="kfake"), api,
                         environ={"KUBECONFIG": f"{tmp_path}/missing:{path}"})


async def test_in_cluster_with_token_rotation(no_proxy_env: None, tmp_path: Path) -> None:
    async with FakeApiServer(tls=True, tokens={"one"}) as api:
        env = api.write_incluster(tmp_path / "sa", token="one", namespace="shop")
        environ = {k: v for k, v in env.items() if k.startswith("KUBERNETES_")}
        s = Settings(use_cluster_service=True, kube=FAST)
        assert pod_namespace(str(tmp_path / "sa")) == "shop"
        api.store.create("services", service("web"))

        async def factory() -> ApiClient:
            return await client_for(s, environ=environ,
                                    serviceaccount_dir=str(tmp_path / "sa"))

        source = KubeSource(s, factory)
        async with running(source) as pub:
            await pub.until(lambda t: t.get_backend("default/web:80") is not None)
            api.tokens = {"two"}  # the old token is now refused
            (tmp_path / "sa" / "token.new").write_text("two")
            (tmp_path / "sa" / "token.new").rename(tmp_path / "sa" / "token")
            api.drop_watches()
            api.store.create("endpointslices", eslice("web", ["10.0.0.1"]))
            await pub.until(has("default/web:80", "10.0.0.1:8080"))
        assert api.requests[-1].authorization == "Bearer two"
        assert api.url.startswith("https://")


async def test_in_cluster_outside_a_pod_fails_clearly(tmp_path: Path) -> None:
    from kubernetes_asyncio.config import ConfigException

    with pytest.raises(ConfigException):
        await client_for(Settings(use_cluster_service=True), environ={},
                         serviceaccount_dir=str(tmp_path))
    with pytest.raises(ConfigException):
        await client_for(Settings(use_cluster_service=False,
                                  kubeconfig=str(tmp_path / "nope")))
