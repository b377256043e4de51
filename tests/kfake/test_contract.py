"""The fake's own conformance tests: KUBE_API_FAKE.md as assertions.

Driven through the real kubernetes_asyncio client where it applies, and through raw aiohttp
where the client hides the wire (shapes, headers, status codes, stream bytes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kfake import FakeApiServer

JsonObj = dict[str, Any]
NS = "default"


def svc(name: str, port: int = 80, ns: str = NS, labels: dict[str, str] | None = None) -> JsonObj:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
            "spec": {"ports": [{"port": port}]}}


def lease_body(name: str = "pylb", holder: str = "a", rv: str | None = None) -> JsonObj:
    meta: JsonObj = {"name": name, "namespace": NS}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "acquireTime": "2026-01-01T00:00:00.000000Z",
                     "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 0}}


def raw(obj: JsonObj) -> Any:
    """A dict body for a KA call typed to take a model (KA serializes dicts as they are)."""
    return obj


def status_of(exc: ApiException) -> JsonObj:
    body: JsonObj = json.loads(exc.body or b"{}")
    return body


@pytest.fixture
async def http(kube_api: FakeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=kube_api.url) as session:
        yield session


@pytest.fixture
async def api_client(kube_api: FakeApiServer) -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient(kube_api.configuration()) as ac:
        yield ac


async def read_lines(resp: aiohttp.ClientResponse, limit: int = 100) -> list[JsonObj]:
    out = []
    for _ in range(limit):
        line = await resp.content.readline()
        if not line:
            break
        out.append(json.loads(line))
    return out


# ---- list shapes and resourceVersion ---------------------------------------------------------


async def test_list_shape_items_carry_no_kind(kube_api: FakeApiServer,
                                              http: aiohttp.ClientSession) -> None:
    kube_api.store.create("services", svc("web"))
    async with http.get("/api/v1/namespaces/default/services") as r:
        assert r.status == 200
        body = await r.json()
    assert body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(kube_api.store.rv)
    (item,) = body["items"]
    assert "kind" not in item and "apiVersion" not in item
    meta = item["metadata"]
    assert {"uid", "resourceVersion", "creationTimestamp", "generation"} <= meta.keys()
    async with http.get("/api/v1/namespaces/default/services/web") as r:
        single = await r.json()
    assert single["kind"] == "Service" and single["apiVersion"] == "v1"


async def test_empty_list_has_empty_items(http: aiohttp.ClientSession) -> None:
    async with http.get("/apis/discovery.k8s.io/v1/endpointslices") as r:
        body = await r.json()
    assert body["items"] == [] and body["kind"] == "EndpointSliceList"


async def test_list_rv_is_store_rv_not_max_item_rv(kube_api: FakeApiServer,
                                                   api_client: client.ApiClient) -> None:
    kube_api.store.create("services", svc("web"))
    kube_api.store.create("leases", lease_body())
    lst = await client.CoreV1Api(api_client).list_namespaced_service(NS)
    assert int(lst.metadata.resource_version) == kube_api.store.rv
    assert int(lst.items[0].metadata.resource_version) < kube_api.store.rv


async def test_one_global_rv_counter_across_kinds(kube_api: FakeApiServer) -> None:
    a = kube_api.store.create("services", svc("web"))
    b = kube_api.store.create("leases", lease_body())
    c = kube_api.store.create("endpointslices", {
        "metadata": {"name": "web-1", "namespace": NS}, "addressType": "IPv4"})
    rvs = [int(o["metadata"]["resourceVersion"]) for o in (a, b, c)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


# ---- watch --------------------------------------------------------------------------------


async def test_ka_watch_from_list_rv_sees_changes(kube_api: FakeApiServer,
                                                  api_client: client.ApiClient) -> None:
    store = kube_api.store
    store.create("services", svc("web"))
    v1 = client.CoreV1Api(api_client)
    lst = await v1.list_namespaced_service(NS)
    store.create("services", svc("db", 3306))
    web = store.read("services", NS, "web")
    web["spec"]["ports"][0]["port"] = 8080
    store.update("services", web)
    store.delete("services", NS, "db")
    seen = []
    async with watch.Watch().stream(v1.list_namespaced_service, NS,
                                    resource_version=lst.metadata.resource_version,
                                    timeout_seconds=1) as stream:
        async for ev in stream:
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 3:
                break
    assert seen == [("ADDED", "db"), ("MODIFIED", "web"), ("DELETED", "db")]


async def test_watch_without_rv_sends_synthetic_added(kube_api: FakeApiServer,
                                                      http: aiohttp.ClientSession) -> None:
    kube_api.store.create("services", svc("b"))
    kube_api.store.create("services", svc("a"))
    async with http.get("/api/v1/services", params={"watch": "True", "timeoutSeconds": "1"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        events = await read_lines(r)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b")]
    assert events[0]["object"]["kind"] == "Service"


async def test_deleted_event_carries_deletion_rv(kube_api: FakeApiServer,
                                                 http: aiohttp.ClientSession) -> None:
    created = kube_api.store.create("services", svc("web"))
    start = kube_api.store.rv
    kube_api.store.delete("services", NS, "web")
    async with http.get("/api/v1/namespaces/default/services",
                        params={"watch": "1", "resourceVersion": str(start),
                                "timeoutSeconds": "1"}) as r:
        (ev,) = await read_lines(r)
    assert ev["type"] == "DELETED"
    assert ev["object"]["metadata"]["resourceVersion"] == str(kube_api.store.rv)
    assert ev["object"]["metadata"]["uid"] == created["metadata"]["uid"]


async def test_too_old_rv_is_200_then_error_event(kube_api: FakeApiServer,
                                                  http: aiohttp.ClientSession) -> None:
    for i in range(3):
        kube_api.store.create("services", svc(f"s{i}"))
    kube_api.store.compact()
    async with http.get("/api/v1/services", params={"watch": "True", "resourceVersion": "2"}) as r:
        assert r.status == 200
        events = await read_lines(r)
    (ev,) = events
    assert ev["type"] == "ERROR"
    assert ev["object"] == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: 2 ({kube_api.store.compacted_rv})",
        "reason": "Expired", "code": 410}


async def test_ka_watch_410_raised_after_one_retry(kube_api: FakeApiServer,
                                                   api_client: client.ApiClient) -> None:
    kube_api.store.create("services", svc("web"))
    kube_api.store.compact()
    v1 = client.CoreV1Api(api_client)
    before = len(kube_api.requests)
    with pytest.raises(ApiException) as info:
        async with watch.Watch().stream(v1.list_namespaced_service, NS,
                                        resource_version="1") as stream:
            async for _ in stream:
                pass
    assert info.value.status == 410
    watches = [r for r in list(kube_api.requests)[before:] if r.verb == "watch"]
    assert len(watches) == 2 and all("resourceVersion=1" in r.query for r in watches)


async def test_history_size_bounds_the_watch_window() -> None:
    async with FakeApiServer(history_size=3) as api:
        for i in range(5):
            api.store.create("services", svc(f"s{i}"))
        assert api.store.compacted_rv == api.store.rv - 3
        with pytest.raises(Exception) as info:
            api.store.subscribe(api.store.resource("services"), None, api.store.rv - 4)
        assert "410" in str(info.value)


async def test_future_rv_is_504_too_large(kube_api: FakeApiServer,
                                          http: aiohttp.ClientSession) -> None:
    future = str(kube_api.store.rv + 100)
    for params in ({"watch": "True", "resourceVersion": future}, {"resourceVersion": future}):
        async with http.get("/api/v1/services", params=params) as r:
            assert r.status == 504
            assert r.headers["Retry-After"] == "1"
            body = await r.json()
        assert body["reason"] == "Timeout"
        assert body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
        assert body["details"]["retryAfterSeconds"] == 1


# ---- leases, CAS and Status bodies ----------------------------------------------------------


async def test_lease_cas_through_ka(kube_api: FakeApiServer,
                                    api_client: client.ApiClient) -> None:
    co = client.CoordinationV1Api(api_client)
    with pytest.raises(ApiException) as info:
        await co.read_namespaced_lease("pylb", NS)
    assert info.value.status == 404
    assert status_of(info.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'leases.coordination.k8s.io "pylb" not found', "reason": "NotFound",
        "details": {"name": "pylb", "group": "coordination.k8s.io", "kind": "leases"},
        "code": 404}
    created = await co.create_namespaced_lease(NS, raw(lease_body()))
    with pytest.raises(ApiException) as info:
        await co.create_namespaced_lease(NS, raw(lease_body()))
    assert info.value.status == 409
    assert status_of(info.value)["reason"] == "AlreadyExists"
    created.spec.holder_identity = "b"
    created.spec.acquire_time = datetime(2026, 1, 1, 0, 0, 1, 5, tzinfo=UTC)
    created.spec.renew_time = datetime(2026, 1, 1, 0, 0, 1, 5, tzinfo=UTC)
    renewed = await co.replace_namespaced_lease("pylb", NS, created)
    assert renewed.spec.holder_identity == "b"
    assert int(renewed.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ApiException) as info:
        await co.replace_namespaced_lease("pylb", NS, created)
    body = status_of(info.value)
    assert info.value.status == 409 and body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "pylb": the object has '
        "been modified; please apply your changes to the latest version and try again")


async def test_lease_put_without_rv_is_422(kube_api: FakeApiServer,
                                           http: aiohttp.ClientSession) -> None:
    kube_api.store.create("leases", lease_body())
    async with http.put("/apis/coordination.k8s.io/v1/namespaces/default/leases/pylb",
                        json=lease_body(holder="b")) as r:
        assert r.status == 422
        body = await r.json()
    assert body["reason"] == "Invalid"
    assert body["message"] == ('Lease.coordination.k8s.io "pylb" is invalid: '
                               "metadata.resourceVersion: Invalid value: 0: must be specified "
                               "for an update")
    assert body["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
        "message": "Invalid value: 0: must be specified for an update"}]


async def test_lease_create_on_put(kube_api: FakeApiServer, http: aiohttp.ClientSession) -> None:
    async with http.put("/apis/coordination.k8s.io/v1/namespaces/default/leases/pylb",
                        json=lease_body()) as r:
        assert r.status == 201
    assert kube_api.store.get("leases", NS, "pylb") is not None


@pytest.mark.parametrize("stamp", [
    "2026-01-01T00:00:00Z",            # isoformat() when microsecond == 0
    "2026-01-01T00:00:00.000000",      # naive datetime: no zone
    "2026-01-01T00:00:00.123Z",        # milliseconds
])
async def test_lease_microtime_is_strict(http: aiohttp.ClientSession, stamp: str) -> None:
    body = lease_body()
    body["spec"]["renewTime"] = stamp
    async with http.post("/apis/coordination.k8s.io/v1/namespaces/default/leases",
                         json=body) as r:
        assert r.status == 400
        status = await r.json()
    assert status["reason"] == "BadRequest"
    assert "2006-01-02T15:04:05.000000Z07:00" in status["message"]


async def test_lease_microtime_with_offset_accepted(http: aiohttp.ClientSession) -> None:
    body = lease_body()
    body["spec"]["renewTime"] = "2026-01-01T01:00:00.000001+01:00"
    async with http.post("/apis/coordination.k8s.io/v1/namespaces/default/leases",
                         json=body) as r:
        assert r.status == 201


async def test_ka_lease_round_trip_with_whole_second_times_is_rejected(
        kube_api: FakeApiServer, api_client: client.ApiClient) -> None:
    # KA deserializes "…00.000000Z" to a datetime and writes it back with isoformat(), which
    # drops the fraction when microsecond == 0: the real server answers 400, so must the fake.
    co = client.CoordinationV1Api(api_client)
    created = await co.create_namespaced_lease(NS, raw(lease_body()))
    assert created.spec.renew_time.microsecond == 0
    with pytest.raises(ApiException) as info:
        await co.replace_namespaced_lease("pylb", NS, created)
    assert info.value.status == 400
