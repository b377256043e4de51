"""The leader writes Ingress status and NotServed events (election/ingress_status.py),
against the fake API server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient

from election.publish import StatusPublisher
from pylb.model import Backend, HttpRoute, PathMatch, RouteTable, SkippedService
from tests.election.test_publish_fake import add_pod
from tests.kfake import FakeApiServer

WEB = Backend("shop/web:80")


def table(served: bool = True) -> RouteTable:
    routes = (HttpRoute("shop/front", "/", WEB.name, "a.test", strip_prefix=False,
                        match=PathMatch.PREFIX),) if served else ()
    return RouteTable(http=routes, backends=(WEB,), skipped=(
        SkippedService("shop", "front", "spec.rules[1].host 'x_y' is not a DNS name",
                       "Ingress"),
        SkippedService("shop", "broken", "annotation nginx.ingress.kubernetes.io/"
                       "ssl-passthrough: TLS passthrough is per TCP port", "Ingress"),
        SkippedService("shop", "front", "a Service reason", "Service")))


def ingress(name: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"ingressClassName": "pylb", "defaultBackend": {
                "service": {"name": "web", "port": {"number": 80}}}}}


def publisher(api: ApiClient, ingresses: bool = True) -> StatusPublisher:
    return StatusPublisher(api, pod_namespace="lb", pod_selector="app=pylb",
                           namespaces=("shop",), instance="pylb-a", resync=60,
                           wall_clock=lambda: datetime(2026, 12, 7, 3, 0, tzinfo=UTC),
                           ingresses=ingresses)


def lb(kube: FakeApiServer, name: str) -> list[Any]:
    obj = kube.store.read("ingresses.networking.k8s.io", "shop", name)
    return list((obj.get("status") or {}).get("loadBalancer", {}).get("ingress") or [])


async def test_status_and_events(kube_api: FakeApiServer, api_client: ApiClient) -> None:
    for name in ("front", "broken", "other"):
        kube_api.store.create("ingresses.networking.k8s.io", ingress(name))
    add_pod(kube_api, "pylb-a", "192.168.1.11")
    add_pod(kube_api, "pylb-b", "192.168.1.10")
    pub = publisher(api_client)
    await pub.reconcile(table())
    assert lb(kube_api, "front") == [{"ip": "192.168.1.10"}, {"ip": "192.168.1.11"}]
    assert lb(kube_api, "broken") == [] and lb(kube_api, "other") == []
    got = [e for e in kube_api.store.items("events")
           if e["involvedObject"]["kind"] == "Ingress"]
    assert sorted((e["involvedObject"]["name"], e["type"], e["reason"], e["message"])
                  for e in got) == [
        ("broken", "Warning", "NotServed", "not served by pylb: annotation nginx.ingress."
         "kubernetes.io/ssl-passthrough: TLS passthrough is per TCP port"),
        ("front", "Warning", "NotServed",
         "not served by pylb: spec.rules[1].host 'x_y' is not a DNS name"),
    ]
    front = kube_api.store.read("ingresses.networking.k8s.io", "shop", "front")
    (event,) = [e for e in got if e["involvedObject"]["name"] == "front"]
    assert event["involvedObject"]["uid"] == front["metadata"]["uid"]
    assert event["involvedObject"]["apiVersion"] == "networking.k8s.io/v1"
    writes = sum(1 for r in kube_api.requests if r.method in ("POST", "PATCH"))
    await pub.reconcile(table())  # nothing new: nothing written
    assert sum(1 for r in kube_api.requests if r.method in ("POST", "PATCH")) == writes
    await pub.reconcile(table(served=False))  # no longer served: the address goes
    assert lb(kube_api, "front") == []


async def test_off_without_ingress_class(kube_api: FakeApiServer,
                                         api_client: ApiClient) -> None:
    kube_api.store.create("ingresses.networking.k8s.io", ingress("front"))
    add_pod(kube_api, "pylb-a", "192.168.1.11")
    await publisher(api_client, ingresses=False).reconcile(table())
    assert lb(kube_api, "front") == []
    assert not any("ingresses" in r.path for r in kube_api.requests)
