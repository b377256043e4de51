"""The fake's own conformance tests: KUBE_API_FAKE.md as assertions.

Driven through the real kubernetes_asyncio client where it applies, and through raw aiohttp
where the client hides the wire (shapes, headers, status codes, stream bytes).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client, watch
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from tests.kfake import ApiError, FakeApiServer, faults
from tests.kfake import rv as rvcodec
from tests.kfake.app import parse_bool, parse_path
from tests.kfake.patch import merge_patch, strategic_merge_patch
from tests.kfake.resources import lookup
from tests.kfake.selectors import (
    SelectorError,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
    predicate,
)
from tests.kfake.store import Change, Store
from tests.kfake.watch import convert, next_bookmark_time

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


def raw(obj: JsonObj | list[Any]) -> Any:
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


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `cond` (bounded in time); fail the test if it never holds."""
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


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
    assert {"uid", "resourceVersion", "creationTimestamp"} <= meta.keys()
    assert "generation" not in meta  # the Service strategy keeps none
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
    async with http.get("/api/v1/services", params={"watch": "True", "timeoutSeconds": "5"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        events = await read_lines(r, limit=2)
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
                                "timeoutSeconds": "5"}) as r:
        (ev,) = await read_lines(r, limit=1)
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
        assert body["message"] == (
            f"Timeout: Too large resource version: {future}, current: {kube_api.store.rv}")
        assert body["details"]["causes"] == [
            {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]
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
    assert body["message"] == ('leases.coordination.k8s.io "pylb" is invalid: '
                               "metadata.resourceVersion: Invalid value: 0: must be specified "
                               "for an update")
    assert body["details"]["kind"] == "leases"
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


# ---- pure pieces, as tables -----------------------------------------------------------------


@pytest.mark.parametrize(("values", "want"), [
    ([], False), (["True"], True), (["true"], True), (["1"], True), ([""], True),
    (["0"], False), (["false"], False), (["FALSE"], False), (["no"], True),
])
def test_bool_query_params_as_the_real_server(values: list[str], want: bool) -> None:
    assert parse_bool(values) is want


@pytest.mark.parametrize(("path", "want"), [
    ("/api/v1/services", ("services", None, "", "")),
    ("/api/v1/namespaces/default/services", ("services", "default", "", "")),
    ("/api/v1/namespaces/default/services/web", ("services", "default", "web", "")),
    ("/api/v1/namespaces/default/services/web/status", ("services", "default", "web", "status")),
    ("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x",
     ("leases.coordination.k8s.io", "kube-system", "x", "")),
    ("/apis/discovery.k8s.io/v1/endpointslices", ("endpointslices.discovery.k8s.io", None, "", "")),
    ("/apis/events.k8s.io/v1/namespaces/a/events", ("events.events.k8s.io", "a", "", "")),
    ("/api/v1/namespaces", ("namespaces", None, "", "")),
    ("/api/v1/namespaces/default", ("namespaces", None, "default", "")),
    ("/api/v1/services/web", None),            # namespaced object without a namespace
    ("/api/v1/widgets", None),
    ("/apis/discovery.k8s.io/v1beta1/endpointslices", None),
])
def test_parse_path(path: str, want: tuple[str, str | None, str, str] | None) -> None:
    got = parse_path(path)
    if want is None:
        assert got is None
    else:
        assert got is not None
        assert (got.res.key, got.namespace, got.name, got.subresource) == want


def _change(etype: str, new_labels: dict[str, str] | None,
            old_labels: dict[str, str] | None) -> Change:
    res = lookup("services")

    def obj(labels: dict[str, str] | None, rv: int) -> JsonObj:
        return {"metadata": {"name": "x", "resourceVersion": str(rv), "labels": labels or {}}}

    prev = obj(old_labels, 5) if old_labels is not None else None
    return Change(6, etype, res, NS, "x", obj(new_labels, 6), prev)


@pytest.mark.parametrize(("etype", "new", "old", "want_type", "want_labels"), [
    ("ADDED", {"a": "1"}, None, "ADDED", {"a": "1"}),
    ("ADDED", {"a": "2"}, None, None, None),
    ("MODIFIED", {"a": "1"}, {"a": "1"}, "MODIFIED", {"a": "1"}),
    ("MODIFIED", {"a": "1"}, {"a": "2"}, "ADDED", {"a": "1"}),        # enters the selector
    ("MODIFIED", {"a": "2"}, {"a": "1"}, "DELETED", {"a": "1"}),      # leaves it: old object
    ("MODIFIED", {"a": "2"}, {"a": "3"}, None, None),
    ("DELETED", {"a": "1"}, {"a": "1"}, "DELETED", {"a": "1"}),
    ("DELETED", {"a": "2"}, {"a": "2"}, None, None),
])
def test_watch_selector_enter_and_leave(etype: str, new: dict[str, str], old: dict[str, str] | None,
                                        want_type: str | None,
                                        want_labels: dict[str, str] | None) -> None:
    match = predicate("a=1", "", "services")
    got = convert(_change(etype, new, old), match)
    if want_type is None:
        assert got is None
        return
    assert got is not None
    assert got[0] == want_type
    assert got[1]["metadata"]["labels"] == want_labels
    assert got[1]["metadata"]["resourceVersion"] == "6"  # always the change's revision


@pytest.mark.parametrize(("now", "deadline", "interval", "before", "want"), [
    (0.0, 1000.0, 60.0, 2.0, 60.0),       # periodic
    (950.0, 1000.0, 60.0, 2.0, 998.0),    # the last one, 2 s before the deadline
    (999.0, 1000.0, 60.0, 2.0, None),     # too late for one
    (0.0, 1.0, 60.0, 2.0, None),          # a 1 s watch never gets a bookmark by default
    (0.0, 1.0, 0.2, 0.0, 0.2),
])
def test_next_bookmark_time(now: float, deadline: float, interval: float, before: float,
                            want: float | None) -> None:
    assert next_bookmark_time(now, deadline, interval, before) == want


@pytest.mark.parametrize(("selector", "labels", "want"), [
    ("", {}, True),
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("app in (web,db)", {"app": "db"}, True),
    ("app in (web, db)", {}, False),
    ("app notin (web,db)", {}, True),
    ("app notin (web,db)", {"app": "web"}, False),
    ("app", {"app": ""}, True),
    ("!app", {"app": ""}, False),
    ("!app", {"x": "y"}, True),
    ("kubernetes.io/service-name=web,tier", {"kubernetes.io/service-name": "web", "tier": "1"},
     True),
    ("kubernetes.io/service-name=web,tier", {"kubernetes.io/service-name": "web"}, False),
    ("x=", {"x": ""}, True),
    ("n>3", {"n": "4"}, True),
    ("n<3", {"n": "4"}, False),
])
def test_label_selectors(selector: str, labels: dict[str, str], want: bool) -> None:
    assert labels_match(parse_label_selector(selector), {"metadata": {"labels": labels}}) is want


@pytest.mark.parametrize("selector", [
    "app in (web", "a=b,,c=d", "a b", "-bad=x", "a=b c", "n>x", "a=@",
])
def test_bad_label_selectors(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


@pytest.mark.parametrize(("selector", "want"), [
    ("metadata.name=web", True),
    ("metadata.name==web,metadata.namespace=default", True),
    ("metadata.name!=web", False),
    ("metadata.namespace=kube-system", False),
])
def test_field_selectors(selector: str, want: bool) -> None:
    obj = {"metadata": {"name": "web", "namespace": "default"}}
    assert fields_match(parse_field_selector(selector, "services"), obj) is want


def test_unknown_field_label_is_an_error() -> None:
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.type"):
        parse_field_selector("spec.type=ClusterIP", "services")
    assert parse_field_selector("spec.nodeName=n1", "pods")


SVC = lookup("services")


@pytest.mark.parametrize(("target", "patch", "want"), [
    # merge by port; an item not in the patch stays; a new port is appended
    ({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}},
     {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}},
     {"spec": {"ports": [{"port": 80, "name": "http", "targetPort": 8080},
                         {"port": 443, "name": "https"}]}}),
    ({"spec": {"ports": [{"port": 80}]}},
     {"spec": {"ports": [{"port": 81}]}},
     {"spec": {"ports": [{"port": 80}, {"port": 81}]}}),
    ({"spec": {"ports": [{"port": 80}, {"port": 81}]}},
     {"spec": {"ports": [{"port": 80, "$patch": "delete"}]}},
     {"spec": {"ports": [{"port": 81}]}}),
    # lists without a merge key are replaced whole
    ({"status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}]}}},
     {"status": {"loadBalancer": {"ingress": [{"ip": "3.3.3.3"}]}}},
     {"status": {"loadBalancer": {"ingress": [{"ip": "3.3.3.3"}]}}}),
    # null deletes; $patch: replace replaces a map
    ({"metadata": {"labels": {"a": "1", "b": "2"}}},
     {"metadata": {"labels": {"a": None}}},
     {"metadata": {"labels": {"b": "2"}}}),
    ({"metadata": {"labels": {"a": "1", "b": "2"}}},
     {"metadata": {"labels": {"$patch": "replace", "c": "3"}}},
     {"metadata": {"labels": {"c": "3"}}}),
    ({"metadata": {"finalizers": ["a"]}},
     {"metadata": {"finalizers": ["b"]}},
     {"metadata": {"finalizers": ["a", "b"]}}),
])
def test_strategic_merge_patch(target: JsonObj, patch: JsonObj, want: JsonObj) -> None:
    assert strategic_merge_patch(target, patch, SVC) == want


@pytest.mark.parametrize(("target", "patch", "want"), [
    ({"a": 1, "b": {"c": 2}}, {"b": {"c": None, "d": 3}}, {"a": 1, "b": {"d": 3}}),
    ({"l": [1, 2]}, {"l": [3]}, {"l": [3]}),
    ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
])
def test_merge_patch(target: JsonObj, patch: JsonObj, want: JsonObj) -> None:
    assert merge_patch(target, patch) == want


# ---- pagination and list options -----------------------------------------------------------


async def test_ka_pagination_is_a_consistent_snapshot(kube_api: FakeApiServer,
                                                     api_client: client.ApiClient) -> None:
    store = kube_api.store
    for i in range(7):
        store.create("services", svc(f"s{i}"))
    v1 = client.CoreV1Api(api_client)
    first = await v1.list_namespaced_service(NS, limit=3)
    assert [s.metadata.name for s in first.items] == ["s0", "s1", "s2"]
    assert first.metadata.remaining_item_count == 4
    # changes after the first page do not show in the next ones
    store.delete("services", NS, "s4")
    store.create("services", svc("s3a"))
    names, token, rvs = [], first.metadata._continue, {first.metadata.resource_version}
    for _ in range(10):
        if not token:
            break
        page = await v1.list_namespaced_service(NS, limit=3, _continue=token)
        names += [s.metadata.name for s in page.items]
        rvs.add(page.metadata.resource_version)
        token = page.metadata._continue
    assert names == ["s3", "s4", "s5", "s6"]
    assert len(rvs) == 1


async def test_expired_continue_is_410_with_an_inconsistent_token(
        kube_api: FakeApiServer, http: aiohttp.ClientSession) -> None:
    store = kube_api.store
    for i in range(5):
        store.create("services", svc(f"s{i}"))
    async with http.get("/api/v1/services", params={"limit": "2"}) as r:
        token = (await r.json())["metadata"]["continue"]
    store.delete("services", NS, "s3")
    store.compact()
    async with http.get("/api/v1/services", params={"limit": "2", "continue": token}) as r:
        assert r.status == 410
        body = await r.json()
    assert body["reason"] == "Expired" and body["code"] == 410
    assert body["message"].startswith("The provided continue parameter is too old")
    async with http.get("/api/v1/services",
                        params={"limit": "5", "continue": body["metadata"]["continue"]}) as r:
        rest = await r.json()
    assert [i["metadata"]["name"] for i in rest["items"]] == ["s2", "s4"]  # latest state


async def test_continue_token_expires_after_ttl() -> None:
    now = [1000.0]
    async with FakeApiServer(continue_ttl=300) as api:
        api.store.clock = lambda: now[0]
        for i in range(3):
            api.store.create("services", svc(f"s{i}"))
        _, _, token, _ = api.store.list_page("services", limit=1)
        now[0] += 299
        assert api.store.list_page("services", limit=1, continue_token=token)[1]
        now[0] += 2
        with pytest.raises(Exception, match="too old to display"):
            api.store.list_page("services", limit=1, continue_token=token)


async def test_exact_list_shows_the_past_and_410s_once_compacted(
        kube_api: FakeApiServer, http: aiohttp.ClientSession) -> None:
    store = kube_api.store
    store.create("services", svc("a"))
    then = str(store.rv)
    store.create("services", svc("b"))
    store.delete("services", NS, "a")
    params = {"resourceVersion": then, "resourceVersionMatch": "Exact"}
    async with http.get("/api/v1/services", params=params) as r:
        body = await r.json()
    assert body["metadata"]["resourceVersion"] == then
    assert [i["metadata"]["name"] for i in body["items"]] == ["a"]
    store.compact()
    async with http.get("/api/v1/services", params=params) as r:
        assert r.status == 410
        assert (await r.json())["reason"] == "Expired"


@pytest.mark.parametrize(("params", "field"), [
    ({"resourceVersionMatch": "Exact"}, "resourceVersionMatch"),
    ({"resourceVersionMatch": "Exact", "resourceVersion": "0"}, "resourceVersionMatch"),
    ({"resourceVersionMatch": "Sometimes", "resourceVersion": "1"}, "resourceVersionMatch"),
    ({"sendInitialEvents": "true"}, "sendInitialEvents"),
    ({"watch": "1", "resourceVersionMatch": "NotOlderThan"}, "resourceVersionMatch"),
    ({"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
      "resourceVersionMatch": "NotOlderThan"}, "sendInitialEvents"),  # gate off
])
async def test_bad_list_options_are_422(http: aiohttp.ClientSession, params: dict[str, str],
                                        field: str) -> None:
    async with http.get("/api/v1/namespaces/default/services", params=params) as r:
        assert r.status == 422
        body = await r.json()
    assert body["reason"] == "Invalid"
    assert body["details"]["kind"] == "ListOptions"
    assert body["details"]["group"] == "meta.k8s.io"
    assert body["message"].startswith('ListOptions.meta.k8s.io "" is invalid: ')
    assert field in {c["field"] for c in body["details"]["causes"]}


async def test_continue_with_resource_version_is_400(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/services", params={"continue": "x", "resourceVersion": "1"}) as r:
        assert r.status == 400


async def test_rv_zero_list_ignores_limit(kube_api: FakeApiServer,
                                         http: aiohttp.ClientSession) -> None:
    for i in range(3):
        kube_api.store.create("services", svc(f"s{i}"))
    async with http.get("/api/v1/services", params={"limit": "1", "resourceVersion": "0"}) as r:
        body = await r.json()
    assert len(body["items"]) == 3 and "continue" not in body["metadata"]


# ---- selectors over HTTP -------------------------------------------------------------------


async def test_selectors_filter_lists(kube_api: FakeApiServer,
                                     api_client: client.ApiClient) -> None:
    store = kube_api.store
    store.create("services", svc("web", labels={"app": "web", "tier": "front"}))
    store.create("services", svc("db", labels={"app": "db"}))
    store.create("services", svc("web", ns="other", labels={"app": "web"}))
    v1 = client.CoreV1Api(api_client)
    got = await v1.list_service_for_all_namespaces(label_selector="app=web")
    assert [(s.metadata.namespace, s.metadata.name) for s in got.items] == [
        ("default", "web"), ("other", "web")]
    got = await v1.list_service_for_all_namespaces(label_selector="app in (web,db),!tier")
    assert [(s.metadata.namespace, s.metadata.name) for s in got.items] == [
        ("default", "db"), ("other", "web")]
    got = await v1.list_service_for_all_namespaces(field_selector="metadata.namespace=other")
    assert [s.metadata.name for s in got.items] == ["web"]
    with pytest.raises(ApiException) as info:
        await v1.list_service_for_all_namespaces(field_selector="spec.type=ClusterIP")
    assert info.value.status == 400 and status_of(info.value)["reason"] == "BadRequest"
    with pytest.raises(ApiException) as info:
        await v1.list_service_for_all_namespaces(label_selector="app in (web")
    assert info.value.status == 400


async def test_watch_selector_sends_added_and_deleted_on_label_moves(
        kube_api: FakeApiServer, http: aiohttp.ClientSession) -> None:
    store = kube_api.store
    store.create("services", svc("web", labels={"app": "web"}))
    start = str(store.rv)
    web = store.read("services", NS, "web")
    web["metadata"]["labels"] = {"app": "other"}
    store.update("services", web)
    web = store.read("services", NS, "web")
    web["metadata"]["labels"] = {"app": "web"}
    store.update("services", web)
    store.create("services", svc("db", labels={"app": "db"}))
    async with http.get("/api/v1/namespaces/default/services", params={
            "watch": "true", "resourceVersion": start, "labelSelector": "app=web"}) as r:
        events = await read_lines(r, limit=2)
    assert [(e["type"], e["object"]["metadata"]["labels"]["app"]) for e in events] == [
        ("DELETED", "web"), ("ADDED", "web")]
    assert events[0]["object"]["metadata"]["resourceVersion"] == str(int(start) + 1)


# ---- watch lifetime: timeouts, bookmarks, initial events, drops ------------------------------


async def test_bookmarks_carry_the_store_rv(kube_api: FakeApiServer,
                                           http: aiohttp.ClientSession) -> None:
    kube_api.store.create("services", svc("web"))
    kube_api.store.create("leases", lease_body())  # moves the global RV, not a Service
    async with http.get("/api/v1/namespaces/default/services", params={
            "watch": "True", "resourceVersion": str(kube_api.store.rv),
            "allowWatchBookmarks": "True", "timeoutSeconds": "5"}) as r:
        (ev,) = await read_lines(r, limit=1)
    assert ev == {"type": "BOOKMARK", "object": {
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"resourceVersion": str(kube_api.store.rv), "creationTimestamp": None}}}


async def test_no_bookmarks_unless_asked(kube_api: FakeApiServer,
                                        http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/services", params={
            "watch": "True", "resourceVersion": str(kube_api.store.rv),
            "timeoutSeconds": "1"}) as r:
        assert await read_lines(r) == []


async def test_ka_watch_with_timeout_ends_cleanly_and_tracks_bookmark_rv(
        no_proxy_env: None) -> None:
    async with FakeApiServer(bookmark_interval=0.01, bookmark_before_deadline=0.0) as api, \
            client.ApiClient(api.configuration()) as ac:
        v1 = client.CoreV1Api(ac)
        api.store.create("leases", lease_body())
        w = watch.Watch()
        types = []
        async with w.stream(v1.list_namespaced_service, NS, resource_version="1",
                            allow_watch_bookmarks=True, timeout_seconds=1) as stream:
            async for ev in stream:
                types.append(ev["type"])
        assert types and set(types) == {"BOOKMARK"}
        assert w.resource_version == str(api.store.rv)


async def test_send_initial_events_ends_with_annotated_bookmark(
        no_proxy_env: None) -> None:
    async with FakeApiServer(send_initial_events=True) as api, \
            aiohttp.ClientSession(base_url=api.url) as http:
        api.store.create("services", svc("b"))
        api.store.create("services", svc("a"))
        list_rv = str(api.store.rv)
        async with http.get("/api/v1/services", params={
                "watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
                "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "5"}) as r:
            events = await read_lines(r, limit=3)
        async with http.get("/api/v1/services", params={
                "watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
                "timeoutSeconds": "1"}) as r:
            no_bookmarks = await read_lines(r)
        assert [e["type"] for e in no_bookmarks] == ["ADDED", "ADDED"]  # and no end bookmark
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert [e["object"]["metadata"].get("name") for e in events[:2]] == ["a", "b"]
    meta = events[2]["object"]["metadata"]
    assert meta["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert meta["resourceVersion"] == list_rv


async def test_drop_watches_ends_streams_cleanly(kube_api: FakeApiServer,
                                                http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/services", params={"watch": "1"}) as r:
        assert r.status == 200
        await until(lambda: kube_api.store.watcher_count > 0)
        assert kube_api.drop_watches() == 1
        assert await r.content.read() == b""


async def test_closed_client_releases_its_watcher(kube_api: FakeApiServer,
                                                 http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/services", params={"watch": "1"}) as r:
        assert r.status == 200
        await until(lambda: kube_api.store.watcher_count > 0)
        assert kube_api.store.watcher_count == 1
        r.close()
    await until(lambda: kube_api.store.watcher_count == 0)


async def test_slow_watcher_is_dropped_when_its_buffer_overflows(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.watch_buffer = 3
    sub, _ = store.subscribe(store.resource("services"), None, store.rv)
    for i in range(4):
        store.create("services", svc(f"s{i}"))
    assert sub.overflowed and sub.closed
    assert store.watcher_count == 0


# ---- registry strategies: status split, patches, generateName, per-kind rules ----------------


async def test_service_spec_and_status_are_kept_apart(kube_api: FakeApiServer,
                                                     api_client: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api_client)
    body = svc("web")
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}]}}
    created = await v1.create_namespaced_service(NS, raw(body))
    assert created.status.load_balancer.ingress is None  # create ignores status
    status_patch = {"status": {"loadBalancer": {"ingress": [{"ip": "10.1.1.1", "ipMode": "VIP"}]}},
                    "spec": {"ports": [{"port": 1}]}}
    out = await v1.patch_namespaced_service_status("web", NS, raw(status_patch))
    assert [i.ip for i in out.status.load_balancer.ingress] == ["10.1.1.1"]
    assert [p.port for p in out.spec.ports] == [80]  # /status ignores spec
    # a PATCH of the service ignores status; ports merge by port
    out = await v1.patch_namespaced_service("web", NS, raw({
        "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]},
        "status": {"loadBalancer": {}}}))
    assert [(p.port, p.name) for p in out.spec.ports] == [(80, "http"), (443, "https")]
    assert [i.ip for i in out.status.load_balancer.ingress] == ["10.1.1.1"]
    # the ingress list has no merge key: a patch replaces it whole
    out = await v1.patch_namespaced_service_status("web", NS, raw(
        {"status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}]}}}))
    assert [(i.ip, i.hostname) for i in out.status.load_balancer.ingress] == [
        (None, "lb.example.com")]


@pytest.mark.parametrize(("ingress", "field"), [
    ({"ip": "not-an-ip"}, "status.loadBalancer.ingress[0].ip"),
    ({"hostname": "10.0.0.1"}, "status.loadBalancer.ingress[0].hostname"),
    ({"hostname": "lb.example.com", "ipMode": "VIP"}, "status.loadBalancer.ingress[0].ipMode"),
    ({"ip": "10.0.0.1", "ipMode": "Direct"}, "status.loadBalancer.ingress[0].ipMode"),
])
async def test_bad_ingress_status_is_422(kube_api: FakeApiServer,
                                        http: aiohttp.ClientSession,
                                        ingress: JsonObj, field: str) -> None:
    created = kube_api.store.create("services", svc("web"))
    created["status"] = {"loadBalancer": {"ingress": [ingress]}}
    async with http.put("/api/v1/namespaces/default/services/web/status", json=created) as r:
        assert r.status == 422
        body = await r.json()
    assert body["details"]["kind"] == "Service" and "group" not in body["details"]
    assert [c["field"] for c in body["details"]["causes"]] == [field]


async def test_patch_rv_precondition(kube_api: FakeApiServer,
                                    api_client: client.ApiClient) -> None:
    created = kube_api.store.create("services", svc("web"))
    v1 = client.CoreV1Api(api_client)
    stale = {"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}}
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_service("web", NS, raw(stale))
    assert info.value.status == 409 and status_of(info.value)["reason"] == "Conflict"
    fresh = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"],
                          "labels": {"x": "y"}}}
    out = await v1.patch_namespaced_service("web", NS, raw(fresh))
    assert out.metadata.labels == {"app": "web", "x": "y"}
    # a list body is sent as a JSON patch
    out = await v1.patch_namespaced_service("web", NS, raw([
        {"op": "replace", "path": "/metadata/labels/x", "value": "z"}]))
    assert out.metadata.labels["x"] == "z"
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_service("web", NS, raw([
            {"op": "test", "path": "/metadata/labels/x", "value": "nope"}]))
    assert info.value.status == 422


async def test_merge_patch_over_http(kube_api: FakeApiServer,
                                    http: aiohttp.ClientSession) -> None:
    kube_api.store.create("services", svc("web"))
    headers = {"Content-Type": "application/merge-patch+json"}
    async with http.patch("/api/v1/namespaces/default/services/web", headers=headers,
                          data=json.dumps({"spec": {"ports": [{"port": 81}]}})) as r:
        assert r.status == 200
        body = await r.json()
    assert [p["port"] for p in body["spec"]["ports"]] == [81]  # merge patch replaces lists
    async with http.patch("/api/v1/namespaces/default/services/web",
                          headers={"Content-Type": "application/apply-patch+yaml"},
                          data="{}") as r:
        assert r.status == 415
    async with http.patch("/api/v1/namespaces/default/services/nope", headers=headers,
                          data="{}") as r:
        assert r.status == 404


async def test_noop_update_keeps_rv_and_sends_no_event(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    created = store.create("services", svc("web"))
    rv = store.rv
    again = store.update("services", created)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert store.rv == rv


async def test_service_put_may_be_unconditional(kube_api: FakeApiServer,
                                               http: aiohttp.ClientSession) -> None:
    kube_api.store.create("services", svc("web"))
    async with http.put("/api/v1/namespaces/default/services/web", json=svc("web", 81)) as r:
        assert r.status == 200
        body = await r.json()
    assert body["spec"]["ports"][0]["port"] == 81
    async with http.put("/api/v1/namespaces/default/services/nope", json=svc("nope")) as r:
        assert r.status == 404  # no create-on-PUT for services


async def test_put_name_mismatch_is_400(kube_api: FakeApiServer,
                                       http: aiohttp.ClientSession) -> None:
    kube_api.store.create("services", svc("web"))
    async with http.put("/api/v1/namespaces/default/services/web", json=svc("db")) as r:
        assert r.status == 400
    async with http.post("/api/v1/namespaces/default/services", json=svc("x", ns="other")) as r:
        assert r.status == 400


async def test_create_with_resource_version_is_500(http: aiohttp.ClientSession) -> None:
    body = svc("web")
    body["metadata"]["resourceVersion"] = "5"
    async with http.post("/api/v1/namespaces/default/services", json=body) as r:
        assert r.status == 500


async def test_generate_name(kube_api: FakeApiServer, api_client: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api_client)
    ev = await v1.create_namespaced_event(NS, raw({
        "metadata": {"generateName": "web."},
        "involvedObject": {"kind": "Service", "namespace": NS, "name": "web"},
        "reason": "Sync", "message": "ok", "type": "Normal",
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
        "count": 1, "source": {"component": "pylb"}}))
    assert ev.metadata.name.startswith("web.") and len(ev.metadata.name) == len("web.") + 5


async def test_delete_returns_the_object_and_honours_preconditions(
        kube_api: FakeApiServer, api_client: client.ApiClient) -> None:
    created = kube_api.store.create("services", svc("web"))
    v1 = client.CoreV1Api(api_client)
    with pytest.raises(ApiException) as info:
        await v1.delete_namespaced_service("web", NS, body=raw(
            {"preconditions": {"resourceVersion": "1"}}))
    assert info.value.status == 409
    await v1.delete_namespaced_service("web", NS, body=raw(
        {"preconditions": {"uid": created["metadata"]["uid"]}}))
    assert kube_api.store.get("services", NS, "web") is None
    with pytest.raises(ApiException) as info:
        await v1.delete_namespaced_service("web", NS)
    assert status_of(info.value)["message"] == 'services "web" not found'
    assert status_of(info.value)["details"] == {"name": "web", "kind": "services"}


async def test_endpoints_carry_the_deprecation_warning(kube_api: FakeApiServer,
                                                      http: aiohttp.ClientSession) -> None:
    kube_api.store.create("endpoints", {"metadata": {"name": "web", "namespace": NS}, "subsets": [
        {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 8080}]}]})
    for path in ("/api/v1/namespaces/default/endpoints", "/api/v1/namespaces/default/endpoints/web",
                 "/api/v1/namespaces/default/endpoints/nope"):
        async with http.get(path) as r:
            assert r.headers["Warning"] == (
                '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 '
                'EndpointSlice"')
    async with http.get("/api/v1/namespaces/default/services") as r:
        assert "Warning" not in r.headers


async def test_endpoint_slice_shapes(kube_api: FakeApiServer, api_client: client.ApiClient,
                                    http: aiohttp.ClientSession) -> None:
    store = kube_api.store
    store.create("endpointslices", {
        "metadata": {"name": "web-abc", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4"})
    async with http.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices") as r:
        (item,) = (await r.json())["items"]
    assert item["endpoints"] is None and item["ports"] is None
    d = client.DiscoveryV1Api(api_client)
    lst = await d.list_namespaced_endpoint_slice(
        NS, label_selector="kubernetes.io/service-name=web")
    assert lst.items[0].address_type == "IPv4" and lst.items[0].endpoints is None
    with pytest.raises(ApiException) as info:
        await d.create_namespaced_endpoint_slice(NS, raw({
            "metadata": {"name": "bad"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["fe80::1"]}]}))
    assert info.value.status == 422
    async with http.put("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/new",
                        json={"metadata": {"name": "new"}, "addressType": "IPv4"}) as r:
        assert r.status == 404  # no create-on-PUT
    body = store.read("endpointslices", NS, "web-abc")
    assert body["metadata"]["generation"] == 1
    body["metadata"]["labels"]["x"] = "y"
    body = store.update("endpointslices", body)
    assert body["metadata"]["generation"] == 1  # metadata only
    body["endpoints"] = [{"addresses": ["10.0.0.1"]}]
    body = store.update("endpointslices", body)
    assert body["metadata"]["generation"] == 2
    body["addressType"] = "IPv6"
    with pytest.raises(Exception, match="immutable"):
        store.update("endpointslices", body)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/namespaces/default/events", {
        "metadata": {"name": "e1"}, "involvedObject": {"kind": "Service", "namespace": "x",
                                                       "name": "web"},
        "reason": "R", "message": "m", "type": "Normal"}, "involvedObject.namespace"),
    ("/api/v1/namespaces/default/events", {
        "metadata": {"name": "e2"}, "involvedObject": {"kind": "Service", "namespace": NS},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "R", "type": "Normal",
        "reportingInstance": "i"}, "reportingController"),
    ("/apis/events.k8s.io/v1/namespaces/default/events", {
        "metadata": {"name": "e3"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "type": "Normal", "reportingController": "pylb", "reportingInstance": "lb-1",
        "action": "Sync", "reason": "Synced"}, "regarding"),
    ("/apis/events.k8s.io/v1/namespaces/default/events", {
        "metadata": {"name": "e4"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "type": "Normal", "reportingController": "pylb", "reportingInstance": "lb-1",
        "action": "Sync", "reason": "Synced", "regarding": {"kind": "Service", "name": "w"},
        "note": "x" * 1025}, "note"),
])
async def test_event_validation(http: aiohttp.ClientSession, path: str, body: JsonObj,
                               field: str) -> None:
    async with http.post(path, json=body) as r:
        assert r.status == 422
        status = await r.json()
    assert field in {c["field"] for c in status["details"]["causes"]}


async def test_events_v1_accepted(api_client: client.ApiClient) -> None:
    ev = await client.EventsV1Api(api_client).create_namespaced_event(NS, raw({
        "metadata": {"generateName": "web-"}, "eventTime": "2026-01-01T00:00:00.000001Z",
        "type": "Normal", "reportingController": "pylb", "reportingInstance": "lb-1",
        "action": "Sync", "reason": "Synced", "regarding": {"kind": "Service", "name": "w"},
        "note": "ok"}))
    assert ev.metadata.name.startswith("web-")


async def test_pods_list_and_watch_by_node(kube_api: FakeApiServer,
                                          http: aiohttp.ClientSession) -> None:
    store = kube_api.store
    store.put("pods", {"metadata": {"name": "lb-1", "namespace": NS}, "spec": {"nodeName": "n1"},
                       "status": {"podIP": "10.0.0.5", "phase": "Running"}})
    store.put("pods", {"metadata": {"name": "lb-2", "namespace": NS}, "spec": {"nodeName": "n2"}})
    async with http.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=n1"}) as r:
        (pod,) = (await r.json())["items"]
    assert pod["status"]["podIP"] == "10.0.0.5"
    async with http.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=n2",
                                                "watch": "1"}) as r:
        (ev,) = await read_lines(r, limit=1)
    assert ev["object"]["metadata"]["name"] == "lb-2"


async def test_discovery_documents(http: aiohttp.ClientSession) -> None:
    async with http.get("/version") as r:
        assert (await r.json())["major"] == "1"
    async with http.get("/apis") as r:
        groups = {g["name"] for g in (await r.json())["groups"]}
    assert {"coordination.k8s.io", "discovery.k8s.io", "events.k8s.io"} <= groups
    async with http.get("/api/v1") as r:
        names = {x["name"] for x in (await r.json())["resources"]}
    assert {"services", "services/status", "endpoints", "pods"} <= names
    async with http.get("/api/v1/widgets") as r:
        assert r.status == 404 and (await r.json())["kind"] == "Status"


# ---- faults --------------------------------------------------------------------------------


async def test_plain_text_429_reaches_ka_watch_as_a_str_event(
        kube_api: FakeApiServer, api_client: client.ApiClient) -> None:
    kube_api.faults.add(faults.text429(retry_after=3), verb="watch")
    v1 = client.CoreV1Api(api_client)
    async with watch.Watch().stream(v1.list_namespaced_service, NS, timeout_seconds=1) as stream:
        first = await stream.__anext__()
    assert first == "Too many requests, please try again later.\n"


async def test_plain_text_429_wire(kube_api: FakeApiServer,
                                  http: aiohttp.ClientSession) -> None:
    kube_api.faults.add(faults.text429(retry_after=2), method="GET", path_re="/leases/")
    async with http.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/x") as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "2"
        assert r.headers["Content-Type"].startswith("text/plain")
        assert await r.text() == "Too many requests, please try again later.\n"
    async with http.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/x") as r:
        assert r.status == 404  # count=1 by default


@pytest.mark.parametrize(("code", "reason", "retry_after"), [
    (429, "TooManyRequests", "1"),
    (500, "InternalError", None),
    (503, "ServiceUnavailable", "1"),
    (504, "Timeout", "1"),
    (401, "Unauthorized", None),
    (403, "Forbidden", None),
])
async def test_json_status_faults(kube_api: FakeApiServer, api_client: client.ApiClient,
                                 code: int, reason: str, retry_after: str | None) -> None:
    kube_api.faults.add(faults.http(code), verb="list")
    with pytest.raises(ApiException) as info:
        await client.CoreV1Api(api_client).list_namespaced_service(NS)
    assert info.value.status == code
    body = status_of(info.value)
    assert body["kind"] == "Status" and body["reason"] == reason and body["code"] == code
    headers: Any = info.value.headers or {}
    assert headers.get("Retry-After") == retry_after
    if retry_after:
        assert body["details"]["retryAfterSeconds"] == int(retry_after)


async def test_fault_counts_once_n_and_always(kube_api: FakeApiServer,
                                             http: aiohttp.ClientSession) -> None:
    async def codes(n: int) -> list[int]:
        out = []
        for _ in range(n):
            async with http.get("/api/v1/services") as r:
                out.append(r.status)
        return out

    rule = kube_api.faults.add(faults.http(500), count=2)
    assert await codes(3) == [500, 500, 200]
    assert rule.spent
    kube_api.faults.add(faults.http(503), count=faults.ALWAYS, path_re=r"/services$")
    assert await codes(3) == [503, 503, 503]
    kube_api.faults.clear()
    assert await codes(1) == [200]


async def test_fault_rules_filter_by_method_path_and_verb(kube_api: FakeApiServer,
                                                          http: aiohttp.ClientSession) -> None:
    kube_api.faults.add(faults.http(500), method="POST", count=None)
    kube_api.faults.add(faults.http(503), verb="get", path_re="/leases/", count=None)
    async with http.get("/api/v1/services") as r:
        assert r.status == 200
    async with http.post("/api/v1/namespaces/default/services", json=svc("x")) as r:
        assert r.status == 500
    async with http.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/x") as r:
        assert r.status == 503
    async with http.get("/apis/coordination.k8s.io/v1/namespaces/default/leases") as r:
        assert r.status == 200


async def test_warning_and_delay_add_to_a_normal_answer(kube_api: FakeApiServer,
                                                       http: aiohttp.ClientSession) -> None:
    kube_api.faults.add(faults.warning("be careful"))
    kube_api.faults.add(faults.delay(0.01))
    async with http.get("/api/v1/services") as r:
        assert r.status == 200
        assert r.headers["Warning"] == '299 - "be careful"'


async def test_hang_sends_nothing_until_released(kube_api: FakeApiServer,
                                                http: aiohttp.ClientSession) -> None:
    kube_api.faults.add(faults.hang(), verb="list", count=2)
    with pytest.raises(TimeoutError):
        async with http.get("/api/v1/services",
                            timeout=aiohttp.ClientTimeout(sock_read=0.2)) as r:
            await r.read()
    kube_api.drop_watches()  # releases the first; the second hang must hang all the same
    with pytest.raises(TimeoutError):
        async with http.get("/api/v1/services",
                            timeout=aiohttp.ClientTimeout(sock_read=0.2)) as r:
            await r.read()
    async with http.get("/api/v1/services") as r:
        assert r.status == 200


async def test_reset_aborts_the_connection(kube_api: FakeApiServer,
                                          http: aiohttp.ClientSession) -> None:
    rule = kube_api.faults.add(faults.reset(), count=1)
    async with http.get("/api/v1/services") as r:
        assert r.status == 200  # aiohttp retried the idempotent GET once
    assert rule.hits == 1
    kube_api.faults.add(faults.reset(), count=2)
    with pytest.raises(aiohttp.ClientOSError):
        async with http.get("/api/v1/services") as r:
            await r.read()
    async with http.get("/api/v1/services") as r:
        assert r.status == 200


async def _watch_body(http: aiohttp.ClientSession, api: FakeApiServer) -> bytes:
    async with http.get("/api/v1/services", params={"watch": "1", "timeoutSeconds": "5"}) as r:
        assert r.status == 200
        return await r.content.read()


async def test_watch_eof_after_n_events(kube_api: FakeApiServer,
                                       http: aiohttp.ClientSession) -> None:
    for i in range(3):
        kube_api.store.create("services", svc(f"s{i}"))
    kube_api.faults.add(faults.eof_after(2))
    lines = (await _watch_body(http, kube_api)).splitlines()
    assert [json.loads(x)["object"]["metadata"]["name"] for x in lines] == ["s0", "s1"]
    kube_api.faults.add(faults.eof_after(0))
    assert await _watch_body(http, kube_api) == b""  # an empty 200


async def test_watch_truncated_line_then_eof(kube_api: FakeApiServer,
                                            http: aiohttp.ClientSession) -> None:
    for i in range(2):
        kube_api.store.create("services", svc(f"s{i}"))
    kube_api.faults.add(faults.truncate_after(1))
    body = await _watch_body(http, kube_api)
    first, rest = body.split(b"\n", 1)
    assert json.loads(first)["object"]["metadata"]["name"] == "s0"
    assert rest and not rest.endswith(b"\n")
    with pytest.raises(ValueError):
        json.loads(rest)


async def test_watch_reset_after_n_events(kube_api: FakeApiServer,
                                         http: aiohttp.ClientSession) -> None:
    for i in range(2):
        kube_api.store.create("services", svc(f"s{i}"))
    kube_api.faults.add(faults.reset_after(1))
    with pytest.raises(aiohttp.ClientError):
        await _watch_body(http, kube_api)


async def test_watch_event_delay(kube_api: FakeApiServer, http: aiohttp.ClientSession) -> None:
    kube_api.store.create("services", svc("s0"))
    kube_api.faults.add(faults.event_delay(0.3))
    async with http.get("/api/v1/services", params={"watch": "1"},
                        timeout=aiohttp.ClientTimeout(sock_read=0.05)) as r:
        with pytest.raises(TimeoutError):
            await r.content.readline()


async def test_watch_faults_do_not_fire_on_lists(kube_api: FakeApiServer,
                                                http: aiohttp.ClientSession) -> None:
    rule = kube_api.faults.add(faults.eof_after(0))
    async with http.get("/api/v1/services") as r:
        assert r.status == 200
    assert rule.hits == 0


# ---- auth, restarts ------------------------------------------------------------------------


async def test_tokens_are_checked_when_set(kube_api: FakeApiServer,
                                          api_client: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api_client)
    await v1.list_namespaced_service(NS)
    kube_api.tokens = {"rotated"}
    with pytest.raises(ApiException) as info:
        await v1.list_namespaced_service(NS)
    assert info.value.status == 401 and status_of(info.value)["reason"] == "Unauthorized"
    assert kube_api.requests[-1].authorization == "Bearer t"


async def test_restart_refuses_then_comes_back_with_the_store(
        kube_api: FakeApiServer, api_client: client.ApiClient) -> None:
    kube_api.store.create("services", svc("web"))
    port = kube_api.port
    v1 = client.CoreV1Api(api_client)
    restarting = asyncio.ensure_future(kube_api.restart(down_for=60))
    await until(lambda: kube_api.is_down)
    with pytest.raises(aiohttp.ClientConnectorError):
        await v1.list_namespaced_service(NS)
    kube_api.bring_up()
    await restarting
    assert kube_api.port == port
    lst = await v1.list_namespaced_service(NS)
    assert [s.metadata.name for s in lst.items] == ["web"]


async def test_restart_wiped_answers_old_rvs_with_too_large(
        kube_api: FakeApiServer, http: aiohttp.ClientSession) -> None:
    for i in range(5):
        kube_api.store.create("services", svc(f"s{i}"))
    old_rv = kube_api.store.rv
    await kube_api.restart(wipe=True)
    async with http.get("/api/v1/services", params={
            "watch": "1", "resourceVersion": str(old_rv)}) as r:
        assert r.status == 504


# ---- client set-ups: kubeconfig, in-cluster, TLS -------------------------------------------


@pytest.fixture
async def tls_api(kube_api_tls: FakeApiServer) -> AsyncIterator[FakeApiServer]:
    kube_api_tls.store.create("services", svc("web"))
    yield kube_api_tls


async def test_kubeconfig_dict_plain(kube_api: FakeApiServer) -> None:
    kube_api.store.create("services", svc("web"))
    kube_api.tokens = {"secret"}
    ac = await kconfig.new_client_from_config_dict(kube_api.kubeconfig_dict(token="secret"))
    async with ac:
        lst = await client.CoreV1Api(ac).list_namespaced_service(NS)
    assert [s.metadata.name for s in lst.items] == ["web"]


async def test_kubeconfig_dict_tls(tls_api: FakeApiServer) -> None:
    assert tls_api.url.startswith("https://127.0.0.1:")
    ac = await kconfig.new_client_from_config_dict(tls_api.kubeconfig_dict())
    async with ac:
        lst = await client.CoreV1Api(ac).list_namespaced_service(NS)
    assert [s.metadata.name for s in lst.items] == ["web"]


async def test_configuration_tls_and_untrusted_client(tls_api: FakeApiServer) -> None:
    async with client.ApiClient(tls_api.configuration()) as ac:
        lst = await client.CoreV1Api(ac).list_namespaced_service(NS)
    assert len(lst.items) == 1
    cfg = client.Configuration(host=tls_api.url)  # no CA: the handshake must fail
    async with client.ApiClient(cfg) as ac:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.CoreV1Api(ac).list_namespaced_service(NS)


async def test_incluster_files(tls_api: FakeApiServer, tmp_path: Any) -> None:
    files = tls_api.write_incluster(tmp_path, token="sa-token", namespace="lb")
    tls_api.tokens = {"sa-token"}
    environ = {k: files[k] for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    cfg = client.Configuration()
    InClusterConfigLoader(token_filename=files["token_filename"],
                          cert_filename=files["cert_filename"],
                          environ=environ).load_and_set(cfg)
    assert cfg.host == tls_api.url
    async with client.ApiClient(cfg) as ac:
        lst = await client.CoreV1Api(ac).list_namespaced_service(NS)
    assert len(lst.items) == 1
    assert Path(files["namespace_filename"]).read_text() == "lb"


async def test_incluster_needs_tls(kube_api: FakeApiServer, tmp_path: Any) -> None:
    with pytest.raises(RuntimeError):
        kube_api.write_incluster(tmp_path)


async def test_ipv6_loopback(no_proxy_env: None) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        api = FakeApiServer(host="::1")
        await api.start()
    except OSError:
        pytest.skip("no ::1 on this machine")
    try:
        assert api.url.startswith("http://[::1]:")
        async with client.ApiClient(api.configuration()) as ac:
            lst = await client.CoreV1Api(ac).list_namespaced_service(NS)
        assert lst.items == []
    finally:
        await api.stop()


async def test_send_initial_events_false_starts_from_now(no_proxy_env: None) -> None:
    async with FakeApiServer(send_initial_events=True) as api, \
            aiohttp.ClientSession(base_url=api.url) as http:
        api.store.create("services", svc("old"))
        async with http.get("/api/v1/services", params={
                "watch": "1", "sendInitialEvents": "false", "allowWatchBookmarks": "true",
                "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "5"}) as r:
            await until(lambda: api.store.watcher_count > 0)
            api.store.create("services", svc("new"))
            (ev,) = await read_lines(r, limit=1)
    assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "new")


async def test_bulk_load_is_create(kube_api: FakeApiServer,
                                  api_client: client.ApiClient) -> None:
    rv = kube_api.store.load("services", (svc(f"s{i}") for i in range(50)))
    assert rv == kube_api.store.rv == 51
    lst = await client.CoreV1Api(api_client).list_namespaced_service(NS, limit=20)
    assert len(lst.items) == 20 and lst.metadata.remaining_item_count == 30
    assert lst.items[0].spec.cluster_ip == "10.96.0.10"
    with pytest.raises(Exception, match="already exists"):
        kube_api.store.load("services", [svc("s0")])


async def test_namespace_ranges_in_paged_lists(kube_api: FakeApiServer,
                                              http: aiohttp.ClientSession) -> None:
    for ns in ("a", "a-b", "b"):
        for i in range(3):
            kube_api.store.create("services", svc(f"s{i}", ns=ns))
    names = []
    token = ""
    for _ in range(10):
        params = {"limit": "2", **({"continue": token} if token else {})}
        async with http.get("/api/v1/namespaces/a/services", params=params) as r:
            body = await r.json()
        names += [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in body["items"]]
        token = body["metadata"].get("continue", "")
        if not token:
            break
    assert names == [("a", "s0"), ("a", "s1"), ("a", "s2")]


async def test_watch_cut_after_seconds_ends_cleanly(kube_api: FakeApiServer,
                                                   http: aiohttp.ClientSession) -> None:
    kube_api.faults.add(faults.cut_after(0.05))
    async with http.get("/api/v1/services", params={
            "watch": "1", "resourceVersion": str(kube_api.store.rv), "timeoutSeconds": "30"},
            timeout=aiohttp.ClientTimeout(total=10)) as r:
        assert await r.content.read() == b""


async def test_cut_body_aborts_a_list_mid_body(kube_api: FakeApiServer,
                                              api_client: client.ApiClient) -> None:
    for i in range(20):
        kube_api.store.create("services", svc(f"s{i}"))
    kube_api.faults.add(faults.cut_body(), verb="list")  # headers came: aiohttp won't retry
    with pytest.raises(aiohttp.ClientPayloadError):
        await client.CoreV1Api(api_client).list_namespaced_service(NS)
    lst = await client.CoreV1Api(api_client).list_namespaced_service(NS)
    assert len(lst.items) == 20


async def test_failed_tls_handshake(tls_api: FakeApiServer) -> None:
    tls_api.faults.tls_failures = 1
    async with client.ApiClient(tls_api.configuration()) as ac:
        v1 = client.CoreV1Api(ac)
        with pytest.raises(aiohttp.ClientError):
            await v1.list_namespaced_service(NS)
        lst = await v1.list_namespaced_service(NS)
    assert len(lst.items) == 1


async def test_watch_headers_carry_warnings(kube_api: FakeApiServer,
                                           http: aiohttp.ClientSession) -> None:
    kube_api.faults.add(faults.warning("watch out"))
    async with http.get("/api/v1/namespaces/default/endpoints",
                        params={"watch": "1", "timeoutSeconds": "1"}) as r:
        assert r.headers.getall("Warning") == [
            '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 '
            'EndpointSlice"', '299 - "watch out"']


async def test_delete_answers_status_where_the_registry_does(
        kube_api: FakeApiServer, api_client: client.ApiClient) -> None:
    created = kube_api.store.create("leases", lease_body())
    st = await client.CoordinationV1Api(api_client).delete_namespaced_lease("pylb", NS)
    assert st.status == "Success"
    assert (st.details.name, st.details.group, st.details.kind, st.details.uid) == (
        "pylb", "coordination.k8s.io", "leases", created["metadata"]["uid"])
    kube_api.store.create("services", svc("web"))
    gone = await client.CoreV1Api(api_client).delete_namespaced_service("web", NS)
    assert gone.kind == "Service" and gone.metadata.name == "web"


async def test_forbidden_names_the_verb_and_resource(kube_api: FakeApiServer,
                                                    http: aiohttp.ClientSession) -> None:
    kube_api.faults.add(faults.http(403), verb="update")
    async with http.put("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/pylb",
                        json=lease_body()) as r:
        assert r.status == 403
        body = await r.json()
    assert body["message"] == (
        'leases.coordination.k8s.io is forbidden: User "system:serviceaccount:default:pylb" '
        'cannot update resource "leases" in API group "coordination.k8s.io" in the namespace '
        '"kube-system"')
    assert body["details"] == {"group": "coordination.k8s.io", "kind": "leases"}


@pytest.mark.parametrize(("method", "path", "code"), [
    ("GET", "/nope", 404),
    ("GET", "/apis/nope.example.com/v1/things", 404),
    ("POST", "/version", 405),
    ("GET", "/api/v1/namespaces/default/services/web/proxy", 404),
])
async def test_every_error_is_a_status(http: aiohttp.ClientSession, method: str, path: str,
                                      code: int) -> None:
    async with http.request(method, path) as r:
        assert r.status == code
        body = await r.json()
    assert body["kind"] == "Status" and body["code"] == code


# ---- opaque resourceVersions ----------------------------------------------------------------


def test_rv_codec_round_trips_and_is_not_a_number() -> None:
    seen = [rvcodec.encode(n) for n in range(1, 200)]
    assert all(s.startswith("r") and len(s) == 9 for s in seen)
    assert [int(rvcodec.decode(s)) for s in seen] == list(range(1, 200))
    assert seen != sorted(seen)  # not in revision order
    assert rvcodec.decode("0") == "0" and rvcodec.decode("") == ""
    for bad in ("12", "rzzzzzzzz", "r1"):
        with pytest.raises(Exception, match="invalid resource version"):
            rvcodec.decode(bad)


async def test_opaque_rv_mode_end_to_end(no_proxy_env: None) -> None:
    async with FakeApiServer(opaque_rv=True, bookmark_interval=0.05,
                             bookmark_before_deadline=0.0) as api, \
            client.ApiClient(api.configuration()) as ac:
        api.store.create("services", svc("web"))
        v1 = client.CoreV1Api(ac)
        lst = await v1.list_namespaced_service(NS)
        assert lst.metadata.resource_version.startswith("r")
        assert lst.items[0].metadata.resource_version.startswith("r")
        api.store.create("services", svc("db"))
        seen = []
        w = watch.Watch()
        async with w.stream(v1.list_namespaced_service, NS, allow_watch_bookmarks=True,
                            resource_version=lst.metadata.resource_version,
                            timeout_seconds=5) as stream:
            async for ev in stream:
                seen.append(ev["type"])
                if ev["type"] == "BOOKMARK":
                    break
        assert seen == ["ADDED", "BOOKMARK"]
        assert w.resource_version == rvcodec.encode(api.store.rv)
        co = client.CoordinationV1Api(ac)
        lease = await co.create_namespaced_lease(NS, raw(lease_body()))
        lease.spec.renew_time = datetime(2026, 1, 1, 0, 0, 1, 5, tzinfo=UTC)
        lease.spec.acquire_time = lease.spec.renew_time
        renewed = await co.replace_namespaced_lease("pylb", NS, lease)
        with pytest.raises(ApiException) as info:
            await co.replace_namespaced_lease("pylb", NS, lease)
        assert info.value.status == 409
        assert renewed.metadata.resource_version.startswith("r")
        with pytest.raises(ApiException) as info:
            await v1.list_namespaced_service(NS, resource_version="12")
        assert info.value.status == 400


@pytest.mark.parametrize(("which", "name", "ok"), [
    ("services", "web-1", True),
    ("services", "1web", False),       # DNS-1035: starts with a letter
    ("services", "web.x", False),
    ("services", "Web", False),
    ("leases", "kube-system.pylb", True),  # DNS-1123 subdomain
    ("leases", "pylb-", False),
    ("endpointslices", "x" * 254, False),
])
def test_object_names_are_validated(which: str, name: str, ok: bool) -> None:
    body: JsonObj = {"metadata": {"name": name, "namespace": NS}}
    if which == "services":
        body["spec"] = {"ports": [{"port": 80}]}
    elif which == "leases":
        body["spec"] = {}
    else:
        body["addressType"] = "IPv4"
    store = Store()
    if ok:
        store.create(which, body)
        return
    with pytest.raises(ApiError) as info:
        store.create(which, body)
    assert info.value.code == 422
    assert [c["field"] for c in info.value.body["details"]["causes"]] == ["metadata.name"]


@pytest.mark.parametrize(("labels", "ok"), [
    ({"app": "web", "kubernetes.io/service-name": "web"}, True),
    ({"app": ""}, True),
    ({"app": "-web"}, False),
    ({"bad key": "x"}, False),
    ({"app": "x" * 64}, False),
])
def test_labels_are_validated(labels: dict[str, str], ok: bool) -> None:
    body = svc("web", labels=labels)
    if ok:
        Store().create("services", body)
        return
    with pytest.raises(ApiError) as info:
        Store().create("services", body)
    assert info.value.code == 422


async def test_kubeconfig_with_client_certificate(tls_api: FakeApiServer) -> None:
    tls_api.tokens = set()  # no token is good: only the certificate can get in
    ac = await kconfig.new_client_from_config_dict(tls_api.kubeconfig_dict(client_cert=True))
    async with ac:
        lst = await client.CoreV1Api(ac).list_namespaced_service(NS)
    assert len(lst.items) == 1
    ac = await kconfig.new_client_from_config_dict(tls_api.kubeconfig_dict())
    async with ac:
        with pytest.raises(ApiException) as info:
            await client.CoreV1Api(ac).list_namespaced_service(NS)
    assert info.value.status == 401


# ---- as its own process --------------------------------------------------------------------


async def test_standalone_process(no_proxy_env: None, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc.yaml"
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.kfake", "--services", "3", "--endpoints", "2",
        "--kubeconfig", str(kubeconfig), "--token", "s3cret",
        cwd=root, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert ready["rv"] == 7
        ac = await kconfig.new_client_from_config_dict(
            yaml.safe_load(kubeconfig.read_text()))
        async with ac:
            slices = await client.DiscoveryV1Api(ac).list_namespaced_endpoint_slice(
                NS, label_selector="kubernetes.io/service-name=svc-2")
        (eps,) = slices.items
        assert [e.addresses for e in eps.endpoints] == [["127.1.0.4"], ["127.1.0.5"]]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert not kubeconfig.exists()


@pytest.mark.parametrize(("params", "gate", "messages"), [
    ({"watch": "true", "sendInitialEvents": "true"}, False, [
        "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
        "resourceVersionMatch to NotOlderThan",
        "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the "
        "WatchList feature gate is enabled"]),
    ({"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "Exact",
      "allowWatchBookmarks": "true"}, True, [
        "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
        "resourceVersionMatch to NotOlderThan",
        'resourceVersionMatch: Unsupported value: "Exact": supported values: "NotOlderThan"']),
    ({"watch": "true", "resourceVersionMatch": "NotOlderThan"}, True, [
        "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
        "sendInitialEvents is provided"]),
    ({"resourceVersionMatch": "Sometimes", "resourceVersion": "1"}, False, [
        'resourceVersionMatch: Unsupported value: "Sometimes": supported values: "Exact", '
        '"NotOlderThan", ""']),
    ({"sendInitialEvents": "false"}, True, [
        "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"]),
])
async def test_list_option_messages(no_proxy_env: None, params: dict[str, str], gate: bool,
                                    messages: list[str]) -> None:
    async with FakeApiServer(send_initial_events=gate) as api, \
            aiohttp.ClientSession(base_url=api.url) as http, \
            http.get("/api/v1/services", params=params) as r:
        assert r.status == 422
        body = await r.json()
    agg = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    assert body["message"] == f'ListOptions.meta.k8s.io "" is invalid: {agg}'


@pytest.mark.parametrize(("which", "body", "status"), [
    ("services", svc("web"), {"loadBalancer": {}}),
    ("namespaces", {"metadata": {"name": "lb"}}, {"phase": "Active"}),
    ("pods", {"metadata": {"name": "p", "namespace": NS}, "spec": {},
              "status": {"phase": "Running"}}, {"phase": "Pending", "qosClass": "BestEffort"}),
])
def test_create_starts_with_the_strategy_status(which: str, body: JsonObj,
                                                status: JsonObj) -> None:
    assert Store().create(which, body)["status"] == status


# ---- one storage for both Event APIs --------------------------------------------------------


def core_event(name: str = "web.1") -> JsonObj:
    return {"metadata": {"name": name, "namespace": NS},
            "involvedObject": {"kind": "Service", "namespace": NS, "name": "web"},
            "reason": "Exposed", "message": "exposed by pylb", "type": "Normal",
            "source": {"component": "pylb"}, "count": 1,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"}


async def test_core_events_carry_zero_values(kube_api: FakeApiServer,
                                            http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/namespaces/default/events", json=core_event()) as r:
        body = await r.json()
    assert body["eventTime"] is None
    assert body["reportingComponent"] == "" and body["reportingInstance"] == ""


async def test_events_written_in_one_api_read_in_the_other(
        kube_api: FakeApiServer, api_client: client.ApiClient,
        http: aiohttp.ClientSession) -> None:
    core = client.CoreV1Api(api_client)
    ev1 = client.EventsV1Api(api_client)
    await core.create_namespaced_event(NS, raw(core_event()))
    async with http.get("/apis/events.k8s.io/v1/namespaces/default/events") as r:
        (seen,) = (await r.json())["items"]
    assert (seen["regarding"]["name"], seen["note"], seen["deprecatedCount"]) == (
        "web", "exposed by pylb", 1)
    assert seen["deprecatedSource"] == {"component": "pylb"} and seen["eventTime"] is None
    # As against a real server (kubernetes-client/python#1616): KA's events.k8s.io model
    # refuses the null eventTime of an event written through core/v1.
    with pytest.raises(ValueError, match="event_time"):
        await ev1.list_namespaced_event(NS)
    await ev1.create_namespaced_event(NS, raw({
        "metadata": {"name": "web.2"}, "eventTime": "2026-01-01T00:00:00.000001Z",
        "type": "Warning", "reportingController": "pylb.io/lb", "reportingInstance": "lb-1",
        "action": "Publish", "reason": "NotExposed", "note": "no class",
        "regarding": {"kind": "Service", "namespace": NS, "name": "legacy"}}))
    (_, new) = (await core.list_namespaced_event(NS)).items
    assert (new.involved_object.name, new.message, new.reporting_component) == (
        "legacy", "no class", "pylb.io/lb")
    assert new.first_timestamp is None and new.source.component is None
    # an update through events.k8s.io shows through core/v1, with one revision counter
    async with http.get("/apis/events.k8s.io/v1/namespaces/default/events/web.1") as r:
        v1obj = await r.json()
    v1obj["note"] = "still exposed"
    async with http.put("/apis/events.k8s.io/v1/namespaces/default/events/web.1",
                        json=v1obj) as r:
        assert r.status == 200
        v1obj = await r.json()
    assert v1obj["metadata"]["resourceVersion"] == str(kube_api.store.rv)
    assert kube_api.store.read("events", NS, "web.1")["message"] == "still exposed"
    v1obj["reason"] = "Changed"
    async with http.put("/apis/events.k8s.io/v1/namespaces/default/events/web.1",
                        json=v1obj) as r:
        assert r.status == 422  # reason is immutable through events.k8s.io
        assert [c["field"] for c in (await r.json())["details"]["causes"]] == ["reason"]


async def test_events_watch_across_versions(kube_api: FakeApiServer,
                                           http: aiohttp.ClientSession) -> None:
    start = str(kube_api.store.rv)
    kube_api.store.create("events", core_event())
    async with http.get("/apis/events.k8s.io/v1/namespaces/default/events", params={
            "watch": "1", "resourceVersion": start, "timeoutSeconds": "5"}) as r:
        (ev,) = await read_lines(r, limit=1)
    assert ev["type"] == "ADDED"
    assert ev["object"]["apiVersion"] == "events.k8s.io/v1"
    assert ev["object"]["note"] == "exposed by pylb" and "message" not in ev["object"]


def test_fault_plan_table() -> None:
    f = faults.Faults()
    slow = f.add(faults.delay(0.5), count=None)
    f.add(faults.warning("a"), verb="list")
    boom = f.add(faults.http(500), method="GET", path_re="/services$", count=1)
    later = f.add(faults.http(503), count=None)
    f.add(faults.eof_after(1), count=None)
    f.add(faults.cut_body(), count=None)
    first = f.plan("GET", "/api/v1/services", "list")
    assert first.delay == 0.5 and first.headers == [("Warning", '299 - "a"')]
    assert first.terminal == boom.action and first.watch is None and first.cut_body is False
    assert later.hits == 0  # a terminal action stops the walk
    second = f.plan("GET", "/api/v1/services", "watch")
    assert second.terminal == later.action and boom.spent
    f.rules.remove(later)
    third = f.plan("GET", "/api/v1/services", "watch")
    assert third.terminal is None and third.watch == faults.eof_after(1)
    assert third.cut_body is False  # cut_body is for plain answers
    fourth = f.plan("PUT", "/apis/coordination.k8s.io/v1/namespaces/a/leases/x", "update")
    assert fourth.watch is None and fourth.cut_body is True
    assert slow.hits == 4
