"""The leader's status publishing and events, against the fake API server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient

from election.publish import StatusPublisher
from pylb.model import Backend, HttpRoute, RouteTable, Server, SkippedService, TcpFrontend
from tests.kfake import FakeApiServer, faults

WEB = Backend("shop/web:80", (Server("10.0.0.1", 8080),))
DB = Backend("data/mysql:3306", (Server("10.0.0.3", 3306),))
SKIP_LEGACY = SkippedService("shop", "legacy", "type LoadBalancer without class pylb.io/lb")

TABLE = RouteTable(
    http=(HttpRoute("web", "/web", "shop/web:80"),),
    tcp=(TcpFrontend("mysql", 3306, "data/mysql:3306"),),
    backends=(WEB, DB),
    skipped=(SKIP_LEGACY,),
)


def service(ns: str, name: str, type_: str = "ClusterIP",
            cls: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_, "ports": [{"port": 80}]}
    if cls:
        spec["loadBalancerClass"] = cls
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def add_pod(kube: FakeApiServer, name: str, host_ip: str, ready: bool = True,
            labels: dict[str, str] | None = None) -> None:
    created = kube.store.create("pods", {
        "metadata": {"name": name, "namespace": "lb", "labels": labels or {"app": "pylb"}},
        "spec": {"containers": [{"name": "pylb", "image": "pylb"}]}})
    set_ready(kube, created, host_ip, ready)


def set_ready(kube: FakeApiServer, pod: dict[str, Any], host_ip: str, ready: bool) -> None:
    pod = dict(pod)
    pod["status"] = {"hostIP": host_ip, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}
    kube.store.update_status("pods", pod)


def populate(kube: FakeApiServer) -> None:
    kube.store.create("services", service("shop", "web", "LoadBalancer", "pylb.io/lb"))
    kube.store.create("services", service("shop", "legacy", "LoadBalancer"))
    kube.store.create("services", service("data", "mysql"))
    add_pod(kube, "pylb-a", "192.168.1.11")
    add_pod(kube, "pylb-b", "192.168.1.10")
    add_pod(kube, "pylb-c", "192.168.1.12", ready=False)
    add_pod(kube, "other", "192.168.1.13", labels={"app": "web"})


def publisher(api: ApiClient, instance: str = "pylb-a") -> StatusPublisher:
    return StatusPublisher(api, pod_namespace="lb", pod_selector="app=pylb",
                           namespaces=("shop", "data"), instance=instance, resync=60,
                           wall_clock=lambda: datetime(2026, 11, 21, 22, 0, tzinfo=UTC))


def ingress(kube: FakeApiServer, ns: str, name: str) -> list[dict[str, str]]:
    obj = kube.store.read("services", ns, name)
    return list(obj["status"]["loadBalancer"].get("ingress") or [])


def events(kube: FakeApiServer) -> list[dict[str, Any]]:
    return sorted(kube.store.items("events"), key=lambda e: (
        e["involvedObject"]["namespace"], e["involvedObject"]["name"], e["reason"]))


def posts(kube: FakeApiServer, what: str) -> int:
    return sum(1 for r in kube.requests if r.method in ("POST", "PATCH") and what in r.path)


async def test_events_and_ingress(kube_api: FakeApiServer, api_client: ApiClient) -> None:
    populate(kube_api)
    await publisher(api_client).reconcile(TABLE)

    assert ingress(kube_api, "shop", "web") == [{"ip": "192.168.1.10"}, {"ip": "192.168.1.11"}]
    assert ingress(kube_api, "shop", "legacy") == []  # not ours to set
    got = events(kube_api)
    assert [(e["involvedObject"]["name"], e["type"], e["reason"], e["message"]) for e in got] == [
        ("mysql", "Normal", "Exposed", "exposed by pylb: tcp :3306"),
        ("legacy", "Warning", "NotExposed",
         "not exposed by pylb: type LoadBalancer without class pylb.io/lb"),
        ("web", "Normal", "Exposed", "exposed by pylb: http /web"),
    ]
    web = kube_api.store.read("services", "shop", "web")
    (web_event,) = [e for e in got if e["involvedObject"]["name"] == "web"]
    assert web_event["involvedObject"]["uid"] == web["metadata"]["uid"]
    assert web_event["involvedObject"]["kind"] == "Service"
    assert web_event["metadata"]["namespace"] == "shop"
    assert web_event["source"] == {"component": "pylb"}
    assert web_event["reportingInstance"] == "pylb-a"
    assert web_event["count"] == 1
    assert web_event["firstTimestamp"] == "2026-11-21T22:00:00Z"


async def test_same_table_sends_nothing_again(kube_api: FakeApiServer,
                                              api_client: ApiClient) -> None:
    populate(kube_api)
    pub = publisher(api_client)
    await pub.reconcile(TABLE)
    before = (posts(kube_api, "/events"), posts(kube_api, "/status"))
    assert before == (3, 1)
    await pub.reconcile(TABLE)
    await pub.reconcile(TABLE)
    assert (posts(kube_api, "/events"), posts(kube_api, "/status")) == before


def publisher_at(api: ApiClient, instance: str, hour: int) -> StatusPublisher:
    return StatusPublisher(api, pod_namespace="lb", pod_selector="app=pylb",
                           namespaces=("shop", "data"), instance=instance,
                           wall_clock=lambda: datetime(2026, 11, 21, hour, 0, tzinfo=UTC))


async def test_new_leader_touches_instead_of_duplicating(kube_api: FakeApiServer,
                                                         api_client: ApiClient) -> None:
    populate(kube_api)
    await publisher_at(api_client, "pylb-a", 22).reconcile(TABLE)
    await publisher_at(api_client, "pylb-b", 23).reconcile(TABLE)
    got = events(kube_api)
    assert len(got) == 3
    for e in got:
        assert e["firstTimestamp"] == "2026-11-21T22:00:00Z"
        assert e["lastTimestamp"] == "2026-11-21T23:00:00Z"
        assert e["reportingInstance"] == "pylb-b"


async def test_ingress_follows_pods_and_exposure(kube_api: FakeApiServer,
                                                 api_client: ApiClient) -> None:
    populate(kube_api)
    pub = publisher(api_client)
    await pub.reconcile(TABLE)
    # A pylb pod becomes ready, another goes away.
    set_ready(kube_api, kube_api.store.read("pods", "lb", "pylb-c"), "192.168.1.12", True)
    kube_api.store.delete("pods", "lb", "pylb-a")
    await pub.reconcile(TABLE)
    assert ingress(kube_api, "shop", "web") == [{"ip": "192.168.1.10"}, {"ip": "192.168.1.12"}]
    # web is skipped now: its address goes, and the event says why.
    skipped = RouteTable(
        tcp=TABLE.tcp, backends=(DB,),
        skipped=(SKIP_LEGACY, SkippedService("shop", "web", "bad annotation lb.host")))
    await pub.reconcile(skipped)
    assert ingress(kube_api, "shop", "web") == []
    (warning,) = [e for e in events(kube_api) if e["involvedObject"]["name"] == "web"
                  and e["reason"] == "NotExposed"]
    assert warning["message"] == "not exposed by pylb: bad annotation lb.host"
    # ... and exposed again: reported again (the same event, touched).
    before = posts(kube_api, "/events")
    await pub.reconcile(TABLE)
    assert len(ingress(kube_api, "shop", "web")) == 2
    assert posts(kube_api, "/events") == before + 2  # POST 409, then PATCH
    assert len([e for e in events(kube_api) if e["involvedObject"]["name"] == "web"]) == 2


async def test_failed_event_is_retried_next_pass(kube_api: FakeApiServer,
                                                 api_client: ApiClient) -> None:
    populate(kube_api)
    pub = publisher(api_client)
    kube_api.faults.add(faults.http(500), method="POST", path_re="/events", count=1)
    await pub.reconcile(TABLE)
    assert len(events(kube_api)) == 2
    await pub.reconcile(TABLE)
    assert len(events(kube_api)) == 3


async def test_run_reconciles_on_notify_and_survives_errors(kube_api: FakeApiServer,
                                                            api_client: ApiClient) -> None:
    populate(kube_api)
    pub = publisher(api_client)
    current: list[RouteTable | None] = [None]
    kube_api.faults.add(faults.http(503), method="GET", path_re="/services", count=1)
    task = asyncio.create_task(pub.run(lambda: current[0]))
    try:
        current[0] = TABLE
        pub.notify()  # first pass meets the 503
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(events(kube_api)) == 3 and ingress(kube_api, "shop", "web"):
                break
            pub.notify()
        assert len(events(kube_api)) == 3
        assert len(ingress(kube_api, "shop", "web")) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_hanging_api_pass_is_abandoned_and_retried(kube_api: FakeApiServer,
                                                         api_client: ApiClient) -> None:
    populate(kube_api)
    pub = StatusPublisher(api_client, pod_namespace="lb", pod_selector="app=pylb",
                          namespaces=("shop", "data"), resync=0.05, pass_timeout=0.2)
    kube_api.faults.add(faults.hang(), method="GET", path_re="/services", count=1)
    task = asyncio.create_task(pub.run(lambda: TABLE))
    try:
        for _ in range(500):
            await asyncio.sleep(0.01)
            if ingress(kube_api, "shop", "web"):
                break
        assert len(ingress(kube_api, "shop", "web")) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        kube_api.drop_watches()


async def test_run_notices_a_new_table_without_notify(kube_api: FakeApiServer,
                                                      api_client: ApiClient) -> None:
    populate(kube_api)
    pub = publisher(api_client)  # resync 60 s: only the table change can trigger a pass
    without_web = RouteTable(tcp=TABLE.tcp, backends=(DB,), skipped=(SKIP_LEGACY,))
    current = [without_web]
    task = asyncio.create_task(pub.run(lambda: current[0], poll=0.02))
    try:
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(events(kube_api)) == 2:
                break
        assert ingress(kube_api, "shop", "web") == []
        current[0] = TABLE
        for _ in range(500):
            await asyncio.sleep(0.01)
            if ingress(kube_api, "shop", "web"):
                break
        assert len(ingress(kube_api, "shop", "web")) == 2
        assert len(events(kube_api)) == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
